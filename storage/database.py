# Opening jobrelay's SQLite file, and the one place sqlite3 errors become StorageError.
# Invariants:
# - A file is inspected read-only (header bytes, then SQL reads) before anything is written; a
#   file that is not an intact jobrelay database of a schema this code knows is refused with
#   StorageError and left byte-for-byte as it was. Nothing is ever recreated or overwritten.
# - Read-write connections run in WAL mode with synchronous FULL (fsync per commit) or NORMAL,
#   foreign keys on, a busy timeout, and driver autocommit: transactions are explicit
#   (``Database.transaction``), so each public store call is one atomic commit.
# - A connection belongs to the thread that opened it; other threads/processes open their own
#   (``readonly=True`` for inspection).
from __future__ import annotations

import contextlib
import sqlite3
import struct
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import sqlite_utils

from jobrelay.storage.errors import StorageError
from jobrelay.storage.schema import APPLICATION_ID, SCHEMA_VERSION, migrate, read_schema_version

__all__ = ["Database", "Durability", "open_database", "translate_error"]

Durability = Literal["full", "normal"]

_DURABILITIES: Final[frozenset[str]] = frozenset({"full", "normal"})
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"
_WAL_SIZE_LIMIT: Final = 16 << 20  # the -wal file is truncated back to this after big bursts
# Free pages kept for reuse by the next appends; beyond twice this, the rest is vacuumed.
_KEEP_FREE_PAGES: Final = 512
_MAX_RECLAIM_STEP: Final = 256  # pages per reclaim_space() call: about 1 MB, a few ms

# Primary SQLite result codes (https://www.sqlite.org/rescode.html).
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB, _PERM = (
    5, 6, 8, 10, 11, 13, 14, 26, 3,
)  # fmt: skip


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
    elif primary in (_CORRUPT, _NOTADB) or "malformed" in low or "not a database" in low:
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

    def __init__(self, su: sqlite_utils.Database, path: Path, durability: Durability, readonly: bool) -> None:
        self.su = su
        self.conn: sqlite3.Connection = su.conn
        self.path = path
        self.durability: Durability = durability
        self.readonly = readonly
        self._closed = False

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


def _corrupt(path: Path, why: str) -> StorageError:
    return StorageError(
        f"{path} is not a usable jobrelay database: {why}. jobrelay did not modify it; move it "
        "aside and restore it from a backup, or point --db at another file",
        path=path,
    )


def _open_error(exc: sqlite3.DatabaseError, path: Path) -> StorageError:
    """Corruption found while validating, or another failure (permissions, locks…)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (_CORRUPT, _NOTADB):
        return _corrupt(path, str(exc))
    return translate_error(exc, "open", path)


def _check_header(path: Path) -> None:
    """Check the 100-byte SQLite header without opening the file for writing."""
    try:
        size = path.stat().st_size
        if size == 0:
            return  # an empty file is an empty database
        with path.open("rb") as f:
            header = f.read(100)
    except OSError as exc:
        raise translate_error(exc, "open", path) from exc
    if len(header) < 100 or not header.startswith(_SQLITE_MAGIC):
        raise _corrupt(path, "it does not start with an SQLite header (random bytes or truncated)")
    (raw_page_size,) = struct.unpack(">H", header[16:18])
    page_size = 65536 if raw_page_size == 1 else raw_page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise _corrupt(path, f"its header has an invalid page size {raw_page_size}")
    change_counter, page_count = struct.unpack(">II", header[24:32])
    (valid_for,) = struct.unpack(">I", header[92:96])
    wal = Path(f"{path}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        return  # SQLite recovers pages from the -wal; sizes are only meaningful after that
    if page_count and change_counter == valid_for:
        if size < page_count * page_size:
            raise _corrupt(
                path,
                f"it is truncated ({size} bytes, its header says {page_count * page_size})",
            )
    elif size % page_size:
        raise _corrupt(path, f"its size {size} is not a multiple of the page size {page_size}")


def _uri(path: Path, mode: str) -> str:
    return f"file:{urllib.parse.quote(str(path.absolute()))}?mode={mode}"


def open_database(
    path: str | Path,
    *,
    durability: Durability = "full",
    readonly: bool = False,
    busy_timeout: float = 5.0,
    check: bool = True,
) -> Database:
    """Open (creating if absent) a jobrelay database and bring its schema up to date.

    Args:
        path: The database file. Its directory must exist.
        durability: ``"full"`` (default): fsync on every commit, nothing committed is ever
            lost. ``"normal"``: WAL synchronous=NORMAL, may lose the last commits on power
            loss, never on a process crash.
        readonly: Open for inspection only (``mode=ro``): no migrations, no writes; the file
            must exist. Safe while a worker writes the same file from another process.
        busy_timeout: Seconds to wait for another connection's lock before failing.
        check: Run ``PRAGMA quick_check`` on an existing file before using it.

    Returns:
        The open Database; close it (or use it as a context manager) when done.

    Raises:
        StorageError: The file is corrupt, truncated, not a jobrelay database, written by a
            newer jobrelay, cannot be created or written (read-only directory, missing
            directory), or the disk is full. The file is left unchanged in every case.
    """
    path = Path(path)
    if durability not in _DURABILITIES:
        raise ValueError(f"durability must be 'full' or 'normal', not {durability!r}")
    if path.is_dir():
        raise StorageError(f"{path} is a directory; --db must name a file", path=path)
    existed = path.exists()
    if readonly and not existed:
        raise StorageError(f"{path} does not exist (nothing to inspect)", path=path)
    if existed:
        _check_header(path)
    elif not path.parent.is_dir():
        raise StorageError(
            f"cannot create {path}: the directory {path.parent} does not exist (or is not a "
            "directory); create it or point --db elsewhere",
            path=path,
        )
    try:
        conn = sqlite3.connect(
            _uri(path, "ro" if readonly else "rwc"),
            uri=True,
            timeout=busy_timeout,
            isolation_level=None,
        )
    except sqlite3.Error as exc:
        raise translate_error(exc, "open", path) from exc
    try:
        su = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
        db = Database(su, path, durability, readonly)
        _prepare(db, existed=existed, check=check)
    except BaseException as exc:
        conn.close()
        if isinstance(exc, sqlite3.Error | OSError):
            raise translate_error(exc, "open", path) from exc
        raise
    return db


def _prepare(db: Database, *, existed: bool, check: bool) -> None:
    """Validate the file with reads only, then configure and migrate it."""
    conn = db.conn
    path = db.path
    # Reads first: nothing below writes until the file is known to be ours and intact.
    try:
        app_id = int(conn.execute("PRAGMA application_id").fetchone()[0])
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError as exc:
        raise _open_error(exc, path) from exc
    fresh = not tables and app_id == 0
    if not fresh:
        if app_id != APPLICATION_ID or "jobrelay_schema" not in tables:
            raise StorageError(
                f"{path} is an SQLite database of another application or an unknown schema "
                f"(application_id {app_id:#x}, tables {sorted(tables)[:5]}); jobrelay did not "
                "modify it: point --db at a jobrelay database or a new file",
                path=path,
            )
        version = read_schema_version(db.su)
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{path} was written by a newer jobrelay (schema {version} > {SCHEMA_VERSION}); "
                "upgrade jobrelay or point --db at another file",
                path=path,
            )
        if version < 1:
            raise _corrupt(path, "its schema version table is empty")
        if check and existed:
            try:
                result = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
            except sqlite3.DatabaseError as exc:
                raise _open_error(exc, path) from exc
            if result != ["ok"]:
                raise _corrupt(path, "integrity check: " + "; ".join(map(str, result)))
        if db.readonly:
            if version < SCHEMA_VERSION:
                raise StorageError(
                    f"{path} has schema {version} < {SCHEMA_VERSION}; start the worker on it "
                    "once (it migrates forward) before inspecting it read-only",
                    path=path,
                )
            conn.execute("PRAGMA query_only = ON")
            return
    elif db.readonly:
        raise StorageError(f"{path} is empty: nothing to inspect", path=path)
    # Writes from here on.
    if fresh:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")  # only takes effect before tables exist
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        raise StorageError(
            f"{path} could not be switched to WAL mode (got {mode!r}); jobrelay needs a local "
            "file system that supports shared memory: point --db at a local disk",
            path=path,
        )
    conn.execute(f"PRAGMA synchronous = {'FULL' if db.durability == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute(f"PRAGMA journal_size_limit = {_WAL_SIZE_LIMIT}")
    with db.transaction("migrate schema"):
        migrate(db.su)
