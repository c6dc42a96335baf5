"""The Celery backend against a real Redis and real `celery worker` processes (prefork): statuses
relayed in order and once, progress from inside tasks, endings by raise, cancel, time limits, a
killed Celery worker process, and a kill -9 of the jobrelay worker with re-attach at its restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

pytest.importorskip("celery")

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.actors import Worker, WorkerConfig, start_worker
from jobrelay.actors.celery_backend import CeleryBackend, RelayedTask, celery_task, report
from jobrelay.actors.celery_backend.channel import CANCELLED_HOLDER, Channel, Event, client_for
from jobrelay.facilitator import Facilitator, FacilitatorConfig, start_facilitator
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.messages import JobStatus
from jobrelay.storage import Dispatches, JobLedger, open_database
from jobrelay.testing.celery_cluster import (
    RedisServer,
    redis_server,
    start_celery_worker,
    stop_celery_worker,
    wait_celery_ready,
)
from tests.protocol_harness import FACILITATOR_KEY_HEX, FACILITATOR_PUBLIC

KEY = Ed25519PrivateKey.generate()
KEY_HEX = KEY.private_bytes_raw().hex()
CHILD = Path(__file__).with_name("celery_worker_child.py")
TERMINAL = ("completed", "failed", "rejected", "cancelled")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """Redis and two Celery workers of two pool processes each, for the whole module."""
    logs = tmp_path_factory.mktemp("celery-cluster")
    with redis_server(logs) as server:
        root = Path(__file__).parent.parent
        workers = [
            start_celery_worker(server.url, f"c{i}", logs, app="tests.celery_app", pythonpath=root)
            for i in (1, 2)
        ]
        try:
            wait_celery_ready(server.url, workers)
            yield server
        finally:
            for w in workers:
                stop_celery_worker(w)


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


@pytest.fixture
def fac(tmp_path: Path) -> Iterator[Facilitator]:
    with start_facilitator(
        FacilitatorConfig(
            key=FACILITATOR_KEY_HEX,
            db_path=str(tmp_path / "fac.db"),
            authorized_keys={"w1": public_key_hex(KEY)},
            durability="normal",
        )
    ) as facilitator:
        yield facilitator


def worker_config(fac: Facilitator, db: Path) -> WorkerConfig:
    return WorkerConfig(
        facilitator_key=FACILITATOR_PUBLIC,
        url=fac.url,
        worker_id="w1",
        key=KEY_HEX,
        db_path=str(db),
        max_concurrent_jobs=16,
        backoff_base=0.05,
        backoff_cap=0.5,
    )


def start(fac: Facilitator, tmp_path: Path, cluster: RedisServer, **kinds: str) -> Worker:
    handlers: dict[str, Any] = {kind: celery_task(name, broker=cluster.url) for kind, name in kinds.items()}
    worker = start_worker(worker_config(fac, tmp_path / "w.db"), handlers)
    worker.wait_connected(10)
    return worker


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def history(fac: Facilitator, job_id: str) -> list[tuple[str, float | None, str]]:
    view = fac.job(job_id)
    return [] if view is None else [(h.status, h.progress, h.detail) for h in view.history]


def ended(fac: Facilitator, job_id: str) -> bool:
    return any(status in TERMINAL for status, _, _ in history(fac, job_id))


def wait_ended(fac: Facilitator, job_id: str, timeout: float = 30) -> list[tuple[str, float | None, str]]:
    wait_until(lambda: ended(fac, job_id), timeout, f"the end of job {job_id}")
    return history(fac, job_id)


def steps_history(job_id: str, n: int) -> list[tuple[str, float | None, str]]:
    """What a job of tests.steps reports, in order, each once."""
    return [
        ("accepted", None, ""),
        ("running", None, f"dispatched to celery task {job_id}"),
        ("running", None, "STARTED"),
        *[("running", pytest.approx((i + 1) / n), f"step {i + 1}/{n}") for i in range(n)],
        ("completed", None, f"{n} steps done"),
    ]


def normalised(rows: list[tuple[str, float | None, str]]) -> list[tuple[str, float | None, str]]:
    """The task's start names its host and pid: kept as STARTED."""
    return [(s, p, "STARTED" if " started on " in d else d) for s, p, d in rows]


def open_gate(cluster: RedisServer, gate: str, steps: int = 1) -> None:
    cluster.client().rpush(gate, *["go"] * steps)


def holder_pid(cluster: RedisServer, task_id: str) -> int:
    holder = Channel(client_for(cluster.url), task_id).holder()
    assert holder is not None and " pid " in holder, holder
    return int(holder.rsplit(" pid ", 1)[1])


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.timeout(60)
def test_jobs_fan_out_and_every_status_is_relayed_in_order_once(
    fac: Facilitator, tmp_path: Path, cluster: RedisServer
) -> None:
    with start(fac, tmp_path, cluster, steps="tests.steps") as worker:
        ids = fac.submit_many([("steps", {"steps": 3}, f"fan-{i}") for i in range(8)])
        for job_id in ids:
            assert normalised(wait_ended(fac, job_id)) == steps_history(job_id, 3)
        snap = worker.snapshot()
        assert snap.counter("celery_dispatched") == 8
        assert snap.counter("celery_relayed") == 8 * 4  # its start and 3 progress updates each
        assert snap.counter("jobs_completed") == 8
    hosts = {
        d.split(" started on ")[1].split(" pid ")[0]
        for j in ids
        for _, _, d in history(fac, j)
        if " on " in d
    }
    assert len(hosts) == 2, hosts  # both Celery workers took jobs
    with open_database(tmp_path / "w.db") as db:
        dispatch = Dispatches(db).get(ids[0])
    assert dispatch is not None and dispatch.task_id == ids[0] and dispatch.position != "0-0"


@pytest.mark.timeout(60)
def test_progress_reported_inside_a_task_reaches_the_facilitator_while_it_runs(
    fac: Facilitator, tmp_path: Path, cluster: RedisServer
) -> None:
    with start(fac, tmp_path, cluster, steps="tests.steps"):
        job_id = fac.submit("steps", {"steps": 3, "gate": "gate-progress"}, job_id="progress-1")
        for i in range(3):
            open_gate(cluster, "gate-progress")
            wait_until(
                lambda i=i: any(p == pytest.approx((i + 1) / 3) for _, p, _ in history(fac, job_id)),
                20,
                f"step {i + 1} at the facilitator",
            )
            assert not ended(fac, job_id) or i == 2
        assert normalised(wait_ended(fac, job_id)) == steps_history(job_id, 3)


@pytest.mark.timeout(60)
def test_a_task_that_raises_fails_its_job_with_the_error(
    fac: Facilitator, tmp_path: Path, cluster: RedisServer
) -> None:
    with start(fac, tmp_path, cluster, fail="tests.fail"):
        job_id = fac.submit("fail", {"x": 1}, job_id="raises-1")
        rows = wait_ended(fac, job_id)
    assert rows[-1] == ("failed", None, "ValueError: bad input {'x': 1}")
    assert [s for s, _, _ in rows].count("failed") == 1


@pytest.mark.timeout(60)
def test_cancel_revokes_the_running_task_and_ends_the_job_cancelled(
    fac: Facilitator, tmp_path: Path, cluster: RedisServer
) -> None:
    with start(fac, tmp_path, cluster, stubborn="tests.stubborn"):
        job_id = fac.submit("stubborn", {}, job_id="cancel-1")
        wait_until(lambda: any(p == 0.1 for _, p, _ in history(fac, job_id)), 20, "the task to run")
        pid = holder_pid(cluster, job_id)
        assert fac.cancel(job_id, "changed my mind")
        rows = wait_ended(fac, job_id)
        assert rows[-1][0] == "cancelled" and [s for s, _, _ in rows].count("cancelled") == 1
        wait_until(lambda: pid_gone(pid), 10, "revoke(terminate=True) to end the task's process")
        assert CeleryBackend.shared(cluster.url).task_state(job_id)[0] == "REVOKED"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("ignore_soft", [False, True], ids=["soft", "hard"])
def test_time_limits_become_celery_soft_and_hard_limits(
    fac: Facilitator, tmp_path: Path, cluster: RedisServer, ignore_soft: bool
) -> None:
    with start(fac, tmp_path, cluster, stubborn="tests.stubborn"):
        job_id = fac.submit(
            "stubborn",
            {"ignore_soft": ignore_soft},
            job_id=f"limit-{ignore_soft}",
            soft_time_limit=1,
            time_limit=2,
        )
        rows = wait_ended(fac, job_id, 30)
    assert rows[-1] == ("failed", None, "time_limit"), rows
    state, result = CeleryBackend.shared(cluster.url).task_state(job_id)
    assert state == "FAILURE"
    assert type(result).__name__ == ("TimeLimitExceeded" if ignore_soft else "SoftTimeLimitExceeded")


@pytest.mark.timeout(60)
def test_a_killed_celery_worker_process_fails_the_job_once_and_its_retry_runs(
    fac: Facilitator, tmp_path: Path, cluster: RedisServer
) -> None:
    with start(fac, tmp_path, cluster, steps="tests.steps"):
        lost = fac.submit("steps", {"steps": 1, "gate": "gate-lost"}, job_id="lost-1")
        retried = fac.submit("steps", {"steps": 1, "gate": "gate-retried"}, job_id="lost-2", retries=1)
        for job_id in (lost, retried):
            wait_until(lambda j=job_id: any(" started on " in d for _, _, d in history(fac, j)), 20, "start")
            os.kill(holder_pid(cluster, job_id), signal.SIGKILL)
        rows = wait_ended(fac, lost)
        assert rows[-1] == ("failed", None, "worker_lost")
        assert [s for s, _, _ in rows if s in TERMINAL] == ["failed"]
        # The retry is attempt 2: a task of its own, which runs once the gate opens.
        wait_until(
            lambda: any(" started on " in d and "~2 " in d for _, _, d in history(fac, retried)), 20, "retry"
        )
        open_gate(cluster, "gate-retried")
        rows = wait_ended(fac, retried)
    statuses = [s for s, _, _ in rows]
    assert statuses[-1] == "completed" and statuses.count("completed") == 1, rows
    # the facilitator notes the retry it schedules beside the worker's detail
    assert [(s, d) for s, _, d in rows if s in ("failed", "retrying")] == [
        ("retrying", "attempt 1 failed: worker_lost; attempt 2 of 2 in 0 s")
    ], rows


@pytest.mark.timeout(60)
def test_a_second_run_of_the_same_task_is_refused(cluster: RedisServer) -> None:
    import celery

    app = celery.Celery("dup", broker=cluster.url, backend=cluster.url)
    runs: list[str] = []

    @app.task(base=RelayedTask, name="tests.once")  # type: ignore[misc]
    def once(payload: Any) -> str:
        runs.append("ran")
        report(progress=0.5, detail="half")
        return "done"

    first = once.apply(args=({},), task_id="dup-1")
    second = once.apply(args=({},), task_id="dup-1")
    assert first.state == "SUCCESS" and second.state == "IGNORED"
    assert runs == ["ran"]
    events = Channel(client_for(cluster.url), "dup-1").read("0-0", block_ms=None)
    assert [f["s"] for _, f in events] == ["running", "running", "completed"]


def spawn_child(
    fac: Facilitator, db: Path, redis_url: str, log: Path, kind: str = "tests.steps"
) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(CHILD), fac.url, "w1", KEY_HEX, str(db), FACILITATOR_PUBLIC, redis_url, kind],
        stdout=subprocess.PIPE,
        stderr=log.open("a"),
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )


def wait_ready(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    import selectors

    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise AssertionError("worker child did not become ready")
    assert proc.stdout.readline().strip() == "ready"


@pytest.mark.timeout(90)
def test_jobrelay_worker_kill9_reattaches_and_relays_what_happened_meanwhile_once(
    fac: Facilitator, tmp_path: Path, cluster: RedisServer
) -> None:
    db, log = tmp_path / "w.db", tmp_path / "child.log"
    proc = spawn_child(fac, db, cluster.url, log)
    try:
        wait_ready(proc)
        ids = fac.submit_many([("steps", {"steps": 3, "gate": f"gate-k{i}"}, f"kill-{i}") for i in range(3)])
        for i, job_id in enumerate(ids):
            open_gate(cluster, f"gate-k{i}")
            wait_until(lambda j=job_id: any(p is not None for _, p, _ in history(fac, j)), 20, "step 1")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # Meanwhile the tasks go on: job 0 completes, job 1 takes a step, job 2 waits.
        open_gate(cluster, "gate-k0", 2)
        open_gate(cluster, "gate-k1", 1)
        backend = CeleryBackend.shared(cluster.url)
        wait_until(lambda: backend.task_state(ids[0])[0] == "SUCCESS", 20, "job 0's task to finish")
        wait_until(
            lambda: len(Channel(client_for(cluster.url), ids[1]).read("0-0", block_ms=None)) == 3, 20, ""
        )
        proc = spawn_child(fac, db, cluster.url, log)
        wait_ready(proc)
        assert normalised(wait_ended(fac, ids[0])) == steps_history(ids[0], 3)
        wait_until(
            lambda: any(p == pytest.approx(2 / 3) for _, p, _ in history(fac, ids[1])), 20, "job 1 step 2"
        )
        open_gate(cluster, "gate-k1", 1)
        open_gate(cluster, "gate-k2", 2)
        for job_id in ids[1:]:
            assert normalised(wait_ended(fac, job_id)) == steps_history(job_id, 3)
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    assert log.read_text().count("re-attached to celery task") == 3


@pytest.mark.timeout(60)
def test_a_stopping_worker_detaches_from_its_tasks_and_the_next_start_finishes_them(
    fac: Facilitator, tmp_path: Path, cluster: RedisServer
) -> None:
    worker = start(fac, tmp_path, cluster, steps="tests.steps")
    job_id = fac.submit("steps", {"steps": 2, "gate": "gate-detach"}, job_id="detach-1")
    open_gate(cluster, "gate-detach")
    wait_until(lambda: any(p == 0.5 for _, p, _ in history(fac, job_id)), 20, "step 1")
    worker.stop(10)  # drains: the Celery task is not revoked, the job not ended
    assert not ended(fac, job_id)
    open_gate(cluster, "gate-detach")  # the task finishes while no jobrelay worker runs
    backend = CeleryBackend.shared(cluster.url)
    wait_until(lambda: backend.task_state(job_id)[0] == "SUCCESS", 20, "the task to finish")
    with start(fac, tmp_path, cluster, steps="tests.steps") as again:
        assert normalised(wait_ended(fac, job_id)) == steps_history(job_id, 2)
        assert again.snapshot().counter("celery_reattached") == 1


@pytest.mark.timeout(60)
def test_a_cancel_before_the_task_starts_takes_its_claim_so_no_run_ever_starts(
    fac: Facilitator, tmp_path: Path, cluster: RedisServer
) -> None:
    # No Celery worker consumes the queue "parked": the task waits there.
    handler = celery_task("tests.steps", broker=cluster.url, queue="parked")
    with start_worker(worker_config(fac, tmp_path / "w.db"), {"steps": handler}) as worker:
        worker.wait_connected(10)
        job_id = fac.submit("steps", {"steps": 1}, job_id="parked-1")
        wait_until(lambda: any("dispatched" in d for _, _, d in history(fac, job_id)), 20, "the dispatch")
        assert fac.cancel(job_id, "not needed")
        rows = wait_ended(fac, job_id)
    assert rows[-1] == ("cancelled", None, "not needed")
    channel = Channel(client_for(cluster.url), job_id)
    assert channel.holder() == CANCELLED_HOLDER
    assert not channel.claim("a late run", 1.0)  # what a run would try first: refused


@pytest.mark.timeout(60)
def test_only_a_relayed_tasks_own_events_end_its_job_not_its_celery_state(
    fac: Facilitator, tmp_path: Path, cluster: RedisServer
) -> None:
    # A run holds the claim and Celery already says SUCCESS, but its events are not in the stream
    # yet (e.g. a read failed): the job must wait for them, then relay them in order.
    channel = Channel(client_for(cluster.url), "early-1")
    assert channel.claim("a run elsewhere pid 1", 60.0)
    backend = CeleryBackend.shared(cluster.url)
    backend.app.backend.mark_as_done("early-1", "done")
    handler = celery_task("tests.steps", broker=cluster.url, queue="parked")  # no Celery worker runs it
    with start_worker(worker_config(fac, tmp_path / "w.db"), {"steps": handler}) as worker:
        worker.wait_connected(10)
        job_id = fac.submit("steps", {}, job_id="early-1")
        deadline = time.monotonic() + 1.5  # three of the relay's checks of the Celery state
        while time.monotonic() < deadline:
            assert not ended(fac, job_id), history(fac, job_id)
            time.sleep(0.05)
        channel.append(Event(JobStatus.RUNNING, 0.5, "half"))
        channel.append(Event(JobStatus.COMPLETED, None, "all done"))
        rows = wait_ended(fac, job_id)
    assert rows == [
        ("accepted", None, ""),
        ("running", None, "dispatched to celery task early-1"),
        ("running", 0.5, "half"),
        ("completed", None, "all done"),
    ]


@pytest.mark.timeout(90)
def test_a_cancel_taken_in_before_a_kill9_revokes_the_task_at_the_restart(
    fac: Facilitator, tmp_path: Path, cluster: RedisServer
) -> None:
    db, log = tmp_path / "w.db", tmp_path / "child.log"
    proc = spawn_child(fac, db, cluster.url, log, kind="tests.stubborn")
    try:
        wait_ready(proc)
        job_id = fac.submit("steps", {}, job_id="cancel-kill-1")
        wait_until(lambda: any(p == 0.1 for _, p, _ in history(fac, job_id)), 20, "the task to run")
        pid = holder_pid(cluster, job_id)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # What a kill right after the cancel's intake (before the relay revoked the task) leaves.
        with open_database(db) as database:
            assert JobLedger(database).request_cancel(job_id, "stop it")
        proc = spawn_child(fac, db, cluster.url, log, kind="tests.stubborn")
        wait_ready(proc)
        rows = wait_ended(fac, job_id)
        assert rows[-1] == ("cancelled", None, "stop it")
        wait_until(lambda: pid_gone(pid), 10, "the revoke to end the task's process")
        backend = CeleryBackend.shared(cluster.url)
        wait_until(lambda: backend.task_state(job_id)[0] == "REVOKED", 10, "the task to be revoked")
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
