# Reading the small files an operator points jobrelay at (a TOML config, a worker's key, the
# authorized keys). Invariants: read_small_file() never blocks on a FIFO, never reads a device,
# never holds more than ``limit`` + 1 bytes, and checks the mode of the file it actually opened
# (fstat on the descriptor, so a swap between check and read cannot slip through); every refusal
# is a FileRefused whose message is one line saying what is wrong, without the path (the caller
# names the setting and the path).
from __future__ import annotations

import os
import stat

from jobrelay.protocol.errors import JobrelayError

__all__ = ["FileRefused", "read_small_file"]

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


class FileRefused(JobrelayError):
    """A file that cannot be used: unreadable, not a regular file, too large or too open."""


def read_small_file(path: str, *, limit: int, private: bool = False, trusted: bool = False) -> bytes:
    """The whole content of the regular file ``path``, at most ``limit`` bytes.

    Args:
        path: the file.
        limit: the largest size accepted, in bytes.
        private: refuse a file that group or others may read or write (a private key), as ssh does.
        trusted: refuse a file that group or others may write (an authorized-keys file: whoever
            can write it can let any key in), as ssh's StrictModes does.

    Raises:
        FileRefused: it cannot be opened, is not a regular file, is larger than ``limit``, or its
            mode is more open than ``private``/``trusted`` allow.
    """
    try:
        # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as exc:
        raise FileRefused(exc.strerror or str(exc)) from None
    try:
        info = os.fstat(fd)
        kind = stat.S_IFMT(info.st_mode)
        if kind != stat.S_IFREG:
            raise FileRefused(f"not a regular file (it is {_KINDS.get(kind, 'something else')})")
        mode = stat.S_IMODE(info.st_mode)
        if private and mode & 0o077:
            raise FileRefused(
                f"permissions {mode:04o} are too open: a private key must be readable by its owner "
                f"only (chmod 600)"
            )
        if trusted and mode & 0o022:
            raise FileRefused(
                f"permissions {mode:04o} are too open: group or others may write it, and so let "
                f"any key in (chmod go-w)"
            )
        if info.st_size > limit:
            raise FileRefused(f"{info.st_size} bytes is larger than the {limit} bytes allowed")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # the file may grow after fstat: read no more than limit + 1
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise FileRefused(f"larger than the {limit} bytes allowed")
        return b"".join(chunks)
    except OSError as exc:
        raise FileRefused(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
