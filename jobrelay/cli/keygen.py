# `jobrelay keygen`: a new key pair for a worker or for the facilitator. Invariants: the private
# key file is created with mode 0600, never overwritten without --force, never written through a
# symlink nor into anything but a regular file; a worker id obeys the authorized-keys rule
# (protocol.auth.worker_id_problem); stdout gets exactly one line: for a worker the authorized-keys
# entry `<worker_id> <public key>` (so `>> authorized_keys` works), for the facilitator its public
# key, which every worker pins as `facilitator_key`.
# --show prints that line for an existing key file instead of creating one.
from __future__ import annotations

import argparse
import errno
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.actors.config import KEY_FILE_LIMIT, generate_key
from jobrelay.cli.errors import EXIT_OK, UsageError
from jobrelay.common.files import FileRefused, read_small_file
from jobrelay.protocol.auth import public_key_hex, worker_id_problem

__all__ = ["add_parser", "run"]

EPILOG = """\
examples:
  # a key for worker w1; append its public line to the facilitator's authorized keys
  jobrelay keygen --worker-id w1 --key-file w1.key >> authorized_keys

  # the facilitator's own key; its public key is every worker's --facilitator-key
  jobrelay keygen --facilitator --key-file facilitator.key

  # print the public line of an existing key file again
  jobrelay keygen --facilitator --key-file facilitator.key --show

  # replace an existing key file
  jobrelay keygen --worker-id w1 --key-file w1.key --force

The key file holds the Ed25519 private key as 64 hex characters (mode 0600).
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], **kw: object) -> None:
    p = sub.add_parser(
        "keygen",
        help="create a worker or facilitator key file and print its public line",
        description=(
            "Create an Ed25519 key for a worker and print `<worker_id> <public key>`, or for the "
            "facilitator (--facilitator) and print its public key."
        ),
        epilog=EPILOG,
        **kw,  # type: ignore[arg-type]
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--worker-id", help="the worker's id (no spaces)")
    who.add_argument("--facilitator", action="store_true", help="a key for the facilitator itself")
    p.add_argument("--key-file", required=True, help="where to write the private key")
    p.add_argument("--force", action="store_true", help="overwrite an existing key file")
    p.add_argument("--show", action="store_true", help="read the existing key file; create nothing")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    worker_id: str | None = args.worker_id
    problem = worker_id_problem(worker_id) if worker_id is not None else None
    if problem:
        # The facilitator refuses such a line, and with it the whole authorized-keys file:
        # appended there, it would lock every worker out at its next restart.
        raise UsageError(f"keygen.worker_id (from --worker-id): {problem}, got {worker_id!r}")
    path = Path(args.key_file)
    key = _read(path) if args.show else _new_key_file(path, force=args.force)
    public = public_key_hex(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key)))
    print(public if worker_id is None else f"{worker_id} {public}", flush=True)
    return EXIT_OK


def _read(path: Path) -> str:
    try:
        key = read_small_file(str(path), limit=KEY_FILE_LIMIT).decode("utf-8").strip()
        Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key))
    except (FileRefused, UnicodeError) as exc:
        raise UsageError(f"keygen.key_file (from --key-file): cannot read {path}: {exc}") from None
    except ValueError:
        raise UsageError(
            f"keygen.key_file (from --key-file): {path} holds no Ed25519 private key (64 hex characters)"
        ) from None
    return key


def _new_key_file(path: Path, *, force: bool) -> str:
    """A new private key, written to ``path`` (0600); returns it (hex)."""
    key = generate_key()
    fd = _create(path, force=force)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(key + "\n")
    return key


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
