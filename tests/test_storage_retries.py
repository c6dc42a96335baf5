"""The facilitator's retry bookkeeping in its jobs table (storage/retries.py): a retry released
after its backoff is a queued job again, so once routed it holds its new worker's credit and is
neither queued a second time after a restart nor ended by a cancel as if it were still waiting."""

from __future__ import annotations

from pathlib import Path

from jobrelay.storage import JobLedger, StatusUpdate, open_database
from jobrelay.storage.retries import release_retries, retrying_jobs
from jobrelay.storage.routing import assign_job, outstanding_by_peer


def test_a_released_retry_is_a_queued_job_again(tmp_path: Path) -> None:
    db = open_database(tmp_path / "f.db", durability="normal")
    try:
        ledger = JobLedger(db)
        ledger.record_request("R", "k", b"{}", peer="w1")
        ledger.record_statuses(
            [StatusUpdate("R", "accepted"), StatusUpdate("R", "retrying", "attempt 1 failed")]
        )
        assert retrying_jobs(db) == ["R"]  # waiting for its backoff
        assert outstanding_by_peer(db) == {}  # the failed attempt holds no credit

        assert release_retries(db, ["R"]) == ["R"]  # its backoff is over: queued
        assert retrying_jobs(db) == []  # a restart would not queue it a second time
        assert assign_job(db, "R", "w2")  # routed like a new job...
        assert outstanding_by_peer(db) == {"w2": 1}  # ...it holds the credit of the worker running it
        assert retrying_jobs(db) == [] and release_retries(db, ["R"]) == []  # and stays routed
        record = ledger.get("R")
        assert record is not None and record.peer == "w2"
        assert [entry.status for entry in ledger.history("R")] == ["accepted", "retrying"]
    finally:
        db.close()
