# The public face of calls for the worker's users (``Worker.call``), in the caller's thread: it
# checks params against the method's declared type, admits the call through the CallGate (limits
# and rate: wait or CallThrottled, the caller's choice) and hands it to the Connection, which owns
# every outstanding call (actors/calls.py). Thread-safe.
from __future__ import annotations

import concurrent.futures
import secrets
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pykka

from jobrelay.actors.actor_messages import Count, Tellable, send
from jobrelay.actors.call_gate import CallGate
from jobrelay.actors.calls import StartCall
from jobrelay.actors.config import WorkerConfig
from jobrelay.common.calls import MethodHandler, MethodRegistry
from jobrelay.protocol.calls import BUILTIN_METHODS, CallError, ConnectionLost, MethodSpec, check_params

__all__ = ["Caller"]


class Caller:
    """Makes calls to the facilitator and declares the methods the worker serves.

    Args:
        connection: the Connection actor's ref.
        metrics: where reports go (the MetricsSink).
        served: the methods the worker answers (the Connection's call server uses the same object).
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        connection: pykka.ActorRef[Any],
        metrics: Tellable,
        served: MethodRegistry,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._connection = connection
        self._metrics = metrics
        self.served = served
        self._clock = clock
        self._declared: dict[str, MethodSpec] = {}
        self._lock = threading.Lock()
        self.gate = CallGate(
            config.max_calls_in_flight,
            config.call_rate,
            config.call_burst,
            on_limited=lambda name: send(metrics, Count(name)),
        )

    def declare(
        self,
        name: str,
        *,
        params: Any = None,
        result: Any = None,
        idempotent: bool = False,
        read_only: bool = False,
    ) -> MethodSpec:
        """Declare a facilitator method's types and whether calls to it may be re-sent after a
        reconnect (``idempotent``) or answered stale in local mode (``read_only``). Built-in
        methods are declared already; an undeclared method is untyped and not idempotent."""
        spec = MethodSpec(name=name, params=params, result=result, idempotent=idempotent, read_only=read_only)
        with self._lock:
            self._declared[name] = spec
        return spec

    def serve(self, name: str, handler: MethodHandler, *, params: Any = None, result: Any = None) -> None:
        """Answer the facilitator's calls of ``name`` with ``handler(params) -> result``."""
        self.served.register(name, handler, params=params, result=result)

    def spec(self, method: str) -> MethodSpec:
        with self._lock:
            found = self._declared.get(method)
        return found or BUILTIN_METHODS.get(method) or MethodSpec(name=method)

    def call(
        self,
        method: str,
        params: Any = None,
        timeout: float = 10.0,
        *,
        allow_stale: bool = False,
        wait: bool = True,
    ) -> concurrent.futures.Future[Any]:
        """Call ``method`` on the facilitator; the future resolves with the result (a
        ``CallResult(value, stale, received_at)`` when ``allow_stale``) or fails with CallTimeout,
        CallRejected(code, message), ConnectionLost, CircuitOpen or CallThrottled."""
        if not 0 < timeout <= 86_400:
            raise ValueError(f"timeout must be in (0, 86400] seconds, got {timeout!r}")
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        spec = self.spec(method)
        try:
            wire = check_params(spec, msgspec.to_builtins(params))
            wire = msgspec.to_builtins(wire)
            self.gate.acquire(wait=wait, timeout=timeout)
        except (CallError, TypeError) as exc:
            future.set_exception(exc)
            return future
        future.add_done_callback(lambda _f: self.gate.release())
        start = StartCall(secrets.token_hex(8), spec, wire, self._clock() + timeout, future, allow_stale)
        if not send(self._connection, start):
            future.set_exception(ConnectionLost("the worker is stopped"))
        return future
