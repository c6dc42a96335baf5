"""SIGTERM/SIGINT on `jobrelay worker` with running jobs and an outbox backlog: a bounded clean stop
(exit 0), and after a restart every accepted status update reaches the facilitator exactly once.
A second SIGINT exits at once with 130, still losing nothing durable."""

from __future__ import annotations

import itertools
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobrelay.facilitator import Facilitator, FacilitatorConfig, start_facilitator
from jobrelay.storage import inspect_database
from jobrelay.testing.proxy import TcpProxy
from tests.protocol_harness import FACILITATOR_KEY_HEX
from tests.test_cli_helpers import Service, make_key, services, wait_until, worker_args

pytestmark = pytest.mark.timeout(60)

STOP_TIMEOUT = 2.0
TERMINAL = {"completed", "failed", "rejected", "cancelled"}


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[Facilitator, TcpProxy, Path]]:
    key, public = make_key(tmp_path, "w1")
    config = FacilitatorConfig(
        key=FACILITATOR_KEY_HEX, db_path=str(tmp_path / "f.db"), authorized_keys={"w1": public},
        durability="normal", stop_timeout=3.0,
    )  # fmt: skip
    with start_facilitator(config) as fac, TcpProxy(("127.0.0.1", fac.port)) as proxy:
        yield fac, proxy, key


def start_worker(tmp: Path, proxy: TcpProxy, key: Path, *extra: str) -> Service:
    (tmp / "w1.ready").unlink(missing_ok=True)
    args = worker_args(
        tmp,
        proxy.url,
        "w1",
        key,
        "--max-jobs",
        "2",
        "--stop-timeout",
        str(STOP_TIMEOUT),
        "--drain-timeout",
        "0",
        *extra,
    )
    service = Service(args, tmp / "w1.log").start()
    service.ready(tmp / "w1.ready")
    return service


def statuses(fac: Facilitator, job_id: str) -> list[tuple[str, float | None]]:
    view = fac.job(job_id)
    return [] if view is None else [(e.status, e.progress) for e in view.history]


def assert_each_update_once(fac: Facilitator, tmp: Path, job_ids: list[str]) -> None:
    """Every job ended once; no status repeated; the facilitator holds exactly what the worker sent."""
    total = 0
    for job_id in job_ids:
        seen = statuses(fac, job_id)
        total += len(seen)
        assert [s for s, _ in seen if s in TERMINAL] == [seen[-1][0]], seen
        assert seen[0][0] == "accepted", seen
        progress = [p for s, p in seen if s == "running" and p is not None]
        assert progress == sorted(set(progress)), f"repeated or reordered progress: {seen}"
        assert all(a != b for a, b in itertools.pairwise(seen)), f"repeated status: {seen}"
    sent = sum(s.last_seq for s in inspect_database(tmp / "w1.db").outbox)
    accepted = next(w.in_hwm for w in fac.workers() if w.worker_id == "w1")
    assert sent == accepted == total


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_within_bound_and_nothing_is_lost(
    tmp_path: Path, setup: tuple[Facilitator, TcpProxy, Path], signum: int
) -> None:
    fac, proxy, key = setup
    with services() as running:
        worker = start_worker(tmp_path, proxy, key)
        running.append(worker)
        payload = {"seconds": 30, "steps": 300}  # a progress update every 0.1 s
        ids = fac.submit_many([("sleep", payload, f"job-{n}") for n in range(4)], worker="w1")
        # Two run, two wait in the worker's queue.
        wait_until(lambda: all(statuses(fac, j) for j in ids), what="all jobs accepted")
        wait_until(
            lambda: sum(len(statuses(fac, j)) > 3 for j in ids) == 2, what="two jobs reporting progress"
        )
        # Cut the link and keep it down: progress updates pile up in the worker's outbox.
        proxy.block(True)
        proxy.cut()
        wait_until(
            lambda: sum(s.depth_rows for s in inspect_database(tmp_path / "w1.db").outbox) >= 6,
            what="an outbox backlog",
        )
        started = time.monotonic()
        worker.signal(signum)
        code = worker.wait(STOP_TIMEOUT + 3)
        elapsed = time.monotonic() - started
        assert code == 0, worker.text()[-3000:]
        assert elapsed < STOP_TIMEOUT + 1.0, f"stop took {elapsed:.2f}s"
        summary = inspect_database(tmp_path / "w1.db")
        assert sum(s.depth_rows for s in summary.outbox) > 0  # the backlog is kept, not dropped
        # The two running jobs got their terminal status (cancelled) durably; the two that never
        # started were handed back (`released`, durable in the outbox while the link is down):
        # after the restart the facilitator queues them again and, w1 being its only worker,
        # sends them back to it.
        assert summary.jobs_unfinished == 2

        proxy.block(False)
        restarted = start_worker(tmp_path, proxy, key)
        running.append(restarted)
        status = lambda j: fac.job(j).status  # type: ignore[union-attr]  # noqa: E731
        wait_until(
            lambda: sorted(status(j) for j in ids) == ["cancelled", "cancelled", "running", "running"],
            what="the queued jobs running after the restart",
        )
        for job_id in ids:
            if status(job_id) == "running":
                fac.cancel(job_id, "test is done")
        wait_until(lambda: all(status(j) == "cancelled" for j in ids), what="all jobs cancelled")
        wait_until(
            lambda: sum(s.depth_rows for s in inspect_database(tmp_path / "w1.db").outbox) == 0,
            what="the backlog acknowledged",
        )
        assert_each_update_once(fac, tmp_path, ids)
        restarted.signal(signal.SIGTERM)
        assert restarted.wait(STOP_TIMEOUT + 3) == 0


def test_second_sigint_exits_at_once_with_130(
    tmp_path: Path, setup: tuple[Facilitator, TcpProxy, Path]
) -> None:
    fac, proxy, key = setup
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('{\"progress\": 0.5}', flush=True); time.sleep(10)"
    )
    handler = f"stubborn={shlex.join([sys.executable, '-c', stubborn])}"
    with services() as running:
        worker = start_worker(tmp_path, proxy, key, "--handler", handler)
        running.append(worker)
        job_id = fac.submit("stubborn", None, worker="w1")
        wait_until(lambda: ("running", 0.5) in statuses(fac, job_id), what="the stubborn job running")
        worker.signal(signal.SIGINT)
        wait_until(lambda: "stopping (signal received" in worker.text(), what="the first stop")
        started = time.monotonic()
        worker.signal(signal.SIGINT)
        assert worker.wait(3) == 130
        assert time.monotonic() - started < 1.0
        assert "SIGINT again: exiting now" in worker.text()

        restarted = start_worker(tmp_path, proxy, key)
        running.append(restarted)
        wait_until(lambda: statuses(fac, job_id)[-1][0] in TERMINAL, what="the job's terminal status")
        view = fac.job(job_id)
        assert view is not None
        assert (view.history[-1].status, view.history[-1].detail) == ("failed", "worker_restarted")
        wait_until(
            lambda: sum(s.depth_rows for s in inspect_database(tmp_path / "w1.db").outbox) == 0,
            what="the outbox acknowledged",
        )
        assert_each_update_once(fac, tmp_path, [job_id])
        restarted.signal(signal.SIGTERM)
        assert restarted.wait(STOP_TIMEOUT + 3) == 0
