# Opening jobrelay's SQLite file: the header and schema checks that run before anything is written,
# the connection settings, and migrations.
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

import sqlite3
import struct
import urllib.parse
from pathlib import Path
from typing import Final

import sqlite_utils

from jobrelay.storage.database import CORRUPT, NOTADB, WAL_SIZE_LIMIT, Database, Durability, translate_error
from jobrelay.storage.errors import StorageError
from jobrelay.storage.schema import APPLICATION_ID, SCHEMA_VERSION, migrate, read_schema_version

__all__ = ["open_database"]

_DURABILITIES: Final[frozenset[str]] = frozenset({"full", "normal"})
_SQLITE_MAGIC: Final = b"SQLite format 3\x00"


def _corrupt(path: Path, why: str) -> StorageError:
    return StorageError(
        f"{path} is not a usable jobrelay database: {why}. jobrelay did not modify it; move it "
        "aside and restore it from a backup, or point --db at another file",
        path=path,
    )


def _open_error(exc: sqlite3.DatabaseError, path: Path) -> StorageError:
    """Corruption found while validating, or another failure (permissions, locks…)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and code & 0xFF in (CORRUPT, NOTADB):
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
    if existed and not path.is_file():
        # A FIFO would block the header check (or SQLite) forever, a device feed it garbage.
        raise StorageError(f"{path} is not a regular file; --db must name a file", path=path)
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
        db = Database(su, path, durability, readonly, busy_timeout)
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
    conn.execute(f"PRAGMA journal_size_limit = {WAL_SIZE_LIMIT}")
    with db.transaction("migrate schema"):
        migrate(db.su)
