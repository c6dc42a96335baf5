# `jobrelay keygen`: a new key pair for a worker or for the facilitator. Invariants: the private
# key file is created with mode 0600 and never overwritten without --force; stdout gets exactly one
# line: for a worker the authorized-keys entry `<worker_id> <public key>` (so `>> authorized_keys`
# works), for the facilitator its public key, which every worker pins as `facilitator_key`.
# --show prints that line for an existing key file instead of creating one.
from __future__ import annotations

import argparse
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.actors.config import generate_key
from jobrelay.cli.errors import EXIT_OK, UsageError
from jobrelay.protocol.auth import public_key_hex

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
    if worker_id is not None and (
        not worker_id or len(worker_id) > 256 or any(c.isspace() for c in worker_id)
    ):
        raise UsageError(
            f"keygen.worker_id (from --worker-id): 1-256 characters without spaces, got {worker_id!r}"
        )
    path = Path(args.key_file)
    key = _read(path) if args.show else _create(path, force=args.force)
    public = public_key_hex(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key)))
    print(public if worker_id is None else f"{worker_id} {public}", flush=True)
    return EXIT_OK


def _read(path: Path) -> str:
    try:
        key = path.read_text(encoding="utf-8").strip()
        Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key))
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"keygen.key_file (from --key-file): cannot read {path}: {exc}") from None
    except ValueError:
        raise UsageError(
            f"keygen.key_file (from --key-file): {path} holds no Ed25519 private key (64 hex characters)"
        ) from None
    return key


def _create(path: Path, *, force: bool) -> str:
    key = generate_key()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    try:
        fd = os.open(path, flags, 0o600)
    except FileExistsError:
        raise UsageError(
            f"keygen.key_file (from --key-file): {path} exists; use --force to replace it"
        ) from None
    except OSError as exc:
        raise UsageError(f"keygen.key_file (from --key-file): cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(key + "\n")
    return key
