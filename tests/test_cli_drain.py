"""Warm shutdown of real `jobrelay worker` processes: on the first SIGTERM running jobs finish
(up to --drain-timeout, then they are cancelled), jobs queued at the worker are handed back and
run on the other worker; a second signal exits at once with nothing durable lost."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from jobrelay.facilitator import Facilitator, FacilitatorConfig, start_facilitator
from jobrelay.storage import JobLedger, inspect_database, open_database
from tests.protocol_harness import FACILITATOR_KEY_HEX
from tests.test_cli_helpers import Service, make_key, run_cli, services, wait_until, worker_args

pytestmark = pytest.mark.timeout(90)

TERMINAL = {"completed", "failed", "rejected", "cancelled"}


class Setup(NamedTuple):
    fac: Facilitator
    keys: dict[str, Path]
    tmp: Path


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    keys: dict[str, Path] = {}
    public: dict[str, str] = {}
    for worker_id in ("w1", "w2"):
        keys[worker_id], public[worker_id] = make_key(tmp_path, worker_id)
    config = FacilitatorConfig(
        key=FACILITATOR_KEY_HEX, db_path=str(tmp_path / "f.db"), authorized_keys=public,
        durability="normal", stop_timeout=3.0,
    )  # fmt: skip
    with start_facilitator(config) as fac:
        yield Setup(fac, keys, tmp_path)


def start(s: Setup, running: list[Service], worker_id: str, *extra: str) -> Service:
    (s.tmp / f"{worker_id}.ready").unlink(missing_ok=True)
    args = worker_args(s.tmp, s.fac.url, worker_id, s.keys[worker_id], "--max-jobs", "1", *extra)
    worker = Service(args, s.tmp / f"{worker_id}.log").start()
    running.append(worker)
    worker.ready(s.tmp / f"{worker_id}.ready")
    wait_until(lambda: any(w.worker_id == worker_id and w.connected for w in s.fac.workers()))
    return worker


def status(s: Setup, job_id: str) -> str | None:
    view = s.fac.job(job_id)
    return None if view is None else view.status


def history(s: Setup, job_id: str) -> list[str]:
    view = s.fac.job(job_id)
    assert view is not None
    return [e.status for e in view.history]


def worker_history(s: Setup, worker_id: str, job_id: str) -> list[str]:
    db = open_database(s.tmp / f"{worker_id}.db", readonly=True, check=False)
    try:
        return [e.status for e in JobLedger(db).history(job_id)]
    finally:
        db.close()


def ended_once(seen: list[str]) -> str:
    ends = [x for x in seen if x in TERMINAL]
    assert len(ends) == 1 and seen[-1] == ends[0], seen
    return ends[0]


def test_warm_shutdown_finishes_running_jobs_and_hands_queued_ones_to_the_other_worker(
    setup: Setup,
) -> None:
    s = setup
    with services() as running:
        # w1 alone first, 1 slot and credit for 3 more: the facilitator sends it all four jobs
        # (not pinned: a job pinned with `worker=` would wait for w1 instead of moving).
        w1 = start(s, running, "w1", "--drain-timeout", "20", "--prefetch", "3")
        # Long enough to still run when w1 is told to stop, however slowly w2 starts under load
        # (at 2 s it sometimes ended first, and w1 then ran the queued jobs itself).
        slow = s.fac.submit("sleep", {"seconds": 6, "steps": 4})
        wait_until(lambda: status(s, slow) == "running", what="slow job running")
        queued = [s.fac.submit("sleep", {"seconds": 0.1, "steps": 1}) for _ in range(3)]
        wait_until(lambda: all(status(s, j) == "accepted" for j in queued), what="queued at w1")
        w2 = start(s, running, "w2", "--drain-timeout", "0")

        w1.signal(signal.SIGTERM)
        assert w1.wait(25) == 0, w1.text()[-3000:]
        wait_until(lambda: all(status(s, j) in TERMINAL for j in queued), 20, "queued jobs ended")
        w2.signal(signal.SIGTERM)
        assert w2.wait(20) == 0, w2.text()[-3000:]

    # The running job finished on w1: completed, not cancelled by the stop.
    assert ended_once(history(s, slow)) == "completed"
    view = s.fac.job(slow)
    assert view is not None and view.worker == "w1"
    assert worker_history(s, "w1", slow)[-1] == "completed"
    # The queued ones went back to the facilitator and ran once, on w2.
    for job_id in queued:
        seen = history(s, job_id)
        assert ended_once(seen) == "completed", seen
        assert seen[:3] == ["accepted", "released", "accepted"] and seen.count("released") == 1, seen
        view = s.fac.job(job_id)
        assert view is not None and view.worker == "w2"
        assert worker_history(s, "w1", job_id) == ["accepted", "released"]  # never started on w1
        assert ended_once(worker_history(s, "w2", job_id)) == "completed"
    assert "draining: waiting up to 20s for 1 running job(s)" in w1.text()


def test_a_job_still_running_at_the_drain_timeout_is_cancelled(setup: Setup) -> None:
    s = setup
    with services() as running:
        w1 = start(s, running, "w1", "--drain-timeout", "1", "--stop-timeout", "3")
        job_id = s.fac.submit("sleep", {"seconds": 60, "steps": 60}, worker="w1")
        wait_until(lambda: status(s, job_id) == "running", what="running")
        began = time.monotonic()
        w1.signal(signal.SIGTERM)
        assert w1.wait(10) == 0, w1.text()[-3000:]
        took = time.monotonic() - began
    assert 1.0 <= took < 1.0 + 3.0 + 1.0, took  # waited the drain timeout, stopped within the bound
    wait_until(lambda: status(s, job_id) == "cancelled", what="cancelled")
    assert ended_once(history(s, job_id)) == "cancelled"
    assert ended_once(worker_history(s, "w1", job_id)) == "cancelled"


def test_a_second_signal_during_the_drain_exits_at_once_and_loses_nothing(setup: Setup) -> None:
    s = setup
    with services() as running:
        w1 = start(s, running, "w1", "--drain-timeout", "30")
        job_id = s.fac.submit("sleep", {"seconds": 60, "steps": 600}, worker="w1")  # progress each 0.1 s
        wait_until(lambda: status(s, job_id) == "running", what="running")
        w1.signal(signal.SIGTERM)
        wait_until(lambda: "draining: waiting up to 30s" in w1.text(), what="draining")
        began = time.monotonic()
        w1.signal(signal.SIGTERM)
        assert w1.wait(5) == 130, w1.text()[-3000:]
        assert time.monotonic() - began < 3.0
        assert status(s, job_id) == "running"  # the drain let it run: it was not cancelled

        w1 = start(s, running, "w1", "--drain-timeout", "0")  # the restart ends what the kill cut
        wait_until(lambda: status(s, job_id) == "failed", what="failed: worker_restarted")
        w1.signal(signal.SIGTERM)
        assert w1.wait(20) == 0, w1.text()[-3000:]
    seen = history(s, job_id)
    assert ended_once(seen) == "failed"
    view = s.fac.job(job_id)
    assert view is not None and view.record.detail == "worker_restarted"
    # Nothing durable was lost or doubled: every update the worker stored reached the facilitator once.
    assert worker_history(s, "w1", job_id) == seen
    sent = sum(st.last_seq for st in inspect_database(s.tmp / "w1.db").outbox)
    accepted = next(w.in_hwm for w in s.fac.workers() if w.worker_id == "w1")
    assert sent == accepted


@pytest.mark.parametrize("value", ["-1", "nan", "soon"])
def test_a_bad_drain_timeout_is_one_line_and_exit_2(tmp_path: Path, value: str) -> None:
    key, _ = make_key(tmp_path, "w1")
    done = run_cli([*worker_args(tmp_path, "ws://127.0.0.1:1", "w1", key), "--drain-timeout", value])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "jobrelay: error: worker.drain_timeout (from --drain-timeout)"
    )
    assert not (tmp_path / "w1.db").exists()  # refused before anything started
