# The jobrelay schema and its ordered forward migrations.
# Invariants: ``jobrelay_schema`` holds one row per applied migration; the file's version is the
# highest applied. Migrations only move forward, run in order inside the caller's transaction,
# and are never edited once released: a change is a new entry at the end of MIGRATIONS.
# Tables (v1):
#   outbox_streams(id, stream UNIQUE, epoch, last_seq, last_acked, depth_rows, depth_bytes, created_at)
#   outbox(stream_id, seq, kind, payload, created_at)  PK (stream_id, seq), WITHOUT ROWID
#   inbox_streams(stream PK, epoch, generation, hwm, updated_at)
#   inbox(stream, generation, seq, epoch, kind, payload, accepted_at)  PK (stream, generation, seq)
#   jobs(job_id PK, kind, payload, peer, status, detail, progress, attempts, created_at, updated_at)
#   job_history(id PK, job_id -> jobs, status, detail, progress, at)
# Tables (v2, used by the reference facilitator; see storage/routing.py):
#   facilitator_workers(worker_id PK, specs, specs_at, last_event, last_seen)
#   facilitator_worker_events(id PK, worker_id, event, detail, at); index jobs(peer)
# v3: jobs.pinned, the worker a job was submitted for ('' when the facilitator chooses): a retry
#   or a hand-back of a pinned job waits for that worker, never another one; jobs.cancel_reason,
#   set (on the worker) in the same transaction that takes in a job's cancel, so a cancel that
#   arrived before a kill -9 still ends the job `cancelled` after the restart.
# Tables (v4, a worker's jobs run on an external backend such as Celery; see storage/dispatch.py):
#   job_dispatches(job_id PK -> jobs ON DELETE CASCADE, attempt, backend, task_id, position,
#                  dispatched_at)
# Tables (v5, the worker's local mode; see storage/local_state.py):
#   worker_local_state(id PK = 1, active, since, last_contact, activations, updated_at)
# Tables (v6, counters that outlive the process; see storage/totals.py): totals(name PK, value)
# v7: the outbox stored in segments (storage/segments.py), one row per append of up to 1,000
#   messages; table outbox replaced by outbox_segments(stream_id -> outbox_streams, last_seq,
#   first_seq, kinds, sizes, payloads, created_at)  PK (stream_id, last_seq). Rows are copied over.
# v8: a worker's events stored per batch: facilitator_worker_events replaced by
#   facilitator_worker_event_batches(worker_id, last_n, count, events)  PK (worker_id, last_n);
#   last_n numbers the worker's events; events is a msgpack array of [event, detail, at].
# v9: triggers on outbox_segments: an insert must start right after its stream's last_seq
#   (outbox_segments_in_order) and moves last_seq, depth_rows and depth_bytes
#   (outbox_segments_count), so an append outside a transaction is one statement.
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, NamedTuple

import msgspec
import sqlite_utils

from jobrelay.storage.errors import StorageError
from jobrelay.storage.segments import MAX_MESSAGES, pack

__all__ = [
    "APPLICATION_ID",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "migrate",
    "read_schema_version",
]

# PRAGMA application_id: "JRLY", so `file` and jobrelay itself recognise the file.
APPLICATION_ID: Final = 0x4A524C59


class Migration(NamedTuple):
    """One forward schema step."""

    version: int
    name: str
    apply: Callable[[sqlite_utils.Database], None]


def _v1_initial(db: sqlite_utils.Database) -> None:
    db.create_table(
        "outbox_streams",
        {
            "id": int,
            "stream": str,
            "epoch": str,
            "last_seq": int,
            "last_acked": int,
            "depth_rows": int,
            "depth_bytes": int,
            "created_at": float,
        },
        pk="id",
        not_null=["stream", "epoch", "last_seq", "last_acked", "depth_rows", "depth_bytes"],
    )
    db.table("outbox_streams").create_index(["stream"], unique=True)
    # WITHOUT ROWID (which sqlite-utils cannot declare): rows are clustered by (stream, seq), so
    # appends, cumulative deletes and replays are each a single walk of one b-tree.
    db.execute(
        """CREATE TABLE outbox (
            stream_id INTEGER NOT NULL REFERENCES outbox_streams(id),
            seq INTEGER NOT NULL,
            kind TEXT NOT NULL,
            payload BLOB NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (stream_id, seq)
        ) WITHOUT ROWID"""
    )
    db.create_table(
        "inbox_streams",
        {"stream": str, "epoch": str, "generation": int, "hwm": int, "updated_at": float},
        pk="stream",
        not_null=["epoch", "generation", "hwm"],
    )
    db.execute(
        """CREATE TABLE inbox (
            stream TEXT NOT NULL REFERENCES inbox_streams(stream),
            generation INTEGER NOT NULL,
            seq INTEGER NOT NULL,
            epoch TEXT NOT NULL,
            kind TEXT NOT NULL,
            payload BLOB NOT NULL,
            accepted_at REAL NOT NULL,
            PRIMARY KEY (stream, generation, seq)
        ) WITHOUT ROWID"""
    )
    db.create_table(
        "jobs",
        {
            "job_id": str,
            "kind": str,
            "payload": bytes,
            "peer": str,
            "status": str,
            "detail": str,
            "progress": float,
            "attempts": int,
            "created_at": float,
            "updated_at": float,
        },
        pk="job_id",
        not_null=["kind", "payload", "peer", "detail", "attempts", "created_at", "updated_at"],
    )
    db.table("jobs").create_index(["status"])
    db.create_table(
        "job_history",
        {
            "id": int,
            "job_id": str,
            "status": str,
            "detail": str,
            "progress": float,
            "at": float,
        },
        pk="id",
        not_null=["job_id", "status", "detail", "at"],
        foreign_keys=[("job_id", "jobs", "job_id")],
    )
    db.table("job_history").create_index(["job_id", "id"])


def _v2_facilitator(db: sqlite_utils.Database) -> None:
    # IF NOT EXISTS: facilitator files made before v2 created these tables outside migrations.
    for statement in (
        """CREATE TABLE IF NOT EXISTS facilitator_workers (
            worker_id TEXT PRIMARY KEY,
            specs BLOB,
            specs_at REAL,
            last_event TEXT NOT NULL DEFAULT '',
            last_seen REAL
        )""",
        """CREATE TABLE IF NOT EXISTS facilitator_worker_events (
            id INTEGER PRIMARY KEY,
            worker_id TEXT NOT NULL,
            event TEXT NOT NULL,
            detail TEXT NOT NULL,
            at REAL NOT NULL
        )""",
        "CREATE INDEX IF NOT EXISTS facilitator_worker_events_worker "
        "ON facilitator_worker_events (worker_id, id)",
        # The facilitator finds queued jobs (peer '') and a worker's jobs by owner.
        "CREATE INDEX IF NOT EXISTS jobs_peer ON jobs (peer)",
    ):
        db.execute(statement)


def _v3_pins_and_cancels(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE jobs ADD COLUMN pinned TEXT NOT NULL DEFAULT ''")
    db.execute("ALTER TABLE jobs ADD COLUMN cancel_reason TEXT")


def _v4_dispatches(db: sqlite_utils.Database) -> None:
    # One row per job handed to an external backend: where its task is and how far its events
    # were relayed. Cascade: pruning a finished job forgets its dispatch too.
    db.execute(
        """CREATE TABLE IF NOT EXISTS job_dispatches (
            job_id TEXT PRIMARY KEY REFERENCES jobs(job_id) ON DELETE CASCADE,
            attempt INTEGER NOT NULL,
            backend TEXT NOT NULL,
            task_id TEXT NOT NULL,
            position TEXT NOT NULL,
            dispatched_at REAL NOT NULL
        )"""
    )


def _v5_local_state(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE IF NOT EXISTS worker_local_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            active INTEGER NOT NULL DEFAULT 0,
            since REAL,
            last_contact REAL,
            activations INTEGER NOT NULL DEFAULT 0,
            updated_at REAL NOT NULL DEFAULT 0
        )"""
    )


def _v6_totals(db: sqlite_utils.Database) -> None:
    db.execute("CREATE TABLE totals (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID")


def _v7_outbox_segments(db: sqlite_utils.Database) -> None:
    # Not WITHOUT ROWID: a segment is large (up to MAX_BYTES), and such tables suit small rows.
    db.execute(
        """CREATE TABLE outbox_segments (
            stream_id INTEGER NOT NULL REFERENCES outbox_streams(id),
            last_seq INTEGER NOT NULL,
            first_seq INTEGER NOT NULL,
            kinds TEXT NOT NULL,
            sizes BLOB NOT NULL,
            payloads BLOB NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (stream_id, last_seq)
        )"""
    )
    conn = db.conn
    rows = conn.execute(
        "SELECT stream_id, seq, kind, payload, created_at FROM outbox ORDER BY stream_id, seq"
    )
    while chunk := rows.fetchmany(MAX_MESSAGES):
        by_stream: dict[int, list[tuple[int, str, bytes, float]]] = {}
        for stream_id, seq, kind, payload, created_at in chunk:
            by_stream.setdefault(stream_id, []).append((seq, kind, payload, created_at))
        for stream_id, items in by_stream.items():
            first = items[0][0]
            for offset, item in enumerate(items):  # contiguous (the Outbox's invariant), or refused
                if item[0] != first + offset:
                    raise StorageError(
                        f"outbox stream {stream_id}: seq {item[0]} follows seq {first + offset - 1}; "
                        "the file was altered outside jobrelay: restore it from a backup"
                    )
            for packed in pack([(kind, payload) for _, kind, payload, _ in items]):
                conn.execute(
                    "INSERT INTO outbox_segments VALUES (?,?,?,?,?,?,?)",
                    (
                        stream_id,
                        first + packed.messages - 1,
                        first,
                        packed.kinds,
                        packed.sizes,
                        packed.payloads,
                        items[first - items[0][0]][3],
                    ),
                )
                first += packed.messages
    rows.close()
    db.execute("DROP TABLE outbox")


def _v8_worker_event_batches(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TABLE facilitator_worker_event_batches (
            worker_id TEXT NOT NULL,
            last_n INTEGER NOT NULL,
            count INTEGER NOT NULL,
            events BLOB NOT NULL,
            PRIMARY KEY (worker_id, last_n)
        )"""
    )
    conn = db.conn
    workers = [w for (w,) in conn.execute("SELECT DISTINCT worker_id FROM facilitator_worker_events")]
    for worker_id in workers:
        events = conn.execute(
            "SELECT event, detail, at FROM facilitator_worker_events WHERE worker_id = ? ORDER BY id",
            (worker_id,),
        ).fetchall()
        conn.execute(
            "INSERT INTO facilitator_worker_event_batches VALUES (?,?,?,?)",
            (worker_id, len(events), len(events), msgspec.msgpack.encode([list(e) for e in events])),
        )
    db.execute("DROP TABLE facilitator_worker_events")


def _v9_outbox_append_triggers(db: sqlite_utils.Database) -> None:
    db.execute(
        """CREATE TRIGGER outbox_segments_in_order BEFORE INSERT ON outbox_segments
        WHEN NEW.first_seq != (SELECT last_seq + 1 FROM outbox_streams WHERE id = NEW.stream_id)
        BEGIN SELECT RAISE(ABORT, 'jobrelay: outbox segment out of sequence'); END"""
    )
    db.execute(
        """CREATE TRIGGER outbox_segments_count AFTER INSERT ON outbox_segments
        BEGIN
            UPDATE outbox_streams SET last_seq = NEW.last_seq,
                depth_rows = depth_rows + NEW.last_seq - NEW.first_seq + 1,
                depth_bytes = depth_bytes + length(NEW.payloads)
            WHERE id = NEW.stream_id;
        END"""
    )


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(1, "initial", _v1_initial),
    Migration(2, "facilitator routing tables", _v2_facilitator),
    Migration(3, "jobs pinned to a worker; cancels kept", _v3_pins_and_cancels),
    Migration(4, "job dispatches to external backends", _v4_dispatches),
    Migration(5, "worker local mode state", _v5_local_state),
    Migration(6, "totals that outlive the process", _v6_totals),
    Migration(7, "outbox stored in segments", _v7_outbox_segments),
    Migration(8, "worker events stored per batch", _v8_worker_event_batches),
    Migration(9, "outbox appends counted by triggers", _v9_outbox_append_triggers),
)
SCHEMA_VERSION: Final = MIGRATIONS[-1].version


def read_schema_version(db: sqlite_utils.Database) -> int:
    """The highest applied migration (0 for a fresh file)."""
    if not db.table("jobrelay_schema").exists():
        return 0
    row = db.conn.execute("SELECT max(version) FROM jobrelay_schema").fetchone()
    return int(row[0] or 0)


def migrate(db: sqlite_utils.Database) -> list[int]:
    """Apply every migration newer than the file's version, in order (caller holds a transaction).

    Args:
        db: The sqlite-utils handle, inside a write transaction.

    Returns:
        The versions applied (empty when already current).
    """
    if not db.table("jobrelay_schema").exists():
        db.create_table(
            "jobrelay_schema",
            {"version": int, "name": str, "applied_at": float},
            pk="version",
            not_null=["name", "applied_at"],
        )
        db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    current = read_schema_version(db)
    applied: list[int] = []
    for migration in MIGRATIONS:
        if migration.version <= current:
            continue
        migration.apply(db)
        db.table("jobrelay_schema").insert(
            {"version": migration.version, "name": migration.name, "applied_at": time.time()}
        )
        applied.append(migration.version)
    return applied
