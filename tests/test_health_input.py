"""actors/health.py: the HTTP API refuses bad input with a 4xx (never a 500, never a hung thread)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from jobrelay.cli.client import ApiError, FacilitatorClient
from jobrelay.common.http import HealthServer, _Handler
from jobrelay.facilitator import Facilitator, FacilitatorHealth
from tests.test_health import http

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def server(fac: Facilitator) -> Iterator[HealthServer]:
    with HealthServer(FacilitatorHealth(fac)) as srv:
        yield srv


def exchange(port: int, data: bytes, *, shut_write: bool = False, timeout: float = 3.0) -> bytes:
    """Send raw bytes; everything the server sends until it closes (socket timeout fails the test)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
        return received


def status_and_doc(response: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def post(headers: str, body: bytes = b"") -> bytes:
    return f"POST /jobs HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode() + body


BAD_LENGTHS = [("-1", 400), ("abc", 400), ("1_0", 400), ("+2", 400), ("9" * 5000, 413),
               (str((1 << 20) + 1), 413)]  # fmt: skip


def test_unreadable_bodies_are_refused_and_the_connection_closed(server: HealthServer) -> None:
    # -1 used to reach rfile.read(-1), which blocks until the client closes. The reply closes the
    # connection (the unread body must not be taken for a next request), so exchange() returns.
    for length, status in BAD_LENGTHS:
        response = exchange(server.port, post(f"Content-Length: {length}\r\n", b'{"kind": "k"}'))
        code, doc = status_and_doc(response)
        assert code == status, (length, response)
        assert b"\r\nConnection: close\r\n" in response
        assert "Content-Length" in doc["error"] or "too large" in doc["error"]
    response = exchange(server.port, post("Transfer-Encoding: chunked\r\n", b"2\r\n{}\r\n0\r\n\r\n"))
    assert status_and_doc(response)[0] == 411
    response = exchange(server.port, post("Content-Length: 100\r\n", b"{}"), shut_write=True)
    assert status_and_doc(response) == (400, {"error": "request body shorter than Content-Length"})


def test_silent_clients_do_not_hold_a_thread(server: HealthServer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _Handler.timeout == 10  # the real bound; shortened here to keep the test quick
    monkeypatch.setattr(_Handler, "timeout", 0.3)
    started = time.monotonic()
    assert exchange(server.port, b"") == b""  # idle: closed without an answer
    # A body that never arrives in full (the client keeps the connection open): 408, closed.
    code, doc = status_and_doc(exchange(server.port, post("Content-Length: 100\r\n", b"{")))
    assert code == 408 and "in time" in doc["error"]
    assert time.monotonic() - started < 2.5
    assert http("GET", server.url + "/jobs?limit=1")[0] == 200  # still serving


def test_limit_must_be_0_to_10000(server: HealthServer, fac: Facilitator) -> None:
    # -1 listed every job; a huge one was a 500 (OverflowError in SQLite).
    for limit in ["-1", "10001", "99999999999999999999", "9" * 5000, "1e3", "x"]:
        status, doc = http("GET", f"{server.url}/jobs?limit={limit}")
        assert status == 400 and "0..10000" in doc["error"], (limit, doc)
    for n in range(3):
        fac.submit("k", n)
    assert http("GET", server.url + "/jobs?limit=0") == (200, {"jobs": []})
    assert len(http("GET", server.url + "/jobs?limit=10000")[1]["jobs"]) == 3
    assert len(http("GET", server.url + "/jobs?limit=0002")[1]["jobs"]) == 2
    assert len(http("GET", server.url + "/jobs")[1]["jobs"]) == 3  # default 1000


def test_deep_json_is_400_and_a_too_large_cancel_413(server: HealthServer) -> None:
    status, doc = http("POST", server.url + "/jobs", raw=b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and doc == {"error": "request body is not JSON"}  # was a 500 (RecursionError)
    # Fits the 1 MiB body limit, but the cancel would not fit one frame (max_frame_bytes 1 MiB).
    status, doc = http("POST", server.url + "/jobs/abc/cancel", {"reason": "r" * ((1 << 20) - 64)})
    assert status == 413 and "max_frame_bytes (1048576)" in doc["error"], doc


def test_ids_with_special_characters_can_be_viewed_and_cancelled(server: HealthServer) -> None:
    client = FacilitatorClient(server.url, timeout=2)
    for job_id in ["job 1", "a/b", "été", "50%", "q?x=1#f"]:
        assert client.submit("k", None, job_id=job_id) == job_id
        assert client.job(job_id)["job_id"] == job_id  # was 404: "no job 'job%201'"
        cancelled = client.request("POST", f"/jobs/{quote(job_id, safe='')}/cancel", {"reason": "test"})
        assert cancelled == {"job_id": job_id, "cancelled": True}  # queued (no worker): cancelled at once
        assert client.job(job_id)["status"] == "cancelled"
    with pytest.raises(ApiError) as err:
        client.job("a/b-other")
    assert err.value.status == 404
