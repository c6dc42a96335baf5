# Running a long-lived service (worker or facilitator) in the foreground until a signal.
# Invariants: the first SIGINT/SIGTERM starts a bounded stop (exit 0 when it finishes in time);
# a second one exits at once with EXIT_FORCED (130) via os._exit — safe because everything
# accepted is already durable in SQLite; signal handlers only set flags or exit, never block.
from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from loguru import logger

from jobrelay.cli.errors import EXIT_FORCED, EXIT_OK, EXIT_RUNTIME, UsageError
from jobrelay.cli.settings import Resolved
from jobrelay.common.http import HealthServer, HealthSource
from jobrelay.common.http_access import AccessPolicy


def start_http(
    source: HealthSource,
    resolved: Resolved,
    loop: asyncio.AbstractEventLoop | None = None,
    access: AccessPolicy | None = None,
) -> HealthServer | None:
    """Start the HTTP server (/healthz, /metrics, API) if ``http_port`` is set, on ``loop`` if
    given (the facilitator's), else on a loop of its own, with ``access`` (see HealthServer).

    Raises:
        UsageError: the address cannot be bound (one line naming ``http_port`` and its source).
    """
    port, host = resolved.values["http_port"], resolved.values["http_host"]
    if port is None:
        return None
    try:
        return HealthServer(source, host, port, loop=loop, access=access).start()
    except (OSError, OverflowError) as exc:  # OverflowError: a port outside 0..65535
        why = getattr(exc, "strerror", None) or str(exc)
        raise resolved.bad("http_port", f"cannot listen on {host}:{port}: {why}") from None


__all__ = ["ServiceLoop", "check_ready_file", "start_http", "write_ready_file"]


class ServiceLoop:
    """Waits for a signal or for ``failed()`` to return a reason, then stops the service.

    Args:
        name: for log lines ("worker", "facilitator").
        stop: stops the service within the given number of seconds.
        stop_timeout: the bound given to ``stop``.
        failed: polled every ``poll`` seconds; ``(reason, exit code)`` ends the loop with that code.
    """

    def __init__(
        self,
        name: str,
        stop: Callable[[float], None],
        stop_timeout: float,
        failed: Callable[[], tuple[str, int] | None] = lambda: None,
        poll: float = 0.2,
    ) -> None:
        self.name = name
        self._stop = stop
        self._stop_timeout = stop_timeout
        self._failed = failed
        self._poll = poll
        self._signalled = threading.Event()
        self._signals = 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        if self._signals > 1:
            # Write directly: the logging sink may hold a lock this thread interrupted.
            os.write(
                2,
                f"jobrelay: {signal.Signals(signum).name} again: "
                "exiting now (durable data is kept)\n".encode(),
            )
            os._exit(EXIT_FORCED)
        self._signalled.set()

    def run(self) -> int:
        """Install handlers, wait, stop; returns the exit code."""
        previous: dict[int, Any] = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, self._on_signal)
        try:
            failure = None
            while not self._signalled.wait(self._poll):
                failure = self._failed()
                if failure:
                    break
            if self._signalled.is_set():
                logger.info(
                    "{}: stopping (signal received; up to {:g}s; send it again to exit at once)",
                    self.name,
                    self._stop_timeout,
                )
            elif failure:
                logger.error("{}: {}; stopping", self.name, failure[0])
            started = time.monotonic()
            stopper = threading.Thread(
                target=self._stop, args=(self._stop_timeout,), name="jobrelay-stop", daemon=True
            )
            stopper.start()
            stopper.join(self._stop_timeout + 1.0)
            if stopper.is_alive():
                logger.error("{}: did not stop within {:g}s; exiting anyway", self.name, self._stop_timeout)
                return EXIT_RUNTIME
            logger.info("{}: stopped in {:.2f}s", self.name, time.monotonic() - started)
            return failure[1] if failure else EXIT_OK
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)


def check_ready_file(resolved: Resolved) -> None:
    """Refuse a ready file that cannot be written, before anything starts (it is written only
    once the service runs, where a missing directory used to end it with a traceback).

    Raises:
        UsageError: its directory is missing, or it names a directory.
    """
    path = resolved.values["ready_file"]
    if not path:
        return
    target = Path(path)
    if target.is_dir():
        raise resolved.bad("ready_file", f"{target} is a directory, expected a file name")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise resolved.bad("ready_file", f"directory {parent} does not exist")


def write_ready_file(path: str, **doc: Any) -> None:
    """Atomically write ``doc`` (plus the pid) as JSON to ``path`` (readers never see half a file).

    Raises:
        UsageError: it cannot be written (its directory went away, is read-only, the disk is full).
    """
    if not path:
        return
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps({**doc, "pid": os.getpid()}) + "\n")
        os.replace(tmp, target)
    except OSError as exc:
        raise UsageError(f"ready_file: cannot write {target}: {exc.strerror or exc}") from None
