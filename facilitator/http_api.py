# The facilitator's health, metrics and small JSON job API, served by the shared HTTP server
# (jobrelay.common.http). Invariants: every value is read at request time from the running
# facilitator; a bad request (path, query, body fields) is a 4xx with a JSON error.
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from jobrelay.common.http import HealthReport, HealthServer, small_int
from jobrelay.facilitator.errors import JobTooLarge

if TYPE_CHECKING:
    from jobrelay.facilitator.server import Facilitator

__all__ = ["FacilitatorHealth", "serve_facilitator"]

_MAX_LIMIT = 10_000  # most jobs one GET /jobs may list


class FacilitatorHealth:
    """Health, metrics and the job API of a running :class:`Facilitator`."""

    def __init__(self, facilitator: Facilitator) -> None:
        self.facilitator = facilitator

    def health(self) -> HealthReport:
        fac = self.facilitator
        stats = fac.stats()
        workers = fac.workers()
        body: dict[str, Any] = {
            "state": "stopping" if fac.stopping else "serving",
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
        if fac.stopping:
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
                limit = small_int(text)
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


def serve_facilitator(facilitator: Facilitator, host: str = "127.0.0.1", port: int = 0) -> HealthServer:
    """Start a HealthServer (health, metrics and the job API) for a facilitator."""
    return HealthServer(FacilitatorHealth(facilitator), host, port).start()
