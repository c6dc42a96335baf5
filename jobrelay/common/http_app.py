# The aiohttp application behind jobrelay.common.http's server: the /healthz and /metrics routes, the
# routes of a source with an API, one middleware that turns every failure into a JSON answer and logs
# each request once, and what handlers use to reach a synchronous source (offload, answer, read_json).
# Invariants: a source is synchronous and every call into it (and every JSON encode or decode of a
# body) runs in the server's bounded thread pool, never on the event loop; every value is read at
# request time; metrics go to the server's private CollectorRegistry; a handler error is a 500 with
# one log line; bad input is a 4xx with {"error"}; a body is read within the idle timeout.
from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any, NamedTuple, ParamSpec, Protocol, TypeVar, runtime_checkable

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware
from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

__all__ = [
    "AIOHTTP_LOG",
    "MAX_BODY",
    "ApiSource",
    "HealthReport",
    "HealthSource",
    "Refusal",
    "SourceCollector",
    "answer",
    "answer_here",
    "make_app",
    "metric_name",
    "offload",
    "read_json",
    "small_int",
]

P = ParamSpec("P")
T = TypeVar("T")

MAX_BODY = 1 << 20  # largest request body, bytes
_CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
_DIGITS = re.compile(r"[0-9]+")


class HealthReport(msgspec.Struct, frozen=True):
    """What ``/healthz`` answers: ``healthy`` decides 200 or 503; ``reason`` says why not."""

    healthy: bool
    reason: str
    body: dict[str, Any]


class HealthSource(Protocol):
    """Something the server can report on (synchronous: called in the server's thread pool)."""

    def health(self) -> HealthReport: ...

    def metrics(self) -> Iterable[Metric]: ...


@runtime_checkable
class ApiSource(HealthSource, Protocol):
    """A source with routes of its own (the facilitator's job API); its handlers reach blocking code
    only through :func:`offload` or :func:`answer`."""

    def routes(self) -> Iterable[web.AbstractRouteDef]: ...


class Refusal(Exception):
    """Raised in a handler or middleware: answered with ``status``, ``{"error": message}`` and
    ``headers``; ``close`` ends the connection (its unread body must not be taken for a next request)."""

    def __init__(
        self, status: int, message: str, *, close: bool = False, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.close = status, message, close
        self.headers = dict(headers or {})


class SourceCollector(Collector):
    """A prometheus-client Collector that reads the source at scrape time."""

    def __init__(self, source: HealthSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        yield from self._source.metrics()


class _Kit(NamedTuple):
    """What handlers need from the server (the app's state)."""

    executor: Executor
    idle_timeout: float


_KIT = web.AppKey("jobrelay_http", _Kit)


def metric_name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", text)


def small_int(text: str) -> int:
    """``text`` as a non-negative int; a huge one (more than 9 digits) as 10**9; -1 if not digits.
    (Never int() on thousands of digits: Python refuses those with ValueError.)"""
    if not _DIGITS.fullmatch(text):
        return -1
    digits = text.lstrip("0")
    return 10**9 if len(digits) > 9 else int(digits or "0")


def _json(doc: Any) -> bytes:
    return json.dumps(doc, default=str).encode() + b"\n"


def _json_response(status: int, payload: bytes, *, close: bool = False) -> web.Response:
    response = web.Response(status=status, body=payload, content_type="application/json")
    if close:
        response.force_close()
    return response


async def offload(request: web.Request, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking call in the server's bounded thread pool and await its result."""
    executor = request.app[_KIT].executor
    return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args, **kwargs))


async def answer(
    request: web.Request, fn: Callable[P, tuple[int, Any]], /, *args: P.args, **kwargs: P.kwargs
) -> web.Response:
    """Run ``fn`` (returning ``(status, JSON-able document)``) and encode its answer in the pool."""
    status, payload = await offload(request, lambda: _encoded(fn(*args, **kwargs)))
    return _json_response(status, payload)


def answer_here(status: int, doc: Any) -> web.Response:
    """A JSON answer encoded on the loop: for handlers that awaited their result there (small
    documents; large ones go through ``answer``, which encodes in the pool)."""
    return _json_response(status, _json(doc))


def _encoded(result: tuple[int, Any]) -> tuple[int, bytes]:
    return result[0], _json(result[1])


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else {}
    except (ValueError, RecursionError):  # RecursionError: nested too deeply
        raise Refusal(400, "request body is not JSON") from None


async def read_json(request: web.Request) -> Any:
    """The request's JSON body (``{}`` if empty), read within the idle timeout.

    Raises:
        Refusal: 413 over MAX_BODY (declared or sent), 408 not received in time, 400 not JSON.
    """
    if (request.content_length or 0) > MAX_BODY:
        raise Refusal(413, "request body too large", close=True)  # refused before reading any of it
    try:
        async with asyncio.timeout(request.app[_KIT].idle_timeout):
            raw = await request.read()
    except web.HTTPRequestEntityTooLarge:  # a chunked body that grew too large
        raise Refusal(413, "request body too large", close=True) from None
    except TimeoutError:
        raise Refusal(408, "request body not received in time", close=True) from None
    return await offload(request, _decode, raw)


def _health(source: HealthSource) -> tuple[int, Any]:
    report = source.health()
    doc = {"healthy": report.healthy, "reason": report.reason, **report.body}
    return (200 if report.healthy else 503), doc


def make_app(
    source: HealthSource,
    registry: CollectorRegistry,
    executor: Executor,
    idle_timeout: float,
    middlewares: Sequence[Middleware] = (),
) -> web.Application:
    """The application: /healthz, /metrics and the source's own routes, behind the guard middleware
    and then ``middlewares`` (their refusals are answered and logged by the guard)."""
    app = web.Application(middlewares=[_guard, *middlewares], client_max_size=MAX_BODY)
    app[_KIT] = _Kit(executor, idle_timeout)
    app.add_routes(_routes(source, registry))
    on_shutdown = getattr(source, "on_shutdown", None)
    if on_shutdown is not None:  # a source with long-lived answers (event streams) ends them first

        async def shutdown(_app: web.Application) -> None:
            await on_shutdown()

        app.on_shutdown.append(shutdown)
    return app


def _routes(source: HealthSource, registry: CollectorRegistry) -> list[web.AbstractRouteDef]:
    async def healthz(request: web.Request) -> web.Response:
        return await answer(request, _health, source)

    async def metrics(request: web.Request) -> web.Response:
        text = await offload(request, generate_latest, registry)
        return web.Response(body=text, headers={"Content-Type": _CONTENT_TYPE_METRICS})

    routes: list[web.AbstractRouteDef] = [web.get("/healthz", healthz), web.get("/metrics", metrics)]
    if isinstance(source, ApiSource):
        routes.extend(source.routes())
    return routes


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer is JSON on error; one log line per request; an exception is a 500, logged once."""
    started = time.monotonic()
    try:
        response = await handler(request)
    except Refusal as exc:
        response = _json_response(exc.status, _json({"error": exc.message}), close=exc.close)
        response.headers.update(exc.headers)
    except web.HTTPException as exc:  # the router's 404 and 405
        message = exc.text or exc.reason
        if request.match_info.http_exception is not None:
            message = f"no route {request.method} {request.path}"
            if "Allow" in exc.headers:
                message += f" (allowed: {exc.headers['Allow']})"
        response = _json_response(exc.status, _json({"error": message}))
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
    except ConnectionError:  # the client went away mid-request: nobody to answer
        logger.debug("http: {} {}: client disconnected", request.method, request.path)
        return _json_response(400, _json({"error": "connection lost"}), close=True)
    except Exception as exc:
        logger.opt(exception=exc).error(
            "http: {} {} -> 500 ({:.1f} ms): {}: {}",
            request.method,
            request.path,
            (time.monotonic() - started) * 1000,
            type(exc).__name__,
            exc,
        )
        return _json_response(500, _json({"error": f"{type(exc).__name__}: {exc}"}))
    # A refused credential, Host or Origin is worth a line even on a GET (someone is probing).
    quiet = request.method in ("GET", "HEAD") and response.status not in (401, 403, 421)
    level = "DEBUG" if quiet else "INFO"
    # A 503 is an answer, not a fault: /healthz saying "unhealthy" (polled every few seconds
    # through an outage) or a service that is stopping. The outage itself is logged once, where
    # it happens; only an unexpected 5xx is a WARNING here.
    logger.log(
        level if response.status < 500 or response.status == 503 else "WARNING",
        "http: {} {} -> {} ({:.1f} ms)",
        request.method,
        request.path,
        response.status,
        (time.monotonic() - started) * 1000,
    )
    return response


class _OneLine(logging.Filter):
    """aiohttp logs a malformed request (it answers 400 itself) with a traceback at ERROR: a client's
    mistake becomes one INFO line in loguru (like any 4xx); anything else keeps its level and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):  # its message quotes the bad line: keep the first line
            level = "INFO" if record.levelno >= logging.INFO else record.levelname
            why = (str(exc.message).splitlines() or [""])[0].rstrip(":")[:200]
            logger.log(level, "http: {}: {} -> {}", record.getMessage(), why, exc.code)
        else:
            message = record.getMessage()
            logger.opt(exception=record.exc_info or None).log(record.levelname, "http: {}", message)
        return False


AIOHTTP_LOG = logging.getLogger("jobrelay.http.aiohttp")  # given to aiohttp's server for its own lines
AIOHTTP_LOG.addFilter(_OneLine())
AIOHTTP_LOG.propagate = False
