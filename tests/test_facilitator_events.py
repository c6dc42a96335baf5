"""facilitator/events.py and GET /events: the in-memory fan-out. Every subscriber sees every
event in order; a subscriber that falls behind is dropped with a marker, never slows the publisher
or the others; over HTTP a reader that stops reading is cut off and its subscription freed."""

from __future__ import annotations

import asyncio
import json
import socket
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobrelay.common.http import HealthServer
from jobrelay.facilitator import Facilitator, FacilitatorConfig, start_facilitator
from jobrelay.facilitator.events import DROPPED, EventBus
from jobrelay.facilitator.http_api import serve_facilitator
from tests.protocol_harness import FACILITATOR_KEY_HEX
from tests.test_cli_helpers import wait_until

pytestmark = pytest.mark.timeout(60)


def test_each_subscriber_gets_every_event_in_order_and_a_slow_one_is_dropped() -> None:
    async def scenario() -> None:
        bus = EventBus(limit=100)
        fast, slow = bus.subscribe(), bus.subscribe()
        got: list[dict[str, object]] = []
        for n in range(250):
            bus.publish("job.status", job_id=f"j{n}")
            if n % 50 == 49:  # the fast reader keeps up; the slow one never reads
                got += await fast.get(1.0)
        got += await fast.get(0.01)
        assert [e["job_id"] for e in got] == [f"j{n}" for n in range(250)]
        assert [e["seq"] for e in got] == list(range(1, 251))
        left = await slow.get(0.01)
        assert len(left) == 101 and left[-1]["type"] == DROPPED and "too slow" in str(left[-1]["reason"])
        assert slow.dropped and bus.subscribers == 1 and bus.dropped == 1
        fast.close()
        assert bus.subscribers == 0
        assert await fast.get(0.01) == []  # closed: nothing more arrives

    asyncio.run(scenario())


def test_publishing_never_waits_for_subscribers() -> None:
    async def scenario() -> float:
        bus = EventBus(limit=1000)
        subs = [bus.subscribe() for _ in range(100)]  # none of them reads
        started = time.perf_counter()
        for n in range(20_000):
            bus.publish("job.status", job_id=str(n))
        elapsed = time.perf_counter() - started
        assert all(s.dropped for s in subs) and bus.subscribers == 0
        return elapsed

    # 100 readers that stopped reading cost the publisher a bounded, small amount of work.
    assert asyncio.run(scenario()) < 5.0


@pytest.fixture
def fac(tmp_path: Path) -> Iterator[tuple[Facilitator, HealthServer]]:
    config = FacilitatorConfig(
        key=FACILITATOR_KEY_HEX, db_path=str(tmp_path / "f.db"), authorized_keys={}, durability="normal"
    )
    with start_facilitator(config) as facilitator:
        server = serve_facilitator(facilitator)
        try:
            yield facilitator, server
        finally:
            server.stop()


def test_server_sent_events_on_request(fac: tuple[Facilitator, HealthServer]) -> None:
    facilitator, server = fac
    request = urllib.request.Request(
        server.url + "/events?type=job.", headers={"Accept": "text/event-stream"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.readline() == b"event: stream.open\n"
        assert json.loads(resp.readline().removeprefix(b"data: "))["type"] == "stream.open"
        assert resp.readline() == b"\n"
        facilitator.submit("encode", {"file": "a"}, job_id="sse-1")  # queued: no worker runs it
        assert resp.readline() == b"event: job.submitted\n"
        event = json.loads(resp.readline().removeprefix(b"data: "))
        assert (event["job_id"], event["kind"], event["worker"]) == ("sse-1", "encode", None)
        assert resp.readline() == b"\n"
        facilitator.cancel("sse-1", "changed my mind")
        lines = [resp.readline() for _ in range(6)]
        assert lines[0] == b"event: job.status\n" and lines[3] == b"event: job.ended\n"
        ended = json.loads(lines[4].removeprefix(b"data: "))
        assert (ended["status"], ended["detail"]) == ("cancelled", "changed my mind")


def test_a_reader_that_stops_reading_is_dropped_and_the_server_goes_on(
    fac: tuple[Facilitator, HealthServer],
) -> None:
    facilitator, server = fac
    bus = facilitator.hub.events
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(f"GET /events HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        wait_until(lambda: bus.subscribers == 1, what="subscribed")
        # It never reads: its socket buffers fill, then its 1,000-event buffer, then it is dropped.
        detail = "x" * 2000
        started = time.monotonic()
        while bus.subscribers and time.monotonic() - started < 20:
            for n in range(200):
                bus.publish("job.status", job_id=f"j{n}", detail=detail)
            time.sleep(0.01)  # lets the loop write what fits; the publisher itself never waits
        assert bus.subscribers == 0 and bus.dropped == 1
        # Everyone else is served as before.
        with urllib.request.urlopen(server.url + "/events", timeout=10) as resp:
            assert json.loads(resp.readline())["type"] == "stream.open"
            facilitator.submit("encode", None, job_id="after")
            assert json.loads(resp.readline())["job_id"] == "after"
