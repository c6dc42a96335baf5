"""`jobrelay cancel` against a real facilitator (its HTTP API) and real `jobrelay worker` processes:
a cancel lands wherever the job is (queued at the facilitator, in flight, queued at the worker,
running, on a worker that is offline or restarting), and the job ends `cancelled` exactly once in
both the facilitator's and the worker's ledger; a cancel after the ending changes nothing and
says so."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from jobrelay.common.http import HealthServer
from jobrelay.facilitator import Facilitator, FacilitatorConfig, start_facilitator
from jobrelay.facilitator.http_api import serve_facilitator
from jobrelay.storage import JobLedger, open_database
from jobrelay.testing.proxy import TcpProxy
from tests.protocol_harness import FACILITATOR_KEY_HEX
from tests.test_cli_helpers import Service, make_key, run_cli, services, wait_until, worker_args

pytestmark = pytest.mark.timeout(90)

LONG = {"seconds": 60, "steps": 60}  # runs until cancelled (the sample handler wakes at once)


class Setup(NamedTuple):
    fac: Facilitator
    http: HealthServer
    proxy: TcpProxy
    key: Path
    tmp: Path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    key, public = make_key(tmp_path, "w1")
    config = FacilitatorConfig(
        key=FACILITATOR_KEY_HEX, db_path=str(tmp_path / "f.db"), authorized_keys={"w1": public},
        durability="normal", stop_timeout=3.0,
    )  # fmt: skip
    with start_facilitator(config) as fac, TcpProxy(("127.0.0.1", fac.port)) as proxy:
        http = serve_facilitator(fac)
        try:
            yield Setup(fac, http, proxy, key, tmp_path)
        finally:
            http.stop()


def start(s: Setup, running: list[Service]) -> Service:
    (s.tmp / "w1.ready").unlink(missing_ok=True)
    args = worker_args(s.tmp, s.proxy.url, "w1", s.key, "--max-jobs", "1", "--drain-timeout", "0")
    worker = Service(args, s.tmp / "w1.log").start()
    running.append(worker)
    worker.ready(s.tmp / "w1.ready")
    wait_until(lambda: any(w.connected for w in s.fac.workers()), what="w1 connected")
    return worker


def stop(worker: Service) -> None:
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0, worker.text()[-3000:]


def cancel(s: Setup, job_id: str, *extra: str) -> tuple[int, str]:
    done = run_cli(["cancel", job_id, "--facilitator", s.http.url, "--reason", "not needed", *extra])
    return done.returncode, done.stdout + done.stderr


def status(s: Setup, job_id: str) -> str | None:
    view = s.fac.job(job_id)
    return None if view is None else view.status


def facilitator_history(s: Setup, job_id: str) -> list[str]:
    view = s.fac.job(job_id)
    assert view is not None
    return [e.status for e in view.history]


def worker_history(s: Setup, job_id: str) -> list[str]:
    db = open_database(s.tmp / "w1.db", readonly=True, check=False)
    try:
        return [e.status for e in JobLedger(db).history(job_id)]
    finally:
        db.close()


def assert_cancelled_once(s: Setup, job_id: str, *, reached_worker: bool = True) -> None:
    seen = facilitator_history(s, job_id)
    assert seen.count("cancelled") == 1 and seen[-1] == "cancelled", seen
    assert not {"completed", "failed", "rejected"} & set(seen), seen
    if reached_worker:
        assert worker_history(s, job_id) == seen  # both sides hold the same one ending
    view = s.fac.job(job_id)
    assert view is not None and view.record.detail == "not needed"


def test_cancel_of_a_job_queued_at_the_facilitator_ends_it_at_once(setup: Setup) -> None:
    s = setup
    job_id = s.fac.submit("sleep", LONG)  # no worker connected: queued here
    assert cancel(s, job_id) == (0, f"job {job_id} cancelled\n")
    assert facilitator_history(s, job_id) == ["cancelled"]
    with services() as running:
        worker = start(s, running)
        later = s.fac.submit("echo", "after")  # the worker is served; the cancelled job never reaches it
        wait_until(lambda: status(s, later) == "completed", what="a later job completed")
        stop(worker)
    assert worker_history(s, job_id) == []
    assert_cancelled_once(s, job_id, reached_worker=False)


def test_cancel_of_a_job_in_flight_is_delivered_after_it(setup: Setup) -> None:
    s = setup
    with services() as running:
        worker = start(s, running)
        s.proxy.stall()  # the request is sent but held on the way
        job_id = s.fac.submit("sleep", LONG, worker="w1")
        code, out = cancel(s, job_id)
        assert code == 0 and "cancel sent to its worker" in out, out
        assert status(s, job_id) is None  # the worker has not seen the job yet
        s.proxy.stall(False)
        wait_until(lambda: status(s, job_id) == "cancelled", what="cancelled")
        stop(worker)
    assert_cancelled_once(s, job_id)


def test_cancel_of_a_job_queued_at_the_worker_never_runs_it(setup: Setup) -> None:
    s = setup
    with services() as running:
        worker = start(s, running)
        blocker = s.fac.submit("sleep", LONG, worker="w1")
        wait_until(lambda: status(s, blocker) == "running", what="blocker running")
        job_id = s.fac.submit("sleep", LONG, worker="w1")  # --max-jobs 1: waits at the worker
        wait_until(lambda: status(s, job_id) == "accepted", what="accepted")
        code, out = cancel(s, job_id, "--wait", "20")
        assert code == 0, out
        assert facilitator_history(s, job_id) == ["accepted", "cancelled"]
        assert status(s, blocker) == "running"
        stop(worker)
    assert_cancelled_once(s, job_id)


def test_cancel_of_a_running_job_stops_it(setup: Setup) -> None:
    s = setup
    with services() as running:
        worker = start(s, running)
        job_id = s.fac.submit("sleep", LONG, worker="w1")
        wait_until(lambda: status(s, job_id) == "running", what="running")
        code, out = cancel(s, job_id, "--wait", "20")
        assert code == 0, out
        assert status(s, job_id) == "cancelled"
        stop(worker)
    assert_cancelled_once(s, job_id)


def test_cancel_reaches_a_worker_that_was_offline(setup: Setup) -> None:
    """The connection is down (the worker goes on running), then the worker process is killed
    and started again: each time the cancel waits, durably, and lands once."""
    s = setup
    with services() as running:
        worker = start(s, running)
        blocker = s.fac.submit("sleep", LONG, worker="w1")
        wait_until(lambda: status(s, blocker) == "running", what="running")
        first, second = (s.fac.submit("sleep", LONG, worker="w1") for _ in range(2))  # queued there
        wait_until(lambda: status(s, second) == "accepted", what="queued at the worker")
        s.proxy.block()
        s.proxy.cut()
        wait_until(lambda: not any(w.connected for w in s.fac.workers()), what="w1 offline")
        code, out = cancel(s, first)
        assert code == 0 and "cancel sent to its worker" in out, out
        s.proxy.block(False)
        wait_until(lambda: status(s, first) == "cancelled", what="cancelled after reconnecting")

        s.proxy.block()
        s.proxy.cut()
        worker.kill()  # kill -9 with a job still queued at the worker
        code, out = cancel(s, second)
        assert code == 0 and "cancel sent to its worker" in out, out
        s.proxy.block(False)
        worker = start(s, running)
        wait_until(lambda: status(s, second) == "cancelled", what="cancelled after the restart")
        stop(worker)
    assert_cancelled_once(s, first)
    assert_cancelled_once(s, second)
    assert status(s, blocker) == "failed"  # it was running at the kill: guarantee 3


def test_cancel_after_the_ending_is_a_no_op_that_says_so(setup: Setup) -> None:
    s = setup
    with services() as running:
        worker = start(s, running)
        job_id = s.fac.submit("echo", "done", worker="w1")
        wait_until(lambda: status(s, job_id) == "completed", what="completed")
        before = facilitator_history(s, job_id)
        assert cancel(s, job_id) == (0, f"job {job_id} had already ended (completed): nothing to cancel\n")
        stop(worker)
    assert facilitator_history(s, job_id) == before == worker_history(s, job_id)
    code, out = cancel(s, "no-such-job")
    assert code == 1 and "no job 'no-such-job'" in out, out


def test_a_cancel_taken_in_before_a_kill_9_still_ends_the_job_cancelled(setup: Setup) -> None:
    """The worker took the cancel in (durably) but its handler had not stopped yet when the
    worker was killed: after the restart the job ends `cancelled` with the cancel's reason
    (before: `failed: worker_restarted`, and a resumable handler would have run it again)."""
    s = setup
    stubborn = [
        "--handler",
        "stubborn=sh -c 'trap \"\" TERM; sleep 60'",
        "--handler-option",
        "stubborn:kill_after=60",
    ]
    with services() as running:
        (s.tmp / "w1.ready").unlink(missing_ok=True)
        args = worker_args(s.tmp, s.proxy.url, "w1", s.key, "--max-jobs", "1", *stubborn)
        worker = Service(args, s.tmp / "w1.log").start()
        running.append(worker)
        worker.ready(s.tmp / "w1.ready")
        job_id = s.fac.submit("stubborn", None, worker="w1")
        wait_until(lambda: status(s, job_id) == "running", what="running")
        code, out = cancel(s, job_id)
        assert code == 0, out
        wait_until(lambda: cancel_kept(s, job_id), what="the cancel taken in by the worker")
        assert status(s, job_id) == "running"  # the handler ignores SIGTERM for a minute
        worker.kill()
        worker = Service(args, s.tmp / "w1.log").start()
        running.append(worker)
        wait_until(lambda: status(s, job_id) == "cancelled", what="cancelled after the restart")
        stop(worker)
    assert_cancelled_once(s, job_id)


def cancel_kept(s: Setup, job_id: str) -> bool:
    db = open_database(s.tmp / "w1.db", readonly=True, check=False)
    try:
        record = JobLedger(db).get(job_id)
        return record is not None and record.cancel_reason is not None
    finally:
        db.close()
