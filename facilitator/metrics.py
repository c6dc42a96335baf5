# The facilitator's Prometheus metrics, by Prometheus' conventions: every family has a HELP text
# saying what it counts; counters are exported from the start (at 0), never only once they moved;
# one series per fact; jobs are counted by last status and worker (sum them over a label for
# totals). Read at scrape time from the running facilitator (counters in memory, job counts from
# one grouped read of the jobs table); process_* metrics come from prometheus-client's collector.
from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from jobrelay.common.gc_policy import gc_clock

if TYPE_CHECKING:
    from jobrelay.facilitator.server import Facilitator

__all__ = ["COUNTER_HELP", "facilitator_metrics"]

COUNTER_HELP: Final = {
    "frames_in": "WebSocket frames received from workers",
    "frames_out": "WebSocket frames sent to workers",
    "data_accepted": "Worker messages (statuses, specs, events) stored for the first time",
    "duplicates_dropped": "Worker messages received again and dropped (already stored)",
    "new_streams": "Worker streams started (a worker's first connection, or after its store was replaced)",
    "epoch_restarts": "Streams to workers restarted with a new epoch (a worker held more than our store)",
    "refused_updates": "Job status updates refused (not the worker's job, or after its terminal status)",
    "auth_failures": "Handshakes refused for a bad key, signature or clock",
    "heartbeat_timeouts": "Sessions closed because a worker fell silent",
    "sessions_opened": "Worker sessions opened (authenticated)",
    "sessions_closed": "Worker sessions that ended",
    "connections_replaced": "Worker connections closed because the same worker connected again",
    "jobs_submitted": "Jobs submitted (a repeated job id counts again: it is an idempotent repeat)",
    "jobs_released": "Jobs handed back by draining workers and queued again",
    "jobs_no_worker": "Jobs failed no_worker: still queued at their start deadline",
    "refused_capacity": "Connections refused at max_workers (close code 1013)",
    "refused_connections": "Connections reset over the open-socket limit",
    "refused_unauthenticated": "Connections refused over max_unauthenticated (503 with a Retry-After)",
    "refused_per_address": "Connections reset over max_unauthenticated_per_address",
    "accept_errors": "Failed accept() calls on the workers' port (e.g. out of file descriptors)",
    "handshakes_abandoned": "Handshakes given up while waiting for a slot (the worker had gone)",
    "store_commits": "Group commits of the facilitator's database",
    "store_operations": "Database operations (several share one commit)",
}


def facilitator_metrics(facilitator: Facilitator) -> Iterator[Metric]:
    """Every metric of a running facilitator (see the module invariants)."""
    stats = msgspec.structs.asdict(facilitator.stats())
    gauge = GaugeMetricFamily("jobrelay_facilitator_connected_workers", "Workers with an open session now")
    gauge.add_metric([], stats.pop("connected_workers"))
    yield gauge
    for name, value in stats.items():
        help_text = COUNTER_HELP.get(name, f"Facilitator counter {name}")
        counter = CounterMetricFamily(f"jobrelay_facilitator_{name}", help_text)
        counter.add_metric([], value)
        yield counter
    jobs = GaugeMetricFamily(
        "jobrelay_facilitator_jobs",
        "Jobs in the facilitator's ledger by last status and the worker they went to "
        '(worker_id "" while queued here)',
        labels=["status", "worker_id"],
    )
    for (worker, status), count in sorted(facilitator.store.job_counts_by_worker().items()):
        jobs.add_metric([status, worker], count)
    yield jobs
    per_worker = {
        "connected": GaugeMetricFamily(
            "jobrelay_facilitator_worker_connected",
            "1 while the worker has an open session",
            labels=["worker_id"],
        ),
        "draining": GaugeMetricFamily(
            "jobrelay_facilitator_worker_draining",
            "1 while the worker says it is draining (no new jobs go to it)",
            labels=["worker_id"],
        ),
        "outbox_depth": GaugeMetricFamily(
            "jobrelay_facilitator_worker_outbox_depth",
            "Job requests and cancels stored for the worker and not yet acknowledged by it",
            labels=["worker_id"],
        ),
        "outstanding_jobs": GaugeMetricFamily(
            "jobrelay_facilitator_worker_outstanding_jobs",
            "Jobs routed to the worker without a terminal status (what its credit is counted against)",
            labels=["worker_id"],
        ),
    }
    for view in facilitator.workers():
        per_worker["connected"].add_metric([view.worker_id], 1.0 if view.connected else 0.0)
        per_worker["draining"].add_metric([view.worker_id], 1.0 if view.draining else 0.0)
        per_worker["outbox_depth"].add_metric([view.worker_id], view.outbox_depth)
        per_worker["outstanding_jobs"].add_metric([view.worker_id], view.outstanding_jobs)
    yield from per_worker.values()
    subscribers = GaugeMetricFamily(
        "jobrelay_facilitator_event_subscribers", "Clients reading GET /events now"
    )
    subscribers.add_metric([], facilitator.hub.events.subscribers)
    yield subscribers
    dropped = CounterMetricFamily(
        "jobrelay_facilitator_event_subscribers_dropped",
        "GET /events readers dropped for falling too far behind",
    )
    dropped.add_metric([], facilitator.hub.events.dropped)
    yield dropped
    yield from _gc_metrics()


def _gc_metrics() -> Iterator[Metric]:
    """Time in Python's garbage collector, when ``jobrelay facilitator`` measures it (gc_policy)."""
    clock = gc_clock()
    if clock is None:
        return
    seconds = CounterMetricFamily(
        "jobrelay_facilitator_gc_seconds",
        "Seconds this process spent in Python's cyclic garbage collector, by generation",
        labels=["generation"],
    )
    for generation, value in enumerate(clock.seconds):
        seconds.add_metric([str(generation)], value)
    yield seconds
    longest = GaugeMetricFamily(
        "jobrelay_facilitator_gc_longest_pause_seconds",
        "The longest single garbage collection since start (the event loop stands still meanwhile)",
    )
    longest.add_metric([], clock.longest)
    yield longest
