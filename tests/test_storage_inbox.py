"""Inbox: model-based state machine (accept, duplicates, gaps, epochs, consume, reopen)."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from jobrelay.storage import AcceptResult, Database, Inbox, open_database

STREAMS = ("fac", "other")
streams = st.sampled_from(STREAMS)


@dataclass
class ModelStream:
    epoch: str = ""
    generation: int = 1
    hwm: int = 0
    # (generation, epoch, seq, kind, payload)
    rows: list[tuple[int, str, int, str, bytes]] = field(default_factory=list)


class InboxMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="jobrelay-inbox-"))
        self.path = self.dir / "w.db"
        self.db: Database = open_database(self.path, durability="normal")
        self.inbox = Inbox(self.db)
        self.model: dict[str, ModelStream] = {}
        self.epochs = 0

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _model_accept(self, stream: str, seq: int, kind: str, payload: bytes) -> AcceptResult:
        m = self.model.setdefault(stream, ModelStream())
        if seq <= m.hwm:
            return AcceptResult.DUPLICATE
        if seq > m.hwm + 1:
            return AcceptResult.GAP
        m.rows.append((m.generation, m.epoch, seq, kind, payload))
        m.hwm = seq
        return AcceptResult.ACCEPTED

    def _seq(self, data: st.DataObject, stream: str) -> int:
        hwm = self.model[stream].hwm if stream in self.model else 0
        # Mostly the next seq, sometimes a duplicate or a gap.
        return data.draw(
            st.one_of(st.just(hwm + 1), st.integers(1, max(1, hwm)), st.integers(hwm + 2, hwm + 4)),
            label="seq",
        )

    @rule(stream=streams, data=st.data(), payload=st.binary(max_size=20))
    def accept(self, stream: str, data: st.DataObject, payload: bytes) -> None:
        seq = self._seq(data, stream)
        expected = self._model_accept(stream, seq, "job_request", payload)
        assert self.inbox.accept(stream, seq, "job_request", payload) is expected

    @rule(stream=streams, data=st.data(), n=st.integers(0, 6))
    def accept_many(self, stream: str, data: st.DataObject, n: int) -> None:
        batch = []
        expected = []
        for i in range(n):
            seq = (
                self._seq(data, stream)
                if i == 0 or data.draw(st.booleans())
                else (self.model[stream].hwm + 1 if stream in self.model else 1)
            )
            payload = f"{stream}-{seq}-{i}".encode()
            batch.append((seq, "job_request", payload))
            expected.append(self._model_accept(stream, seq, "job_request", payload))
        assert self.inbox.accept_many(stream, batch) == expected

    @rule(stream=streams, data=st.data(), n=st.integers(0, 6))
    def advance(self, stream: str, data: st.DataObject, n: int) -> None:
        # A receiver that applies what it accepts in the same commit: the hwm moves as in
        # accept_many, and nothing is left to consume.
        seqs, expected = [], []
        for _ in range(n):
            seq = self._seq(data, stream)
            seqs.append(seq)
            m = self.model.setdefault(stream, ModelStream())
            if seq <= m.hwm:
                expected.append(AcceptResult.DUPLICATE)
            elif seq > m.hwm + 1:
                expected.append(AcceptResult.GAP)
            else:
                m.hwm = seq
                expected.append(AcceptResult.ACCEPTED)
        assert self.inbox.advance(stream, seqs) == expected

    @rule(stream=streams, fresh=st.booleans(), hwm=st.integers(0, 3))
    def start_epoch(self, stream: str, fresh: bool, hwm: int) -> None:
        # Epochs are random ids: a fresh one never repeats an earlier one.
        m = self.model.get(stream)
        if fresh or m is None or not m.epoch:
            self.epochs += 1
            epoch = f"e{self.epochs}"
        else:
            epoch = m.epoch
        new = m is None or m.epoch != epoch
        if m is None:
            self.model[stream] = ModelStream(epoch=epoch, hwm=hwm)
        elif new:
            m.epoch, m.hwm, m.generation = epoch, hwm, m.generation + 1
        assert self.inbox.start_epoch(stream, epoch, hwm) is new

    @rule(stream=streams, data=st.data())
    def mark_consumed(self, stream: str, data: st.DataObject) -> None:
        m = self.model.get(stream)
        if m is None or not m.rows:
            assert self.inbox.mark_consumed(stream, 5) == 0
            return
        gen, epoch, seq, _, _ = data.draw(st.sampled_from(m.rows), label="upto_row")
        pass_epoch = data.draw(st.booleans(), label="pass_epoch") or gen != m.generation
        before = len(m.rows)
        m.rows = [r for r in m.rows if not (r[0] < gen or (r[0] == gen and r[2] <= seq))]
        got = self.inbox.mark_consumed(stream, seq, epoch if pass_epoch else None)
        assert got == before - len(m.rows)

    @rule()
    def reopen(self) -> None:
        self.db.close()
        self.db = open_database(self.path, durability="normal")
        self.inbox = Inbox(self.db)

    @invariant()
    def state_matches(self) -> None:
        for stream in STREAMS:
            m = self.model.get(stream)
            assert self.inbox.state(stream) == ((m.epoch, m.hwm) if m else ("", 0))
            got = [(r.epoch, r.seq, r.kind, r.payload) for r in self.inbox.unconsumed(stream)]
            assert got == [(e, s, k, p) for _, e, s, k, p in (m.rows if m else [])]
        everything = self.inbox.unconsumed()
        assert len(everything) == sum(len(m.rows) for m in self.model.values())
        for state in self.inbox.streams():
            assert state.unconsumed == len(self.model[state.stream].rows)


TestInboxMachine = InboxMachine.TestCase
TestInboxMachine.settings = settings(max_examples=100, stateful_step_count=40, deadline=None)


@pytest.fixture
def inbox(tmp_path: Path) -> Inbox:
    return Inbox(open_database(tmp_path / "w.db"))


def test_new_epoch_seq_one_is_not_a_duplicate(inbox: Inbox) -> None:
    assert inbox.start_epoch("fac", "old")
    assert inbox.accept_many("fac", [(1, "k", b"a"), (2, "k", b"b")]) == [AcceptResult.ACCEPTED] * 2
    assert inbox.start_epoch("fac", "new")
    assert not inbox.start_epoch("fac", "new", 7)
    assert inbox.accept("fac", 1, "k", b"c") is AcceptResult.ACCEPTED
    assert [(r.epoch, r.seq) for r in inbox.unconsumed("fac")] == [
        ("old", 1),
        ("old", 2),
        ("new", 1),
    ]
    assert inbox.mark_consumed("fac", 1, "old") == 1
    assert inbox.mark_consumed("fac", 1) == 2  # current epoch: older epochs consumed too
    assert inbox.unconsumed() == []
    assert inbox.hwm("fac") == 1


def test_limit_and_argument_checks(inbox: Inbox) -> None:
    inbox.accept_many("s", [(i, "k", b"") for i in range(1, 6)])
    assert [r.seq for r in inbox.unconsumed(limit=2)] == [1, 2]
    with pytest.raises(ValueError, match=">= 1"):
        inbox.accept("s", 0, "k", b"")
    with pytest.raises(ValueError, match=">= 1"):
        inbox.advance("s", [6, 0])
    assert inbox.hwm("s") == 5  # nothing of the refused batch moved it
    with pytest.raises(ValueError, match="empty"):
        inbox.start_epoch("s", "")
    with pytest.raises(ValueError, match=">= 0"):
        inbox.start_epoch("s", "e", -1)
    assert inbox.accept_many("s", []) == []
    assert inbox.mark_consumed("unknown", 3) == 0
    assert inbox.mark_consumed("s", 3, "no-such-epoch") == 0


def test_raise_hwm_moves_up_within_the_current_epoch_only(tmp_path: Path) -> None:
    db = open_database(tmp_path / "i.db")
    inbox = Inbox(db)
    inbox.start_epoch("peer", "e1", 0)
    assert inbox.accept("peer", 1, "k", b"x") is AcceptResult.ACCEPTED
    assert inbox.raise_hwm("peer", "e1", 5)
    assert inbox.state("peer") == ("e1", 5)
    assert not inbox.raise_hwm("peer", "e1", 3)  # never lowers
    assert not inbox.raise_hwm("peer", "other-epoch", 9)  # another epoch changes nothing
    assert inbox.accept("peer", 6, "k", b"y") is AcceptResult.ACCEPTED
    assert inbox.accept("peer", 4, "k", b"z") is AcceptResult.DUPLICATE
    db.close()
