"""jobrelay/cli/client.py: a retried submit never creates a second job."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from jobrelay.cli.client import FacilitatorClient

pytestmark = pytest.mark.timeout(30)


class _StoresThenDrops(BaseHTTPRequestHandler):
    """POST /jobs: records the body; the first time, drops the connection before answering (as a
    facilitator that committed the job and then lost the connection); afterwards answers like the
    real one (a known id is an idempotent repeat: its id back)."""

    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append(body)
        if len(self.seen) == 1:
            self.close_connection = True
            self.connection.shutdown(2)
            return
        out = json.dumps({"job_id": body["job_id"] or f"new-{len(self.seen)}"}).encode()
        self.send_response(201)
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def stub() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (_StoresThenDrops,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()
        thread.join(2)


def test_a_retried_submit_carries_the_same_job_id(stub: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = stub
    job_id = FacilitatorClient(url, timeout=3).submit("sleep", {"seconds": 1})
    assert len(seen) == 2  # the first attempt was stored, then the connection dropped: retried
    assert seen[0]["job_id"] == seen[1]["job_id"] == job_id  # one job, not two
    assert re.fullmatch(r"[0-9a-f]{24}", job_id)  # the facilitator's own form (token_hex(12))


def test_a_given_job_id_is_sent_unchanged(stub: tuple[str, list[dict[str, Any]]]) -> None:
    url, seen = stub
    client = FacilitatorClient(url, timeout=3)
    assert client.submit("echo", "hi", job_id="order-17", worker="w1") == "order-17"
    assert [b["job_id"] for b in seen] == ["order-17", "order-17"]
    assert seen[1] == {"kind": "echo", "payload": "hi", "job_id": "order-17", "worker": "w1"}
