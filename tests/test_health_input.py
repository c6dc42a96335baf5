"""facilitator/http_api.py over jobrelay.common.http: bad input is a 4xx, never a 500 or a hang."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest

from jobrelay.cli.client import ApiError, FacilitatorClient
from jobrelay.common import http as http_module
from jobrelay.common.http import HealthServer
from jobrelay.facilitator import Facilitator, FacilitatorHealth
from tests.test_health import http

pytestmark = pytest.mark.timeout(30)

IDLE = 0.5  # the server's idle timeout here (10 s in production), to keep the tests quick


@pytest.fixture(params=["own loop", "facilitator's loop"])
def server(fac: Facilitator, request: pytest.FixtureRequest) -> Iterator[HealthServer]:
    """Served on its own loop, and on the facilitator's (as the CLI does: submits await their
    commit there, not in the pool)."""
    loop = fac.loop if request.param == "facilitator's loop" else None
    with HealthServer(FacilitatorHealth(fac), idle_timeout=IDLE, loop=loop) as srv:
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


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def doc_of(response: bytes) -> dict[str, Any]:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"\r\nContent-Type: application/json" in head, head
    return dict(json.loads(body))


def post(headers: str, body: bytes = b"") -> bytes:
    return (
        f"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{headers}\r\n".encode()
        + body
    )


# aiohttp's parser refuses a malformed Content-Length itself: 400 with its own plain-text message (the
# old hand parser answered JSON, and 413 for the 5000-digit one), and closes the connection.
MALFORMED_LENGTHS = ["-1", "abc", "1_0", "+2", "9" * 5000]


@pytest.mark.parametrize("length", MALFORMED_LENGTHS, ids=lambda v: v[:8])
def test_a_malformed_content_length_is_a_400_and_closes(server: HealthServer, length: str) -> None:
    # -1 once reached rfile.read(-1), which blocked until the client closed. exchange() returns only
    # because the server closes the connection (the unread body must not be taken for a next request).
    response = exchange(server.port, post(f"Content-Length: {length}\r\n", b'{"kind": "k"}'))
    assert status_of(response) == 400, response[:200]
    assert b"Content-Length" in response


def test_a_body_over_1_mib_is_a_413_before_it_is_read(server: HealthServer, fac: Facilitator) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server.port), timeout=3) as sock:
        sock.sendall(post(f"Content-Length: {(1 << 20) + 1}\r\n", b'{"kind": "k"}'))  # the rest never comes
        response = b""
        while b'"}\n' not in response:
            response += sock.recv(65536)
        assert time.monotonic() - started < 1.0  # answered at once, not after reading 1 MiB
        while chunk := sock.recv(65536):  # ...and closed (after aiohttp's lingering, IDLE here)
            response += chunk
    assert status_of(response) == 413 and b"\r\nConnection: close\r\n" in response
    assert doc_of(response) == {"error": "request body too large"}
    # Chunked (no Content-Length): refused once it grows past 1 MiB.
    size = (1 << 20) + 1
    body = f"{size:x}\r\n".encode() + b"x" * size + b"\r\n0\r\n\r\n"
    response = exchange(server.port, post("Transfer-Encoding: chunked\r\n", body))
    assert status_of(response) == 413 and doc_of(response) == {"error": "request body too large"}
    assert fac.jobs() == []


def test_chunked_bodies_are_accepted(server: HealthServer, fac: Facilitator) -> None:
    # The hand parser refused Transfer-Encoding with 411; aiohttp reads chunked bodies like any other.
    body = json.dumps({"kind": "k", "job_id": "chunked"}).encode()
    chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    response = exchange(server.port, post("Transfer-Encoding: chunked\r\nConnection: close\r\n", chunked))
    assert status_of(response) == 201 and doc_of(response) == {"job_id": "chunked"}
    assert fac.job("chunked") is not None


def test_a_body_cut_short_by_the_client_is_not_waited_for(server: HealthServer, fac: Facilitator) -> None:
    # The client half-closes after 2 of 100 bytes: aiohttp closes too, without an answer (the hand
    # parser answered 400 first). Either way: prompt, nothing stored, the server keeps serving.
    started = time.monotonic()
    assert exchange(server.port, post("Content-Length: 100\r\n", b"{}"), shut_write=True) == b""
    assert time.monotonic() - started < 1.0
    assert fac.jobs() == [] and http("GET", server.url + "/jobs")[0] == 200


def test_silent_clients_are_disconnected(server: HealthServer) -> None:
    assert http_module.IDLE_TIMEOUT == 10  # the real bound; IDLE here keeps the test quick
    started = time.monotonic()
    assert exchange(server.port, b"") == b""  # connected, never sent a request: closed without an answer
    assert IDLE * 0.8 < time.monotonic() - started < IDLE + 1.0
    # A body that never arrives in full (the client keeps the connection open): 408, closed.
    started = time.monotonic()
    response = exchange(server.port, post("Content-Length: 100\r\n", b"{"))
    assert status_of(response) == 408 and b"\r\nConnection: close\r\n" in response
    assert doc_of(response) == {"error": "request body not received in time"}
    assert time.monotonic() - started < 2 * IDLE + 1.0  # the body's timeout, then aiohttp's lingering
    # Headers that never end are no better than silence.
    assert exchange(server.port, b"POST /jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n") == b""
    assert http("GET", server.url + "/jobs?limit=1")[0] == 200  # still serving


def test_unknown_routes_and_methods_are_json_errors(server: HealthServer) -> None:
    assert http("GET", server.url + "/nope") == (404, {"error": "no route GET /nope"})
    assert http("GET", server.url + "/jobs/a/b") == (404, {"error": "no route GET /jobs/a/b"})
    # A known path with the wrong method: 405 (the hand parser said 404) with the methods allowed.
    status, doc = http("POST", server.url + "/stats", {})
    assert status == 405 and doc["error"].startswith("no route POST /stats (allowed: ")
    assert "GET" in doc["error"]


def test_limit_must_be_0_to_10000(server: HealthServer, fac: Facilitator) -> None:
    # -1 listed every job; a huge one was a 500 (OverflowError in SQLite).
    for limit in ["-1", "10001", "99999999999999999999", "9" * 5000, "1e3", "x", "%20"]:
        status, doc = http("GET", f"{server.url}/jobs?limit={limit}")
        assert status == 400 and "0..10000" in doc["error"], (limit, doc)
    for n in range(3):
        fac.submit("k", n)
    assert http("GET", server.url + "/jobs?limit=0") == (200, {"jobs": []})
    assert len(http("GET", server.url + "/jobs?limit=10000")[1]["jobs"]) == 3
    assert len(http("GET", server.url + "/jobs?limit=0002")[1]["jobs"]) == 2
    assert len(http("GET", server.url + "/jobs")[1]["jobs"]) == 3  # default 1000
    assert len(http("GET", server.url + "/jobs?limit=&status=")[1]["jobs"]) == 3  # blank: as if absent


def test_deep_json_is_400_and_a_too_large_cancel_413(server: HealthServer) -> None:
    status, doc = http("POST", server.url + "/jobs", raw=b"[" * 100_000 + b"]" * 100_000)
    assert status == 400 and doc == {"error": "request body is not JSON"}  # was a 500 (RecursionError)
    assert http("POST", server.url + "/jobs", raw=b"\xff{")[1] == {"error": "request body is not JSON"}
    # Fits the 1 MiB body limit, but the cancel would not fit one frame (max_frame_bytes 1 MiB).
    status, doc = http("POST", server.url + "/jobs/abc/cancel", {"reason": "r" * ((1 << 20) - 64)})
    assert status == 413 and "max_frame_bytes (1048576)" in doc["error"], doc


def test_ids_with_special_characters_can_be_viewed_and_cancelled(server: HealthServer) -> None:
    client = FacilitatorClient(server.url, timeout=2)
    for job_id in ["job 1", "a/b", "été", "50%", "q?x=1#f", "{x}", "%2F"]:
        assert client.submit("k", None, job_id=job_id) == job_id
        assert client.job(job_id)["job_id"] == job_id  # was 404: "no job 'job%201'"
        cancelled = client.request("POST", f"/jobs/{quote(job_id, safe='')}/cancel", {"reason": "test"})
        assert cancelled == {
            "job_id": job_id,
            "cancelled": True,
            "status": "cancelled",
        }  # queued (no worker): cancelled at once
        assert client.job(job_id)["status"] == "cancelled"
    with pytest.raises(ApiError) as err:
        client.job("a/b-other")
    assert err.value.status == 404
