# The worker's calls to the facilitator: a plain class the Connection owns (its thread only).
# Each call is a ``request`` with a fresh correlation id; its future is resolved by the ``response``
# with that id, or failed with CallTimeout, CallRejected, ConnectionLost or CircuitOpen.
# Invariants:
# - Every future is resolved exactly once (``_finish`` pops the call first).
# - A call is sent at most once per session; after the session ends it is re-sent on the next
#   one (same id, the time left of its timeout) only if its method is idempotent; otherwise it
#   fails with ConnectionLost. A call made with no session open waits for one only if idempotent.
# - The calls' breaker counts timeouts and lost connections as failures and any response as a
#   success; while it (or the connection's breaker) is open, calls fail fast with CircuitOpen.
# - In local mode a read-only idempotent call with ``allow_stale`` is answered from the last
#   result of the same method and params, marked stale.
from __future__ import annotations

import concurrent.futures
import contextlib
import math
from typing import Any

import msgspec

from jobrelay.protocol.breaker import BreakerState, CircuitBreaker
from jobrelay.protocol.calls import (
    CallCode,
    CallError,
    CallRejected,
    CallTimeout,
    CircuitOpen,
    ConnectionLost,
    MethodSpec,
    check_result,
)
from jobrelay.protocol.messages import Request, Response
from jobrelay.protocol.session import WorkerSession

__all__ = ["CallResult", "CallTable", "StartCall"]


class CallResult(msgspec.Struct, frozen=True):
    """What a call made with ``allow_stale=True`` resolves with: the value, whether it is the last
    result of an earlier call (the facilitator unreachable), and when that result arrived."""

    value: Any
    stale: bool
    received_at: float


class StartCall(msgspec.Struct, frozen=True):
    """Worker.call → Connection: make this call."""

    call_id: str
    spec: MethodSpec
    params: Any
    deadline: float  # on the worker's clock
    future: Any  # concurrent.futures.Future
    allow_stale: bool = False


class _Pending(msgspec.Struct):
    start: StartCall
    sent_in: str = ""  # the session it was sent on ("" not sent yet)


class CallTable:
    """Outstanding calls of one worker.

    Args:
        breaker: the calls' circuit breaker.
        log: a loguru logger bound to the worker.
    """

    def __init__(self, breaker: CircuitBreaker, log: Any) -> None:
        self.breaker = breaker
        self._log = log
        self._pending: dict[str, _Pending] = {}
        self._last: dict[tuple[str, bytes], tuple[Any, float]] = {}  # read-only results, for stale answers
        self.counts: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._pending)

    def start(
        self, call: StartCall, session: WorkerSession | None, now: float, *, reachable: bool, local: bool
    ) -> None:
        """Send ``call`` now, hold it for the next session, answer it from the last result, or
        fail it at once (``reachable``: the connection's breaker is not open)."""
        spec = call.spec
        if call.allow_stale and local and spec.read_only and spec.idempotent:
            last = self._last.get((spec.name, _key(call.params)))
            if last is not None:
                self._bump("calls_stale")
                _resolve(call.future, CallResult(last[0], True, last[1]))
                return
        if not reachable or not self.breaker.allow(now):
            self._bump("calls_circuit_open")
            _fail(call.future, CircuitOpen(f"circuit breaker open: {spec.name} not sent"))
            return
        pending = _Pending(call)
        if session is not None and session.is_open:
            self._pending[call.call_id] = pending
            self._send(pending, session, now)
        elif spec.idempotent:
            self._pending[call.call_id] = pending  # sent when a session opens, if still in time
        else:
            self.breaker.record_failure(now)
            _fail(call.future, ConnectionLost(f"not connected: {spec.name} not sent (not idempotent)"))

    def on_response(self, response: Response, now: float) -> None:
        pending = self._pending.pop(response.id, None)
        if pending is None:
            return  # the session only passes responses to calls it sent: one we gave up on
        self.breaker.record_success(now)
        start = pending.start
        if not response.ok:
            self._bump("calls_rejected")
            code = response.code or CallCode.HANDLER_FAILED
            _fail(start.future, CallRejected(code, response.error))
            return
        try:
            value = check_result(start.spec, response.result)
        except CallRejected as exc:
            self._log.warning(
                "call {} ({}): malformed response: {}", response.id, start.spec.name, exc.message
            )
            self._bump("calls_rejected")
            _fail(start.future, exc)
            return
        self._bump("calls_ok")
        if start.spec.read_only:
            self._last[(start.spec.name, _key(start.params))] = (value, now)
        _resolve(start.future, CallResult(value, False, now) if start.allow_stale else value)

    def on_timeout(self, call_id: str, now: float) -> None:
        pending = self._pending.pop(call_id, None)
        if pending is not None:
            self._timed_out(pending, now)

    def session_opened(self, session: WorkerSession, now: float) -> None:
        """Send what waits for a session (idempotent calls), with the time left of their timeout."""
        for pending in list(self._pending.values()):
            if not pending.sent_in:
                self._send(pending, session, now)

    def session_closed(self, now: float) -> None:
        """The session ended: idempotent calls wait for the next one, the others are lost."""
        for call_id, pending in list(self._pending.items()):
            if pending.start.spec.idempotent:
                pending.sent_in = ""
                continue
            del self._pending[call_id]
            self.breaker.record_failure(now)
            self._bump("calls_lost")
            _fail(
                pending.start.future,
                ConnectionLost(f"the connection dropped before {pending.start.spec.name} was answered"),
            )

    def tick(self, now: float) -> None:
        """Time out calls that wait for a session past their deadline (sent ones: the session's)."""
        for call_id, pending in list(self._pending.items()):
            if not pending.sent_in and now >= pending.start.deadline:
                del self._pending[call_id]
                self._timed_out(pending, now)

    def fail_all(self, error: CallError) -> None:
        """The worker stops: every outstanding call fails with ``error``."""
        pending, self._pending = self._pending, {}
        for p in pending.values():
            _fail(p.start.future, error)

    def breaker_state(self, now: float) -> BreakerState:
        return self.breaker.state(now)

    def _send(self, pending: _Pending, session: WorkerSession, now: float) -> None:
        start = pending.start
        left = start.deadline - now
        if left <= 0:
            del self._pending[start.call_id]
            self._timed_out(pending, now)
            return
        timeout_ms = max(1, min(math.ceil(left * 1000), 2**53 - 1))
        session.send_request(
            Request(id=start.call_id, method=start.spec.name, params=start.params, timeout_ms=timeout_ms), now
        )
        pending.sent_in = session.session_id
        self._bump("calls_sent")

    def _timed_out(self, pending: _Pending, now: float) -> None:
        self.breaker.record_failure(now)
        self._bump("calls_timed_out")
        _fail(pending.start.future, CallTimeout(f"{pending.start.spec.name}: no response in time"))

    def _bump(self, name: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1


def _key(params: Any) -> bytes:
    try:
        return msgspec.json.encode(params, order="sorted")
    except (TypeError, msgspec.EncodeError):
        return repr(params).encode()


def _resolve(future: concurrent.futures.Future[Any], value: Any) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # the caller cancelled it
        future.set_result(value)


def _fail(future: concurrent.futures.Future[Any], error: BaseException) -> None:
    with contextlib.suppress(concurrent.futures.InvalidStateError):  # the caller cancelled it
        future.set_exception(error)
