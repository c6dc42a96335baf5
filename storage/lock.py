# One writer process per database: an exclusive flock on ``<db>.lock``, held for as long as a
# worker or facilitator has the database open. Invariants: a second writer (another process, or
# another worker in this one: flock belongs to the open file, not the process) is refused at once
# with DatabaseInUse naming the holder's pid; the kernel drops the lock when its holder dies, even
# by kill -9, so a stale lock file never blocks a restart; readers (`jobrelay status --db`,
# inspect_database) take no lock: SQLite's WAL lets them read while the writer runs.
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from jobrelay.storage.errors import StorageError

__all__ = ["DatabaseInUse", "DatabaseLock", "lock_database"]


class DatabaseInUse(StorageError):
    """Another worker or facilitator holds the database (its pid in ``holder``, 0 if unknown)."""

    def __init__(self, message: str, *, path: str | Path, holder: int) -> None:
        super().__init__(message, path=path)
        self.holder = holder


class DatabaseLock:
    """The held lock of one database; ``release()`` (idempotent) gives it up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the last descriptor of the open file drops the flock

    def __enter__(self) -> DatabaseLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_database(db_path: str | Path) -> DatabaseLock:
    """Take the database's lock for this process, or refuse at once.

    Raises:
        DatabaseInUse: another worker or facilitator has the database open.
        StorageError: the lock file cannot be created (its directory is missing or read-only).
    """
    path = Path(f"{db_path}.lock")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        why = exc.strerror or exc
        raise StorageError(f"cannot create the lock file {path}: {why}", path=db_path) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        who = f"process {holder}" if holder else "another process"
        raise DatabaseInUse(
            f"{db_path} is in use by {who} (a worker or facilitator holds {path}); "
            "stop it first, or give this one its own database",
            path=db_path,
            holder=holder,
        ) from None
    except OSError as exc:  # a file system without flock
        os.close(fd)
        raise StorageError(f"cannot lock {path}: {exc.strerror or exc}", path=db_path) from None
    # Who holds it, for the refusal the next one gets (the lock is the flock, not this text).
    with contextlib.suppress(OSError):
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return DatabaseLock(path, fd)


def _holder(fd: int) -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(os.pread(fd, 32, 0).split()[0])
    return 0
