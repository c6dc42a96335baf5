"""Publisher, the plain class under the Outbox actor, driven directly (no pykka actors) on a real
SQLite file: group commits, publishes waiting for room in order, the hand-over to the session
up to its limit, epoch restarts and refused messages."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pykka
import pytest

from jobrelay.actors.actor_messages import Count, Gauge, Observe, Publish
from jobrelay.actors.config import WorkerConfig, generate_key
from jobrelay.actors.publisher import Publisher, decode_body
from jobrelay.protocol.errors import ErrorCode, ProtocolError
from jobrelay.protocol.messages import JobStatus, JobStatusUpdate, MachineSpecs, WorkerEvent
from jobrelay.storage import (
    JobLedger,
    OutboxFull,
    StorageError,
    TerminalStatusError,
    UnknownJobError,
    open_database,
)
from jobrelay.storage import Outbox as StoredOutbox
from tests.protocol_harness import FACILITATOR_PUBLIC

KEY_HEX = generate_key()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A Publisher on ``tmp_path/w.db``, its clock and the metric messages it reported."""

    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        self.path = tmp_path / "w.db"
        self.config = WorkerConfig(
            facilitator_key=FACILITATOR_PUBLIC,
            url="ws://127.0.0.1:9",
            worker_id="w1",
            key=KEY_HEX,
            db_path=str(self.path),
            durability="normal",
            **overrides,
        )
        self.clock = Clock()
        self.reports: list[Any] = []
        self.publisher = Publisher(self.config, report=self.reports.append, clock=self.clock)
        self.publisher.open()

    def counted(self, name: str) -> int:
        return sum(r.n for r in self.reports if isinstance(r, Count) and r.name == name)

    def add_job(self, job_id: str) -> None:
        """The JobRouter's part: the job request is in the ledger before any status of it."""
        with open_database(self.path, durability="normal") as db:
            JobLedger(db).record_request(job_id, "kind", b"{}")

    def committed_seqs(self) -> list[int]:
        """What another connection sees of the outbox: only committed rows."""
        with open_database(self.path, readonly=True) as db:
            return [row.seq for row in StoredOutbox(db, "out").pending()]

    def committed_statuses(self, job_id: str) -> list[str]:
        with open_database(self.path, readonly=True) as db:
            return [entry.status for entry in JobLedger(db).history(job_id)]


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.publisher.close()


def detail(body: object) -> str:
    """A handed-over body's detail: rows read back from disk come as stored (msgspec.Raw)."""
    decoded = decode_body(bytes(body)) if isinstance(body, msgspec.Raw) else body
    assert isinstance(decoded, WorkerEvent)
    return decoded.detail


def event(detail: str) -> WorkerEvent:
    return WorkerEvent(event="e", at=0.0, detail=detail)


def status(job_id: str, value: JobStatus) -> JobStatusUpdate:
    return JobStatusUpdate(job_id=job_id, status=value, at=0.0)


def publish(body: Any) -> Publish:
    return Publish(body, pykka.ThreadingFuture())


def result(p: Publish) -> Any:
    return p.future.get(timeout=0)


def is_pending(p: Publish) -> bool:
    try:
        p.future.get(timeout=0)
    except pykka.Timeout:
        return True
    except Exception:
        return False
    return False


def failure(p: Publish) -> BaseException:
    with pytest.raises(Exception) as info:
        p.future.get(timeout=0)
    return info.value


def waiting(pub: Publisher) -> bool:
    """Publishes wait for room (a call, so that a type checker does not pin the value)."""
    return pub.waiting


def seqs(items: list[tuple[int, Any]]) -> list[int]:
    return [seq for seq, _ in items]


# ---------------------------------------------------------------- publishing


class CommitCheckingFuture(pykka.ThreadingFuture[Any]):
    """Records, at the moment it is resolved, what another connection sees as committed."""

    def __init__(self, harness: Harness, job_id: str) -> None:
        super().__init__()
        self.harness = harness
        self.job_id = job_id
        self.seen: tuple[list[int], list[str]] | None = None

    def set(self, value: Any = None) -> None:
        self.seen = (self.harness.committed_seqs(), self.harness.committed_statuses(self.job_id))
        super().set(value)


def test_a_batch_is_one_group_commit_and_futures_resolve_only_after_it(h: Harness) -> None:
    h.add_job("j1")
    bodies = [event("a"), status("j1", JobStatus.ACCEPTED), status("j1", JobStatus.RUNNING)]
    batch = [Publish(body, CommitCheckingFuture(h, "j1")) for body in bodies]
    assert h.publisher.write(batch) is True
    assert [result(p) for p in batch] == [1, 2, 3]
    for p in batch:
        # Already the first future saw the whole batch and its ledger records committed.
        assert p.future.seen == ([1, 2, 3], ["accepted", "running"])
    assert h.counted("published") == 3
    assert h.publisher.out_marks()[1:] == (0, 3)


def test_a_failed_commit_fails_every_future_of_the_batch(h: Harness) -> None:
    h.publisher.close()  # the database is gone: the transaction cannot begin
    batch = [publish(event("a")), publish(event("b"))]
    assert h.publisher.write(batch) is True  # handled: nothing to retry
    assert all(isinstance(failure(p), StorageError) for p in batch)


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (event("x" * 1_100_000), ErrorCode.FRAME_TOO_LARGE),
        (MachineSpecs(specs={"n": 2**70}, at=0.0), ErrorCode.INVALID_FIELD),  # msgpack cannot carry it
    ],
    ids=["too-large", "not-msgpack"],
)
def test_an_unsendable_message_fails_its_future_and_takes_no_seq(
    h: Harness, body: Any, code: ErrorCode
) -> None:
    batch = [publish(event("before")), publish(body), publish(event("after"))]
    h.publisher.write(batch)
    refused = failure(batch[1])
    assert isinstance(refused, ProtocolError) and refused.code is code
    assert (result(batch[0]), result(batch[2])) == (1, 2)
    assert h.committed_seqs() == [1, 2]
    assert h.counted("published") == 2


def test_a_second_terminal_status_fails_with_terminal_status_error(h: Harness) -> None:
    h.add_job("j1")
    h.add_job("j2")
    first = [publish(status("j1", JobStatus.COMPLETED))]
    h.publisher.write(first)
    again = publish(status("j1", JobStatus.FAILED))
    same_batch = [publish(status("j2", JobStatus.CANCELLED)), publish(status("j2", JobStatus.COMPLETED))]
    h.publisher.write([again, *same_batch])
    assert result(first[0]) == 1
    assert isinstance(failure(again), TerminalStatusError)
    assert result(same_batch[0]) == 2
    assert isinstance(failure(same_batch[1]), TerminalStatusError)
    assert h.committed_statuses("j1") == ["completed"]
    assert h.committed_statuses("j2") == ["cancelled"]
    assert h.committed_seqs() == [1, 2]


def test_a_status_of_an_unknown_job_fails_with_unknown_job_error(h: Harness) -> None:
    batch = [publish(status("nobody", JobStatus.RUNNING)), publish(event("ok"))]
    h.publisher.write(batch)
    assert isinstance(failure(batch[0]), UnknownJobError)
    assert result(batch[1]) == 1


# ---------------------------------------------------------------- a full outbox


def test_a_full_outbox_blocks_publishes_in_order(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_outbox_bytes=1000, publish_timeout=30.0)
    pub = h.publisher
    a, b, c = publish(event("A" * 600)), publish(event("B" * 600)), publish(event("C"))
    assert pub.write([a]) is True and result(a) == 1
    assert pub.write([b]) is False  # no room: b waits
    assert waiting(pub) and h.counted("outbox_full") == 1
    pub.wait([c])  # would fit, but must not overtake b (the actor queues behind what waits)
    pub.beat(h.clock.now)
    assert is_pending(b) and is_pending(c)
    assert h.committed_seqs() == [1]
    pub.opened("s1", 0, limit=10)
    assert seqs(pub.fill()) == [1]
    pub.acked(1, limit=11)  # room again: the waiting publishes are stored, in their order
    assert (result(b), result(c)) == (2, 3)
    assert not waiting(pub)
    assert [detail(body)[0] for _, body in pub.fill()] == ["B", "C"]
    pub.close()


def test_a_json_session_gets_fresh_rows_as_stored_bytes_others_as_bodies(tmp_path: Path) -> None:
    # Encoded once end to end: a JSON frame embeds the bytes the outbox stored; a msgpack
    # session gets the body itself (it would otherwise decode the JSON to encode it again).
    h = Harness(tmp_path)
    pub = h.publisher
    bodies = [event("one"), event("two")]
    pub.write([publish(b) for b in bodies])
    pub.opened("s1", 0, limit=10, as_stored=True)
    handed = pub.fill()
    assert seqs(handed) == [1, 2] and all(isinstance(b, msgspec.Raw) for _, b in handed)
    with open_database(h.path, readonly=True) as db:
        stored = {row.seq: row.payload for row in StoredOutbox(db, "out").pending()}
    assert [bytes(b) for _, b in handed] == [stored[1], stored[2]]
    assert [decode_body(bytes(b)) for _, b in handed] == bodies
    pub.closed("s1")
    pub.opened("s2", 2, limit=10)  # a msgpack session: a fresh row as its body
    pub.write([publish(event("three"))])
    assert pub.fill() == [(3, event("three"))]
    pub.close()


def test_waiting_publishes_expire_but_a_terminal_status_never_does(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_outbox_rows=1, publish_timeout=5.0)
    h.add_job("j1")
    pub = h.publisher
    pub.write([publish(event("fills the outbox"))])
    ordinary, terminal = publish(event("ordinary")), publish(status("j1", JobStatus.COMPLETED))
    assert pub.write([ordinary, terminal]) is False
    h.clock.now += 4.0
    pub.beat(h.clock.now)
    assert is_pending(ordinary) and is_pending(terminal)
    h.clock.now += 2.0  # past the publish timeout
    pub.beat(h.clock.now)
    assert isinstance(failure(ordinary), OutboxFull)
    assert is_pending(terminal)
    h.clock.now += 1e9  # a job's end must be sent exactly once: it waits as long as it takes
    pub.beat(h.clock.now)
    assert is_pending(terminal)
    pub.opened("s1", 0, limit=10)
    pub.fill()
    pub.acked(1, limit=11)
    assert result(terminal) == 2
    assert h.committed_statuses("j1") == ["completed"]
    pub.close()


def test_close_fails_what_still_waits_for_room(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_outbox_rows=1)
    h.publisher.write([publish(event("fills the outbox"))])
    waiting = publish(event("late"))
    h.publisher.write([waiting])
    h.publisher.close()
    assert isinstance(failure(waiting), OutboxFull)


def test_finish_stores_what_fits_persists_the_ack_and_closes(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_outbox_rows=1)
    pub = h.publisher
    pub.write([publish(event("first"))])
    late = publish(event("late"))
    pub.write([late])
    pub.opened("s1", 0, limit=10)
    pub.fill()
    pub.acked(1, limit=11)  # stores "late" at once (it waited for this room)
    assert result(late) == 2
    pub.finish()
    with open_database(h.path, readonly=True) as db:
        stats = StoredOutbox(db, "out").stats()
    assert (stats.last_acked, stats.last_seq, stats.depth_rows) == (1, 2, 1)


# ---------------------------------------------------------------- handing over to the session


def test_fill_hands_over_up_to_the_limit_and_resumes_after_resume_after(h: Harness) -> None:
    pub = h.publisher
    batch = [publish(event(str(i))) for i in range(1, 11)]
    pub.write(batch)
    assert pub.fill() == []  # no session
    pub.opened("s1", 0, limit=4)
    handed = pub.fill()
    assert seqs(handed) == [1, 2, 3, 4]
    assert [detail(body) for _, body in handed] == ["1", "2", "3", "4"]
    assert pub.fill() == []  # nothing twice, nothing beyond the limit
    assert pub.in_flight() == 4
    pub.acked(2, limit=6)
    assert seqs(pub.fill()) == [5, 6]
    assert pub.in_flight() == 4
    pub.closed("another session")  # not ours: ignored
    assert pub.session == "s1"
    pub.closed("s1")
    assert pub.fill() == [] and pub.in_flight() == 0
    # The next session: the facilitator holds up to 3; the rest is handed over again, in order.
    pub.opened("s2", resume_after=3, limit=8)
    handed = pub.fill()
    assert seqs(handed) == [4, 5, 6, 7, 8]
    assert [detail(body) for _, body in handed] == ["4", "5", "6", "7", "8"]
    assert h.counted("replayed") == 10 + 7  # everything on s1, everything after 3 on s2
    assert pub.out_marks()[1] == 3  # the resume point was made durable
    pub.acked(10, limit=20)
    assert seqs(pub.fill()) == [9, 10]
    assert pub.fill() == []


def test_a_session_resuming_below_what_was_acked_and_deleted_is_refused(h: Harness) -> None:
    """Found by scripts/fuzz (server, seed 11): a session acks seq 2 and ends; the next auth read
    its marks before that ack was persisted, and the facilitator resumes after 1. Seq 2 is gone,
    so handing over from 2 would start at 3 (the Connection actor crashed on the gap). The
    session is refused instead (the Outbox drops it); the next one resumes from the new mark."""
    pub = h.publisher
    pub.write([publish(event(str(i))) for i in range(1, 5)])
    assert pub.opened("s1", 0, limit=10)
    assert seqs(pub.fill()) == [1, 2, 3, 4]
    pub.acked(2, limit=12)
    pub.persist_ack()  # seqs 1 and 2 deleted
    pub.closed("s1")
    assert not pub.opened("s2", resume_after=1, limit=10)
    assert pub.session is None and pub.fill() == []
    assert pub.opened("s3", resume_after=2, limit=10)
    assert seqs(pub.fill()) == [3, 4]


def test_publishes_during_a_session_are_handed_over_from_memory(h: Harness) -> None:
    pub = h.publisher
    pub.opened("s1", 0, limit=3)
    batch = [publish(event(str(i))) for i in range(1, 6)]
    pub.write(batch)
    assert [(seq, detail(body)) for seq, body in pub.fill()] == [(1, "1"), (2, "2"), (3, "3")]
    h.clock.now += 0.25
    pub.acked(3, limit=6)
    assert Observe("ack_latency", 0.25) in h.reports
    assert [(seq, detail(body)) for seq, body in pub.fill()] == [(4, "4"), (5, "5")]
    assert h.counted("acked") == 3


def test_restart_epoch_renumbers_what_the_peer_has_not_acknowledged(h: Harness) -> None:
    pub = h.publisher
    pub.opened("s1", 0, limit=10)
    pub.write([publish(event(str(i))) for i in range(1, 6)])  # cached: handed over from memory
    assert seqs(pub.fill()) == [1, 2, 3, 4, 5]
    pub.acked(2, limit=12)
    pub.persist_ack()
    old_epoch = pub.out_marks()[0]
    pub.restart_epoch("the facilitator holds more of our stream than we do")
    epoch, acked, last_seq = pub.out_marks()
    assert epoch != old_epoch and (acked, last_seq) == (0, 3)
    assert pub.session is None and pub.fill() == []
    assert h.counted("epoch_restarts") == 1
    pub.opened("s2", 0, limit=10)
    # The old seqs 3..5 are the new 1..3 (not the bodies cached under the old numbering).
    assert [(seq, detail(body)) for seq, body in pub.fill()] == [(1, "3"), (2, "4"), (3, "5")]
    later = publish(event("6"))
    pub.write([later])
    assert result(later) == 4


def three_handed_over_then_acked(h: Harness, upto: int) -> Publisher:
    """Seqs 1–3 stored and handed to session s1, which acknowledged up to ``upto``."""
    pub = h.publisher
    assert pub.write([publish(event(str(i))) for i in range(3)])
    pub.opened("s1", 0, limit=10)
    pub.fill()
    pub.acked(upto, limit=10 + upto)
    return pub


def test_the_ack_mark_rides_on_a_publish_commit_or_is_stored_by_an_idle_beat(h: Harness) -> None:
    pub = three_handed_over_then_acked(h, 2)
    assert h.committed_seqs() == [1, 2, 3]  # the mark waits: no commit of its own per ack
    pub.beat(h.clock.now)  # published since the last beat: the next publish commit carries it
    assert h.committed_seqs() == [1, 2, 3]
    gauges = {r.name: r.value for r in h.reports if isinstance(r, Gauge)}
    assert gauges["outbox_depth"] == 1 and gauges["in_flight"] == 1  # counted from memory
    pub.write([publish(event("3"))])
    assert h.committed_seqs() == [3, 4]
    pub.fill()
    pub.acked(3, limit=13)
    pub.beat(h.clock.now)  # busy since the last beat: asks the next commit
    assert h.committed_seqs() == [3, 4]
    pub.beat(h.clock.now)  # nothing published since: stored on its own
    assert h.committed_seqs() == [4]
    assert pub.stats().depth_rows == 1


def test_stats_count_what_is_acknowledged_before_the_mark_is_stored(h: Harness) -> None:
    pub = three_handed_over_then_acked(h, 3)
    assert pub.stats().depth_rows == 0
    assert h.committed_seqs() == []


# ---------------------------------------------------------------- an external backend's records


def test_a_dispatch_and_a_relayed_position_commit_with_their_statuses_or_not_at_all(h: Harness) -> None:
    h.add_job("j1")
    running = Publish(
        status("j1", JobStatus.RUNNING), pykka.ThreadingFuture(), dispatch=("j1", 1, "celery", "j1")
    )
    relayed = Publish(status("j1", JobStatus.RUNNING), pykka.ThreadingFuture(), mark=("j1", "j1", "5-0"))
    assert h.publisher.write([running, relayed])
    found = h.publisher.dispatch("j1")
    assert found is not None and (found.task_id, found.position) == ("j1", "5-0")
    # A batch that fails to commit takes its position with it: the event is relayed again.
    broken = Publish(status("j1", JobStatus.RUNNING), pykka.ThreadingFuture(), mark=("j1", "j1", "6-0"))
    h.publisher.close()
    h.publisher.write([broken])
    assert isinstance(failure(broken), StorageError)
    h.publisher.open()
    found = h.publisher.dispatch("j1")
    assert found is not None and found.position == "5-0"
    assert h.committed_statuses("j1") == ["running", "running"]


def stored_segments(h: Harness) -> int:
    with open_database(h.path, readonly=True) as db:
        return int(db.query("SELECT count(*) FROM outbox_segments")[0][0])


def test_acknowledged_rows_are_deleted_once_the_stream_is_idle(h: Harness) -> None:
    """The ack mark is committed at once; the rows wait for an idle beat (nothing published since
    the last one, everything acknowledged), so a busy stream's commits write no deletes."""
    pub = h.publisher
    for i in range(3):
        pub.write([publish(event(f"{i}"))])  # three commits: three segments
    assert pub.opened("s1", 0, limit=10)
    pub.fill()
    pub.acked(2, limit=12)
    pub.persist_ack()
    assert h.committed_seqs() == [3] and stored_segments(h) == 3  # acked, not deleted yet
    pub.beat(h.clock())  # published since the last beat: busy
    assert stored_segments(h) == 3
    pub.acked(3, limit=13)
    pub.beat(h.clock())  # idle and all acknowledged: deleted
    assert stored_segments(h) == 0 and h.committed_seqs() == []
    assert pub.stats().depth_rows == 0 and pub.stats().last_acked == 3


def test_an_ack_committed_with_a_refused_batch_is_not_lost_with_it(tmp_path: Path) -> None:
    """Found in review: the ack rides in the publish transaction; when the batch does not fit, the
    rollback took the ack back while the Publisher counted it stored, so the room it freed was
    never freed and the waiting publishes failed at their deadline."""
    h = Harness(tmp_path, max_outbox_rows=4)
    pub = h.publisher
    pub.write([publish(event(str(i))) for i in range(4)])
    assert pub.opened("s1", 0, limit=10)
    pub.fill()
    pub.acked(2, limit=12)  # nothing waits for room yet: the ack rides on the next commit
    waiting = [publish(event(f"late{i}")) for i in range(3)]
    assert not pub.write(waiting)  # 4 stored + 3 > 4: refused, the 3 wait in order
    assert pub.stats().last_acked == 2  # the ack is committed all the same
    pub.beat(h.clock())  # room for 2 of them now: stored, in order
    assert [result(p) for p in waiting[:2]] == [5, 6] and is_pending(waiting[2])


def test_a_full_outbox_counts_acknowledgements_whose_mark_was_not_stored_yet(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_outbox_rows=3)
    try:
        pub = three_handed_over_then_acked(h, 3)  # the mark waits for a commit or a beat
        late = publish(event("3"))
        assert pub.write([late])  # stored at once: no wait for a beat to store the mark
        assert late.future.get(timeout=1) == 4
        assert not pub.waiting
        assert h.committed_seqs() == [4]
        assert not [r for r in h.reports if isinstance(r, Count) and r.name == "outbox_full"]
    finally:
        h.publisher.close()
