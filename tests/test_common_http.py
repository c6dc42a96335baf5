"""jobrelay/common/http.py: the aiohttp server's loops, threads, bounds, errors and load."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from prometheus_client.core import GaugeMetricFamily, Metric

from jobrelay.common.http import MAX_PER_ADDRESS, HealthReport, HealthServer
from jobrelay.facilitator import Facilitator, FacilitatorHealth
from tests.facilitator_client import wait_until
from tests.test_health import http

pytestmark = pytest.mark.timeout(30)

POOL = "jobrelay-http-call"  # the server's executor threads


class FakeSource:
    """A health source that records the thread of each call and can fail or block on demand."""

    def __init__(self) -> None:
        self.threads: list[str] = []
        self.fail: Exception | None = None
        self.entered = threading.Event()
        self.release: threading.Event | None = None

    def health(self) -> HealthReport:
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        if self.release is not None:
            self.release.wait(10)
        if self.fail is not None:
            raise self.fail
        return HealthReport(True, "", {"calls": len(self.threads)})

    def metrics(self) -> Iterator[Metric]:
        if self.fail is not None:
            raise self.fail
        gauge = GaugeMetricFamily("fake_up", "1")
        gauge.add_metric([], 1.0)
        yield gauge


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(POOL)]


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def loop_thread() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own, as the facilitator's will."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-loop", daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def test_serves_on_a_given_loop_started_and_stopped_from_another_thread(
    loop_thread: asyncio.AbstractEventLoop,
) -> None:
    source = FakeSource()
    server = HealthServer(source, loop=loop_thread).start()
    try:
        assert not [t for t in threading.enumerate() if t.name == "jobrelay-http"]  # no loop of its own
        assert http("GET", server.url + "/healthz") == (200, {"healthy": True, "reason": "", "calls": 1})
        assert source.threads[0].startswith(POOL)  # the source ran in the pool, not on the loop
        # On the loop's own thread start() would wait for itself: refused.
        other = HealthServer(source, loop=loop_thread)
        attempt = asyncio.run_coroutine_threadsafe(_start_on_loop(other), loop_thread)
        assert "loop's own thread" in attempt.result(5)
        other.stop()  # from here, it works (it was never started)
        assert refused(other.port)
    finally:
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2.0
    assert refused(server.port) and loop_thread.is_running()  # the given loop keeps running


async def _start_on_loop(server: HealthServer) -> str:
    try:
        server.start()
    except RuntimeError as exc:
        return str(exc)
    return "started"


def test_own_loop_runs_in_one_thread_and_stop_releases_the_port() -> None:
    server = HealthServer(FakeSource()).start()
    try:
        assert [t.daemon for t in threading.enumerate() if t.name == "jobrelay-http"] == [True]
        assert http("GET", server.url + "/metrics")[1].count("fake_up 1.0") == 1
    finally:
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 2.0
    assert not [t for t in threading.enumerate() if t.name == "jobrelay-http"]
    with socket.create_server(("127.0.0.1", server.port)):  # the port is free again at once
        pass
    server.stop()  # idempotent
    with pytest.raises(RuntimeError):
        server.start()


def test_stop_is_bounded_while_a_request_is_running() -> None:
    source = FakeSource()
    source.release = threading.Event()
    results: list[Any] = []
    with HealthServer(source) as server:
        client = threading.Thread(target=lambda: results.append(_get(server.url + "/healthz")))
        client.start()
        try:
            assert source.entered.wait(5)
            started = time.monotonic()
            server.stop()
            assert time.monotonic() - started <= 2.0
            assert refused(server.port)
        finally:
            source.release.set()
            client.join(10)
    assert results and isinstance(results[0], Exception)  # its connection was closed unanswered


def test_a_burst_of_requests_leaves_no_pool_threads_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    # The pool's threads end once idle (a hostile client's burst must not leave threads behind:
    # the fuzz runs check the thread count returns to its baseline).
    monkeypatch.setattr("jobrelay.common.http._POOL_LINGER", 0.2)
    source = FakeSource()
    source.release = threading.Event()
    results: list[Any] = []
    with HealthServer(source) as server:
        clients = [
            threading.Thread(target=lambda: results.append(_get(server.url + "/healthz"))) for _ in range(4)
        ]
        for client in clients:
            client.start()
        try:
            wait_until(lambda: len(source.threads) == 4)
            assert len(pool_threads()) == 4  # four calls at once: four threads
        finally:
            source.release.set()
            for client in clients:
                client.join(10)
        assert results == [200] * 4
        wait_until(lambda: not pool_threads())
        assert _get(server.url + "/healthz") == 200  # and a new call still gets a thread


def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status
    except (urllib.error.URLError, OSError) as exc:
        return exc


def test_a_bind_failure_is_an_oserror() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy, pytest.raises(OSError):
        HealthServer(FakeSource(), port=busy.getsockname()[1])
    with pytest.raises(OverflowError):
        HealthServer(FakeSource(), port=70000)


def test_a_handler_error_is_a_500_with_one_log_line_and_the_server_keeps_serving() -> None:
    source = FakeSource()
    lines: list[Any] = []
    sink = logger.add(lines.append, level="DEBUG", format="{level} {message}")
    try:
        with HealthServer(source) as server:
            source.fail = ValueError("boom")
            assert http("GET", server.url + "/healthz") == (500, {"error": "ValueError: boom"})
            assert http("GET", server.url + "/metrics") == (500, {"error": "ValueError: boom"})
            source.fail = None
            assert http("GET", server.url + "/healthz")[0] == 200
    finally:
        logger.remove(sink)
    records = [line.record for line in lines if line.record["message"].startswith("http: GET ")]
    assert [(r["level"].name, r["message"].split(" -> ")[0]) for r in records] == [
        ("ERROR", "http: GET /healthz"), ("ERROR", "http: GET /metrics"), ("DEBUG", "http: GET /healthz"),
    ]  # fmt: skip
    assert records[0]["message"].endswith("ValueError: boom") and records[0]["exception"] is not None


@pytest.mark.alone  # reads the kernel's listen-queue drops of every socket
@pytest.mark.parametrize("on_the_facilitators_loop", [False, True], ids=["own-loop", "facilitator-loop"])
def test_64_concurrent_submitters_all_get_201(fac: Facilitator, on_the_facilitators_loop: bool) -> None:
    clients, per_client = 64, 4
    barrier = threading.Barrier(clients)
    answers: list[Any] = []
    latencies: list[float] = []

    def submit(n: int) -> None:
        barrier.wait(10)
        for i in range(per_client):
            started = time.monotonic()
            try:
                answers.append(http("POST", server.url + "/jobs", {"kind": "k", "job_id": f"c{n}-{i}"}))
            except Exception as exc:  # refused, reset, timed out: recorded, the test fails below
                answers.append(exc)
            latencies.append(time.monotonic() - started)

    loop = fac.loop if on_the_facilitators_loop else None  # its submit() refuses to run on that loop
    with HealthServer(FacilitatorHealth(fac), loop=loop) as server:
        threads = [threading.Thread(target=submit, args=(n,)) for n in range(clients)]
        overflows = listen_overflows()
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(25)
        elapsed = time.monotonic() - started
        overflowed = listen_overflows() - overflows
        assert len(pool_threads()) <= 4  # no thread per request or per client
    failures = [a for a in answers if not (isinstance(a, tuple) and a[0] == 201)]
    assert not failures and len(answers) == clients * per_client, failures[:5]
    assert len(fac.jobs(limit=10_000)) == clients * per_client
    # The stdlib server (listen backlog 5) reset dozens of these and had a p99 over 1 s (SYN
    # retries). The kernel counts each connection its full accept queue dropped: none may be
    # (a count, not a time, so a loaded machine cannot fail it; the latency bound is loose).
    assert overflowed == 0, f"{overflowed} connections dropped by a full listen queue"
    assert sorted(latencies)[int(len(latencies) * 0.99)] < 3.0 and elapsed < 20


def listen_overflows() -> int:
    """The kernel's count of connections dropped because a listen queue was full (all sockets:
    the test that reads it runs alone)."""
    lines = [line.split() for line in Path("/proc/net/netstat").read_text().splitlines()]
    for names, values in zip(lines[::2], lines[1::2], strict=True):
        if names[0] == "TcpExt:" and "ListenOverflows" in names:
            return int(values[names.index("ListenOverflows")])
    return 0


def test_200_idle_connections_do_not_stop_a_request() -> None:
    threads_before = threading.active_count()
    with HealthServer(FakeSource()) as server, contextlib.ExitStack() as idle:
        for _ in range(200):  # connected from one address, never sending a request
            address = ("127.0.0.1", server.port)
            idle.enter_context(socket.create_connection(address, timeout=5, source_address=("127.0.0.2", 0)))
        wait_until(lambda: server.refused.get("refused_per_address") == 200 - MAX_PER_ADDRESS)
        started = time.monotonic()
        status, _ = http("GET", server.url + "/healthz")  # from another address
        assert status == 200 and time.monotonic() - started < 1.0
        assert threading.active_count() <= threads_before + 1 + 4  # its loop's thread and the pool
        wait_until(lambda: server.gate.open == MAX_PER_ADDRESS)  # the others were reset at once


def test_a_client_dripping_its_headers_is_cut_off_at_the_deadline() -> None:
    with HealthServer(FakeSource(), idle_timeout=1.0) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: " + b"a" * 1000
        started = time.monotonic()
        sock.settimeout(0.05)
        closed = False
        try:
            for byte in request:  # one byte every 50 ms: never silent, never done
                try:
                    sock.send(bytes([byte]))
                    closed = sock.recv(1) == b""
                except TimeoutError:
                    continue
                except (ConnectionResetError, BrokenPipeError):
                    closed = True
                if closed:
                    break
        finally:
            sock.close()
        assert closed and time.monotonic() - started < 3.0
