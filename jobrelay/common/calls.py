# Answering calls: the methods one end serves and the one function that turns a ``request`` into
# its ``response`` (docs/PROTOCOL.md §6.2). Both ends use it — the worker in its call threads, the
# facilitator in its executor — so a method answers the same whoever serves it.
# Invariants: every request gets exactly one response from ``answer``; nothing a peer sends (an
# unknown method, bad params) and nothing a handler does (raise, return the wrong type) escapes as
# an exception; each refusal is logged once with the request's correlation id.
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
from loguru import logger

from jobrelay.protocol.calls import BUILTIN_METHODS, CallCode, CallRejected, MethodSpec, check_params
from jobrelay.protocol.messages import Request, Response

__all__ = ["MethodHandler", "MethodRegistry"]

_REFUSAL_WINDOW = 60.0  # seconds: one refusal line per peer and code in each

MethodHandler = Callable[[Any], Any]
"""Called with the checked params (an instance of the method's params type); returns the result
(an instance of its result type, or any msgspec-encodable value) or raises CallRejected."""


class MethodRegistry:
    """The methods one end serves, at most ``max_running`` answered at once (more: ``overloaded``).

    Args:
        owner: "worker" or "facilitator", for log lines.
    """

    def __init__(self, owner: str, *, max_running: int = 64) -> None:
        self.owner = owner
        self.max_running = max_running
        self._methods: dict[str, tuple[MethodSpec, Callable[..., Any], bool]] = {}
        self._lock = threading.Lock()
        self._running = 0
        self._refusals: dict[tuple[str, str], tuple[float, int]] = {}  # (peer, code) → (minute, count)
        self._left_out: dict[tuple[str, str], int] = {}

    def register(
        self,
        name: str,
        handler: Callable[..., Any],
        *,
        params: Any = None,
        result: Any = None,
        idempotent: bool = False,
        takes_peer: bool = False,
    ) -> MethodSpec:
        """Serve ``name`` with ``handler``; a built-in method keeps its declared types.

        Args:
            takes_peer: call ``handler(params, peer)`` with the caller's id (a worker's id on the
                facilitator), not ``handler(params)``.

        Raises:
            ValueError: ``name`` is empty or longer than 256 characters.
        """
        if not 1 <= len(name) <= 256:
            raise ValueError(f"method name must be 1..256 characters, got {name!r}")
        spec = BUILTIN_METHODS.get(name) or MethodSpec(
            name=name, params=params, result=result, idempotent=idempotent
        )
        with self._lock:
            self._methods[name] = (spec, handler, takes_peer)
        return spec

    def methods(self) -> list[str]:
        with self._lock:
            return sorted(self._methods)

    def answer(self, request: Request, peer: str = "") -> Response:
        """The response to ``request`` (runs the handler in the calling thread)."""
        with self._lock:
            found = self._methods.get(request.method)
            busy = self._running >= self.max_running
            if found is not None and not busy:
                self._running += 1
        if found is None:
            return self._refuse(request, peer, CallCode.UNKNOWN_METHOD, f"no method {request.method!r} here")
        if busy:
            return self._refuse(request, peer, CallCode.OVERLOADED, f"{self.max_running} calls running")
        spec, handler, takes_peer = found
        try:
            params = check_params(spec, request.params)
            value = handler(params, peer) if takes_peer else handler(params)
            if spec.result is not None:
                value = msgspec.convert(msgspec.to_builtins(value), spec.result)  # the handler's bug
            return Response(id=request.id, ok=True, result=msgspec.to_builtins(value))
        except CallRejected as exc:
            return self._refuse(request, peer, exc.code, exc.message)
        except (msgspec.ValidationError, TypeError) as exc:
            return self._refuse(request, peer, CallCode.HANDLER_FAILED, f"result of {spec.name}: {exc}")
        except Exception as exc:  # a handler's failure is the caller's answer, not ours
            logger.opt(exception=exc).error(
                "{}: method {} failed for {} (call {})", self.owner, spec.name, peer or "peer", request.id
            )
            return Response(id=request.id, ok=False, code=CallCode.HANDLER_FAILED, error=str(exc)[:1000])
        finally:
            with self._lock:
                self._running -= 1

    def _refuse(self, request: Request, peer: str, code: str, message: str) -> Response:
        # A peer can cause one of these per frame: the first of each code from a peer in a minute
        # is logged (with its correlation id), the others only counted into the next such line.
        key, now = (peer, code), time.monotonic()
        with self._lock:
            if len(self._refusals) > 10_000:
                self._refusals.clear()
                self._left_out.clear()
            start, count = self._refusals.get(key, (now, 0))
            if now - start >= _REFUSAL_WINDOW:
                start, count = now, 0
            self._refusals[key] = (start, count + 1)
            earlier = self._left_out.pop(key, 0) if count == 0 else 0
            if count:
                self._left_out[key] = self._left_out.get(key, 0) + 1
        if count == 0:
            logger.warning(
                "{}: call {} ({}) from {} refused: {} {}{}",
                self.owner,
                request.id,
                request.method,
                peer or "peer",
                code,
                message,
                f" ({earlier} more like it not logged)" if earlier else "",
            )
        return Response(id=request.id, ok=False, code=code, error=message[:1000])
