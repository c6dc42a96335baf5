# The facilitator's health, metrics and small JSON job API, served by the shared HTTP server
# (jobrelay.common.http): the API's routes on aiohttp's router. Invariants: every value is read at
# request time from the running facilitator; every blocking facilitator call runs in the server's
# thread pool, never on the event loop (a submit served on the facilitator's own loop awaits its
# commit there instead); a bad request (path, query, body fields) is a 4xx with a JSON error.
from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
from aiohttp import web
from prometheus_client.core import Metric

from jobrelay.common.http import HealthReport, HealthServer, answer, answer_here, read_json, small_int
from jobrelay.facilitator.errors import JobTooLarge
from jobrelay.facilitator.event_stream import stream_events
from jobrelay.facilitator.events import Subscription
from jobrelay.facilitator.job_options import JobOptions
from jobrelay.facilitator.metrics import facilitator_metrics

if TYPE_CHECKING:
    from jobrelay.facilitator.server import Facilitator

__all__ = ["FacilitatorHealth", "serve_facilitator"]

_MAX_LIMIT = 10_000  # most jobs one GET /jobs may list


class FacilitatorHealth:
    """Health, metrics and the job API of a running :class:`Facilitator`."""

    def __init__(self, facilitator: Facilitator) -> None:
        self.facilitator = facilitator
        self._streams: set[Subscription] = set()  # GET /events readers of this server
        self._closing = False

    async def on_shutdown(self) -> None:
        """The server is stopping: each event stream ends with ``stream.closed`` now, instead of
        being cut off after the grace."""
        self._closing = True
        for sub in list(self._streams):
            sub.interrupt()

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
        saturation = fac.saturation()
        body["saturated"] = bool(saturation)
        body["waiting_handshakes"] = fac.hub.waiting_handshakes
        if fac.stopping:
            return HealthReport(False, "facilitator stopping", body)
        if saturation:
            return HealthReport(False, f"saturated: {saturation}", body)
        return HealthReport(True, "", body)

    def metrics(self) -> Iterator[Metric]:
        return facilitator_metrics(self.facilitator)

    # --- the JSON API (used by `jobrelay submit` and `jobrelay jobs`), on aiohttp's router.
    # Handlers read the request on the event loop; every facilitator call runs in the server's pool.

    def routes(self) -> list[web.AbstractRouteDef]:
        """The API's routes, for the HealthServer's router (beside /healthz and /metrics)."""
        job = "/jobs/{job_id:[^/]+}"  # ids arrive as quote(job_id, safe=""); the router decodes them
        return [
            web.post("/jobs", self._post_jobs),
            web.get("/jobs", self._get_jobs),
            web.get(job, self._get_job),
            web.post(job + "/cancel", self._post_cancel),
            web.get("/job-counts", self._get_job_counts),
            web.get("/workers", self._get_workers),
            web.get("/stats", self._get_stats),
            web.get("/events", self._get_events),
        ]

    async def _post_jobs(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        fac = self.facilitator
        if asyncio.get_running_loop() is not fac.loop:
            return await answer(request, self._submit, body)
        # On the facilitator's own loop (as `jobrelay facilitator` serves it): await the commit
        # here, no pool thread per submit, so concurrent submitters share group commits.
        args = _submit_args(body)
        if isinstance(args, Answer):
            return answer_here(*args)
        kind, payload, job_id, worker, options = args
        try:
            new_id = (await fac.submit_async([(kind, payload, job_id)], worker=worker, options=options))[0]
        except JobTooLarge as exc:
            return answer_here(413, {"error": str(exc)})
        except (ValueError, TypeError) as exc:
            return answer_here(400, {"error": str(exc)})
        return answer_here(201, {"job_id": new_id})

    async def _get_jobs(self, request: web.Request) -> web.Response:
        status = request.query.get("status") or None  # blank means "any", as before
        limit = (request.query.get("limit") or "1000").strip()
        return await answer(request, self._list, status, limit)

    async def _get_job(self, request: web.Request) -> web.Response:
        return await answer(request, self._view, request.match_info["job_id"])

    async def _post_cancel(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        reason = body.get("reason", "") if isinstance(body, dict) else ""
        return await answer(request, self._cancel, request.match_info["job_id"], str(reason))

    async def _get_job_counts(self, request: web.Request) -> web.Response:
        return await answer(request, self._job_counts)

    async def _get_workers(self, request: web.Request) -> web.Response:
        return await answer(request, self._workers)

    async def _get_stats(self, request: web.Request) -> web.Response:
        return await answer(request, self._stats)

    async def _get_events(self, request: web.Request) -> web.StreamResponse:
        fac = self.facilitator
        return await stream_events(
            request, fac.hub.events, lambda: fac.stopping or self._closing, self._streams
        )

    # --- the blocking halves (run in the server's pool), each ``(HTTP status, JSON-able document)``

    def _submit(self, body: Any) -> tuple[int, Any]:
        args = _submit_args(body)
        if isinstance(args, Answer):
            return args
        kind, payload, job_id, worker, options = args
        try:
            new_id = self.facilitator.submit(kind, payload, job_id=job_id, worker=worker, **options._asdict())
        except JobTooLarge as exc:
            return 413, {"error": str(exc)}
        except (ValueError, TypeError) as exc:
            return 400, {"error": str(exc)}
        return 201, {"job_id": new_id}

    def _list(self, status: str | None, limit_text: str) -> tuple[int, Any]:
        limit = small_int(limit_text)
        if not 0 <= limit <= _MAX_LIMIT:
            return 400, {"error": f"limit must be an integer 0..{_MAX_LIMIT}, got {limit_text!r}"}
        try:
            jobs = self.facilitator.jobs(status, limit)
        except ValueError as exc:  # an unknown status: say which ones there are
            return 400, {"error": str(exc)}
        return 200, {"jobs": [r._asdict() for r in jobs]}

    def _job_counts(self) -> tuple[int, Any]:
        counts = self.facilitator.job_counts()
        return 200, {"counts": counts, "total": sum(counts.values())}

    def _view(self, job_id: str) -> tuple[int, Any]:
        view = self.facilitator.job(job_id)
        if view is None:
            return 404, {"error": f"no job {job_id!r}"}
        return 200, {
            **view.record._asdict(),
            "payload": view.payload,
            "history": [e._asdict() for e in view.history],
        }

    def _cancel(self, job_id: str, reason: str) -> tuple[int, Any]:
        try:
            cancelled = self.facilitator.cancel(job_id, reason)
        except JobTooLarge as exc:
            return 413, {"error": str(exc)}
        # The status read after the cancel says what it did: "cancelled" (queued here: ended now),
        # a worker's status (the cancel is on its way there), or the ending it came too late for.
        view = self.facilitator.job(job_id)
        if view is None:
            return 404, {"error": f"no job {job_id!r}"}
        return 200, {"job_id": job_id, "cancelled": cancelled, "status": view.record.status or "queued"}

    def _workers(self) -> tuple[int, Any]:
        return 200, {"workers": [msgspec.to_builtins(w) for w in self.facilitator.workers()]}

    def _stats(self) -> tuple[int, Any]:
        return 200, msgspec.to_builtins(self.facilitator.stats())


class Answer(NamedTuple):
    """An HTTP status and its JSON document."""

    status: int
    doc: Any


_SUBMIT_FIELDS = {
    "kind",
    "payload",
    "job_id",
    "worker",
    "start_within",
    "soft_time_limit",
    "time_limit",
    "retries",
    "retry_backoff",
}


def _submit_args(body: Any) -> Answer | tuple[str, Any, str | None, str | None, JobOptions]:
    """``(kind, payload, job_id, worker, options)`` of a POST /jobs body, or the 400 that
    refuses it (the options' values, ``start_within`` among them, are checked by ``submit``:
    a TypeError or ValueError)."""
    if not isinstance(body, dict):
        return Answer(400, {"error": "expected a JSON object {kind, payload?, job_id?, worker?, ...}"})
    unknown = set(body) - _SUBMIT_FIELDS
    if unknown:
        return Answer(400, {"error": f"unknown fields: {', '.join(sorted(unknown))}"})
    kind, job_id, worker = body.get("kind"), body.get("job_id"), body.get("worker")
    if not isinstance(kind, str) or any(v is not None and not isinstance(v, str) for v in (job_id, worker)):
        return Answer(400, {"error": "kind must be a string; job_id and worker strings or null"})
    # Unchecked here: submit checks them (JobOptions.check: TypeError/ValueError → 400).
    options = JobOptions(**{k: body[k] for k in JobOptions._fields if body.get(k) is not None})
    return kind, body.get("payload"), job_id, worker, options


def serve_facilitator(facilitator: Facilitator, host: str = "127.0.0.1", port: int = 0) -> HealthServer:
    """Start a HealthServer (health, metrics and the job API) for a facilitator."""
    return HealthServer(FacilitatorHealth(facilitator), host, port).start()
