# The facilitator's calls (docs/PROTOCOL.md §6.2): answering workers' calls with the methods it
# serves (built-ins ``job_info`` and ``lease.*``, plus any registered with ``serve``), and calling
# workers (``call``). Handlers run in a thread pool, never on the event loop; sessions are touched
# only on the loop.
# Invariants:
# - Every worker request gets one response, sent on the session it came on if that is still open.
# - Every future from ``call`` resolves once: the response with its correlation id, CallTimeout
#   (the session's deadline), ConnectionLost (no open session, or it closed first; the
#   facilitator never re-sends a call) or CallRejected.
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import math
import secrets
import time
from typing import TYPE_CHECKING, Any

import msgspec
from loguru import logger

from jobrelay.common.calls import MethodHandler, MethodRegistry
from jobrelay.common.elastic import ElasticExecutor
from jobrelay.facilitator.leases import LeaseTable
from jobrelay.protocol.calls import (
    BUILTIN_METHODS,
    CallCode,
    CallRejected,
    CallTimeout,
    ConnectionLost,
    HistoryEntry,
    JobInfo,
    JobInfoParams,
    LeaseAcquire,
    LeaseId,
    LeaseReleased,
    MethodSpec,
    check_params,
    check_result,
)
from jobrelay.protocol.messages import Request, Response

if TYPE_CHECKING:
    from jobrelay.facilitator.connection import WorkerConnection
    from jobrelay.facilitator.store import FacilitatorStore

__all__ = ["FacilitatorCalls"]


class FacilitatorCalls:
    """Calls in both directions for one facilitator (``Facilitator.calls``).

    Attributes:
        served: the methods workers may call here (``serve`` adds to them).
        leases: the resource leases (``leases.define(resource, capacity)`` offers a resource).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        store: FacilitatorStore,
        *,
        heartbeat_interval: float = 0.0,
        threads: int = 8,
    ) -> None:
        self._loop = loop
        self._store = store
        self._pool = ElasticExecutor(threads, "jobrelay-fcall")
        self._open: dict[str, WorkerConnection] = {}
        self._last_seen: dict[str, float] = {}
        self._intervals: dict[str, float] = {}  # the heartbeat interval of each worker's last session
        self._default_interval = heartbeat_interval
        self._pending: dict[str, tuple[concurrent.futures.Future[Any], WorkerConnection, MethodSpec]] = {}
        self.served = MethodRegistry("facilitator")
        self.leases = LeaseTable(self._seen, grace=self._interval)
        self._register_builtins()

    # ------------------------------------------------------------------ public (any thread)

    def serve(self, name: str, handler: MethodHandler, *, params: Any = None, result: Any = None) -> None:
        """Answer workers' calls of ``name`` with ``handler(params) -> result``."""
        self.served.register(name, handler, params=params, result=result)

    def call(
        self, worker_id: str, method: str, params: Any = None, timeout: float = 10.0
    ) -> concurrent.futures.Future[Any]:
        """Call ``method`` on a connected worker; the future resolves with the result (checked
        against a built-in method's type) or fails with CallTimeout, CallRejected or
        ConnectionLost."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        spec = BUILTIN_METHODS.get(method) or MethodSpec(name=method)
        try:
            wire = msgspec.to_builtins(check_params(spec, msgspec.to_builtins(params)))
        except (CallRejected, TypeError) as exc:
            future.set_exception(exc)
            return future
        try:
            self._loop.call_soon_threadsafe(self._start, worker_id, spec, wire, timeout, future)
        except RuntimeError:
            future.set_exception(ConnectionLost("the facilitator is stopped"))
        return future

    def reachable(self, worker_id: str) -> bool:
        """Whether ``worker_id`` has an open session now (a call to it can be sent)."""
        conn = self._open.get(worker_id)
        return conn is not None and conn.session.is_open

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------ from connections (loop)

    def opened(self, conn: WorkerConnection) -> None:
        self._open[conn.worker_id] = conn

    def closed(self, conn: WorkerConnection) -> None:
        if self._open.get(conn.worker_id) is conn:
            del self._open[conn.worker_id]
            self._last_seen[conn.worker_id] = conn.last_contact
            self._intervals[conn.worker_id] = conn.session.heartbeat_interval
        for call_id, (future, owner, spec) in list(self._pending.items()):
            if owner is conn:
                del self._pending[call_id]
                _fail(future, ConnectionLost(f"{conn.worker_id} disconnected before answering {spec.name}"))

    def request(self, conn: WorkerConnection, request: Request) -> None:
        """A worker's request: answer it in the pool, send the response from the loop."""
        session_id = conn.session.session_id
        done = self._loop.run_in_executor(self._pool, self.served.answer, request, conn.worker_id)

        def send(answer: asyncio.Future[Response]) -> None:
            if answer.cancelled() or answer.exception() is not None:
                return  # the pool was shut down (stopping): the worker's call ends with the session
            if conn.session.is_open and conn.session.session_id == session_id:
                conn.session.send_response(answer.result())
                conn.driver.flush()

        done.add_done_callback(send)

    def response(self, response: Response) -> None:
        found = self._pending.pop(response.id, None)
        if found is None:
            return
        future, conn, spec = found
        if not response.ok:
            _fail(future, CallRejected(response.code or CallCode.HANDLER_FAILED, response.error))
            return
        try:
            value = check_result(spec, response.result)
        except CallRejected as exc:
            logger.warning(
                "facilitator: call {} ({}) to {}: malformed response: {}",
                response.id,
                spec.name,
                conn.worker_id,
                exc.message,
            )
            _fail(future, exc)
            return
        if not future.done():
            future.set_result(value)

    def timed_out(self, call_id: str) -> None:
        found = self._pending.pop(call_id, None)
        if found is not None:
            _fail(found[0], CallTimeout(f"{found[1].worker_id} did not answer {found[2].name} in time"))

    # ------------------------------------------------------------------ internals

    def _start(
        self,
        worker_id: str,
        spec: MethodSpec,
        params: Any,
        timeout: float,
        future: concurrent.futures.Future[Any],
    ) -> None:
        conn = self._open.get(worker_id)
        if conn is None or not conn.session.is_open:
            _fail(future, ConnectionLost(f"{worker_id} is not connected"))
            return
        call_id = secrets.token_hex(8)
        self._pending[call_id] = (future, conn, spec)
        timeout_ms = max(1, min(math.ceil(timeout * 1000), 2**53 - 1))
        conn.send_request(Request(id=call_id, method=spec.name, params=params, timeout_ms=timeout_ms))

    def _seen(self, worker_id: str) -> float | None:
        """Now while the worker's session is open (the session ends on heartbeat loss), else the
        last frame of its last session (also while the closed session waits to be accounted for):
        its leases expire ``ttl`` plus ``_interval`` after that."""
        conn = self._open.get(worker_id)
        if conn is not None:
            return time.time() if conn.session.is_open else conn.last_contact
        return self._last_seen.get(worker_id)

    def _interval(self, worker_id: str) -> float:
        """The heartbeat interval of the worker's current or last session (sessions get longer
        ones when many workers are connected: FacilitatorConfig.heartbeat_rate)."""
        conn = self._open.get(worker_id)
        if conn is not None:
            return conn.session.heartbeat_interval
        return self._intervals.get(worker_id, self._default_interval)

    def _register_builtins(self) -> None:
        leases, store = self.leases, self._store

        def job_info(params: JobInfoParams) -> JobInfo:
            found = store.job(params.job_id)
            if found is None:
                raise CallRejected(CallCode.NOT_FOUND, f"no job {params.job_id!r}")
            record, history, _payload = found
            return JobInfo(
                job_id=record.job_id,
                kind=record.kind,
                status=record.status,
                history=[HistoryEntry(h.status, h.at, h.detail, h.progress) for h in history],
            )

        def acquire(params: LeaseAcquire, worker: str) -> Any:
            return leases.acquire(worker, params.resource, params.count, params.ttl)

        def renew(params: LeaseId, worker: str) -> Any:
            return leases.renew(worker, params.lease_id)

        def release(params: LeaseId, worker: str) -> LeaseReleased:
            return LeaseReleased(lease_id=params.lease_id, released=leases.release(worker, params.lease_id))

        self.served.register("job_info", job_info)
        self.served.register("lease.acquire", acquire, takes_peer=True)
        self.served.register("lease.renew", renew, takes_peer=True)
        self.served.register("lease.release", release, takes_peer=True)


def _fail(future: concurrent.futures.Future[Any], error: BaseException) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):
        future.set_exception(error)
