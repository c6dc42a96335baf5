# `jobrelay keygen`: a new worker key pair. Invariants: the private key file is created with mode
# 0600, never overwritten without --force, never written through a symlink nor into anything but
# a regular file; the worker id obeys the authorized-keys rule (protocol.auth.worker_id_problem);
# stdout gets exactly one line, the authorized-keys entry `<worker_id> <public key>`, so
# `>> authorized_keys` works.
from __future__ import annotations

import argparse
import errno
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.actors.config import generate_key
from jobrelay.cli.errors import EXIT_OK, UsageError
from jobrelay.protocol.auth import public_key_hex, worker_id_problem

__all__ = ["add_parser", "run"]

EPILOG = """\
examples:
  # a key for worker w1; append its public line to the facilitator's authorized keys
  jobrelay keygen --worker-id w1 --key-file w1.key >> authorized_keys

  # replace an existing key file
  jobrelay keygen --worker-id w1 --key-file w1.key --force

The key file holds the Ed25519 private key as 64 hex characters (mode 0600).
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], **kw: object) -> None:
    p = sub.add_parser(
        "keygen",
        help="create a worker key file and print its authorized-keys line",
        description="Create an Ed25519 key for a worker and print `<worker_id> <public key>`.",
        epilog=EPILOG,
        **kw,  # type: ignore[arg-type]
    )
    p.add_argument("--worker-id", required=True, help="the worker's id (no spaces)")
    p.add_argument("--key-file", required=True, help="where to write the private key")
    p.add_argument("--force", action="store_true", help="overwrite an existing key file")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    worker_id: str = args.worker_id
    problem = worker_id_problem(worker_id)
    if problem:
        # The facilitator refuses such a line, and with it the whole authorized-keys file:
        # appended there, it would lock every worker out at its next restart.
        raise UsageError(f"keygen.worker_id (from --worker-id): {problem}, got {worker_id!r}")
    path = Path(args.key_file)
    key = generate_key()
    fd = _create(path, force=args.force)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(key + "\n")
    public = public_key_hex(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key)))
    print(f"{worker_id} {public}", flush=True)
    return EXIT_OK


def _create(path: Path, *, force: bool) -> int:
    """Open the key file for writing: a new file, or with ``force`` an existing regular file.

    O_NOFOLLOW: a symlink planted at the path (by someone who can write the directory) would
    otherwise make --force truncate whatever it points at and write a private key there.

    Raises:
        UsageError: it exists (without ``force``), is a symlink or not a regular file, or cannot
            be created.
    """
    where = "keygen.key_file (from --key-file)"
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    flags |= 0 if force else os.O_EXCL
    symlink = UsageError(f"{where}: {path} is a symbolic link; refusing to write a key through it")
    not_regular = UsageError(f"{where}: {path} is not a regular file; refusing to write a key to it")
    if path.is_symlink():
        raise symlink
    if path.exists() and not path.is_file():
        raise not_regular
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise UsageError(f"{where}: {path} exists; use --force to replace it") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # a symlink appeared after the checks above
            raise symlink from None
        raise UsageError(f"{where}: cannot create {path}: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped after the checks above
        os.close(fd)
        raise not_regular
    os.set_blocking(fd, True)
    os.ftruncate(fd, 0)  # only now: a FIFO or device is never truncated, a symlink never followed
    return fd
