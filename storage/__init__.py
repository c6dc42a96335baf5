"""jobrelay storage: durable outbox, inbox and job ledger in one SQLite file (WAL).

Nothing outside this package writes SQL. See docs/STORAGE.md.
"""

from jobrelay.storage.database import Database, Durability, open_database
from jobrelay.storage.errors import (
    AckOutOfRange,
    OutboxFull,
    StorageError,
    TerminalStatusError,
    UnknownJobError,
)
from jobrelay.storage.inbox import AcceptResult, Inbox, InboxRow, InboxState
from jobrelay.storage.inspect import DatabaseSummary, inspect_database
from jobrelay.storage.ledger import JobLedger, JobRecord, StatusEntry, StatusResult, StatusUpdate
from jobrelay.storage.outbox import Outbox, OutboxRow, OutboxStats, outbox_streams
from jobrelay.storage.schema import SCHEMA_VERSION

__all__ = [
    "SCHEMA_VERSION",
    "AcceptResult",
    "AckOutOfRange",
    "Database",
    "DatabaseSummary",
    "Durability",
    "Inbox",
    "InboxRow",
    "InboxState",
    "JobLedger",
    "JobRecord",
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
    "open_database",
    "outbox_streams",
]
