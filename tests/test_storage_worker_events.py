"""The facilitator's record of each worker's events: the newest kept, in order, one row per batch."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobrelay.storage import StorageError, open_database, routing


def events(start: int, stop: int) -> list[tuple[str, str, float]]:
    return [(f"e{i}", f"detail {i}", float(i)) for i in range(start, stop)]


def test_the_newest_events_are_kept_in_order_and_old_batches_go(tmp_path: Path) -> None:
    with open_database(tmp_path / "f.db") as db:
        for start in range(0, 2500, 250):
            routing.record_worker_events(db, "w1", events(start, start + 250), keep=1000)
        routing.record_worker_events(db, "w2", events(0, 3), keep=1000)
        assert routing.worker_events(db, "w1", limit=1000) == events(1500, 2500)
        assert routing.worker_events(db, "w1", limit=5) == events(2495, 2500)
        assert routing.worker_events(db, "w2", limit=100) == events(0, 3)
        assert routing.worker_events(db, "nobody") == []
        (rows,) = db.query("SELECT count(*) FROM facilitator_worker_event_batches WHERE worker_id = 'w1'")
        assert rows[0] <= 1000 // 250 + 1  # whole batches older than the newest 1000 are gone
        assert [r.last_event for r in routing.worker_records(db) if r.worker_id == "w1"] == ["e2499"]


def test_a_batch_larger_than_keep_keeps_its_newest(tmp_path: Path) -> None:
    with open_database(tmp_path / "f.db") as db:
        routing.record_worker_events(db, "w1", events(0, 10), keep=4)
        routing.record_worker_events(db, "w1", events(10, 13), keep=4)
        assert routing.worker_events(db, "w1", limit=100) == events(6, 13)[-7:]
        assert routing.worker_events(db, "w1", limit=4) == events(9, 13)


def test_a_corrupt_batch_is_a_storage_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    with open_database(path) as db:
        routing.record_worker_events(db, "w1", events(0, 3))
        with db.transaction() as conn:
            conn.execute("UPDATE facilitator_worker_event_batches SET events = x'c1'")
        with pytest.raises(StorageError, match="corrupt") as info:
            routing.worker_events(db, "w1")
        assert info.value.path == str(path)


def test_a_v7_file_keeps_its_worker_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobrelay.storage import schema

    path = tmp_path / "old.db"
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:7])
        with open_database(path) as db, db.transaction() as conn:
            conn.executemany(
                "INSERT INTO facilitator_worker_events (worker_id, event, detail, at) VALUES (?,?,?,?)",
                [("w1", *e) for e in events(0, 5)] + [("w2", *e) for e in events(7, 9)],
            )
    with open_database(path) as db:
        assert db.schema_version == 9
        assert routing.worker_events(db, "w1") == events(0, 5)
        assert routing.worker_events(db, "w2") == events(7, 9)
        routing.record_worker_events(db, "w1", events(5, 6))
        assert routing.worker_events(db, "w1") == events(0, 6)


def test_keep_must_keep_something(tmp_path: Path) -> None:
    with open_database(tmp_path / "f.db") as db, pytest.raises(ValueError, match="keep"):
        routing.record_worker_events(db, "w1", events(0, 3), keep=0)
