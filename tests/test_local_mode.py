"""Local mode over real sockets through the fault proxy: the facilitator stays away for several
breaker recovery timeouts while jobs run; the worker enters local mode (healthy but local, stored,
counted), keeps running its jobs and keeping their statuses; on return it reconciles: a job
cancelled at the facilitator meanwhile ends `cancelled` exactly once on both sides, and every
other job's history is exactly what its handler reported, once."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobrelay.actors import JobContext, WorkerConfig, WorkerHealth, start_worker
from jobrelay.actors.local_mode import LocalMode
from jobrelay.common.http import HealthServer
from jobrelay.facilitator import Facilitator
from jobrelay.protocol.messages import JobRequest
from jobrelay.storage import JobLedger, LocalState, LocalStateStore, open_database
from jobrelay.testing.proxy import TcpProxy
from tests.facilitator_client import KEYS, wait_until
from tests.protocol_harness import FACILITATOR_PUBLIC
from tests.test_cli_helpers import run_cli

TERMINAL = ("completed", "failed", "rejected", "cancelled")


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


def steps(job: JobRequest, ctx: JobContext) -> None:
    n = int(job.payload["steps"])
    for i in range(n):
        ctx.wait_cancelled(float(job.payload["pause"]))
        ctx.check_cancelled()
        ctx.update(progress=(i + 1) / n)


def until_cancelled(job: JobRequest, ctx: JobContext) -> None:
    ctx.update(progress=0.5)
    if ctx.wait_cancelled(60):
        ctx.check_cancelled()


def terminal(history: list[str]) -> list[str]:
    return [s for s in history if s in TERMINAL]


class _Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def bind(self, **kw: object) -> _Log:
        return self

    def warning(self, text: str, *args: object) -> None:
        self.lines.append(text.format(*args))

    info = error = warning


def test_local_mode_rules_with_a_fake_clock(tmp_path: Path) -> None:
    log = _Log()
    local = LocalMode(10.0, log, None)
    local.open(str(tmp_path / "w.db"), "normal", now=100.0)
    local.check(105.0, breaker_open=False)
    assert not local.active
    local.check(110.0, breaker_open=False)  # no session for local_mode_after seconds
    assert local.status().active and local.status().since == 110.0 and local.status().activations == 1
    local.check(200.0, breaker_open=True)  # already local: not a second activation
    local.session_opened(201.0)
    assert local.status() == local.status().__class__(
        active=False, since=None, last_facilitator_contact=201.0, activations=1
    )
    local.session_closed(250.0, last_contact=249.5)
    local.check(250.1, breaker_open=True)  # the breaker opening enters it at once
    assert local.status().activations == 2
    local.close()
    again = LocalMode(10.0, log, None)  # a restart while local: starts local, count kept
    again.open(str(tmp_path / "w.db"), "normal", now=300.0)
    assert again.active and again.status().activations == 2
    assert again.status().last_facilitator_contact == 249.5
    again.close()
    assert any("entering local mode" in line for line in log.lines)


def test_activations_never_go_down_in_the_store(tmp_path: Path) -> None:
    with open_database(tmp_path / "w.db") as db:
        store = LocalStateStore(db)
        assert store.load() == LocalState()
        store.save(LocalState(True, 5.0, 4.0, 3))
        store.save(LocalState(False, None, None, 1))
        assert store.load() == LocalState(False, None, 4.0, 3)


@pytest.mark.timeout(120)
def test_long_outage_in_local_mode_then_reconcile(fac: Facilitator, tmp_path: Path) -> None:
    recovery = 0.5
    db = tmp_path / "w1.db"
    config = WorkerConfig(
        url="",  # set below, once the proxy has its port
        worker_id="w1",
        key=KEYS["w1"].private_bytes_raw().hex(),
        facilitator_key=FACILITATOR_PUBLIC,
        db_path=str(db),
        durability="normal",
        backoff_base=0.05,
        breaker_failure_threshold=3,
        breaker_recovery_timeout=recovery,
        local_mode_after=30.0,
        max_concurrent_jobs=8,
    )
    with TcpProxy(("127.0.0.1", fac.port)) as proxy:
        config = config.__class__(
            **{**{f: getattr(config, f) for f in config.__struct_fields__}, "url": proxy.url}
        )
        handlers = {"steps": steps, "until_cancelled": until_cancelled}
        with start_worker(config, handlers) as worker, HealthServer(WorkerHealth(worker)) as server:
            worker.wait_connected(10)
            jobs = {
                f"s{i}": fac.submit("steps", {"steps": 10, "pause": 0.3}, job_id=f"s{i}") for i in range(4)
            }
            cancelled = fac.submit("until_cancelled", job_id="c1")
            wait_until(lambda: all(len(fac.job(j).history) >= 2 for j in [*jobs, cancelled]), timeout=20)  # type: ignore[union-attr]

            proxy.refuse(True)
            proxy.cut(rst=True)
            away = time.monotonic()
            wait_until(lambda: worker.connection.local_mode().get(timeout=5).active, timeout=10)
            health = json.loads(urllib.request.urlopen(f"{server.url}/healthz", timeout=5).read())
            assert health["healthy"] and health["mode"] == "local", health
            assert health["local_mode"]["activations"] == 1
            assert fac.cancel(cancelled, "operator")  # a cancel queued while the worker is away
            # Away for many recovery timeouts while the jobs go on and finish locally.
            wait_until(lambda: time.monotonic() > away + 8 * recovery, timeout=10)
            ledger_db = open_database(db, readonly=True)
            try:
                ledger = JobLedger(ledger_db)
                wait_until(
                    lambda: all(terminal([h.status for h in ledger.history(j)]) for j in jobs), timeout=20
                )
            finally:
                ledger_db.close()
            assert worker.outbox.stats().get(timeout=5).depth_rows > 0  # statuses wait in the outbox
            status = run_cli(["status", "--db", str(db), "--http-port", str(server.port)])
            assert status.returncode == 0 and "mode        LOCAL" in status.stdout, status.stdout

            proxy.refuse(False)
            worker.wait_connected(4 * recovery + 5)
            wait_until(lambda: all(fac.job(j).status in TERMINAL for j in [*jobs, cancelled]), timeout=20)  # type: ignore[union-attr]
            local = worker.connection.local_mode().get(timeout=5)
            assert not local.active and local.activations == 1
            assert (
                local.last_facilitator_contact is not None
                and local.last_facilitator_contact > time.time() - 30
            )
            text = urllib.request.urlopen(f"{server.url}/metrics", timeout=5).read().decode()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            assert families["jobrelay_worker_local_mode_active"].samples[0].value == 0.0
            assert families["jobrelay_worker_local_mode_activations"].samples[0].value == 1.0
            assert families["jobrelay_worker_calls_in_flight"].samples[0].value == 0.0
            assert families["jobrelay_worker_breaker_state"].type == "gauge"
            wait_until(lambda: worker.outbox.stats().get(timeout=5).depth_rows == 0, timeout=10)

    want = ["accepted", "running"] + ["running"] * 10 + ["completed"]
    for job_id in jobs:
        history = [h.status for h in fac.job(job_id).history]  # type: ignore[union-attr]
        assert history == want, (job_id, history)
    fac_history = [h.status for h in fac.job(cancelled).history]  # type: ignore[union-attr]
    assert terminal(fac_history) == ["cancelled"], fac_history
    with open_database(db, readonly=True) as reopened:
        worker_history = [h.status for h in JobLedger(reopened).history(cancelled)]
        assert terminal(worker_history) == ["cancelled"], worker_history
        stored = LocalStateStore(reopened).load()
    assert not stored.active and stored.activations == 1
