"""Outbox: model-based state machine against a plain list, plus focused unit tests."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from jobrelay.storage import (
    AckOutOfRange,
    Database,
    Outbox,
    OutboxFull,
    StorageError,
    inspect_database,
    open_database,
)

MAX_ROWS = 25
MAX_BYTES = 400

kinds = st.sampled_from(["job_status", "machine_specs", "worker_event"])
payloads = st.binary(max_size=40)
items = st.lists(st.tuples(kinds, payloads), max_size=8)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        self.now += 0.5
        return self.now


class OutboxMachine(RuleBasedStateMachine):
    """The Outbox must behave exactly like a list of unacked rows plus two counters."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="jobrelay-outbox-"))
        self.path = self.dir / "w.db"
        self.clock = FakeClock()
        self.db: Database = open_database(self.path, durability="normal")
        self.box = self._open()
        self.epoch = self.box.epoch
        # The model: (seq, kind, payload) of every unacked row, in order.
        self.rows: list[tuple[int, str, bytes]] = []
        self.last_seq = 0
        self.last_acked = 0

    def _open(self) -> Outbox:
        box = Outbox(self.db, "out", max_rows=MAX_ROWS, max_bytes=MAX_BYTES, clock=self.clock)
        box.chunk_rows = 3  # exercise chunked streaming with tiny chunks
        return box

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _fits(self, batch: list[tuple[str, bytes]]) -> bool:
        return (
            len(self.rows) + len(batch) <= MAX_ROWS
            and sum(len(p) for _, _, p in self.rows) + sum(len(p) for _, p in batch) <= MAX_BYTES
        )

    def _append_model(self, batch: list[tuple[str, bytes]]) -> list[int]:
        seqs = []
        for kind, payload in batch:
            self.last_seq += 1
            self.rows.append((self.last_seq, kind, payload))
            seqs.append(self.last_seq)
        return seqs

    @rule(kind=kinds, payload=payloads)
    def append(self, kind: str, payload: bytes) -> None:
        if self._fits([(kind, payload)]):
            assert self.box.append(kind, payload) == self._append_model([(kind, payload)])[0]
        else:
            with pytest.raises(OutboxFull) as info:
                self.box.append(kind, payload)
            assert info.value.depth_rows == len(self.rows)
            assert info.value.max_rows == MAX_ROWS

    @rule(batch=items)
    def append_many(self, batch: list[tuple[str, bytes]]) -> None:
        if self._fits(batch):
            assert self.box.append_many(batch) == self._append_model(batch)
        else:
            with pytest.raises(OutboxFull):
                self.box.append_many(batch)

    @rule(data=st.data(), delete=st.booleans())
    def ack_valid(self, data: st.DataObject, delete: bool) -> None:
        upto = data.draw(st.integers(0, self.last_seq), label="upto")
        expected = 0
        if upto > self.last_acked:
            expected = sum(1 for r in self.rows if r[0] <= upto)
            self.rows = [r for r in self.rows if r[0] > upto]
            self.last_acked = upto
        assert self.box.ack(upto, delete=delete) == expected

    @rule()
    def delete_acked(self) -> None:
        self.box.delete_acked()

    @rule(beyond=st.integers(1, 5))
    def ack_invalid(self, beyond: int) -> None:
        with pytest.raises(AckOutOfRange) as info:
            self.box.ack(self.last_seq + beyond)
        assert info.value.last_seq == self.last_seq

    @rule(data=st.data())
    def pending(self, data: st.DataObject) -> None:
        after = data.draw(st.integers(0, self.last_seq + 2), label="after")
        limit = data.draw(st.none() | st.integers(0, 10), label="limit")
        want = [r for r in self.rows if r[0] > after]
        if limit is not None:
            want = want[:limit]
        got = [(r.seq, r.kind, r.payload) for r in self.box.pending(after, limit)]
        assert got == want

    @rule()
    def reopen(self) -> None:
        self.db.close()
        self.db = open_database(self.path, durability="normal")
        self.box = self._open()

    @precondition(lambda self: self.last_seq > 0)
    @rule()
    def restart_epoch(self) -> None:
        new = self.box.restart_epoch()
        assert new != self.epoch
        self.epoch = new
        self.rows = [(i, k, p) for i, (_, k, p) in enumerate(self.rows, 1)]
        self.last_seq = len(self.rows)
        self.last_acked = 0

    @invariant()
    def stats_match(self) -> None:
        stats = self.box.stats()
        assert (stats.last_seq, stats.last_acked) == (self.last_seq, self.last_acked)
        assert stats.depth_rows == len(self.rows)
        assert stats.depth_bytes == sum(len(p) for _, _, p in self.rows)
        assert stats.epoch == self.epoch == self.box.epoch
        assert (stats.oldest_unacked_age is None) == (not self.rows)
        assert self.box.last_seq == self.last_seq
        assert self.box.last_acked == self.last_acked


TestOutboxMachine = OutboxMachine.TestCase
TestOutboxMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


@pytest.fixture
def db(tmp_path: Path) -> Database:
    return open_database(tmp_path / "w.db")


def test_seqs_never_reused_after_everything_acked_and_restart(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    with open_database(path) as db:
        box = Outbox(db)
        assert box.append_many([("k", b"a"), ("k", b"b")]) == [1, 2]
        assert box.ack(2) == 2
        epoch = box.epoch
    with open_database(path) as db:
        box = Outbox(db)
        assert box.epoch == epoch
        assert list(box.pending()) == []
        assert box.append("k", b"c") == 3
        assert [r.seq for r in box.pending()] == [3]


def test_streams_in_one_file_are_independent(db: Database) -> None:
    a, b = Outbox(db, "worker-a"), Outbox(db, "worker-b")
    assert a.epoch != b.epoch
    assert a.append("k", b"1") == 1
    assert b.append_many([("k", b"x"), ("k", b"y")]) == [1, 2]
    assert a.ack(1) == 1
    assert [r.payload for r in b.pending()] == [b"x", b"y"]
    with pytest.raises(AckOutOfRange):
        a.ack(2)


def test_outbox_full_stores_nothing_and_reports_bounds(db: Database) -> None:
    box = Outbox(db, max_rows=3, max_bytes=10)
    box.append_many([("k", b"12345"), ("k", b"1234")])
    with pytest.raises(OutboxFull) as info:
        box.append_many([("k", b"1"), ("k", b"2")])
    err = info.value
    assert (err.depth_rows, err.depth_bytes, err.adding_rows, err.adding_bytes) == (2, 9, 2, 2)
    assert "wait for the peer to acknowledge" in str(err)
    assert box.stats().depth_rows == 2
    box.ack(1)
    assert box.append("k", b"12") == 3


def test_ack_is_idempotent_and_rejects_negative(db: Database) -> None:
    box = Outbox(db)
    box.append_many([("k", b"a")] * 5)
    assert box.ack(3) == 3
    assert box.ack(3) == 0
    assert box.ack(1) == 0
    assert box.last_acked == 3
    with pytest.raises(ValueError, match=">= 0"):
        box.ack(-1)


def test_pending_streams_a_large_backlog_in_chunks(db: Database) -> None:
    box = Outbox(db)
    box.append_many([("k", i.to_bytes(4, "big")) for i in range(2500)])
    it = box.pending(after=10)
    first = next(it)
    assert first.seq == 11
    box.ack(2000)  # acks while iterating do not break the stream
    rest = [r.seq for r in it]
    assert rest[-1] == 2500
    assert rest == sorted(rest)
    assert len(list(box.pending(limit=1234))) == 500
    assert [r.seq for r in box.pending(after=2400, limit=3)] == [2401, 2402, 2403]


def test_age_uses_the_clock(db: Database) -> None:
    now = [100.0]
    box = Outbox(db, clock=lambda: now[0])
    assert box.stats().oldest_unacked_age is None
    box.append("k", b"x")
    now[0] = 107.5
    assert box.stats().oldest_unacked_age == 7.5


def test_file_stays_bounded_under_steady_traffic(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    payload = b"x" * 2000
    with open_database(path, durability="normal") as db:
        box = Outbox(db)
        sizes = []
        for round_ in range(60):
            seqs = box.append_many([("k", payload)] * 200)
            box.ack(seqs[-1])
            if round_ >= 10:
                sizes.append(sum(db.file_sizes()))
        # 12,000 messages (24 MB) went through; the file pair stays at a small fixed size.
        assert max(sizes) < 8 << 20
        assert max(sizes[-10:]) <= max(sizes[:10]) + (1 << 20)
        # A big backlog drained: free pages go back to the OS (incremental vacuum), one bounded
        # step per ack and the rest in further steps (the Outbox actor takes them when idle).
        box.append_many([("k", payload)] * 5000)
        big = db.file_sizes()[0]
        box.ack(box.last_seq)
        for _ in range(100):
            if not db.reclaim_space():
                break
        assert not db.reclaim_space()
        db.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert db.file_sizes()[0] < big / 2
    with open_database(path) as db:
        assert Outbox(db).last_seq == 60 * 200 + 5000


def test_second_thread_reads_while_owner_writes(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    db = open_database(path)
    box = Outbox(db)
    box.append("k", b"first")
    seen: list[int] = []
    errors: list[BaseException] = []
    go = threading.Event()

    def reader() -> None:
        try:
            go.wait(5)
            for _ in range(50):
                with open_database(path, readonly=True) as ro:
                    stats = Outbox(ro).stats()
                    seen.append(stats.last_seq)
                    assert stats.depth_rows == stats.last_seq - stats.last_acked
                    rows = list(Outbox(ro).pending())
                    assert [r.seq for r in rows] == list(range(rows[0].seq, rows[0].seq + len(rows)))
                summary = inspect_database(path)
                assert summary.outbox[0].stream == "out"
        except BaseException as exc:  # reported to the main thread below
            errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    go.set()
    while t.is_alive():
        box.append_many([("k", b"more")] * 10)
        box.ack(box.last_seq - 5)
    t.join(10)
    db.close()
    assert not errors, errors
    assert seen == sorted(seen)


def test_a_database_is_bound_to_its_thread(db: Database) -> None:
    box = Outbox(db)
    errors: list[BaseException] = []

    def other() -> None:
        try:
            box.append("k", b"x")
        except BaseException as exc:
            errors.append(exc)

    t = threading.Thread(target=other)
    t.start()
    t.join(5)
    assert len(errors) == 1
    assert isinstance(errors[0], StorageError)
    assert "open one per thread" in str(errors[0])


def test_readonly_database_refuses_unknown_stream_and_writes(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    with open_database(path) as db:
        Outbox(db).append("k", b"x")
    with open_database(path, readonly=True) as ro:
        with pytest.raises(StorageError, match="no outbox stream"):
            Outbox(ro, "other")
        box = Outbox(ro)
        assert [r.payload for r in box.pending()] == [b"x"]
        with pytest.raises(StorageError, match="read-only"):
            box.append("k", b"y")


def test_outbox_argument_checks(db: Database) -> None:
    with pytest.raises(ValueError, match="empty"):
        Outbox(db, "")
    with pytest.raises(ValueError, match="positive"):
        Outbox(db, max_rows=0)
    assert Outbox(db).append_many([]) == []
