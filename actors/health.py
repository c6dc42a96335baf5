# Health, metrics and the facilitator's small JSON API over plain HTTP (stdlib ThreadingHTTPServer).
# Invariants: binds 127.0.0.1 unless told otherwise; every value is read at request time from the
# running worker or facilitator (no caching, no background polling); metrics go to a private
# CollectorRegistry, never prometheus-client's global one; a handler error is a 500 with one log
# line, never a dead server thread; a bad request (body length, JSON, path, query) is a 4xx, and a
# slow or idle client holds its thread for at most _SOCKET_TIMEOUT seconds per read.
from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
from loguru import logger
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobrelay.actors.errors import JobTooLarge

if TYPE_CHECKING:
    from jobrelay.actors.facilitator import Facilitator
    from jobrelay.actors.worker import Worker

__all__ = [
    "FacilitatorHealth",
    "HealthReport",
    "HealthServer",
    "HealthSource",
    "WorkerHealth",
    "serve_facilitator",
    "serve_worker",
]

_CONTENT_TYPE_METRICS = "text/plain; version=0.0.4; charset=utf-8"
_MAX_BODY = 1 << 20
_MAX_LIMIT = 10_000  # most jobs one GET /jobs may list
_ASK_TIMEOUT = 2.0
_SOCKET_TIMEOUT = 10.0
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


def _metric_name(text: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", text)


# ---------------------------------------------------------------------------------- worker


class WorkerHealth:
    """Health and metrics of a running :class:`Worker`.

    Healthy means work can flow: the connection is ``connected`` and either nothing is waiting
    for an acknowledgement or the facilitator acknowledged something within ``ack_stall`` seconds.
    """

    def __init__(self, worker: Worker, *, ack_stall: float = 30.0, clock: Callable[[], float] = time.time):
        self.worker = worker
        self.ack_stall = ack_stall
        self._clock = clock
        self._lock = threading.Lock()
        self._last_acked = -1
        self._acked_at = clock()

    def _acks_advanced(self, last_acked: int, now: float) -> float:
        """Seconds since the ack mark last moved (as observed by the scrapes)."""
        with self._lock:
            if last_acked != self._last_acked:
                self._last_acked, self._acked_at = last_acked, now
            return now - self._acked_at

    def health(self) -> HealthReport:
        worker = self.worker
        now = self._clock()
        if worker.stopped:
            return HealthReport(
                False, "worker stopped", {"state": "closed", "worker_id": worker.config.worker_id}
            )
        state = str(worker.connection.state().get(timeout=_ASK_TIMEOUT))
        stats = worker.outbox.stats().get(timeout=_ASK_TIMEOUT)
        last_contact = float(worker.connection.last_contact().get(timeout=_ASK_TIMEOUT))
        running = sorted(worker.router.running().get(timeout=_ASK_TIMEOUT))
        since_ack = self._acks_advanced(stats.last_acked, now)
        body: dict[str, Any] = {
            "worker_id": worker.config.worker_id,
            "state": state,
            "outbox_depth": stats.depth_rows,
            "outbox_bytes": stats.depth_bytes,
            "oldest_unacked_age": stats.oldest_unacked_age,
            "last_seq": stats.last_seq,
            "last_acked": stats.last_acked,
            "last_contact": last_contact or None,
            "last_contact_age": round(now - last_contact, 3) if last_contact else None,
            "running_jobs": running,
        }
        if state != "connected":
            return HealthReport(False, f"not connected (state: {state})", body)
        if stats.depth_rows and since_ack > self.ack_stall:
            return HealthReport(
                False, f"acks stalled: {stats.depth_rows} pending, none acked for {since_ack:.0f}s", body
            )
        return HealthReport(True, "", body)

    def metrics(self) -> Iterator[Metric]:
        snap = self.worker.snapshot()
        labels = ["worker_id"]
        wid = [self.worker.config.worker_id]
        states = CounterMetricFamily(
            "jobrelay_worker_state_changes",
            "Connection state changes, by new state",
            labels=[*labels, "state"],
        )
        for name, count in sorted(snap.counters.items()):
            if name.startswith("state_"):
                states.add_metric([*wid, name.removeprefix("state_")], count)
                continue
            family = CounterMetricFamily(
                f"jobrelay_worker_{_metric_name(name)}", f"Worker counter {name}", labels=labels
            )
            family.add_metric(wid, count)
            yield family
        yield states
        state = GaugeMetricFamily(
            "jobrelay_worker_connection_state",
            "1 for the current connection state",
            labels=[*labels, "state"],
        )
        for name in ("disconnected", "connecting", "authenticating", "connected", "backoff", "closed"):
            state.add_metric([*wid, name], 1.0 if snap.state == name else 0.0)
        yield state
        for name, value in sorted(snap.gauges.items()):
            gauge = GaugeMetricFamily(
                f"jobrelay_worker_{_metric_name(name)}", f"Worker gauge {name}", labels=labels
            )
            gauge.add_metric(wid, value)
            yield gauge
        if not self.worker.stopped:
            stats = self.worker.outbox.stats().get(timeout=_ASK_TIMEOUT)
            age = GaugeMetricFamily(
                "jobrelay_worker_outbox_oldest_unacked_seconds",
                "Age of the oldest unacknowledged outbox row (0 when empty)",
                labels=labels,
            )
            age.add_metric(wid, stats.oldest_unacked_age or 0.0)
            yield age
        for name, hist in sorted(snap.histograms.items()):
            summary = Metric(f"jobrelay_worker_{_metric_name(name)}_seconds", f"Worker {name}", "summary")
            for quantile, q_value in (("0.5", hist.p50), ("0.99", hist.p99)):
                summary.add_sample(
                    summary.name, {**dict(zip(labels, wid, strict=True)), "quantile": quantile}, q_value
                )
            summary.add_sample(f"{summary.name}_count", dict(zip(labels, wid, strict=True)), hist.count)
            summary.add_sample(f"{summary.name}_sum", dict(zip(labels, wid, strict=True)), hist.sum)
            yield summary


# ----------------------------------------------------------------------------- facilitator


class FacilitatorHealth:
    """Health, metrics and the job API of a running :class:`Facilitator`."""

    def __init__(self, facilitator: Facilitator) -> None:
        self.facilitator = facilitator

    def health(self) -> HealthReport:
        fac = self.facilitator
        stats = fac.stats()
        workers = fac.workers()
        body: dict[str, Any] = {
            "state": "stopping" if fac.stopping.is_set() else "serving",
            "url": fac.url,
            "connected_workers": stats.connected_workers,
            "outbox_depth": sum(w.outbox_depth for w in workers),
            "workers": {
                w.worker_id: {
                    "connected": w.connected,
                    "draining": w.draining,
                    "last_contact": w.last_contact,
                    "outbox_depth": w.outbox_depth,
                    "outstanding_jobs": w.outstanding_jobs,
                }
                for w in workers
            },
        }
        if fac.stopping.is_set():
            return HealthReport(False, "facilitator stopping", body)
        return HealthReport(True, "", body)

    def metrics(self) -> Iterator[Metric]:
        stats = self.facilitator.stats()
        for name, value in msgspec.structs.asdict(stats).items():
            if name == "connected_workers":
                gauge = GaugeMetricFamily("jobrelay_facilitator_connected_workers", "Workers connected now")
                gauge.add_metric([], value)
                yield gauge
                continue
            counter = CounterMetricFamily(f"jobrelay_facilitator_{name}", f"Facilitator counter {name}")
            counter.add_metric([], value)
            yield counter
        per_worker = {
            "connected": GaugeMetricFamily(
                "jobrelay_facilitator_worker_connected",
                "1 while the worker is connected",
                labels=["worker_id"],
            ),
            "outbox_depth": GaugeMetricFamily(
                "jobrelay_facilitator_worker_outbox_depth",
                "Job requests/cancels stored for the worker and not yet acknowledged",
                labels=["worker_id"],
            ),
            "outstanding_jobs": GaugeMetricFamily(
                "jobrelay_facilitator_worker_outstanding_jobs",
                "Jobs routed to the worker without a terminal status",
                labels=["worker_id"],
            ),
        }
        for view in self.facilitator.workers():
            per_worker["connected"].add_metric([view.worker_id], 1.0 if view.connected else 0.0)
            per_worker["outbox_depth"].add_metric([view.worker_id], view.outbox_depth)
            per_worker["outstanding_jobs"].add_metric([view.worker_id], view.outstanding_jobs)
        yield from per_worker.values()

    # --- the JSON API (used by `jobrelay submit` and `jobrelay jobs`)

    def api(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        """Answer one API request: ``(HTTP status, JSON-able document)``."""
        fac = self.facilitator
        parts = [unquote(p) for p in path.split("/") if p]  # ids arrive as quote(job_id, safe="")
        match method, parts:
            case "POST", ["jobs"]:
                return self._submit(body)
            case "GET", ["jobs"]:
                status = query.get("status", [None])[0]
                text = query.get("limit", ["1000"])[0].strip()
                limit = _small_int(text)
                if not 0 <= limit <= _MAX_LIMIT:
                    return 400, {"error": f"limit must be an integer 0..{_MAX_LIMIT}, got {text!r}"}
                return 200, {"jobs": [r._asdict() for r in fac.jobs(status, limit)]}
            case "GET", ["jobs", job_id]:
                view = fac.job(job_id)
                if view is None:
                    return 404, {"error": f"no job {job_id!r}"}
                return 200, {
                    **view.record._asdict(),
                    "payload": view.payload,
                    "history": [e._asdict() for e in view.history],
                }
            case "POST", ["jobs", job_id, "cancel"]:
                reason = body.get("reason", "") if isinstance(body, dict) else ""
                try:
                    cancelled = fac.cancel(job_id, str(reason))
                except JobTooLarge as exc:
                    return 413, {"error": str(exc)}
                return 200, {"job_id": job_id, "cancelled": cancelled}
            case "GET", ["workers"]:
                return 200, {"workers": [msgspec.to_builtins(w) for w in fac.workers()]}
            case "GET", ["stats"]:
                return 200, msgspec.to_builtins(fac.stats())
        return 404, {"error": f"no route {method} {path}"}

    def _submit(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return 400, {"error": "expected a JSON object {kind, payload?, job_id?, worker?}"}
        unknown = set(body) - {"kind", "payload", "job_id", "worker"}
        if unknown:
            return 400, {"error": f"unknown fields: {', '.join(sorted(unknown))}"}
        kind, job_id, worker = body.get("kind"), body.get("job_id"), body.get("worker")
        if not isinstance(kind, str) or any(
            v is not None and not isinstance(v, str) for v in (job_id, worker)
        ):
            return 400, {"error": "kind must be a string; job_id and worker strings or null"}
        try:
            new_id = self.facilitator.submit(kind, body.get("payload"), job_id=job_id, worker=worker)
        except JobTooLarge as exc:
            return 413, {"error": str(exc)}
        except (ValueError, TypeError) as exc:
            return 400, {"error": str(exc)}
        return 201, {"job_id": new_id}


# ---------------------------------------------------------------------------------- server


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    timeout = _SOCKET_TIMEOUT  # socket timeout per read/write: a silent client frees its thread

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
        length = _small_int(text)
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


def _small_int(text: str) -> int:
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
        source: what to report on (WorkerHealth or FacilitatorHealth).
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


def serve_worker(worker: Worker, host: str = "127.0.0.1", port: int = 0) -> HealthServer:
    """Start a HealthServer for a worker."""
    return HealthServer(WorkerHealth(worker), host, port).start()


def serve_facilitator(facilitator: Facilitator, host: str = "127.0.0.1", port: int = 0) -> HealthServer:
    """Start a HealthServer (health, metrics and the job API) for a facilitator."""
    return HealthServer(FacilitatorHealth(facilitator), host, port).start()
