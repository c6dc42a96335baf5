"""jobrelay storage: durable outbox, inbox and job ledger in one SQLite file (WAL).

Nothing outside this package writes SQL. See docs/STORAGE.md. Names are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobrelay.protocol.lazy import lazy_exports

if TYPE_CHECKING:
    from jobrelay.storage.database import Database, Durability
    from jobrelay.storage.dispatch import Dispatch, Dispatches
    from jobrelay.storage.errors import (
        AckOutOfRange,
        OutboxFull,
        StorageError,
        TerminalStatusError,
        UnknownJobError,
    )
    from jobrelay.storage.inbox import AcceptResult, Inbox, InboxRow, InboxState
    from jobrelay.storage.inspect import (
        DatabaseSummary,
        JobRecordView,
        inspect_database,
        inspect_job,
        outbox_streams,
    )
    from jobrelay.storage.ledger import JobLedger, JobRecord, StatusEntry, StatusResult, StatusUpdate
    from jobrelay.storage.local_state import LocalState, LocalStateStore
    from jobrelay.storage.lock import DatabaseInUse, DatabaseLock, lock_database
    from jobrelay.storage.opening import open_database
    from jobrelay.storage.outbox import Outbox, OutboxRow, OutboxStats
    from jobrelay.storage.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "AcceptResult",
    "AckOutOfRange",
    "Database",
    "DatabaseInUse",
    "DatabaseLock",
    "DatabaseSummary",
    "Dispatch",
    "Dispatches",
    "Durability",
    "Inbox",
    "InboxRow",
    "InboxState",
    "JobLedger",
    "JobRecord",
    "JobRecordView",
    "LocalState",
    "LocalStateStore",
    "Outbox",
    "OutboxFull",
    "OutboxRow",
    "OutboxStats",
    "StatusEntry",
    "StatusResult",
    "StatusUpdate",
    "StorageError",
    "TerminalStatusError",
    "UnknownJobError",
    "inspect_database",
    "inspect_job",
    "lock_database",
    "open_database",
    "outbox_streams",
]

_EXPORTS = {
    "AcceptResult": "jobrelay.storage.inbox",
    "AckOutOfRange": "jobrelay.storage.errors",
    "Database": "jobrelay.storage.database",
    "LocalState": "jobrelay.storage.local_state",
    "LocalStateStore": "jobrelay.storage.local_state",
    "DatabaseInUse": "jobrelay.storage.lock",
    "DatabaseLock": "jobrelay.storage.lock",
    "DatabaseSummary": "jobrelay.storage.inspect",
    "Dispatch": "jobrelay.storage.dispatch",
    "Dispatches": "jobrelay.storage.dispatch",
    "Durability": "jobrelay.storage.database",
    "Inbox": "jobrelay.storage.inbox",
    "InboxRow": "jobrelay.storage.inbox",
    "InboxState": "jobrelay.storage.inbox",
    "JobLedger": "jobrelay.storage.ledger",
    "JobRecord": "jobrelay.storage.ledger",
    "JobRecordView": "jobrelay.storage.inspect",
    "Outbox": "jobrelay.storage.outbox",
    "OutboxFull": "jobrelay.storage.errors",
    "OutboxRow": "jobrelay.storage.outbox",
    "OutboxStats": "jobrelay.storage.outbox",
    "SCHEMA_VERSION": "jobrelay.storage.schema",
    "StatusEntry": "jobrelay.storage.ledger",
    "StatusResult": "jobrelay.storage.ledger",
    "StatusUpdate": "jobrelay.storage.ledger",
    "StorageError": "jobrelay.storage.errors",
    "TerminalStatusError": "jobrelay.storage.errors",
    "UnknownJobError": "jobrelay.storage.errors",
    "inspect_database": "jobrelay.storage.inspect",
    "inspect_job": "jobrelay.storage.inspect",
    "lock_database": "jobrelay.storage.lock",
    "open_database": "jobrelay.storage.opening",
    "outbox_streams": "jobrelay.storage.inspect",
}
lazy_exports(globals(), _EXPORTS)
