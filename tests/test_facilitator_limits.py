"""Limits that degrade, never collapse: a cap on connections with a clear refusal, handshakes
paced instead of piled up, and the open-file limit raised (and respected) at start. Real sockets
on 127.0.0.1; the facilitator runs in this process unless a test needs its own rlimits."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import websocket
from loguru import logger

from jobrelay.actors import start_worker
from jobrelay.facilitator import Facilitator
from jobrelay.facilitator.pacing import RecentPeak
from tests.facilitator_client import KEYS, TestWorker, make_facilitator, wait_until, worker_config

pytestmark = pytest.mark.timeout(60)


def close_code(ws: websocket.WebSocket) -> int:
    """Read frames until the close frame; its status code."""
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return int.from_bytes(frame.data[:2], "big")


def test_a_connection_over_max_workers_is_refused_with_1013_counted_and_logged_once(tmp_path: Path) -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message}")
    fac = make_facilitator(tmp_path, max_workers=2)
    held = [TestWorker(fac.url, w, KEYS[w]) for w in ("w1", "w2")]
    extra: list[websocket.WebSocket] = []
    try:
        for worker in held:
            worker.connect()
        assert "at capacity" in fac.saturation()
        for _ in range(3):
            ws = websocket.create_connection(fac.url, timeout=5)
            extra.append(ws)
            assert close_code(ws) == 1013
        assert fac.stats().refused_capacity == 3
        refusals = [line for line in lines if "refusing connections from 127.0.0.1" in line]
        assert len(refusals) == 1, lines  # one line per source per minute, not one per attempt
        # The workers held are untouched, and a freed slot is taken again.
        assert all(worker.is_open for worker in held)
        held[0].disconnect()
        wait_until(lambda: fac.saturation() == "")
        again = TestWorker(fac.url, "w3", KEYS["w3"])
        held.append(again)
        again.connect()
    finally:
        for ws in extra:
            ws.close()
        for worker in held:
            worker.disconnect()
        fac.stop()
        logger.remove(sink)


def test_silent_connections_hold_no_handshake_slot(tmp_path: Path) -> None:
    """A slot is taken when the auth frame arrives: sockets that never say hello (no key needed
    to open them) cannot keep authorized workers out, however many there are."""
    fac = make_facilitator(tmp_path, max_handshakes=2, handshake_timeout=1.0)
    idle = [websocket.create_connection(fac.url, timeout=5) for _ in range(8)]
    worker = TestWorker(fac.url, "w1", KEYS["w1"])
    try:
        wait_until(lambda: fac.hub.connections == 8)
        started = time.monotonic()
        worker.connect(timeout=2.0)
        assert time.monotonic() - started < 0.5
        assert all(close_code(ws) == 4003 for ws in idle)  # they time out on their own deadline
    finally:
        for ws in idle:
            ws.close()
        worker.disconnect()
        fac.stop()


@contextlib.contextmanager
def three_workers(fac: Facilitator) -> Iterator[list[TestWorker]]:
    """w1, w2 and w3 connected one after the other; at the end disconnected and ``fac`` stopped."""
    workers = [TestWorker(fac.url, w, KEYS[w]) for w in ("w1", "w2", "w3")]
    try:
        for worker in workers:
            worker.connect(timeout=5.0)
        yield workers
    finally:
        for worker in workers:
            worker.disconnect()
        fac.stop()


def test_many_workers_authenticate_through_one_slot(tmp_path: Path) -> None:
    fac = make_facilitator(tmp_path, max_handshakes=1)
    with three_workers(fac):  # each opens only after the one before it gave its slot back
        wait_until(lambda: fac.stats().sessions_opened == 3 and fac.hub.waiting_handshakes == 0)
        assert fac.hub._handshakes.free == 1  # every slot given back


def test_sessions_get_slower_heartbeats_when_many_connections_are_held(tmp_path: Path) -> None:
    # 2 heartbeats/s at a 1 s interval hold two workers at 1 s; the third session gets 3/2 = 1.5 s
    # and a timeout longer by as much, in its welcome, and the facilitator keeps to the same.
    fac = make_facilitator(tmp_path, heartbeat_interval=1.0, heartbeat_timeout=4.0, heartbeat_rate=2.0)
    with three_workers(fac) as workers:
        assert [(w.session.heartbeat_interval, w.session.heartbeat_timeout) for w in workers] == [
            (1.0, 4.0),
            (1.0, 4.0),
            (1.5, 6.0),
        ]
        ours = fac.hub._conns["w3"]
        assert (ours.session.heartbeat_interval, ours.session.heartbeat_timeout) == (1.5, 6.0)
        # The first two keep to the budget too: at its next heartbeat the facilitator lengthens
        # their sessions to the values of the fleet now (PROTOCOL §6.1), on both ends.
        first = workers[0]
        first.wait_for(lambda: first.session is not None and first.session.heartbeat_interval == 1.5)
        assert first.session is not None and first.session.heartbeat_timeout == 6.0
        theirs = fac.hub._conns["w1"]
        assert (theirs.session.heartbeat_interval, theirs.session.heartbeat_timeout) == (1.5, 6.0)
        wait_until(lambda: fac.stats().connected_workers == 3)
        workers[0].disconnect()
        wait_until(lambda: fac.stats().connected_workers == 2 and fac.hub.connections == 2)
        # Coming back after a cut, a worker is budgeted for the fleet of minutes ago (3), not
        # for the two still connected: a storm's first returners do not keep a short interval.
        workers[0].connect()
        assert (workers[0].session.heartbeat_interval, workers[0].session.heartbeat_timeout) == (1.5, 6.0)


def test_the_fleet_size_is_the_recent_peak_and_forgets_it_after_its_memory() -> None:
    now = [0.0]
    peak = RecentPeak(memory=600.0, clock=lambda: now[0])
    assert [peak.observe(n) for n in (1, 5, 10, 3)] == [1, 5, 10, 10]
    now[0] = 599.0
    assert peak.observe(2) == 10
    now[0] = 601.0
    assert peak.observe(2) == 2  # the fleet really shrank
    assert peak.observe(4) == 4


def test_a_zero_heartbeat_rate_keeps_the_interval_fixed(tmp_path: Path) -> None:
    fac = make_facilitator(tmp_path, heartbeat_interval=1.0, heartbeat_timeout=4.0, heartbeat_rate=0.0)
    with three_workers(fac) as workers:
        assert {(w.session.heartbeat_interval, w.session.heartbeat_timeout) for w in workers} == {(1.0, 4.0)}


def test_stop_is_bounded_with_idle_unauthenticated_connections(tmp_path: Path) -> None:
    fac = make_facilitator(tmp_path, max_handshakes=1, handshake_timeout=30.0, stop_timeout=3.0)
    waiting = [websocket.create_connection(fac.url, timeout=5) for _ in range(20)]
    try:
        wait_until(lambda: fac.hub.connections == 20)
        started = time.monotonic()
        fac.stop()
        assert time.monotonic() - started < 3.5
        for ws in waiting:
            assert close_code(ws) in (1001, 1006)
    finally:
        for ws in waiting:
            ws.close()


CAPACITY_CHILD = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (300, 600))
    from loguru import logger
    from jobrelay.facilitator import FacilitatorConfig, start_facilitator
    logger.enable("jobrelay")  # a library is quiet until asked; this checks its lines
    with start_facilitator(FacilitatorConfig(db_path=sys.argv[1], max_workers=10_000, key="01" * 32)) as fac:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        print(soft, hard, fac.max_workers, flush=True)
    """
)


def test_the_open_file_limit_is_raised_at_start_and_caps_the_workers_held(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CAPACITY_CHILD, str(tmp_path / "f.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    soft, hard, capacity = map(int, done.stdout.split())
    assert (soft, hard) == (600, 600)
    # 512 descriptors are kept for the database, the HTTP API and logs; of the 88 left, half may
    # be unauthenticated connections, the rest workers.
    assert capacity == (600 - 512) // 2
    assert "the open-file limit allows about 44 workers (max_workers 10000)" in done.stderr


TOO_FEW_CHILD = textwrap.dedent(
    """
    import resource, sys
    resource.setrlimit(resource.RLIMIT_NOFILE, (520, 520))
    from jobrelay.facilitator import FacilitatorConfig, start_facilitator
    from jobrelay.protocol.errors import ConfigError
    try:
        start_facilitator(FacilitatorConfig(db_path=sys.argv[1], key="01" * 32))
    except ConfigError as exc:
        print(exc)
    """
)


def test_a_facilitator_without_descriptors_to_spare_refuses_to_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", TOO_FEW_CHILD, str(tmp_path / "f.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "the open-file limit leaves descriptors for 8 connections" in done.stdout
    assert "raise it (ulimit -n, LimitNOFILE=) to at least 528" in done.stdout


def test_a_client_dripping_its_upgrade_request_is_cut_off_at_the_handshake_deadline(tmp_path: Path) -> None:
    fac = make_facilitator(tmp_path, handshake_timeout=1.0)
    sock = socket.create_connection(("127.0.0.1", fac.port), timeout=5)
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000
    started = time.monotonic()
    try:
        closed = False
        for byte in request:  # one byte every 50 ms: never silent, never done
            try:
                sock.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
            closed = closed or _was_reset(sock, 0.05)
            if closed:
                break
        assert closed and time.monotonic() - started < 3.0
        wait_until(lambda: fac.hub.gate.open == 0)  # its room is free again
    finally:
        sock.close()
        fac.stop()


def test_a_facilitator_reports_no_saturation_when_idle(fac: Facilitator) -> None:
    assert fac.saturation() == ""


def test_healthz_says_when_the_facilitator_is_saturated(tmp_path: Path) -> None:
    from jobrelay.facilitator import FacilitatorHealth

    fac = make_facilitator(tmp_path, max_workers=1)
    worker = TestWorker(fac.url, "w1", KEYS["w1"])
    try:
        assert FacilitatorHealth(fac).health().healthy
        worker.connect()
        report = FacilitatorHealth(fac).health()
        assert not report.healthy
        assert report.reason == "saturated: at capacity: 1 connections, max_workers 1"
        assert report.body["saturated"] is True
        worker.disconnect()
        wait_until(lambda: FacilitatorHealth(fac).health().healthy)
    finally:
        worker.disconnect()
        fac.stop()


def test_per_connection_lines_are_summarised_in_a_storm() -> None:
    import asyncio

    from jobrelay.facilitator.hub import Chatter

    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{message}")

    async def storm() -> list[bool]:
        chatter = Chatter(asyncio.get_running_loop(), per_second=5)
        allowed = [chatter.allow("workers connected") for _ in range(12)]
        deadline = time.monotonic() + 3
        while not lines and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the loop's own timer writes the summary
        return allowed

    try:
        allowed = asyncio.run(storm())
    finally:
        logger.remove(sink)
    assert allowed.count(True) <= 10  # at most 5 per second (the storm may straddle a second)
    assert allowed[:5] == [True] * 5
    assert len(lines) == 1 and "also" in lines[0] and "workers connected" in lines[0], lines


def test_handshake_slots_go_to_the_newest_waiter_first() -> None:
    import asyncio

    from jobrelay.facilitator.hub import NewestFirst

    async def scenario() -> list[int]:
        slots = NewestFirst(1)
        await slots.acquire()  # taken
        served: list[int] = []

        async def waiter(n: int) -> None:
            await slots.acquire()
            served.append(n)
            slots.release()

        tasks = []
        for n in range(3):
            tasks.append(asyncio.create_task(waiter(n)))
            await asyncio.sleep(0)  # let it queue (in this order)
        slots.release()
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert slots.free == 1
        return served

    assert asyncio.run(scenario()) == [2, 1, 0]


def _was_reset(sock: socket.socket, wait: float = 0.3) -> bool:
    """True when the facilitator refused ``sock`` (reset or closed it, or answered 503 busy);
    False while it holds it open."""
    sock.settimeout(wait)
    try:
        data = sock.recv(64)
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False
    return data == b"" or data.startswith(b"HTTP/1.1 503 ")


def _raw(port: int, source: str) -> socket.socket:
    """A TCP connection that never says anything (as an anonymous flooder's would)."""
    return socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))


def test_anonymous_connections_from_one_address_cannot_lock_workers_out(tmp_path: Path) -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="WARNING", format="{message}")
    fac = make_facilitator(tmp_path, max_unauthenticated_per_address=4, handshake_timeout=30.0)
    flood = [_raw(fac.port, "127.0.0.2") for _ in range(10)]
    worker = TestWorker(fac.url, "w1", KEYS["w1"])
    try:
        wait_until(lambda: fac.stats().refused_per_address == 6)
        held = [sock for sock in flood if not _was_reset(sock)]
        assert len(held) == 4  # the rest were reset at once, before any HTTP work
        worker.connect()  # from another address: unaffected
        assert worker.is_open
        refusals = [line for line in lines if "refusing connections from 127.0.0.2" in line]
        assert len(refusals) == 1, lines  # one line per source per minute
        assert "max_unauthenticated_per_address" in refusals[0]
        for sock in held:
            sock.close()
        wait_until(lambda: fac.hub.gate.unauthenticated == 0)
        again = _raw(fac.port, "127.0.0.2")  # the address may connect again once it let go
        flood.append(again)
        assert not _was_reset(again)
    finally:
        for sock in flood:
            sock.close()
        worker.disconnect()
        fac.stop()
        logger.remove(sink)


def test_unauthenticated_connections_are_capped_and_workers_do_not_count(tmp_path: Path) -> None:
    fac = make_facilitator(tmp_path, max_unauthenticated=2, handshake_timeout=30.0)
    workers = [TestWorker(fac.url, w, KEYS[w]) for w in ("w1", "w2", "w3")]
    flood: list[socket.socket] = []
    try:
        for worker in workers:  # more workers than the cap: each leaves it once authenticated
            worker.connect()
        assert fac.hub.gate.unauthenticated == 0 and fac.hub.gate.open == 3
        flood = [_raw(fac.port, f"127.0.0.{i}") for i in range(2, 7)]
        wait_until(lambda: fac.stats().refused_unauthenticated == 3)
        assert sum(not _was_reset(sock) for sock in flood) == 2
        assert all(worker.is_open for worker in workers)
    finally:
        for sock in flood:
            sock.close()
        for worker in workers:
            worker.disconnect()
        fac.stop()


ACCEPT_CHILD = textwrap.dedent(
    """
    import json, resource, socket, sys, time
    resource.setrlimit(resource.RLIMIT_NOFILE, (700, 700))
    from loguru import logger
    from jobrelay.facilitator import FacilitatorConfig, FacilitatorHealth, start_facilitator
    logger.enable("jobrelay")  # a library is quiet until asked; this checks its lines

    def health(fac):
        report = FacilitatorHealth(fac).health()
        return report.healthy, report.reason

    def wait(predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError
            time.sleep(0.02)

    with start_facilitator(FacilitatorConfig(db_path=sys.argv[1], key="01" * 32)) as fac:
        hog = []  # descriptors used up elsewhere in the process (a leak, another library)
        try:
            while True:
                hog.append(open("/dev/null"))
        except OSError:
            pass
        hog.pop().close()  # room for our client socket, none for the facilitator's accept()
        client = socket.create_connection(("127.0.0.1", fac.port), timeout=5)
        wait(lambda: fac.stats().accept_errors > 0)
        during = health(fac)
        for f in hog:
            f.close()
        client.sendall(
            b"GET / HTTP/1.1\\r\\nHost: x\\r\\nUpgrade: websocket\\r\\nConnection: Upgrade\\r\\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\\r\\nSec-WebSocket-Version: 13\\r\\n\\r\\n"
        )
        answer = client.recv(12)  # the listener accepts again: the same connection is served
        wait(lambda: health(fac)[0], timeout=15.0)
        print(json.dumps({"during": during, "answer": answer.decode(), "after": health(fac)}))
    """
)


def test_a_failing_accept_is_survived_and_reported_by_healthz(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", ACCEPT_CHILD, str(tmp_path / "f.db")],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    healthy, reason = result["during"]
    assert not healthy and reason.startswith("saturated: cannot accept connections"), reason
    assert result["answer"] == "HTTP/1.1 101"
    assert result["after"] == [True, ""]
    assert done.stderr.count("cannot accept connections") == 1, done.stderr  # once a minute


def _answer(sock: socket.socket) -> bytes:
    """Everything the facilitator writes to ``sock`` until it closes it (bounded)."""
    sock.settimeout(5)
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    return data


def test_a_storm_over_max_unauthenticated_is_told_when_to_come_back(tmp_path: Path) -> None:
    # Over max_unauthenticated (too many handshakes at once, a reconnect storm) a connection gets
    # "503" with a Retry-After from the come-back schedule, written before its request is read;
    # over the per-address limit (one anonymous source) it is still only reset.
    fac = make_facilitator(tmp_path, max_unauthenticated=1, handshake_timeout=30.0)
    holder = _raw(fac.port, "127.0.0.2")
    refused: list[socket.socket] = []
    try:
        wait_until(lambda: fac.hub.gate.unauthenticated == 1)
        request = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"
        for split in (len(request), len(request) - 1, len(request) - 3):  # its end may come late
            sock = _raw(fac.port, "127.0.0.3")
            refused.append(sock)
            sock.sendall(request[:split])
            wait_until(lambda: fac.stats().refused_unauthenticated == len(refused))
            sock.sendall(request[split:])
            # Once the request's headers ended, the facilitator closes (FIN after the answer: no
            # reset to destroy it), without waiting for us to close first.
            answer = _answer(sock)
            head, _, _ = answer.partition(b"\r\n\r\n")
            lines = head.decode().split("\r\n")
            assert lines[0] == "HTTP/1.1 503 Service Unavailable", answer
            retry_after = [line.split(": ")[1] for line in lines if line.startswith("Retry-After: ")]
            assert len(retry_after) == 1 and 1 <= int(retry_after[0]) <= 120
        assert fac.stats().refused_unauthenticated == 3
        assert fac.hub.gate.open == 1  # the refused ones hold nothing once they closed
    finally:
        for sock in [holder, *refused]:
            sock.close()
        fac.stop()


@pytest.mark.timeout(60)
def test_a_worker_told_to_come_back_does_so_and_connects(tmp_path: Path) -> None:
    # The real worker (websocket-client) reads the 503's Retry-After, logs it at INFO (routine in
    # a storm), keeps its breaker closed, and connects on its return once there is room.
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{level} {message}")
    fac = make_facilitator(tmp_path, max_unauthenticated=1, handshake_timeout=30.0)
    holder = _raw(fac.port, "127.0.0.2")
    # A reset would open the breaker at once (threshold 1); a busy answer must not.
    config = worker_config(fac, tmp_path, "w1", durability="normal", breaker_failure_threshold=1)
    try:
        wait_until(lambda: fac.hub.gate.unauthenticated == 1)
        with start_worker(config, {}) as worker:
            wait_until(lambda: any("busy admitting other workers" in line for line in lines), timeout=10)
            holder.close()  # room again
            worker.wait_connected(10)
            assert worker.connection.breaker().get(timeout=5).state == "closed"
        busy = [line for line in lines if "busy admitting other workers" in line]
        assert busy[0].startswith("INFO ") and "come back in 1s" in busy[0], busy
    finally:
        holder.close()
        fac.stop()
        logger.remove(sink)


def test_busy_answers_are_bounded_so_a_flood_gets_resets_not_held_sockets(tmp_path: Path) -> None:
    # Each 503 holds its socket until the request's headers arrive (at most BUSY_LINGER), and
    # counts against the socket cap (max_workers + max_unauthenticated): beyond it a reset, so a
    # flooder that never sends cannot make the facilitator hold a descriptor per attempt.
    fac = make_facilitator(tmp_path, max_workers=1, max_unauthenticated=1, handshake_timeout=30.0)
    socks = [_raw(fac.port, "127.0.0.2")]  # admitted, silent: max_unauthenticated reached
    try:
        wait_until(lambda: fac.hub.gate.unauthenticated == 1)
        socks.append(_raw(fac.port, "127.0.0.3"))  # answered 503, never sends its request
        wait_until(lambda: fac.hub.gate.answering == 1)
        socks.append(_raw(fac.port, "127.0.0.4"))
        with contextlib.suppress(ConnectionResetError):  # no room to answer: reset unanswered
            assert _answer(socks[-1]) == b""
        wait_until(lambda: fac.hub.gate.answering == 0, timeout=5)  # the lingerer was cut
        socks.append(_raw(fac.port, "127.0.0.4"))
        assert _answer(socks[-1]).startswith(b"HTTP/1.1 503 ")
        assert (fac.stats().refused_unauthenticated, fac.stats().refused_connections) == (2, 1)
    finally:
        for sock in socks:
            sock.close()
        fac.stop()
