# Metrics actor: counters, gauges and histograms reported by the other actors with `tell`, and the
# catalogue of what each one means (the HELP texts of /metrics).
# Invariants: reporting never blocks the reporter; snapshot() is a consistent copy; a histogram
# counts observations into fixed buckets (what Prometheus aggregates across workers; quantiles of
# one process could not be), so its memory does not grow with the observations.
from __future__ import annotations

import bisect
import time
from typing import Any, Final, cast

import msgspec
import pykka
from loguru import logger
from pykka.typing import ActorMemberMixin, proxy_method

from jobrelay.actors.actor_messages import Count, Gauge, Observe, StateChanged

__all__ = ["BUCKETS", "COUNTERS", "GAUGES", "Histogram", "MetricsActor", "MetricsProxy", "MetricsSnapshot"]

COUNTERS: Final = {
    "frames_sent": "WebSocket frames sent to the facilitator",
    "frames_received": "WebSocket frames received from the facilitator",
    "data_sent": "Outbox messages (job statuses, specs, events) sent for the first time",
    "data_received": "Stream messages (job requests, cancels) received from the facilitator",
    "duplicates_dropped": "Stream messages received again and dropped (already taken in)",
    "new_streams": "Times the facilitator's stream to this worker started anew (its store was replaced)",
    "refused_by_peer": "Warnings from the facilitator refusing one of our messages",
    "published": "Messages made durable in the outbox",
    "replayed": "Outbox messages sent again after a reconnect",
    "acked": "Outbox messages the facilitator acknowledged",
    "outbox_full": "Publishes that had to wait for room in the outbox",
    "epoch_restarts": "Times the outbox stream restarted with a new epoch",
    "reconnects": "Connections lost or failed and tried again",
    "jobs_received": "Job requests taken in (each job id once)",
    "jobs_duplicate": "Job requests received again for a known job id (ignored)",
    "jobs_started": "Jobs whose handler started",
    "jobs_completed": "Jobs ended completed",
    "jobs_failed": "Jobs ended failed (including time limits and restarts)",
    "jobs_rejected": "Jobs ended rejected (no handler for the kind, or refused input)",
    "jobs_cancelled": "Jobs ended cancelled",
    "jobs_released": "Jobs handed back to the facilitator unstarted while draining",
}
"""Counters every worker exports from the start (at 0 until they move), with their HELP texts."""

GAUGES: Final = {
    "outbox_depth": "Outbox messages not yet acknowledged by the facilitator",
    "outbox_bytes": "Bytes of the outbox messages not yet acknowledged",
    "in_flight": "Outbox messages sent and not yet acknowledged",
    "running_jobs": "Jobs whose handler runs now",
}

BUCKETS: Final = {
    "ack_latency": (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
    "job_duration": (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0),
}
"""Upper bounds (seconds) of each histogram's buckets; +Inf is implied."""
_DEFAULT_BUCKETS: Final = BUCKETS["ack_latency"]

HISTOGRAM_HELP: Final = {
    "ack_latency": "Seconds from sending an outbox message to the facilitator's acknowledgement",
    "job_duration": "Seconds from a job's handler starting to its terminal status",
}


class Histogram(msgspec.Struct, frozen=True):
    """Observations in buckets: ``buckets[i]`` counts those <= ``bounds[i]`` (cumulative, as in
    Prometheus); ``count`` is every observation (the +Inf bucket)."""

    count: int
    sum: float
    max: float
    bounds: tuple[float, ...]
    buckets: tuple[int, ...]


class MetricsSnapshot(msgspec.Struct, frozen=True):
    """A copy of every metric at one instant."""

    at: float
    state: str
    counters: dict[str, int]
    gauges: dict[str, float]
    histograms: dict[str, Histogram]

    def counter(self, name: str) -> int:
        return self.counters.get(name, 0)


class MetricsActor(pykka.ThreadingActor):
    def __init__(self) -> None:
        super().__init__()
        self._counters: dict[str, int] = {}
        self._gauges: dict[str, float] = {}
        self._bins: dict[str, list[int]] = {}  # per bucket (not cumulative), then +Inf
        self._totals: dict[str, tuple[int, float, float]] = {}
        self._state = "disconnected"

    def on_receive(self, message: Any) -> None:
        match message:
            case Count(name=name, n=n):
                self._counters[name] = self._counters.get(name, 0) + n
            case Gauge(name=name, value=value):
                self._gauges[name] = value
            case Observe(name=name, value=value):
                bounds = BUCKETS.get(name, _DEFAULT_BUCKETS)
                bins = self._bins.setdefault(name, [0] * (len(bounds) + 1))
                bins[bisect.bisect_left(bounds, value)] += 1  # le: a value equal to a bound is in it
                count, total, peak = self._totals.get(name, (0, 0.0, 0.0))
                self._totals[name] = (count + 1, total + value, max(peak, value))
            case StateChanged(state=state):
                self._state = state.value
                self._counters[f"state_{state.value}"] = self._counters.get(f"state_{state.value}", 0) + 1
            case _:
                logger.error("Metrics got an unknown message {!r}", message)

    def snapshot(self) -> MetricsSnapshot:
        histograms = {}
        for name, bins in self._bins.items():
            count, total, peak = self._totals[name]
            cumulative, running = [], 0
            for n in bins[:-1]:
                running += n
                cumulative.append(running)
            bounds = BUCKETS.get(name, _DEFAULT_BUCKETS)
            histograms[name] = Histogram(count, total, peak, tuple(bounds), tuple(cumulative))
        return MetricsSnapshot(
            at=time.time(),
            state=self._state,
            counters=dict(self._counters),
            gauges=dict(self._gauges),
            histograms=histograms,
        )


class MetricsProxy(ActorMemberMixin, pykka.ActorProxy[MetricsActor]):
    snapshot = proxy_method(MetricsActor.snapshot)


def metrics_proxy(ref: pykka.ActorRef[MetricsActor]) -> MetricsProxy:
    return cast(MetricsProxy, ref.proxy())
