# The HTTP plumbing the worker's health endpoint and the facilitator's API share: one small
# threaded server (stdlib ThreadingHTTPServer) answering /healthz and /metrics from a source, and
# the source's JSON ``api`` for every other path.
# Invariants: binds 127.0.0.1 unless told otherwise; every value is read at request time from the
# source (no caching, no background polling); metrics go to a private CollectorRegistry, never
# prometheus-client's global one; a handler error is a 500 with one log line, never a dead server
# thread; a bad request (body length, JSON) is a 4xx, and a slow or idle client holds its thread
# for at most SOCKET_TIMEOUT seconds per read.
from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

import msgspec
from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

__all__ = ["HealthReport", "HealthServer", "HealthSource", "metric_name", "small_int"]

_CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
_MAX_BODY = 1 << 20
SOCKET_TIMEOUT = 10.0
_DIGITS = re.compile(r"[0-9]+")


class HealthReport(msgspec.Struct, frozen=True):
    """What ``/healthz`` answers: ``healthy`` decides 200 or 503; ``reason`` says why not."""

    healthy: bool
    reason: str
    body: dict[str, Any]


class HealthSource(Protocol):
    """Something the server can report on."""

    def health(self) -> HealthReport: ...

    def metrics(self) -> Iterable[Metric]: ...


class _SourceCollector(Collector):
    """A prometheus-client Collector that reads the source at scrape time."""

    def __init__(self, source: HealthSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        yield from self._source.metrics()


def metric_name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", text)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = SOCKET_TIMEOUT  # socket timeout per read/write: a silent client frees its thread

    def log_message(self, format: str, *args: Any) -> None:
        pass  # every request is logged once by _respond

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        started = time.monotonic()
        url = urlsplit(self.path)
        status = 500
        try:
            status, ctype, payload = self._route(method, url.path, parse_qs(url.query))
        except Exception as exc:
            logger.opt(exception=exc).error("http: {} {} failed: {}", method, url.path, exc)
            ctype, payload = "application/json", _json({"error": f"{type(exc).__name__}: {exc}"})
        self._respond(status, ctype, payload)
        level = "DEBUG" if method == "GET" and status < 500 else "INFO" if status < 500 else "WARNING"
        logger.log(
            level,
            "http: {} {} -> {} ({:.1f} ms)",
            method,
            url.path,
            status,
            (time.monotonic() - started) * 1000,
        )

    def _route(self, method: str, path: str, query: dict[str, list[str]]) -> tuple[int, str, bytes]:
        source = self.server.source
        if method == "GET" and path == "/healthz":
            report = source.health()
            doc = {"healthy": report.healthy, "reason": report.reason, **report.body}
            return (200 if report.healthy else 503), "application/json", _json(doc)
        if method == "GET" and path == "/metrics":
            return 200, _CONTENT_TYPE_METRICS, generate_latest(self.server.registry)
        api = getattr(source, "api", None)
        if api is None:
            return 404, "application/json", _json({"error": f"no route {method} {path}"})
        body: Any = None
        if method == "POST":
            length, refusal = self._body_length()
            if refusal is not None:
                self.close_connection = True  # the unread body must not be parsed as a next request
                return refusal[0], "application/json", _json({"error": refusal[1]})
            try:
                raw = self.rfile.read(length) if length else b""
            except TimeoutError:
                self.close_connection = True
                return 408, "application/json", _json({"error": "request body not received in time"})
            if len(raw) < length:
                self.close_connection = True
                return 400, "application/json", _json({"error": "request body shorter than Content-Length"})
            try:
                body = json.loads(raw) if raw else {}
            except (ValueError, RecursionError):  # RecursionError: nested too deeply
                return 400, "application/json", _json({"error": "request body is not JSON"})
        status, doc = api(method, path, query, body)
        return status, "application/json", _json(doc)

    def _body_length(self) -> tuple[int, tuple[int, str] | None]:
        """The POST body's length, or why it cannot be read: ``(0, (status, error))``."""
        if self.headers.get("Transfer-Encoding"):
            return 0, (411, "send the body with a Content-Length (no Transfer-Encoding)")
        text = (self.headers.get("Content-Length") or "0").strip()
        length = small_int(text)
        if length < 0:
            return 0, (400, f"Content-Length must be a non-negative integer, got {text!r}")
        if length > _MAX_BODY:
            return 0, (413, "request body too large")
        return length, None

    def _respond(self, status: int, ctype: str, payload: bytes) -> None:
        try:
            self.send_response(status, HTTPStatus(status).phrase)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
        except OSError:
            pass  # the client went away


def small_int(text: str) -> int:
    """``text`` as a non-negative int; a huge one (more than 9 digits) as 10**9; -1 if not digits.
    (Never int() on thousands of digits: Python refuses those with ValueError.)"""
    if not _DIGITS.fullmatch(text):
        return -1
    digits = text.lstrip("0")
    return 10**9 if len(digits) > 9 else int(digits or "0")


def _json(doc: Any) -> bytes:
    return json.dumps(doc, default=str).encode() + b"\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    source: HealthSource
    registry: CollectorRegistry


class HealthServer:
    """Serves ``/healthz`` and ``/metrics`` (and the source's ``api``, if it has one).

    Args:
        source: what to report on (the worker's or the facilitator's health source).
        host: interface to bind (default loopback only).
        port: TCP port; 0 picks a free one (read it back from ``port``/``url``).

    Raises:
        OSError: the address cannot be bound.
    """

    def __init__(self, source: HealthSource, host: str = "127.0.0.1", port: int = 0) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SourceCollector(source))
        self._server = _Server((host, port), _Handler)
        self._server.source = source
        self._server.registry = self.registry
        self.host = host
        self.port: int = int(self._server.server_address[1])
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="jobrelay-http",
            daemon=True,
        )

    def __enter__(self) -> HealthServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> HealthServer:
        self._thread.start()
        logger.info("http: serving /healthz and /metrics on {}", self.url)
        return self

    def stop(self) -> None:
        """Stop serving (bounded: the serve loop polls every 0.2 s)."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=2.0)
        self._server.server_close()
