"""An append outside a transaction is one insert, committed by itself (the schema's triggers move
the stream's seq and depth): what it must keep of the outbox's guarantees."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobrelay.storage import Outbox, OutboxFull, StorageError, open_database


def test_an_append_outside_a_transaction_is_one_statement(tmp_path: Path) -> None:
    db = open_database(tmp_path / "w.db")
    box = Outbox(db)
    box.append("event", b"first")  # reads the stream once
    statements: list[str] = []
    db.conn.set_trace_callback(statements.append)
    try:
        assert box.append_many([("event", b"a"), ("event", b"bc")]) == [2, 3]
    finally:
        db.conn.set_trace_callback(None)
    # No BEGIN, no read, no UPDATE, no COMMIT: the insert alone (traced again for each trigger
    # program it runs).
    assert len(set(statements)) == 1 and statements[0].startswith("INSERT INTO outbox_segments"), statements
    stats = box.stats()
    assert (stats.last_seq, stats.depth_rows, stats.depth_bytes) == (3, 3, len(b"firstabc"))
    db.close()


def test_appends_from_two_handles_of_one_stream_keep_seqs_contiguous(tmp_path: Path) -> None:
    db = open_database(tmp_path / "w.db")
    a, b = Outbox(db), Outbox(db)
    assert a.append("k", b"1") == 1
    assert b.append("k", b"22") == 2  # a's idea of the stream is now stale
    assert a.append("k", b"333") == 3  # refused by the trigger, then appended from the file
    assert [r.payload for r in a.pending()] == [b"1", b"22", b"333"]
    stats = b.stats()
    assert (stats.last_seq, stats.depth_rows, stats.depth_bytes) == (3, 3, 6)
    db.close()


def test_an_append_rolled_back_with_the_callers_transaction_leaves_no_trace(tmp_path: Path) -> None:
    db = open_database(tmp_path / "w.db")
    box = Outbox(db)
    assert box.append("k", b"kept") == 1
    with pytest.raises(RuntimeError), db.transaction("publish"):
        assert box.append("k", b"gone") == 2
        raise RuntimeError("the caller's next step failed")
    assert box.append("k", b"next") == 2  # seq 2 again: it was never committed
    assert [r.payload for r in box.pending()] == [b"kept", b"next"]
    assert box.stats().depth_bytes == len(b"keptnext")
    db.close()


def test_a_full_outbox_refuses_the_one_statement_append_and_stores_nothing(tmp_path: Path) -> None:
    db = open_database(tmp_path / "w.db")
    box = Outbox(db, max_rows=2, max_bytes=100)
    box.append_many([("k", b"x"), ("k", b"y")])
    with pytest.raises(OutboxFull) as info:
        box.append("k", b"z")
    assert (info.value.depth_rows, info.value.adding_rows, info.value.max_rows) == (2, 1, 2)
    box.ack(1)
    assert box.append("k", b"z") == 3  # room again after the ack
    assert [r.payload for r in box.pending()] == [b"y", b"z"]
    db.close()


def test_a_segment_out_of_sequence_is_refused_by_the_file(tmp_path: Path) -> None:
    db = open_database(tmp_path / "w.db")
    box = Outbox(db)
    box.append("k", b"1")
    with pytest.raises(StorageError, match="out of sequence"), db.statement("raw insert") as conn:
        conn.execute(
            "INSERT INTO outbox_segments (stream_id, last_seq, first_seq, kinds, sizes, payloads, "
            "created_at) SELECT id, 5, 5, 'k', x'01000000', x'00', 0 FROM outbox_streams"
        )
    assert box.append("k", b"2") == 2
    db.close()
