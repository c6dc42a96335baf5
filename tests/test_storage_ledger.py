"""Job ledger: model-based state machine (duplicates, double terminal status, history, reopen)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from jobrelay.protocol.messages import TERMINAL_STATUSES, JobStatus
from jobrelay.storage import (
    Database,
    JobLedger,
    StatusResult,
    StatusUpdate,
    TerminalStatusError,
    UnknownJobError,
    open_database,
)

JOB_IDS = [f"job-{i}" for i in range(5)]
job_ids = st.sampled_from(JOB_IDS)
statuses = st.sampled_from([s.value for s in JobStatus])
progresses = st.none() | st.floats(0.0, 1.0)
TERMINAL = {s.value for s in TERMINAL_STATUSES}


@dataclass
class ModelJob:
    kind: str
    payload: bytes
    peer: str
    attempts: int = 1
    history: list[tuple[str, str, float | None, float]] = field(default_factory=list)

    @property
    def status(self) -> str | None:
        return self.history[-1][0] if self.history else None


class LedgerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="jobrelay-ledger-"))
        self.path = self.dir / "w.db"
        self.now = 1000.0
        self.db: Database = open_database(self.path, durability="normal")
        self.ledger = JobLedger(self.db, clock=self.clock)
        self.jobs: dict[str, ModelJob] = {}

    def clock(self) -> float:
        self.now += 1.0
        return self.now

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _model_status(
        self, job_id: str, status: str, detail: str, progress: float | None, at: float
    ) -> StatusResult:
        job = self.jobs.get(job_id)
        if job is None:
            return StatusResult.UNKNOWN_JOB
        if job.status in TERMINAL:
            return StatusResult.ALREADY_TERMINAL
        job.history.append((status, detail, progress, at))
        return StatusResult.RECORDED

    @rule(
        job_id=job_ids,
        kind=st.sampled_from(["render", "score"]),
        payload=st.binary(max_size=16),
        peer=st.sampled_from(["", "worker-1"]),
    )
    def request(self, job_id: str, kind: str, payload: bytes, peer: str) -> None:
        new = job_id not in self.jobs
        if new:
            self.jobs[job_id] = ModelJob(kind, payload, peer)
        else:
            self.jobs[job_id].attempts += 1
        assert self.ledger.record_request(job_id, kind, payload, peer) is new

    @rule(
        job_id=job_ids, status=statuses, detail=st.sampled_from(["", "worker_restarted"]), progress=progresses
    )
    def status(self, job_id: str, status: str, detail: str, progress: float | None) -> None:
        self.now += 1.0
        at = self.now
        expected = self._model_status(job_id, status, detail, progress, at)
        if expected is StatusResult.RECORDED:
            self.ledger.record_status(job_id, status, detail=detail, progress=progress, at=at)
        elif expected is StatusResult.UNKNOWN_JOB:
            with pytest.raises(UnknownJobError):
                self.ledger.record_status(job_id, status, at=at)
        else:
            with pytest.raises(TerminalStatusError) as info:
                self.ledger.record_status(job_id, status, at=at)
            assert info.value.existing == self.jobs[job_id].status

    @rule(batch=st.lists(st.tuples(job_ids, statuses | st.just("bogus"), progresses), max_size=6))
    def statuses(self, batch: list[tuple[str, str, float | None]]) -> None:
        updates = []
        expected = []
        for job_id, status, progress in batch:
            self.now += 1.0
            updates.append(StatusUpdate(job_id, status, "b", progress, self.now))
            if status == "bogus":
                expected.append(StatusResult.INVALID)
            else:
                expected.append(self._model_status(job_id, status, "b", progress, self.now))
        assert self.ledger.record_statuses(updates) == expected

    @rule()
    def reopen(self) -> None:
        self.db.close()
        self.db = open_database(self.path, durability="normal")
        self.ledger = JobLedger(self.db, clock=self.clock)

    @invariant()
    def ledger_matches(self) -> None:
        for job_id in JOB_IDS:
            job = self.jobs.get(job_id)
            rec = self.ledger.get(job_id)
            if job is None:
                assert rec is None
                assert self.ledger.payload(job_id) is None
                assert self.ledger.history(job_id) == []
                continue
            assert rec is not None
            assert (rec.kind, rec.peer, rec.attempts, rec.status) == (
                job.kind,
                job.peer,
                job.attempts,
                job.status,
            )
            if job.history:
                assert (rec.detail, rec.progress, rec.updated_at) == job.history[-1][1:]
            assert self.ledger.payload(job_id) == job.payload
            assert [tuple(e) for e in self.ledger.history(job_id)] == job.history
        unfinished = {j for j, m in self.jobs.items() if m.status not in TERMINAL}
        assert {r.job_id for r in self.ledger.unfinished()} == unfinished
        assert self.ledger.count() == len(self.jobs)
        assert self.ledger.count(unfinished=True) == len(unfinished)


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


@pytest.fixture
def ledger(tmp_path: Path) -> JobLedger:
    return JobLedger(open_database(tmp_path / "w.db"))


def test_unfinished_jobs_are_closed_once_at_startup(ledger: JobLedger) -> None:
    ledger.record_request("a", "k", b"{}")
    ledger.record_request("b", "k", b"{}")
    ledger.record_status("a", JobStatus.RUNNING, progress=0.5)
    ledger.record_status("b", JobStatus.COMPLETED)
    assert [j.job_id for j in ledger.unfinished()] == ["a"]
    for job in ledger.unfinished():
        ledger.record_status(job.job_id, JobStatus.FAILED, detail="worker_restarted")
    assert ledger.unfinished() == []
    with pytest.raises(TerminalStatusError, match="already ended with 'failed'"):
        ledger.record_status("a", JobStatus.FAILED, detail="worker_restarted")
    assert [e.status for e in ledger.history("a")] == ["running", "failed"]


def test_invalid_status_or_progress_is_a_value_error(ledger: JobLedger) -> None:
    ledger.record_request("a", "k", b"")
    with pytest.raises(ValueError, match="invalid status"):
        ledger.record_status("a", "done")
    with pytest.raises(ValueError, match="invalid status"):
        ledger.record_status("a", "running", progress=1.5)
    assert ledger.history("a") == []


def test_jobs_listing_and_prune(ledger: JobLedger) -> None:
    for i in range(5):
        ledger.record_request(f"j{i}", "k", b"")
    ledger.record_statuses([StatusUpdate("j0", "completed", at=10.0), StatusUpdate("j1", "failed", at=20.0)])
    assert [j.job_id for j in ledger.jobs(limit=2)] == ["j4", "j3"]
    assert [j.job_id for j in ledger.jobs(status="failed")] == ["j1"]
    assert ledger.prune(finished_before=15.0) == 1
    assert ledger.get("j0") is None
    assert ledger.history("j0") == []
    assert ledger.record_request("j0", "k", b"")  # forgotten: new again
    assert ledger.count() == 5


def test_a_later_attempt_of_a_finished_job_is_new_work_and_keeps_the_history(ledger: JobLedger) -> None:
    first = b'{"type":"job_request","job_id":"r","kind":"k","attempt":1}'
    second = b'{"type":"job_request","job_id":"r","kind":"k","attempt":2}'
    assert ledger.record_request("r", "k", first)
    ledger.record_status("r", JobStatus.FAILED.value, detail="transient")
    assert not ledger.record_request("r", "k", second)  # the id is known...
    assert ledger.start_attempt("r", 2, second)  # ...but attempt 2 is new work
    assert not ledger.start_attempt("r", 2, second)  # a repeat of it is not
    assert not ledger.start_attempt("r", 1, first)  # nor an older attempt
    record = ledger.get("r")
    assert record is not None and record.status is None and ledger.payload("r") == second
    ledger.record_status("r", JobStatus.COMPLETED.value)  # one ending per attempt
    assert [e.status for e in ledger.history("r")] == ["failed", "completed"]
    assert not ledger.start_attempt("unknown", 2, second)
