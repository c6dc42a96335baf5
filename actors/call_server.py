# The worker answers the facilitator's calls (docs/PROTOCOL.md §6.2): requests are answered in a
# small thread pool, never in the Connection's mailbox, and each response is told back to the
# Connection, which sends it if the session it came on is still open (else it is dropped: the
# facilitator's call ended with that session). Built-in methods served here: ``specs`` (this
# machine's specs) and ``job_info`` (a job's status and history from the worker's ledger).
# Invariant: every request handed to ``serve`` gets one response told back (MethodRegistry).
from __future__ import annotations

import contextlib
import os
import platform
import socket
import sys
import time
from typing import Any

import msgspec
import pykka

from jobrelay.actors.actor_messages import send
from jobrelay.common.calls import MethodRegistry
from jobrelay.common.elastic import ElasticExecutor
from jobrelay.protocol.calls import CallCode, CallRejected, HistoryEntry, JobInfo, JobInfoParams, Specs
from jobrelay.protocol.messages import Request, Response
from jobrelay.storage import JobLedger, StorageError, open_database

__all__ = ["CallServer", "SendResponse", "machine_specs", "worker_methods"]


class SendResponse(msgspec.Struct, frozen=True):
    """A call thread → Connection: send ``response`` on session ``session_id`` if still open."""

    session_id: str
    response: Response


def machine_specs() -> dict[str, Any]:
    """What this machine offers, JSON-safe (what the ``specs`` method answers)."""
    specs: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "cpus": os.cpu_count() or 0,
    }
    with contextlib.suppress(ValueError, OSError, AttributeError):  # not every platform says
        specs["memory_bytes"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return specs


def worker_methods(db_path: str) -> MethodRegistry:
    """The methods a worker serves: the built-ins ``specs`` and ``job_info``."""
    registry = MethodRegistry("worker")
    registry.register("specs", lambda _params: Specs(specs=machine_specs(), at=time.time()))

    def job_info(params: JobInfoParams) -> JobInfo:
        try:
            with open_database(db_path, readonly=True, check=False) as db:
                ledger = JobLedger(db)
                record = ledger.get(params.job_id)
                history = ledger.history(params.job_id) if record is not None else []
        except StorageError as exc:
            raise CallRejected(CallCode.HANDLER_FAILED, f"cannot read the ledger: {exc}") from None
        if record is None:
            raise CallRejected(CallCode.NOT_FOUND, f"no job {params.job_id!r} here")
        return JobInfo(
            job_id=params.job_id,
            kind=record.kind,
            status=record.status,
            history=[HistoryEntry(h.status, h.at, h.detail, h.progress) for h in history],
        )

    registry.register("job_info", job_info)
    return registry


class CallServer:
    """Answers requests with ``registry`` in ``threads`` threads; tells ``connection`` each response."""

    def __init__(self, registry: MethodRegistry, connection: pykka.ActorRef[Any], threads: int = 4) -> None:
        self.registry = registry
        self._connection = connection
        self._pool = ElasticExecutor(threads, "jobrelay-call")

    def serve(self, session_id: str, request: Request) -> None:
        with contextlib.suppress(RuntimeError):  # the pool was shut down: the worker is stopping
            self._pool.submit(self._run, session_id, request)

    def _run(self, session_id: str, request: Request) -> None:
        send(self._connection, SendResponse(session_id, self.registry.answer(request, "facilitator")))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
