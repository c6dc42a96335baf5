"""Dispatch rows of jobs run on an external backend: recorded before sending (the same task for
the same attempt), relayed positions only move forward, and a row goes with its pruned job."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobrelay.storage import Dispatches, JobLedger, StorageError, open_database
from jobrelay.storage.dispatch import START, position_key


def test_recording_twice_names_the_same_task_and_a_later_attempt_starts_afresh(tmp_path: Path) -> None:
    with open_database(tmp_path / "w.db") as db:
        JobLedger(db).record_request("j1", "encode", b"{}")
        dispatches = Dispatches(db, clock=lambda: 5.0)
        first = dispatches.record("j1", 1, "celery", "j1")
        assert (first.task_id, first.position, first.dispatched_at) == ("j1", START, 5.0)
        assert dispatches.advance("j1", "j1", "1700000000000-0")
        again = dispatches.record("j1", 1, "celery", "other")
        assert (again.task_id, again.position) == ("j1", "1700000000000-0")
        retry = dispatches.record("j1", 2, "celery", "j1~2")
        assert (retry.attempt, retry.task_id, retry.position) == (2, "j1~2", START)
        assert dispatches.count() == dispatches.count("celery") == 1


def test_a_position_only_moves_forward_and_only_for_the_current_task(tmp_path: Path) -> None:
    with open_database(tmp_path / "w.db") as db:
        JobLedger(db).record_request("j1", "encode", b"{}")
        dispatches = Dispatches(db)
        dispatches.record("j1", 1, "celery", "j1")
        assert dispatches.advance("j1", "j1", "10-2")
        assert not dispatches.advance("j1", "j1", "10-1")
        assert not dispatches.advance("j1", "j1", "9-9")
        assert not dispatches.advance("j1", "old-task", "11-0")
        assert dispatches.advance("j1", "j1", "11-0")
        found = dispatches.get("j1")
        assert found is not None and found.position == "11-0"
        with pytest.raises(ValueError):
            dispatches.advance("j1", "j1", "not-an-id")
    assert position_key("1700000000000-3") == (1700000000000, 3) > position_key("99-0")


def test_a_dispatch_needs_its_job_and_goes_when_the_job_is_pruned(tmp_path: Path) -> None:
    with open_database(tmp_path / "w.db") as db:
        ledger, dispatches = JobLedger(db, clock=lambda: 1.0), Dispatches(db)
        with pytest.raises(StorageError):
            dispatches.record("nobody", 1, "celery", "nobody")
        ledger.record_request("j1", "encode", b"{}")
        dispatches.record("j1", 1, "celery", "j1")
        ledger.record_status("j1", "completed")
        assert ledger.prune(finished_before=2.0) == 1
        assert dispatches.get("j1") is None
