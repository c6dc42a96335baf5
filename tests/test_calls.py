"""Request–response calls between a real worker and the reference facilitator over real sockets,
through the fault proxy: results and built-in methods both ways, documented rejection codes,
timeouts, calls lost on a cut (re-sent only when idempotent), the circuit breaker failing calls
fast, stale answers in local mode, and the call limits (wait or CallThrottled)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pykka
import pytest

from jobrelay.actors import WorkerConfig, start_worker
from jobrelay.actors.calls import CallResult
from jobrelay.actors.worker import Worker
from jobrelay.facilitator import Facilitator
from jobrelay.protocol.calls import (
    CallRejected,
    CallThrottled,
    CallTimeout,
    CircuitOpen,
    ConnectionLost,
    JobInfo,
    Specs,
)
from jobrelay.testing.proxy import TcpProxy
from tests.facilitator_client import KEYS, wait_until
from tests.protocol_harness import FACILITATOR_PUBLIC

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


@pytest.fixture
def proxy(fac: Facilitator) -> Iterator[TcpProxy]:
    with TcpProxy(("127.0.0.1", fac.port)) as p:
        yield p


def worker_config(tmp_path: Path, url: str, worker_id: str = "w1", **extra: Any) -> WorkerConfig:
    fields: dict[str, Any] = {
        "url": url,
        "worker_id": worker_id,
        "key": KEYS[worker_id].private_bytes_raw().hex(),
        "facilitator_key": FACILITATOR_PUBLIC,
        "db_path": str(tmp_path / f"{worker_id}.db"),
        "durability": "normal",
        "backoff_base": 0.05,
        "backoff_cap": 0.5,
    }
    fields.update(extra)
    return WorkerConfig(**fields)


@pytest.fixture
def worker(tmp_path: Path, proxy: TcpProxy) -> Iterator[Worker]:
    with start_worker(worker_config(tmp_path, proxy.url), {}) as w:
        w.wait_connected(10)
        yield w


class Gate:
    """A facilitator method that blocks until released, counting its invocations."""

    def __init__(self) -> None:
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def __call__(self, params: Any) -> Any:
        self.calls += 1
        n = self.calls
        self.entered.set()
        if n == 1:
            self.release.wait(10)
        return {"answered_by_invocation": n}


def sessions(worker: Worker) -> int:
    """Sessions the worker has opened so far."""
    return worker.snapshot().counter("state_connected")


def test_job_info_round_trip_and_typed_result(fac: Facilitator, worker: Worker) -> None:
    job_id = fac.submit("nothing", {"x": 1}, job_id="j-info")
    info = worker.call("job_info", {"job_id": job_id}, timeout=5).result(6)
    assert isinstance(info, JobInfo) and info.job_id == job_id and info.kind == "nothing"
    with pytest.raises(CallRejected) as caught:
        worker.call("job_info", {"job_id": "nope"}, timeout=5).result(6)
    assert caught.value.code == "not_found"


def test_rejections_carry_documented_codes_and_leave_the_session_alone(
    fac: Facilitator, worker: Worker
) -> None:
    with pytest.raises(CallRejected) as caught:
        worker.call("no.such.method", timeout=5).result(6)
    assert caught.value.code == "unknown_method"
    before = sessions(worker)
    assert before >= 1
    # Checked by the caller before sending (the method declares its params type).
    with pytest.raises(CallRejected) as caught:
        worker.call("job_info", {"job_id": 7}, timeout=5).result(6)
    assert caught.value.code == "invalid_params"

    class Add(msgspec.Struct):
        a: int
        b: int

    fac.calls.serve("add", lambda p: p.a + p.b, params=Add, result=int)
    # Undeclared at the worker: the facilitator checks the params and answers invalid_params.
    with pytest.raises(CallRejected) as caught:
        worker.call("add", {"a": "one", "b": 2}, timeout=5).result(6)
    assert caught.value.code == "invalid_params" and "add" in caught.value.message
    fac.calls.serve("broken", lambda p: 1 / 0)
    with pytest.raises(CallRejected) as caught:
        worker.call("broken", timeout=5).result(6)
    assert caught.value.code == "handler_failed"
    # A result that does not match what the worker declared: invalid_result, logged once.
    worker.caller.declare("add_as_text", result=str)
    fac.calls.serve("add_as_text", lambda p: 3)
    with pytest.raises(CallRejected) as caught:
        worker.call("add_as_text", timeout=5).result(6)
    assert caught.value.code == "invalid_result"
    assert worker.call("add", {"a": 1, "b": 2}, timeout=5).result(6) == 3
    assert sessions(worker) == before and worker.state() == "connected"


def test_a_slow_answer_is_a_timeout_and_a_late_response_is_dropped(fac: Facilitator, worker: Worker) -> None:
    gate = Gate()
    fac.calls.serve("slow", gate)
    started = time.monotonic()
    with pytest.raises(CallTimeout):
        worker.call("slow", timeout=0.3).result(5)
    assert 0.25 < time.monotonic() - started < 2.0
    gate.release.set()  # its response arrives after the deadline: dropped
    assert worker.call("job_info", {"job_id": "x"}, timeout=5).exception(6) is not None  # still works
    assert worker.state() == "connected"
    wait_until(lambda: worker.snapshot().counter("calls_timed_out") == 1, timeout=5)


def test_a_cut_loses_a_call_unless_its_method_is_idempotent(
    fac: Facilitator, worker: Worker, proxy: TcpProxy
) -> None:
    plain, idem = Gate(), Gate()
    fac.calls.serve("plain", plain)
    fac.calls.serve("idem", idem)
    worker.caller.declare("idem", idempotent=True)

    lost = worker.call("plain", timeout=10)
    assert plain.entered.wait(5)
    proxy.cut()
    with pytest.raises(ConnectionLost):
        lost.result(5)
    plain.release.set()
    worker.wait_connected(10)

    kept = worker.call("idem", timeout=10)
    assert idem.entered.wait(5)
    proxy.cut()  # in flight: re-sent (same correlation id) on the next session
    assert kept.result(10) == {"answered_by_invocation": 2}
    idem.release.set()
    assert plain.calls == 1 and idem.calls == 2


def test_facilitator_calls_the_worker(fac: Facilitator, worker: Worker) -> None:
    wait_until(lambda: fac.calls.reachable("w1"), timeout=5)  # the worker may open before we do
    specs = fac.calls.call("w1", "specs", timeout=5).result(6)
    assert isinstance(specs, Specs) and specs.specs["cpus"] >= 1
    worker.caller.serve("echo", lambda p: {"echo": p})
    assert fac.calls.call("w1", "echo", [1, "two"], timeout=5).result(6) == {"echo": [1, "two"]}
    with pytest.raises(CallRejected) as caught:
        fac.calls.call("w1", "nope", timeout=5).result(6)
    assert caught.value.code == "unknown_method"
    with pytest.raises(ConnectionLost):
        fac.calls.call("w2", "specs", timeout=5).result(6)  # not connected


def test_open_breaker_fails_calls_fast_and_local_mode_answers_stale(
    fac: Facilitator, tmp_path: Path, proxy: TcpProxy
) -> None:
    config = worker_config(tmp_path, proxy.url, breaker_failure_threshold=2, breaker_recovery_timeout=5.0)
    with start_worker(config, {}) as w:
        w.wait_connected(10)
        job_id = fac.submit("nothing", job_id="j-stale")
        fresh = w.call("job_info", {"job_id": job_id}, timeout=5, allow_stale=True).result(6)
        assert isinstance(fresh, CallResult) and not fresh.stale
        proxy.refuse(True)
        proxy.cut(rst=True)
        wait_until(lambda: w.connection.breaker().get(timeout=5).state == "open", timeout=10)
        started = time.monotonic()
        with pytest.raises(CircuitOpen):
            w.call("job_info", {"job_id": job_id}, timeout=5).result(6)
        assert time.monotonic() - started < 0.5
        stale = w.call("job_info", {"job_id": job_id}, timeout=5, allow_stale=True).result(6)
        assert stale.stale and stale.value == fresh.value and stale.received_at == fresh.received_at


def test_call_limits_wait_or_refuse(fac: Facilitator, tmp_path: Path, proxy: TcpProxy) -> None:
    gate = Gate()
    fac.calls.serve("hold", gate)
    config = worker_config(tmp_path, proxy.url, max_calls_in_flight=1)
    with start_worker(config, {}) as w:
        w.wait_connected(10)
        first = w.call("hold", timeout=10)
        assert gate.entered.wait(5)
        with pytest.raises(CallThrottled):
            w.call("hold", timeout=5, wait=False).result(1)
        with pytest.raises(CallTimeout):
            w.call("hold", timeout=0.2).result(2)  # waits for room, none comes in time
        gate.release.set()
        assert first.result(5) == {"answered_by_invocation": 1}
        assert w.call("hold", timeout=5).result(6) == {"answered_by_invocation": 2}
        wait_until(lambda: w.snapshot().counter("calls_throttled") == 1, timeout=5)

    config = worker_config(tmp_path, proxy.url, worker_id="w2", call_rate=2.0, call_burst=1)
    with start_worker(config, {}) as w2:
        w2.wait_connected(10)
        assert w2.call("job_info", {"job_id": "x"}, timeout=5).exception(6) is not None
        with pytest.raises(CallThrottled):
            w2.call("job_info", {"job_id": "x"}, timeout=5, wait=False).result(1)
        started = time.monotonic()
        w2.call("job_info", {"job_id": "x"}, timeout=5).exception(6)  # waits for its token
        assert time.monotonic() - started >= 0.3
