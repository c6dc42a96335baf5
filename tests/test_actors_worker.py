"""Worker actors over the in-memory transport: jobs, statuses, cuts, restarts, stop."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.actors import CommandHandler, JobContext, WorkerConfig, start_worker
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.errors import ConfigError
from jobrelay.protocol.messages import JobRequest, JobStatus, MachineSpecs
from jobrelay.testing import MemoryFacilitator
from tests.protocol_harness import FACILITATOR_KEY, FACILITATOR_KEY_HEX, FACILITATOR_PUBLIC

KEY = Ed25519PrivateKey.generate()
KEY_HEX = KEY.private_bytes_raw().hex()


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    leftovers = pykka.ActorRegistry.get_all()
    pykka.ActorRegistry.stop_all(timeout=5)
    assert not leftovers, f"actors left running: {leftovers}"


@pytest.fixture
def facilitator() -> Iterator[MemoryFacilitator]:
    fac = MemoryFacilitator({"w1": public_key_hex(KEY)}, key=FACILITATOR_KEY)
    yield fac
    fac.stop()


def config(tmp_path: Path, **overrides: object) -> WorkerConfig:
    fields: dict[str, object] = {
        "url": "ws://127.0.0.1:1",
        "worker_id": "w1",
        "key": KEY_HEX,
        "facilitator_key": FACILITATOR_PUBLIC,
        "db_path": str(tmp_path / "worker.db"),
        "backoff_base": 0.01,
        "backoff_cap": 0.05,
    }
    fields.update(overrides)
    return WorkerConfig(**fields)  # type: ignore[arg-type]


def echo(job: JobRequest, ctx: JobContext) -> str:
    for step in range(3):
        ctx.update(progress=(step + 1) / 3, detail=f"step {step + 1}")
    return "done"


def terminal(fac: MemoryFacilitator, job_id: str) -> list[JobStatus]:
    return [s.status for s in fac.statuses(job_id) if s.status.terminal]


def test_job_runs_and_every_status_arrives_once_in_order(
    tmp_path: Path, facilitator: MemoryFacilitator
) -> None:
    with start_worker(config(tmp_path), {"echo": echo}, transport_factory=facilitator.network) as worker:
        worker.wait_connected(5)
        facilitator.submit("j1", "echo")
        facilitator.wait_for(lambda: bool(terminal(facilitator, "j1")))
        statuses = [(s.status, s.progress) for s in facilitator.statuses("j1")]
        assert statuses == [
            (JobStatus.ACCEPTED, None),
            (JobStatus.RUNNING, None),
            (JobStatus.RUNNING, pytest.approx(1 / 3)),
            (JobStatus.RUNNING, pytest.approx(2 / 3)),
            (JobStatus.RUNNING, pytest.approx(1.0)),
            (JobStatus.COMPLETED, None),
        ]
        # The handler thread counts the job after its terminal status is durable: that count may
        # reach Metrics just after the facilitator saw the status.
        facilitator.wait_for(lambda: worker.snapshot().counter("jobs_completed") == 1)
        assert worker.snapshot().state == "connected"


def test_terminal_statuses_for_failure_unknown_kind_and_cancel(
    tmp_path: Path, facilitator: MemoryFacilitator
) -> None:
    started = threading.Event()

    def boom(job: JobRequest, ctx: JobContext) -> None:
        raise RuntimeError("disk on fire")

    def slow(job: JobRequest, ctx: JobContext) -> None:
        started.set()
        ctx.wait_cancelled(30)

    handlers = {"boom": boom, "slow": slow}
    with start_worker(config(tmp_path), handlers, transport_factory=facilitator.network) as worker:
        worker.wait_connected(5)
        facilitator.submit("fail", "boom")
        facilitator.submit("nope", "no-such-kind")
        facilitator.submit("long", "slow")
        assert started.wait(5)
        with facilitator.lock:
            from jobrelay.protocol.messages import JobCancel

            facilitator.store.publish(JobCancel(job_id="long", reason="user asked"))
            facilitator._send_pending()
        facilitator.wait_for(lambda: all(terminal(facilitator, j) for j in ("fail", "nope", "long")))
        assert terminal(facilitator, "fail") == [JobStatus.FAILED]
        assert "disk on fire" in facilitator.statuses("fail")[-1].detail
        assert terminal(facilitator, "nope") == [JobStatus.REJECTED]
        assert terminal(facilitator, "long") == [JobStatus.CANCELLED]
        assert facilitator.statuses("long")[-1].detail == "user asked"


def test_command_handler_exit_codes(tmp_path: Path, facilitator: MemoryFacilitator) -> None:
    ok = CommandHandler(
        ["python3", "-c", "import sys,json; json.load(sys.stdin); print(json.dumps({'progress': 0.5}))"]
    )
    bad = CommandHandler(["python3", "-c", "import sys; sys.stderr.write('kaput'); sys.exit(3)"])
    with start_worker(
        config(tmp_path), {"ok": ok, "bad": bad}, transport_factory=facilitator.network
    ) as worker:
        worker.wait_connected(5)
        facilitator.submit("c1", "ok")
        facilitator.submit("c2", "bad")
        facilitator.wait_for(
            lambda: bool(terminal(facilitator, "c1") and terminal(facilitator, "c2")), timeout=20
        )
        assert terminal(facilitator, "c1") == [JobStatus.COMPLETED]
        assert any(s.progress == 0.5 for s in facilitator.statuses("c1"))
        assert terminal(facilitator, "c2") == [JobStatus.FAILED]
        assert "exited with 3" in facilitator.statuses("c2")[-1].detail
        assert "kaput" in facilitator.statuses("c2")[-1].detail


def test_published_data_survives_cuts_in_order(tmp_path: Path, facilitator: MemoryFacilitator) -> None:
    with start_worker(config(tmp_path), transport_factory=facilitator.network) as worker:
        worker.wait_connected(5)
        futures = []
        for i in range(300):
            futures.append(worker.outbox.publish(MachineSpecs(specs={"i": i}, at=float(i))))
            if i in (50, 150, 250):
                facilitator.cut()
        for f in futures:
            f.get(timeout=10)
        facilitator.wait_for(lambda: len(facilitator.store.delivered) >= 300)
        assert [b.specs["i"] for b in facilitator.store.delivered] == list(range(300))
        assert facilitator.sessions >= 2


def test_restart_fails_interrupted_jobs_exactly_once(tmp_path: Path, facilitator: MemoryFacilitator) -> None:
    started = threading.Event()

    def hang(job: JobRequest, ctx: JobContext) -> None:
        started.set()
        threading.Event().wait(60)  # ignores cancellation, like a stuck handler

    worker = start_worker(config(tmp_path), {"hang": hang}, transport_factory=facilitator.network)
    worker.wait_connected(5)
    facilitator.submit("stuck", "hang")
    assert started.wait(5)
    worker.stop(timeout=1.0)
    assert not terminal(facilitator, "stuck")
    with start_worker(config(tmp_path), {"hang": hang}, transport_factory=facilitator.network) as again:
        again.wait_connected(5)
        facilitator.wait_for(lambda: bool(terminal(facilitator, "stuck")))
        assert terminal(facilitator, "stuck") == [JobStatus.FAILED]
        assert facilitator.statuses("stuck")[-1].detail == "worker_restarted"
        assert facilitator.statuses("stuck")[-1].retryable  # the worker failed, not the job


def test_stop_is_bounded_while_unreachable(tmp_path: Path, facilitator: MemoryFacilitator) -> None:
    import time

    facilitator.network.refuse.set()
    worker = start_worker(config(tmp_path), transport_factory=facilitator.network)
    worker.outbox.publish(MachineSpecs(specs={}, at=0.0)).get(timeout=5)
    t0 = time.monotonic()
    worker.stop(timeout=2.0)
    assert time.monotonic() - t0 < 2.5


def test_bad_config_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"WorkerConfig\.url"):
        start_worker(config(tmp_path, url="http://x"))
    with pytest.raises(ConfigError, match=r"WorkerConfig\.key"):
        start_worker(config(tmp_path, key="abc"))
    with pytest.raises(ConfigError, match=r"WorkerConfig\.max_concurrent_jobs"):
        start_worker(config(tmp_path, max_concurrent_jobs=0))


def test_database_restored_from_an_older_copy_starts_a_new_stream(
    tmp_path: Path, facilitator: MemoryFacilitator
) -> None:
    """Guarantee 6: the restored outbox is behind what the facilitator acknowledged, and the
    restored inbox is behind what it sent. Nothing may be mistaken for a duplicate or hang."""
    import shutil

    cfg = config(tmp_path)
    db = Path(cfg.db_path)
    with start_worker(cfg, {"echo": echo}, transport_factory=facilitator.network) as worker:
        worker.wait_connected(5)
    backup = tmp_path / "backup.db"
    shutil.copy(db, backup)  # stopped cleanly: the WAL was checkpointed into the file
    with start_worker(cfg, {"echo": echo}, transport_factory=facilitator.network) as worker:
        worker.wait_connected(5)
        for f in [worker.outbox.publish(MachineSpecs(specs={"n": i}, at=0.0)) for i in range(3)]:
            f.get(timeout=5)
        facilitator.submit("before", "echo")
        facilitator.wait_for(lambda: bool(terminal(facilitator, "before")))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, db)
    with start_worker(cfg, {"echo": echo}, transport_factory=facilitator.network) as worker:
        worker.wait_connected(10)
        worker.outbox.publish(MachineSpecs(specs={"n": "after"}, at=0.0)).get(timeout=5)
        facilitator.submit("after", "echo")
        facilitator.wait_for(lambda: bool(terminal(facilitator, "after")))
        facilitator.wait_for(
            lambda: MachineSpecs(specs={"n": "after"}, at=0.0) in facilitator.store.delivered
        )
        assert worker.snapshot().counter("epoch_restarts") == 1
    assert terminal(facilitator, "before") == [JobStatus.COMPLETED]  # not run again


def test_metrics_snapshot_covers_counters_gauges_and_histograms(
    tmp_path: Path, facilitator: MemoryFacilitator
) -> None:
    import time

    with start_worker(config(tmp_path), {"echo": echo}, transport_factory=facilitator.network) as worker:
        worker.wait_connected(5)
        facilitator.submit("m1", "echo")
        facilitator.wait_for(lambda: bool(terminal(facilitator, "m1")))
        # Counters and gauges are reported on the heartbeat's beat (4 per second): poll.
        deadline = time.monotonic() + 5
        while True:
            snap = worker.snapshot()
            if (
                snap.counter("frames_sent")
                and "outbox_depth" in snap.gauges
                and "ack_latency" in snap.histograms
            ):
                break
            assert time.monotonic() < deadline, snap
            time.sleep(0.05)
        assert snap.state == "connected"
        for name in ("frames_sent", "frames_received", "data_sent", "data_received", "published", "acked"):
            assert snap.counter(name) > 0, name
        for name in ("jobs_received", "jobs_started", "jobs_completed"):
            assert snap.counter(name) == 1, name
        assert {"outbox_depth", "outbox_bytes", "in_flight", "running_jobs"} <= set(snap.gauges)
        assert snap.histograms["job_duration"].count == 1
        ack = snap.histograms["ack_latency"]
        assert ack.count > 0 and list(ack.buckets) == sorted(ack.buckets) and ack.buckets[-1] <= ack.count
        duration = snap.histograms["job_duration"]
        assert duration.buckets[-1] == 1 and duration.bounds[-1] == 3600.0  # the echo took under an hour
        assert worker.heartbeat.beats().get(timeout=5) > 0


def test_cancel_terminates_a_command_handler(tmp_path: Path, facilitator: MemoryFacilitator) -> None:
    import sys

    from jobrelay.protocol.messages import JobCancel

    started = tmp_path / "started"
    script = f"import pathlib, time; pathlib.Path({str(started)!r}).touch(); time.sleep(60)"
    handler = CommandHandler([sys.executable, "-c", script], kill_after=1.0)
    with start_worker(config(tmp_path), {"long": handler}, transport_factory=facilitator.network) as worker:
        worker.wait_connected(5)
        facilitator.submit("cmd", "long")
        facilitator.wait_for(started.exists, timeout=20)
        with facilitator.lock:
            facilitator.store.publish(JobCancel(job_id="cmd", reason="operator"))
            facilitator._send_pending()
        facilitator.wait_for(lambda: bool(terminal(facilitator, "cmd")), timeout=20)
        assert terminal(facilitator, "cmd") == [JobStatus.CANCELLED]
        assert facilitator.statuses("cmd")[-1].detail == "operator"


def test_a_crashed_actor_stops_the_whole_worker(tmp_path: Path, facilitator: MemoryFacilitator) -> None:
    import time

    from jobrelay.actors.actor_messages import Observe

    worker = start_worker(config(tmp_path), transport_factory=facilitator.network)
    worker.wait_connected(5)
    # A fault inside an actor (here: a value the Metrics actor cannot add up).
    worker.metrics.actor_ref.tell(Observe("broken", "not a number"))  # type: ignore[arg-type]
    deadline = time.monotonic() + 10
    while not worker.stopped or pykka.ActorRegistry.get_all():
        assert time.monotonic() < deadline, f"half-alive worker: {pykka.ActorRegistry.get_all()}"
        time.sleep(0.02)


def test_stop_cancels_running_jobs_and_keeps_queued_ones_for_the_next_start(
    tmp_path: Path, facilitator: MemoryFacilitator
) -> None:
    started = threading.Event()

    def slow(job: JobRequest, ctx: JobContext) -> None:
        started.set()
        ctx.wait_cancelled(30)

    cfg = config(tmp_path, max_concurrent_jobs=1)
    with start_worker(cfg, {"slow": slow, "echo": echo}, transport_factory=facilitator.network) as worker:
        worker.wait_connected(5)
        facilitator.submit("running", "slow")
        assert started.wait(5)
        facilitator.submit("queued", "echo")
        facilitator.wait_for(
            lambda: [s.status for s in facilitator.statuses("queued")] == [JobStatus.ACCEPTED]
        )
    assert terminal(facilitator, "running") == [JobStatus.CANCELLED]
    assert not terminal(facilitator, "queued")
    with start_worker(cfg, {"slow": slow, "echo": echo}, transport_factory=facilitator.network) as worker:
        worker.wait_connected(5)
        facilitator.wait_for(lambda: bool(terminal(facilitator, "queued")))
    assert terminal(facilitator, "queued") == [JobStatus.COMPLETED]
    assert [s.status for s in facilitator.statuses("queued")].count(JobStatus.ACCEPTED) == 1


def test_one_dropped_session_counts_as_one_failure(tmp_path: Path, facilitator: MemoryFacilitator) -> None:
    import time

    with start_worker(config(tmp_path, max_attempts=2), transport_factory=facilitator.network) as worker:
        worker.wait_connected(5)
        sessions = facilitator.sessions
        worker.connection.drop("test").get(timeout=5)
        deadline = time.monotonic() + 10
        while facilitator.sessions == sessions or worker.state().value != "connected":
            assert worker.state().value != "closed", "gave up after a single failure"
            assert time.monotonic() < deadline, worker.state()
            time.sleep(0.01)


def test_a_resumable_handler_runs_again_after_a_restart(
    tmp_path: Path, facilitator: MemoryFacilitator
) -> None:
    from jobrelay.actors import resumable

    runs: list[str] = []
    first_run = threading.Event()

    @resumable
    def checkpointed(job: JobRequest, ctx: JobContext) -> str:
        runs.append(job.job_id)
        if len(runs) == 1:
            first_run.set()
            threading.Event().wait(60)  # stuck, then the worker goes away mid-job
        return "resumed"

    worker = start_worker(config(tmp_path), {"ckpt": checkpointed}, transport_factory=facilitator.network)
    worker.wait_connected(5)
    facilitator.submit("r1", "ckpt")
    assert first_run.wait(5)
    worker.stop(timeout=1.0)
    with start_worker(
        config(tmp_path), {"ckpt": checkpointed}, transport_factory=facilitator.network
    ) as again:
        again.wait_connected(5)
        facilitator.wait_for(lambda: bool(terminal(facilitator, "r1")))
    assert terminal(facilitator, "r1") == [JobStatus.COMPLETED]
    assert facilitator.statuses("r1")[-1].detail == "resumed"
    assert runs == ["r1", "r1"]


@pytest.mark.parametrize("value", [float("inf"), float("nan"), 0.0, -1.0])
def test_durations_must_be_finite_and_positive(tmp_path: Path, value: float) -> None:
    from jobrelay.facilitator import FacilitatorConfig

    with pytest.raises(ConfigError, match=r"WorkerConfig\.stop_timeout: must be a finite number"):
        start_worker(config(tmp_path, stop_timeout=value))
    with pytest.raises(ConfigError, match=r"FacilitatorConfig\.max_clock_skew"):
        FacilitatorConfig(key=FACILITATOR_KEY_HEX, db_path=str(tmp_path / "f.db"), max_clock_skew=value)
    with pytest.raises(ConfigError, match=r"FacilitatorConfig\.stop_timeout"):
        FacilitatorConfig(key=FACILITATOR_KEY_HEX, db_path=str(tmp_path / "f.db"), stop_timeout=value)
