"""Files jobrelay cannot use give StorageError (saying what to do) and are left unchanged."""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobrelay.storage import (
    SCHEMA_VERSION,
    AcceptResult,
    Database,
    Inbox,
    JobLedger,
    Outbox,
    StorageError,
    open_database,
)
from jobrelay.storage.database import translate_error


def make_db(path: Path, rows: int = 200) -> bytes:
    """A closed, checkpointed jobrelay database with some content; returns its bytes."""
    rng = random.Random(4)
    with open_database(path) as db:
        Outbox(db).append_many([("k", rng.randbytes(500)) for _ in range(rows)])
        JobLedger(db).record_request("j", "k", b"{}")
    assert not Path(f"{path}-wal").exists()
    return path.read_bytes()


def assert_refused(path: Path, match: str, *, readonly: bool = False) -> StorageError:
    before = path.read_bytes()
    with pytest.raises(StorageError, match=match) as info:
        open_database(path, readonly=readonly)
    assert path.read_bytes() == before, "a refused file must not be modified"
    assert str(path) in str(info.value)
    return info.value


@pytest.mark.parametrize("size", [1, 50, 99, 100, 4096, 65536])
def test_random_bytes_are_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "w.db"
    path.write_bytes(random.Random(size).randbytes(size))
    err = assert_refused(path, "not a usable jobrelay database")
    assert "restore it from a backup" in str(err)
    assert sorted(os.listdir(tmp_path)) == ["w.db"]  # no -wal/-shm created beside it


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_file_is_refused(tmp_path: Path, fraction: float) -> None:
    path = tmp_path / "w.db"
    good = make_db(path)
    path.write_bytes(good[: int(len(good) * fraction)])
    assert_refused(path, "truncated")
    assert_refused(path, "truncated", readonly=True)


def test_truncated_at_a_page_boundary_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    good = make_db(path)
    path.write_bytes(good[: 4096 * 3])
    assert_refused(path, "truncated")


def test_header_only_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    good = make_db(path)
    path.write_bytes(good[:100])
    assert_refused(path, "not a usable jobrelay database")


def test_corrupted_page_is_found_by_the_integrity_check(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    good = make_db(path)
    start = 4096 * 10
    path.write_bytes(good[:start] + random.Random(1).randbytes(4096) + good[start + 4096 :])
    assert_refused(path, "integrity check")


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    make_db(path)
    conn = sqlite3.connect(path)
    conn.execute("INSERT INTO jobrelay_schema VALUES (?, 'future', 0)", (SCHEMA_VERSION + 98,))
    conn.commit()
    conn.close()
    for readonly in (False, True):
        err = assert_refused(
            path,
            rf"newer jobrelay \(schema {SCHEMA_VERSION + 98} > {SCHEMA_VERSION}\)",
            readonly=readonly,
        )
        assert "upgrade jobrelay or point --db at another file" in str(err)


def test_database_of_another_application_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (name TEXT)")
    conn.execute("INSERT INTO users VALUES ('ada')")
    conn.commit()
    conn.close()
    assert_refused(path, "another application or an unknown schema")


def test_empty_schema_table_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    make_db(path)
    conn = sqlite3.connect(path)
    conn.execute("DELETE FROM jobrelay_schema")
    conn.commit()
    conn.close()
    assert_refused(path, "schema version table is empty")


def test_empty_file_becomes_a_database(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    path.touch()
    with open_database(path) as db:
        assert db.schema_version == SCHEMA_VERSION


def test_unwritable_locations(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for bad in (a_file / "w.db", tmp_path / "missing" / "w.db"):
        with pytest.raises(StorageError, match="does not exist"):
            open_database(bad)
    with pytest.raises(StorageError, match="cannot be opened or created"):
        open_database("/proc/self/jobrelay.db")  # a read-only file system, even for root
    with pytest.raises(StorageError, match="is a directory"):
        open_database(tmp_path)
    with pytest.raises(StorageError, match="does not exist"):
        open_database(tmp_path / "absent.db", readonly=True)
    assert sorted(os.listdir(tmp_path)) == ["file"]


READONLY_CHILD = textwrap.dedent(
    """
    import sys
    from jobrelay.storage import StorageError, open_database
    for path, readonly in ((sys.argv[1], False), (sys.argv[1], True), (sys.argv[2], False)):
        try:
            open_database(path, readonly=readonly).close()
            print("opened", path, readonly)
        except StorageError as exc:
            print("StorageError:", exc)
    """
)


@pytest.fixture
def readonly_dir() -> Iterator[Path]:
    # Not under tmp_path: the child may lack the rights to reach pytest's private directory.
    base = Path(tempfile.mkdtemp(prefix="jobrelay-ro-"))
    base.chmod(0o755)
    ro = base / "ro"
    ro.mkdir()
    try:
        yield ro
    finally:
        ro.chmod(0o755)
        shutil.rmtree(base)


def _check_readonly_dir(ro: Path, prefix: list[str]) -> None:
    path = ro / "w.db"
    make_db(path, rows=5)
    path.chmod(0o666)  # the file itself is writable: only the directory is read-only
    ro.chmod(0o555)
    before = path.read_bytes()
    proc = subprocess.run(
        [*prefix, sys.executable, "-c", READONLY_CHILD, str(path), str(ro / "new.db")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 3, proc.stdout
    assert all(line.startswith("StorageError:") for line in lines), proc.stdout
    assert "read-only" in lines[0]
    assert "writable" in lines[2]
    assert path.read_bytes() == before
    assert sorted(os.listdir(ro)) == ["w.db"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_readonly_directory(readonly_dir: Path) -> None:
    _check_readonly_dir(readonly_dir, [])


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="needs root and setpriv to drop CAP_DAC_OVERRIDE",
)
def test_readonly_directory_for_root_without_dac_override(readonly_dir: Path) -> None:
    # Root bypasses permission bits through CAP_DAC_OVERRIDE; a child without it obeys them.
    _check_readonly_dir(readonly_dir, ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--"])


def test_full_disk_is_a_storage_error_and_keeps_what_was_stored(tmp_path: Path) -> None:
    db = open_database(tmp_path / "w.db")
    box = Outbox(db)
    inbox = Inbox(db)
    ledger = JobLedger(db)
    pages = db.conn.execute("PRAGMA page_count").fetchone()[0]
    db.conn.execute(f"PRAGMA max_page_count = {pages + 6}")  # a disk with 24 KiB free
    stored = []
    with pytest.raises(StorageError, match="full") as info:
        for i in range(100):
            stored.append(box.append("k", bytes([i]) * 3000))
    assert "nothing from this operation was stored" in str(info.value)
    assert [r.seq for r in box.pending()] == stored
    assert box.stats().depth_rows == len(stored)
    with pytest.raises(StorageError, match="full"):
        inbox.accept_many("fac", [(i, "k", b"y" * 3000) for i in range(1, 20)])
    assert inbox.state("fac") == ("", 0)
    with pytest.raises(StorageError, match="full"):
        ledger.record_request("j", "k", b"z" * 30000)
    assert ledger.get("j") is None
    # Space freed by an ack is reused: the store keeps working.
    box.ack(stored[-1])
    assert box.append("k", b"after") == stored[-1] + 1
    assert inbox.accept("fac", 1, "k", b"small") is AcceptResult.ACCEPTED
    db.close()


def test_lock_held_too_long_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    holder = open_database(path)
    other = open_database(path, busy_timeout=0.05)
    box = Outbox(other)
    with holder.transaction("hold the write lock"):
        Outbox(holder, "x").append("k", b"")
        with pytest.raises(StorageError, match="busy timeout"):
            box.append("k", b"")
    assert box.append("k", b"") == 1
    holder.close()
    other.close()


def test_closed_database_is_a_storage_error(tmp_path: Path) -> None:
    db = open_database(tmp_path / "w.db")
    box = Outbox(db)
    inbox = Inbox(db)
    db.close()
    db.close()  # idempotent
    assert db.closed
    with pytest.raises(StorageError, match="closed"):
        box.append("k", b"")
    with pytest.raises(StorageError, match="closed"):
        inbox.state("s")
    with pytest.raises(StorageError, match="closed"):
        list(box.pending())


def test_one_transaction_around_several_stores(tmp_path: Path) -> None:
    db = open_database(tmp_path / "w.db")
    inbox, ledger = Inbox(db), JobLedger(db)
    with db.transaction("accept job"):
        inbox.accept("fac", 1, "job_request", b"{}")
        ledger.record_request("j1", "k", b"{}")
    with pytest.raises(RuntimeError), db.transaction("accept job"):
        inbox.accept("fac", 2, "job_request", b"{}")
        ledger.record_request("j2", "k", b"{}")
        raise RuntimeError("handler lookup failed")
    assert inbox.hwm("fac") == 1
    assert ledger.get("j2") is None
    assert ledger.get("j1") is not None
    db.close()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability"):
        open_database(tmp_path / "w.db", durability="fast")  # type: ignore[arg-type]


def test_translate_error_covers_os_errors() -> None:
    err = translate_error(OSError(5, "Input/output error"), "open", "/x.db")
    assert "I/O error" in str(err)
    assert err.path == "/x.db"


def test_a_v1_file_migrates_forward_keeping_its_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobrelay.storage import schema

    path = tmp_path / "old.db"
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:1])  # what an older jobrelay wrote
        with open_database(path) as db:
            assert db.schema_version == 1
            _v1_outbox_rows(db, "out", [("k", b"kept")])
            db.conn.execute(  # a job row as v1 wrote it (no pinned column)
                "INSERT INTO jobs (job_id, kind, payload, peer, detail, attempts, created_at, updated_at) "
                "VALUES ('j1', 'k', x'7b7d', 'w1', '', 1, 0, 0)"
            )
            assert "facilitator_workers" not in db.su.table_names()
    with open_database(path) as db:
        assert db.schema_version == SCHEMA_VERSION == 9
        assert {
            "facilitator_workers",
            "facilitator_worker_event_batches",
            "job_dispatches",
            "worker_local_state",
            "totals",
        } <= set(db.su.table_names())
        assert [r.payload for r in Outbox(db).pending()] == [b"kept"]
        # v3: an old job is pinned to nobody (the facilitator chose its worker), and keeps its owner
        assert db.query("SELECT peer, pinned FROM jobs WHERE job_id = 'j1'", (), "read") == [("w1", "")]


def _v1_outbox_rows(db: Database, stream: str, items: list[tuple[str, bytes]], acked: int = 0) -> None:
    """An outbox stream as versions 1-6 stored it: one row per message, seqs acked+1…"""
    n = len(items)
    with db.transaction() as conn:
        (sid,) = conn.execute(
            "INSERT INTO outbox_streams (stream, epoch, last_seq, last_acked, depth_rows, depth_bytes,"
            " created_at) VALUES (?, 'e0', ?, ?, ?, ?, 0) RETURNING id",
            (stream, acked + n, acked, n, sum(len(p) for _, p in items)),
        ).fetchone()
        conn.executemany(
            "INSERT INTO outbox (stream_id, seq, kind, payload, created_at) VALUES (?,?,?,?,?)",
            [(sid, acked + i, k, p, 100.0 + i) for i, (k, p) in enumerate(items, 1)],
        )


def test_a_v6_outbox_moves_into_segments_with_every_message_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobrelay.storage import schema

    path = tmp_path / "old.db"
    many = [("job_status" if i % 3 else "worker_event", b"%d" % i * (1 + i % 7)) for i in range(2500)]
    big = [("k", b"x" * 700_000), ("k", b"y" * 700_000), ("k", b"z")]  # over a segment's MAX_BYTES
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:6])
        with open_database(path) as db:
            _v1_outbox_rows(db, "a", many, acked=40)
            _v1_outbox_rows(db, "b", big)
            _v1_outbox_rows(db, "empty", [], acked=9)
    with open_database(path) as db:
        assert db.schema_version == 9 and "outbox" not in db.su.table_names()
        a, b, empty = Outbox(db, "a"), Outbox(db, "b"), Outbox(db, "empty")
        assert [(r.seq, r.kind, r.payload) for r in a.pending()] == [
            (41 + i, k, p) for i, (k, p) in enumerate(many)
        ]
        assert [r.payload for r in b.pending()] == [p for _, p in big]
        assert (a.stats().depth_rows, a.stats().depth_bytes) == (2500, sum(len(p) for _, p in many))
        assert a.stats().oldest_unacked_age is not None
        assert empty.append("k", b"next") == 10 and a.append("k", b"next") == 2541
        assert a.ack(1040) == 1000
        assert (a.stats().depth_rows, a.stats().depth_bytes) == (
            1501,
            sum(len(p) for _, p in many[1000:]) + 4,
        )


@pytest.mark.parametrize(
    "damage",
    [
        "UPDATE outbox_segments SET sizes = substr(sizes, 1, 6)",  # not whole uint32s
        "UPDATE outbox_segments SET payloads = substr(payloads, 2)",  # sizes no longer add up
        "UPDATE outbox_segments SET kinds = 'a' || char(10) || 'b'",  # 2 kinds for 3 messages
        "UPDATE outbox_segments SET first_seq = first_seq - 1",  # 4 seqs for 3 messages
    ],
)
def test_a_corrupt_outbox_segment_is_a_storage_error_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "w.db"
    with open_database(path) as db:
        Outbox(db).append_many([("k", b"one"), ("k", b"two"), ("k", b"three")])
        with db.transaction() as conn:
            conn.execute(damage)
        with pytest.raises(StorageError, match=r"corrupt; restore the file from a backup") as info:
            list(Outbox(db).pending())
        assert info.value.path == str(path)


def test_a_v6_outbox_with_a_gap_in_its_seqs_is_refused_and_left_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobrelay.storage import schema

    path = tmp_path / "old.db"
    with monkeypatch.context() as m:
        m.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:6])
        with open_database(path) as db:
            _v1_outbox_rows(db, "a", [("k", b"1"), ("k", b"2"), ("k", b"3")])
            with db.transaction() as conn:
                conn.execute("DELETE FROM outbox WHERE seq = 2")  # altered outside jobrelay
    before = path.read_bytes()
    with pytest.raises(StorageError, match="seq 3 follows seq 1"):
        open_database(path)
    assert path.read_bytes() == before
