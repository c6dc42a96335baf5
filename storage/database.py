# jobrelay's SQLite connection (Database: transactions, reads, space reclaim) and the one place
# sqlite3 errors become StorageError. Opening and validating a file is in opening.py.
# Invariants:
# - A file is inspected read-only (header bytes, then SQL reads) before anything is written; a
#   file that is not an intact jobrelay database of a schema this code knows is refused with
#   StorageError and left byte-for-byte as it was. Nothing is ever recreated or overwritten.
# - Read-write connections run in WAL mode with synchronous FULL (fsync per commit) or NORMAL,
#   foreign keys on, a busy timeout, and driver autocommit: transactions are explicit
#   (``Database.transaction``), so each public store call is one atomic commit.
# - A connection belongs to the thread that opened it; other threads/processes open their own
#   (``readonly=True`` for inspection).
# - The connections of one process to one file take turns at writing through a Python lock
#   (``_writer_lock``) before SQLite's own: SQLite's busy handler sleeps 1, 2, 5, 10... ms
#   between tries, so a thread that found another's write in progress lost milliseconds after it
#   ended (the JobRouter waited up to 60 ms behind the Outbox). One process writes a file
#   (storage/lock.py), so the Python lock orders every writer; SQLite's stays for the rest.
from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import sqlite_utils

from jobrelay.storage.errors import StorageError
from jobrelay.storage.schema import read_schema_version

__all__ = ["CORRUPT", "NOTADB", "WAL_SIZE_LIMIT", "Database", "Durability", "translate_error"]

Durability = Literal["full", "normal"]

WAL_SIZE_LIMIT: Final = 16 << 20  # the -wal file is truncated back to this after big bursts
# Free pages kept for reuse by the next appends; beyond twice this, the rest is vacuumed.
_KEEP_FREE_PAGES: Final = 512
_MAX_RECLAIM_STEP: Final = 256  # pages per reclaim_space() call: about 1 MB, a few ms

# Primary SQLite result codes (https://www.sqlite.org/rescode.html).
_BUSY, _LOCKED, _READONLY, _IOERR, CORRUPT, _FULL, _CANTOPEN, NOTADB, _PERM = (
    5, 6, 8, 10, 11, 13, 14, 26, 3,
)  # fmt: skip


_WRITER_LOCKS: dict[str, threading.Lock] = {}
_WRITER_LOCKS_GUARD = threading.Lock()


def _writer_lock(path: Path) -> threading.Lock:
    key = os.path.realpath(path)
    with _WRITER_LOCKS_GUARD:
        return _WRITER_LOCKS.setdefault(key, threading.Lock())


def translate_error(exc: BaseException, action: str, path: str | Path | None) -> StorageError:
    """Turn a sqlite3 (or OS) error into a StorageError that says what to do.

    Args:
        exc: The exception raised by sqlite3 or the OS.
        action: What jobrelay was doing, e.g. ``"append to outbox 'out'"``.
        path: The database file.

    Returns:
        The StorageError to raise (``from exc``).
    """
    where = f"{path}" if path is not None else "the jobrelay database"
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc)
    low = text.lower()
    if primary == _FULL or "database or disk is full" in low:
        hint = (
            "the disk (or the database size limit) is full: nothing from this operation was "
            "stored; free disk space, then retry"
        )
    elif primary in (CORRUPT, NOTADB) or "malformed" in low or "not a database" in low:
        hint = (
            "the file is corrupt or not an SQLite database: move it aside and restore it from "
            "a backup, or point --db at another file (jobrelay never overwrites it)"
        )
    elif primary in (_BUSY, _LOCKED) or "locked" in low:
        hint = (
            "another connection held the write lock longer than the busy timeout: make sure "
            "only one jobrelay process writes this file, or raise busy_timeout"
        )
    elif primary in (_READONLY, _PERM) or "readonly" in low or "read-only" in low:
        hint = (
            "the file or its directory is read-only: jobrelay needs write access to the file "
            "and its directory (for the -wal and -shm files); fix permissions or use --db "
            "elsewhere"
        )
    elif primary == _CANTOPEN or "unable to open" in low:
        hint = (
            "the file cannot be opened or created: check that the directory exists and is "
            "writable, or point --db at another file"
        )
    elif primary == _IOERR or isinstance(exc, OSError):
        hint = "the operating system reported an I/O error: check the disk and its free space"
    elif isinstance(exc, sqlite3.ProgrammingError) and "thread" in low:
        hint = "a Database may only be used by the thread that opened it: open one per thread"
    elif isinstance(exc, sqlite3.ProgrammingError) and "closed" in low:
        hint = "the Database was already closed: open it again"
    else:
        hint = "unexpected SQLite error: report it with the file if it persists"
    return StorageError(f"{action} failed on {where}: {text} ({hint})", path=path)


class Database:
    """An open jobrelay database: a typed wrapper of ``sqlite_utils.Database``.

    Use ``open_database()`` to make one. ``su`` is the sqlite-utils handle (schema work) and
    ``conn`` the raw connection (prepared statements on hot paths); only storage/ uses them.

    Attributes:
        path: The database file.
        durability: ``"full"`` or ``"normal"``.
        readonly: True when opened for inspection only.
    """

    def __init__(
        self,
        su: sqlite_utils.Database,
        path: Path,
        durability: Durability,
        readonly: bool,
        busy_timeout: float = 5.0,
    ) -> None:
        self.su = su
        self.conn: sqlite3.Connection = su.conn
        self.path = path
        self.durability: Durability = durability
        self.readonly = readonly
        self.busy_timeout = busy_timeout
        self._closed = False
        self._writing = _writer_lock(path)

    @contextlib.contextmanager
    def _write_turn(self, action: str) -> Iterator[None]:
        """Hold this process's turn at writing the file (see the module comment)."""
        if not self._writing.acquire(timeout=self.busy_timeout):
            raise StorageError(
                f"{action} failed on {self.path}: another connection of this process held the "
                f"write lock longer than the busy timeout ({self.busy_timeout:g}s): let one "
                "connection finish its transaction before another writes, or raise busy_timeout",
                path=self.path,
            )
        try:
            yield
        finally:
            self._writing.release()

    def __repr__(self) -> str:
        mode = "ro" if self.readonly else self.durability
        return f"<jobrelay Database {str(self.path)!r} {mode}>"

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def close(self) -> None:
        """Close the connection (idempotent). Uncommitted work is rolled back.

        Raises:
            StorageError: The connection could not be closed cleanly.
        """
        if self._closed:
            return
        self._closed = True
        with self.guard("close"):
            if self.conn.in_transaction:
                self.conn.rollback()
            self.conn.close()

    @contextlib.contextmanager
    def guard(self, action: str) -> Iterator[None]:
        """Translate any sqlite3 error raised inside the block into StorageError.

        Args:
            action: What is being done, for the error message.

        Raises:
            StorageError: An sqlite3 or OS error happened inside the block.
        """
        try:
            yield
        except (sqlite3.Error, OSError) as exc:
            raise translate_error(exc, action, self.path) from exc

    @contextlib.contextmanager
    def transaction(self, action: str = "transaction") -> Iterator[sqlite3.Connection]:
        """One atomic write transaction (``BEGIN IMMEDIATE`` … ``COMMIT``); nests as a savepoint.

        Everything inside commits together or not at all: any exception rolls back and
        propagates (sqlite3 errors as StorageError). The actor layer may wrap several store
        calls (e.g. an inbox accept and a ledger record) to commit them as one.

        Args:
            action: What is being done, for error messages.

        Yields:
            The raw connection, for prepared statements.

        Raises:
            StorageError: The database could not be written (full disk, locked, corrupt…).
        """
        conn = self.conn
        if self._closed:
            raise StorageError(f"{action}: the Database {self.path} is closed", path=self.path)
        if conn.in_transaction:
            with self.guard(action):
                conn.execute("SAVEPOINT jobrelay_nested")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK TO jobrelay_nested")
                        conn.execute("RELEASE jobrelay_nested")
                raise
            with self.guard(action):
                conn.execute("RELEASE jobrelay_nested")
            return
        with self._write_turn(action):
            with self.guard(action):
                conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                _rollback(conn)
                if isinstance(exc, sqlite3.Error | OSError):
                    raise translate_error(exc, action, self.path) from exc
                raise

    @contextlib.contextmanager
    def statement(self, action: str) -> Iterator[sqlite3.Connection]:
        """A write of exactly one statement, committed by itself (autocommit): one round of the
        GIL instead of the four of ``BEGIN`` … ``COMMIT`` around it. Only outside a transaction.

        Raises:
            StorageError: The write failed (nothing was written), or a transaction is open.
        """
        conn = self.conn
        if self._closed or conn.in_transaction:
            state = "closed" if self._closed else "inside a transaction"
            raise StorageError(f"{action}: a single statement cannot run {state}", path=self.path)
        with self._write_turn(action), self.guard(action):
            yield conn

    def query(self, sql: str, params: tuple[Any, ...] = (), action: str = "read") -> list[Any]:
        """Run a read-only statement and return all rows (storage/ internal helper).

        Raises:
            StorageError: The read failed.
        """
        with self.guard(action):
            return self.conn.execute(sql, params).fetchall()

    @property
    def schema_version(self) -> int:
        """The schema version recorded in the file.

        Raises:
            StorageError: The version could not be read.
        """
        with self.guard("read schema version"):
            return read_schema_version(self.su)

    def reclaim_space(self) -> int:
        """Return free pages beyond a small reserve to the file system, one bounded step
        (incremental vacuum of at most ``_MAX_RECLAIM_STEP`` pages).

        Called by the stores after large deletions and by their owners when idle; cheap when
        there is nothing to do.

        Returns:
            How many free pages beyond the reserve are left after this step (0: done).

        Raises:
            StorageError: The vacuum failed.
        """
        if self.readonly or self.conn.in_transaction:
            return 0
        with self.guard("reclaim free space"):
            free = int(self.conn.execute("PRAGMA freelist_count").fetchone()[0])
            if free <= 2 * _KEEP_FREE_PAGES:
                return 0
            # A bounded step: the caller is an actor whose mailbox waits meanwhile, so a large
            # drain is given back over several calls (SQLite reuses free pages until then).
            pages = min(free - _KEEP_FREE_PAGES, _MAX_RECLAIM_STEP)
            # executescript steps the pragma to completion (execute() frees one page).
            with self._write_turn("reclaim free space"):
                self.conn.executescript(f"PRAGMA incremental_vacuum({pages});")
            return free - _KEEP_FREE_PAGES - pages

    def file_sizes(self) -> tuple[int, int]:
        """Bytes of the main file and of its -wal file (0 when absent)."""

        def size(path: Path) -> int:
            try:
                return path.stat().st_size
            except FileNotFoundError:
                return 0

        return size(self.path), size(Path(f"{self.path}-wal"))


def _rollback(conn: sqlite3.Connection) -> None:
    """Roll back if a transaction is open (an error may already have ended it)."""
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")
