"""Worker and reference facilitator over real sockets on loopback: every status update arrives
exactly once and in order across cuts, facilitator restarts and kill -9 of the worker."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import msgspec
import pykka
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.actors import JobContext, WorkerConfig, start_worker
from jobrelay.facilitator import Facilitator, FacilitatorConfig, start_facilitator
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.messages import JobRequest, WorkerEvent
from jobrelay.testing.proxy import TcpProxy
from tests.protocol_harness import FACILITATOR_KEY_HEX, FACILITATOR_PUBLIC

KEY = Ed25519PrivateKey.generate()
KEY_HEX = KEY.private_bytes_raw().hex()
CHILD = Path(__file__).with_name("e2e_worker_child.py")


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


def start_fac(db: Path, port: int = 0) -> Facilitator:
    return start_facilitator(
        FacilitatorConfig(
            key=FACILITATOR_KEY_HEX,
            db_path=str(db),
            port=port,
            authorized_keys={"w1": public_key_hex(KEY)},
            durability="normal",
        )
    )


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def expected_history(steps: int) -> list[tuple[str, float | None]]:
    return (
        [("accepted", None), ("running", None)]
        + [("running", pytest.approx((i + 1) / steps)) for i in range(steps)]
        + [("completed", None)]
    )


def check_histories(fac: Facilitator, job_ids: list[str], steps: dict[str, int]) -> dict[str, int]:
    """Every job: exactly one terminal status; a completed job's history is exactly the handler's
    sequence; an interrupted one is a prefix of it followed by failed: worker_restarted."""
    outcome = {"completed": 0, "worker_restarted": 0}
    for job_id in job_ids:
        view = fac.job(job_id)
        assert view is not None, job_id
        history = [(h.status, h.progress) for h in view.history]
        terminal = [h for h in view.history if h.status in ("completed", "failed", "rejected", "cancelled")]
        assert len(terminal) == 1, f"{job_id}: {history}"
        want = expected_history(steps[job_id])
        if terminal[0].status == "completed":
            assert history == want, f"{job_id}: {history}"
            outcome["completed"] += 1
        else:
            assert terminal[0].status == "failed" and terminal[0].detail == "worker_restarted", history
            assert history[:-1] == want[: len(history) - 1], f"{job_id}: {history}"
            outcome["worker_restarted"] += 1
    return outcome


def all_done(fac: Facilitator, job_ids: list[str]) -> bool:
    return sum(1 for r in fac.jobs(limit=len(job_ids) + 10) if r.status in ("completed", "failed")) >= len(
        job_ids
    )


def started(fac: Facilitator, job_ids: list[str], at_least: int) -> bool:
    """Whether the worker has reported a status of ``at_least`` of ``job_ids``."""
    wanted = set(job_ids)
    return sum(1 for r in fac.jobs(limit=1000) if r.job_id in wanted and r.status is not None) >= at_least


def steps_handler(job: JobRequest, ctx: JobContext) -> None:
    n = int(job.payload["steps"])
    for i in range(n):
        ctx.update(progress=(i + 1) / n)


@pytest.mark.timeout(120)
def test_thousand_jobs_every_update_once_in_order(tmp_path: Path) -> None:
    with start_fac(tmp_path / "fac.db") as fac:
        config = WorkerConfig(
            facilitator_key=FACILITATOR_PUBLIC,
            url=fac.url,
            worker_id="w1",
            key=KEY_HEX,
            db_path=str(tmp_path / "w.db"),
            max_concurrent_jobs=16,
        )
        with start_worker(config, {"steps": steps_handler}) as worker:
            worker.wait_connected(10)
            rng = random.Random(7)
            steps = {f"job-{i}": rng.randint(1, 3) for i in range(1000)}  # 4-6 status updates each
            ids = fac.submit_many([("steps", {"steps": n}, job_id) for job_id, n in steps.items()])
            wait_until(lambda: all_done(fac, ids), 100, "1000 jobs")
            assert check_histories(fac, ids, steps) == {"completed": 1000, "worker_restarted": 0}
            snap = worker.snapshot()
            assert snap.counter("jobs_completed") == 1000


@pytest.mark.timeout(60)
@pytest.mark.parametrize("formats", [("json",), ("msgpack",)])
def test_either_format_carries_fresh_and_stored_messages(tmp_path: Path, formats: tuple[str, ...]) -> None:
    # A JSON session sends fresh messages as the bytes the outbox stored, a msgpack one encodes
    # their bodies; a replay sends stored rows in both. Each arrives once, in order.
    config = WorkerConfig(
        facilitator_key=FACILITATOR_PUBLIC,
        url="ws://127.0.0.1:9",  # nothing there yet: the first events are stored, not sent
        worker_id="w1",
        key=KEY_HEX,
        db_path=str(tmp_path / "w.db"),
        formats=formats,  # type: ignore[arg-type]
    )
    with start_worker(config, {"steps": steps_handler}) as worker:
        stored = worker.outbox.publish_many([WorkerEvent(event="stored", at=float(i)) for i in range(50)])
        stored.get(timeout=10)
    with start_fac(tmp_path / "fac.db") as fac:
        config = msgspec.structs.replace(config, url=fac.url)
        with start_worker(config, {"steps": steps_handler}) as worker:
            worker.wait_connected(10)
            ids = fac.submit_many([("steps", {"steps": 2}, f"job-{i}") for i in range(100)])
            worker.outbox.publish_many([WorkerEvent(event="fresh", at=float(i)) for i in range(50)])
            wait_until(lambda: all_done(fac, ids), 40, "100 jobs")
            assert check_histories(fac, ids, dict.fromkeys(ids, 2)) == {
                "completed": 100,
                "worker_restarted": 0,
            }
            wait_until(lambda: fac.stats().data_accepted >= 50 + 50 + 100 * 5, 10, "every message")
            view = next(v for v in fac.workers() if v.worker_id == "w1")
            assert view.in_hwm == fac.stats().data_accepted and fac.stats().duplicates_dropped == 0


def spawn_worker(url: str, db: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), url, "w1", KEY_HEX, str(db), FACILITATOR_PUBLIC],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    return proc


def wait_ready(proc: subprocess.Popen[str], timeout: float = 30) -> None:
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), True)
    import selectors

    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    if not sel.select(timeout):
        raise AssertionError("worker child did not become ready")
    assert proc.stdout.readline().strip() == "ready"


@pytest.mark.timeout(180)
def test_cuts_facilitator_restart_and_worker_kill9_lose_nothing(tmp_path: Path) -> None:
    fac_db, worker_db = tmp_path / "fac.db", tmp_path / "w.db"
    fac = start_fac(fac_db)
    proxy = TcpProxy(("127.0.0.1", fac.port)).start()
    proc = spawn_worker(proxy.url, worker_db)
    try:
        wait_ready(proc)
        rng = random.Random(11)
        steps = {f"job-{i}": rng.randint(1, 3) for i in range(400)}
        ids = list(steps)
        for chunk in range(4):
            part = ids[chunk * 100 : (chunk + 1) * 100]
            fac.submit_many([("steps", {"steps": steps[j], "pause": 0.01}, j) for j in part])
            # Chaos between chunks: cut, restart the facilitator, cut, kill -9 the worker, each
            # once some of the chunk's jobs have started (how many: a random point).
            some = rng.randint(1, 30)
            wait_until(partial(started, fac, part, some), 30, f"{some} jobs of chunk {chunk} started")
            if chunk == 0:
                proxy.cut()
            elif chunk == 1:
                fac.stop()
                fac = start_fac(fac_db)
                proxy.target = ("127.0.0.1", fac.port)
                proxy.cut()
            elif chunk == 2:
                proc.send_signal(signal.SIGKILL)
                proc.wait(10)
                proc = spawn_worker(proxy.url, worker_db)
                wait_ready(proc)
            else:
                proxy.cut()
        wait_until(lambda: all_done(fac, ids), 120, "400 jobs through the chaos")
        outcome = check_histories(fac, ids, steps)
        assert outcome["completed"] + outcome["worker_restarted"] == 400
        assert outcome["completed"] >= 300
        assert proxy.connections >= 4
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        proxy.stop()
        fac.stop()


@pytest.mark.timeout(60)
def test_stop_is_bounded_with_running_handlers_and_no_facilitator(tmp_path: Path) -> None:
    with start_fac(tmp_path / "fac.db") as fac:
        proxy = TcpProxy(("127.0.0.1", fac.port)).start()
        config = WorkerConfig(
            facilitator_key=FACILITATOR_PUBLIC,
            url=proxy.url,
            worker_id="w1",
            key=KEY_HEX,
            db_path=str(tmp_path / "w.db"),
        )

        def stubborn(job: JobRequest, ctx: JobContext) -> None:
            ctx.update(progress=0.0)
            time.sleep(30)  # ignores cancellation on purpose: stop() must not wait for it

        worker = start_worker(config, {"stubborn": stubborn})
        worker.wait_connected(10)
        fac.submit("stubborn", None, job_id="s1")
        wait_until(lambda: bool(worker.router.running().get(timeout=5)), 10, "handler start")
        proxy.block()
        proxy.cut()
        t0 = time.monotonic()
        worker.stop(timeout=2.0)
        assert time.monotonic() - t0 < 3.0
        proxy.stop()


@pytest.mark.timeout(60)
def test_facilitator_restored_from_an_older_copy_keeps_serving_the_worker(tmp_path: Path) -> None:
    """Guarantee 6 on the facilitator side: its restored outbox is behind what the worker
    accepted; the stream restarts with a new epoch instead of refusing the worker forever."""
    import shutil

    fac_db = tmp_path / "fac.db"
    fac = start_fac(fac_db)
    proxy = TcpProxy(("127.0.0.1", fac.port)).start()
    config = WorkerConfig(
        facilitator_key=FACILITATOR_PUBLIC,
        url=proxy.url,
        worker_id="w1",
        key=KEY_HEX,
        db_path=str(tmp_path / "w.db"),
    )
    try:
        with start_worker(config, {"steps": steps_handler}) as worker:
            worker.wait_connected(10)
            fac.stop()
            shutil.copy(fac_db, tmp_path / "backup.db")  # stopped cleanly: WAL checkpointed
            fac = start_fac(fac_db)
            proxy.target = ("127.0.0.1", fac.port)
            proxy.cut()
            fac.submit("steps", {"steps": 1}, job_id="before")
            wait_until(lambda: all_done(fac, ["before"]), 20, "job before the restore")
            fac.stop()
            for suffix in ("", "-wal", "-shm"):
                Path(f"{fac_db}{suffix}").unlink(missing_ok=True)
            shutil.copy(tmp_path / "backup.db", fac_db)
            fac = start_fac(fac_db)
            proxy.target = ("127.0.0.1", fac.port)
            proxy.cut()
            fac.submit("steps", {"steps": 1}, job_id="after")
            wait_until(lambda: all_done(fac, ["after"]), 20, "job after the restore")
            assert check_histories(fac, ["after"], {"after": 1}) == {"completed": 1, "worker_restarted": 0}
            assert fac.stats().epoch_restarts == 1
    finally:
        proxy.stop()
        fac.stop()


@pytest.mark.timeout(60)
def test_stalled_network_is_detected_and_nothing_is_lost(tmp_path: Path) -> None:
    """The link hangs (nothing forwarded, nothing closed) while the worker publishes: the worker
    stays responsive, declares the facilitator dead after the heartbeat deadline, reconnects
    once the network is back, and delivers everything exactly once."""
    fac = start_facilitator(
        FacilitatorConfig(
            key=FACILITATOR_KEY_HEX,
            db_path=str(tmp_path / "fac.db"),
            authorized_keys={"w1": public_key_hex(KEY)},
            heartbeat_interval=0.2,
            heartbeat_timeout=1.0,
        )
    )
    proxy = TcpProxy(("127.0.0.1", fac.port)).start()
    config = WorkerConfig(
        facilitator_key=FACILITATOR_PUBLIC,
        url=proxy.url,
        worker_id="w1",
        key=KEY_HEX,
        db_path=str(tmp_path / "w.db"),
        backoff_base=0.05,
        backoff_cap=0.2,
    )
    try:
        with start_worker(config) as worker:
            worker.wait_connected(10)
            proxy.stall()
            futures = [
                # 3000 × 8 kB: more than the window can park in the kernel's socket buffers, so a
                # send on the stalled socket really blocks.
                worker.outbox.publish(WorkerEvent(event="e", at=0.0, detail="x" * 8000))
                for _ in range(3000)
            ]
            for f in futures:
                f.get(timeout=10)  # durable locally even though the network hangs
            t0 = time.monotonic()
            wait_until(lambda: worker.state().value != "connected", 10, "silence to be detected")
            assert time.monotonic() - t0 < 5
            t1 = time.monotonic()
            worker.state()  # the Connection's mailbox answers while the socket is stuck
            assert time.monotonic() - t1 < 1
            proxy.cut()
            proxy.stall(False)
            wait_until(lambda: worker.outbox.stats().get(timeout=5).depth_rows == 0, 30, "backlog delivered")
            (view,) = [w for w in fac.workers() if w.worker_id == "w1"]
            assert view.in_hwm == 3000  # every seq, contiguous
            assert fac.stats().data_accepted == 3000  # each accepted once (re-sends were dropped)
            assert view.last_event == "e"
    finally:
        proxy.stop()
        fac.stop()
