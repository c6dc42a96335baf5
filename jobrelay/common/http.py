# The HTTP server the worker's health endpoint and the facilitator's API share: aiohttp on one
# asyncio event loop (its own, in one daemon thread "jobrelay-http", or one it is given), serving the
# application of jobrelay.common.http_app.
# Invariants: binds 127.0.0.1 unless told otherwise, and binds in the constructor (OSError there);
# no thread per request or per client (connections are asyncio transports; the only threads are the
# loop's and a pool of EXECUTOR_THREADS for source calls); a client silent for ``idle_timeout``
# seconds (before a request, between requests, or while sending a body) is disconnected; start() and
# stop() are thread-safe and stop() is bounded (STOP_TIMEOUT) and releases the port.
from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from loguru import logger
from prometheus_client import CollectorRegistry, ProcessCollector

from jobrelay.common.admission import ConnectionGate
from jobrelay.common.elastic import ElasticExecutor
from jobrelay.common.http_access import AccessPolicy, access_middleware, exposure_warning
from jobrelay.common.http_app import (
    AIOHTTP_LOG,
    ApiSource,
    HealthReport,
    HealthSource,
    Refusal,
    SourceCollector,
    answer,
    answer_here,
    make_app,
    metric_name,
    offload,
    read_json,
    small_int,
)
from jobrelay.common.loop import run_loop

# HealthReport … small_int are re-exported: callers import the HTTP plumbing from this one module.
__all__ = [
    "ApiSource",
    "HealthReport",
    "HealthServer",
    "HealthSource",
    "Refusal",
    "answer",
    "answer_here",
    "metric_name",
    "offload",
    "read_json",
    "small_int",
]

T = TypeVar("T")

IDLE_TIMEOUT = 10.0  # seconds a client may take to send a request's headers (or stay silent)
MAX_CONNECTIONS = 256  # connections held at once (within the facilitator's descriptor reserve)
MAX_PER_ADDRESS = 128  # of those, from one remote address
EXECUTOR_THREADS = 4  # threads that run source calls
_POOL_LINGER = 5.0  # seconds an idle one waits for the next call before it ends
STOP_TIMEOUT = 2.0  # stop() returns within this
_START_TIMEOUT = 5.0
_SHUTDOWN_GRACE = 0.5  # in-flight requests get this long at stop (aiohttp waits twice, at most)


class _GatedHandler(RequestHandler):
    """aiohttp's per-connection protocol, asking the server's ConnectionGate first: a connection
    over a limit is reset before anything is parsed (a slow or idle flood holds at most
    MAX_CONNECTIONS descriptors, MAX_PER_ADDRESS from one address)."""

    gate: ConnectionGate
    address = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
        if not self.gate.admit(address):
            self._manager = None  # never registered: connection_lost has nothing to undo
            cast(asyncio.Transport, transport).abort()
            return
        self.address = address
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self.address:
            self.gate.closed(self.address, authenticated=False)
            self.address = ""
        super().connection_lost(exc)


class _GatedSite(web.SockSite):
    """A SockSite whose connections are _GatedHandlers of ``gate``."""

    def __init__(
        self, runner: web.AppRunner, sock: socket.socket, gate: ConnectionGate, backlog: int
    ) -> None:
        super().__init__(runner, sock, backlog=backlog)
        self.gate = gate

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with the runner
        server = self._runner.server
        assert server is not None
        gate = self.gate

        def protocol() -> RequestHandler:
            # What aiohttp's Server.__call__ does, with the gated class.
            handler = _GatedHandler(server, loop=loop, **server._kwargs)
            handler.gate = gate
            return handler

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(protocol, sock=self._sock, backlog=self._backlog)


def _listen(host: str, port: int, backlog: int) -> socket.socket:
    if not 0 <= port <= 65535:  # checked here: socket.create_server would leak its socket
        raise OverflowError(f"port must be 0-65535, got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


class HealthServer:
    """Serves ``/healthz`` and ``/metrics`` (and the routes of an :class:`ApiSource`).

    Args:
        source: what to report on (the worker's or the facilitator's health source).
        host: interface to bind (default loopback only).
        port: TCP port; 0 picks a free one (read it back from ``port``/``url``).
        loop: serve on this running event loop (``start``/``stop`` are called from another thread,
            never on that loop's own thread); ``None``: run an own loop in a daemon thread "jobrelay-http".
        backlog: the listen backlog (connections the kernel queues before they are accepted).
        idle_timeout: seconds a connection may take to send a request's headers (from when it
            opened, or from the previous answer); slower or silent ones are disconnected.
        max_connections / max_per_address: connections held at once, in all and from one remote
            address; one more is reset at once (counted in ``refused``, logged once a minute).
        access: who may use it (tokens, Host, Origin, JSON bodies). Default: for a source with an
            API, ``AccessPolicy.for_bind(host)`` (no tokens; Host, Origin and JSON checks); for a
            source without one (the worker's health), no checks.

    Raises:
        OSError: the address cannot be bound (OverflowError: a port outside 0..65535).
    """

    def __init__(
        self,
        source: HealthSource,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        backlog: int = 1024,
        idle_timeout: float = IDLE_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
        max_per_address: int = MAX_PER_ADDRESS,
        access: AccessPolicy | None = None,
    ) -> None:
        self.source = source
        if access is None and isinstance(source, ApiSource):
            access = AccessPolicy.for_bind(host)
        self.access = access
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SourceCollector(source))
        ProcessCollector(registry=self.registry)  # process_cpu_seconds_total, memory, open fds
        self._sock = _listen(host, port, backlog)  # bound and listening now, as before start()
        self.host = host
        self.port: int = int(self._sock.getsockname()[1])
        self.url = f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"
        self._backlog = backlog
        self._idle_timeout = idle_timeout
        self._loop = loop
        self._own_loop = loop is None
        self._thread: threading.Thread | None = None
        # Threads end after a few idle seconds: a burst of requests leaves none behind.
        self._executor = ElasticExecutor(EXECUTOR_THREADS, "jobrelay-http-call", linger=_POOL_LINGER)
        self._runner: web.AppRunner | None = None
        self._lock = threading.Lock()
        self._started = self._stopped = False
        self.refused: dict[str, int] = {}  # refused_<reason> → connections reset
        self.gate = ConnectionGate(
            max_connections,
            max_connections,
            max_per_address,
            self._count_refusal,
            server="http",
            per_address_setting="max_per_address",
        )

    def _count_refusal(self, name: str) -> None:
        self.refused[name] = self.refused.get(name, 0) + 1

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> HealthServer:
        """Start serving; returns once requests are answered. Thread-safe: with a given loop, call it
        from any thread but that loop's own.

        Raises:
            RuntimeError: started twice, after stop(), or on the given loop's own thread.
            TimeoutError: the loop did not start the server within 5 s (is the given loop running?).
        """
        if self._loop is not None and _running_loop() is self._loop:
            raise RuntimeError("HealthServer: start() would wait on the loop's own thread")
        with self._lock:
            if self._started or self._stopped:
                raise RuntimeError("HealthServer: start() once, before stop()")
            self._started = True
        if self._own_loop:
            loop = self._loop = asyncio.new_event_loop()
            self._thread = threading.Thread(
                target=run_loop, args=(loop,), kwargs={"grace": 0.2}, name="jobrelay-http", daemon=True
            )
            self._thread.start()
        try:
            self._on_loop(self._open(), _START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        logger.info("http: serving /healthz and /metrics on {}", self.url)
        if self.access is not None:
            self._log_access(self.access)
        return self

    def _log_access(self, access: AccessPolicy) -> None:
        if access.tokens is not None:
            counts = ", ".join(f"{n} {scope}" for scope, n in access.tokens.counts().items())
            logger.info("http: the API needs a bearer token ({} tokens)", counts)
        elif warning := exposure_warning(self.url, self.host, access):
            logger.warning("http: {}", warning)

    async def _open(self) -> None:
        runner = web.AppRunner(
            make_app(
                self.source,
                self.registry,
                self._executor,
                self._idle_timeout,
                () if self.access is None else (access_middleware(self.access),),
            ),
            handle_signals=False,
            access_log=None,  # _guard logs each request once
            logger=AIOHTTP_LOG,
            shutdown_timeout=_SHUTDOWN_GRACE,
            keepalive_timeout=self._idle_timeout,  # also closes a connection that never sends a request
            lingering_time=self._idle_timeout,
        )
        await runner.setup()
        self._runner = runner
        await _GatedSite(runner, self._sock, self.gate, self._backlog).start()

    def stop(self) -> None:
        """Stop serving within STOP_TIMEOUT (2 s): the port is released, open connections closed,
        requests still running get 0.5 s. Idempotent; safe before start(); thread-safe like start().

        Raises:
            RuntimeError: called on the given loop's own thread (nothing is stopped then).
        """
        if self._loop is not None and _running_loop() is self._loop:
            raise RuntimeError("HealthServer: stop() would wait on the loop's own thread")
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        deadline = time.monotonic() + STOP_TIMEOUT
        loop = self._loop
        try:
            if self._runner is not None and loop is not None and not loop.is_closed():
                self._on_loop(self._runner.cleanup(), STOP_TIMEOUT - 0.4)
        except Exception as exc:  # a timeout or a closed loop: still release what we hold
            logger.warning("http: stopping {} did not finish cleanly: {!r}", self.url, exc)
        finally:
            if self._thread is not None and loop is not None:
                with contextlib.suppress(RuntimeError):  # closed already
                    loop.call_soon_threadsafe(loop.stop)
                self._thread.join(max(0.1, deadline - time.monotonic()))
            self._sock.close()  # asyncio closed it already; this covers a server never started
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _on_loop(self, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run ``coro`` on the server's loop from another thread and wait for it."""
        loop = self._loop
        assert loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None
