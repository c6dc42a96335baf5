# `jobrelay keygen`: a new worker key pair. Invariants: the private key file is created with mode
# 0600 and never overwritten without --force; stdout gets exactly one line, the authorized-keys
# entry `<worker_id> <public key>`, so `>> authorized_keys` works.
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
    if not worker_id or len(worker_id) > 256 or any(c.isspace() for c in worker_id):
        raise UsageError(
            f"keygen.worker_id (from --worker-id): 1-256 characters without spaces, got {worker_id!r}"
        )
    path = Path(args.key_file)
    key = generate_key()
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if args.force else os.O_EXCL)
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
    public = public_key_hex(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key)))
    print(f"{worker_id} {public}", flush=True)
    return EXIT_OK
