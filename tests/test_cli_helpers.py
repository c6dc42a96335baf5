"""Helpers for the CLI tests (no tests here): run `jobrelay` as real subprocesses on 127.0.0.1.

Every subprocess runs in its own session and is killed (with its whole process group) in
``finally``; every wait polls a condition with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.actors.config import generate_key
from jobrelay.protocol.auth import public_key_hex
from tests.protocol_harness import FACILITATOR_PUBLIC

ROOT = Path(__file__).resolve().parent.parent
JOBRELAY = [sys.executable, "-m", "jobrelay"]


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without JOBRELAY_* variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBRELAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_key(tmp: Path, worker_id: str) -> tuple[Path, str]:
    """A key file for ``worker_id`` in ``tmp`` and its public key hex."""
    key = generate_key()
    path = tmp / f"{worker_id}.key"
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path, public_key_hex(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key)))


def run_cli(args: Sequence[str], *, timeout: float = 30.0, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [*JOBRELAY, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or clean_env(),
        cwd=cwd,
        check=False,
    )


class Service:
    """A long-running `jobrelay` subprocess (worker or facilitator) with its log in a file."""

    def __init__(self, args: Sequence[str], log: Path, *, env: dict[str, str] | None = None) -> None:
        self.args = list(args)
        self.log = log
        self.env = env or clean_env()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Service:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [*JOBRELAY, *self.args], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                env=self.env, start_new_session=True,
            )  # fmt: skip
        return self

    def ready(self, path: Path, timeout: float = 15.0) -> dict[str, Any]:
        """Wait for the --ready-file JSON (failing early if the process exits)."""

        def check() -> dict[str, Any] | None:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"exited with {self.proc.returncode}:\n{self.text()[-3000:]}")
            if path.exists():
                return dict(json.loads(path.read_text()))
            return None

        return dict(wait_until(check, timeout, f"{path.name} written"))

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """Kill the process group (the process and any handler commands it started)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)


@contextlib.contextmanager
def services() -> Iterator[list[Service]]:
    """Collects Services and kills every one of them on exit."""
    started: list[Service] = []
    try:
        yield started
    finally:
        for service in started:
            service.kill()


def worker_args(tmp: Path, url: str, worker_id: str, key: Path, *extra: str) -> list[str]:
    """A worker's flags; it stops promptly (``--drain-timeout 0``) unless ``extra`` says otherwise."""
    return [
        "worker", "--url", url, "--worker-id", worker_id, "--key-file", str(key),
        "--facilitator-key", FACILITATOR_PUBLIC,
        "--db", str(tmp / f"{worker_id}.db"), "--backoff-base", "0.05", "--backoff-cap", "0.3",
        "--durability", "normal", "--ready-file", str(tmp / f"{worker_id}.ready"),
        "--drain-timeout", "0", *extra,
    ]  # fmt: skip
