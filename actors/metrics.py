# Metrics: counters, gauges and histograms the other actors report (`tell` a MetricsSink, which
# counts them in place in the MetricsBook), the actor that keeps totals, and the catalogue of what
# each one means (the HELP texts of /metrics).
# Invariants: reporting never waits for more than the book's short lock; snapshot() is a
# consistent copy; a histogram
# counts observations into fixed buckets (what Prometheus aggregates across workers; quantiles of
# one process could not be), so its memory does not grow with the observations; the counters of
# KEPT are also added to the database's totals (storage/totals.py) at most every _FLUSH_EVERY
# seconds and at stop, so `jobrelay status` shows them across restarts (a kill -9 loses at most
# the last second of them, never anything the protocol relies on).
from __future__ import annotations

import bisect
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any, Final, cast

import msgspec
import pykka
from loguru import logger
from pykka.typing import ActorMemberMixin, proxy_method

from jobrelay.actors.actor_messages import BreakerChanged, Count, Gauge, Observe, StateChanged
from jobrelay.actors.config import WorkerConfig
from jobrelay.storage import Database, StorageError, open_database
from jobrelay.storage.totals import add_totals

__all__ = [
    "BUCKETS",
    "COUNTERS",
    "GAUGES",
    "KEPT",
    "Histogram",
    "MetricsActor",
    "MetricsBook",
    "MetricsProxy",
    "MetricsSink",
    "MetricsSnapshot",
    "SaveTotals",
]

_FLUSH_EVERY = 1.0  # seconds between writes of the kept totals

KEPT: Final = frozenset(
    {"replayed", "duplicates_dropped", "reconnects", "published", "acked", "jobs_received", "jobs_duplicate"}
)
"""The counters whose totals are kept in the database across restarts."""

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
    breaker: str = "closed"  # the connection's circuit breaker (BreakerState value)

    def counter(self, name: str) -> int:
        return self.counters.get(name, 0)


class SaveTotals(msgspec.Struct, frozen=True):
    """To the Metrics actor: the kept counters moved and were not saved for _FLUSH_EVERY."""


class MetricsBook:
    """Every metric of one worker, updated in place by the thread that reports it.

    A report is a lock and a few dict updates in the reporter's own thread. It used to be a
    message to the Metrics actor, about six per published message (published, sent, acked,
    ack latency, frames): each woke that actor's thread, and on two cores those wake-ups took
    the GIL from the Outbox between the statements of its commits.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        self._counters: dict[str, int] = {}
        self._gauges: dict[str, float] = {}
        self._bins: dict[str, list[int]] = {}  # per bucket (not cumulative), then +Inf
        self._totals: dict[str, tuple[int, float, float]] = {}
        self._state = "disconnected"
        self._breaker = "closed"
        self._unsaved: dict[str, int] = {}
        self._saved_at = clock()
        self._save_asked = False

    def record(self, message: Any) -> bool:
        """Apply one report; True (once until take_unsaved) when the kept counters are due to be
        saved."""
        with self._lock:
            match message:
                case Count(name=name, n=n):
                    self._counters[name] = self._counters.get(name, 0) + n
                    if name in KEPT:
                        self._unsaved[name] = self._unsaved.get(name, 0) + n
                        if not self._save_asked and self._clock() - self._saved_at >= _FLUSH_EVERY:
                            self._save_asked = True
                            return True
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
                    self._bump(f"state_{state.value}")
                case BreakerChanged(before=before, after=after):
                    self._breaker = after
                    self._bump(f"breaker_to_{after}")
                    if before == "closed" and after == "open":
                        self._bump("breaker_trips")
                case _:
                    logger.error("Metrics got an unknown message {!r}", message)
        return False

    def _bump(self, name: str) -> None:
        self._counters[name] = self._counters.get(name, 0) + 1

    def take_unsaved(self) -> dict[str, int]:
        """The kept counters' growth since the last call (for the database's totals)."""
        with self._lock:
            unsaved, self._unsaved = self._unsaved, {}
            self._saved_at, self._save_asked = self._clock(), False
        return unsaved

    def snapshot(self) -> MetricsSnapshot:
        with self._lock:
            histograms = {}
            for name, bins in self._bins.items():
                count, total, peak = self._totals[name]
                cumulative = list(itertools.accumulate(bins[:-1]))
                bounds = BUCKETS.get(name, _DEFAULT_BUCKETS)
                histograms[name] = Histogram(count, total, peak, tuple(bounds), tuple(cumulative))
            return MetricsSnapshot(
                at=time.time(),
                state=self._state,
                counters=dict(self._counters),
                gauges=dict(self._gauges),
                histograms=histograms,
                breaker=self._breaker,
            )


class MetricsSink:
    """What the other actors report to (``tell``, as to an actor): the book, in place; the
    Metrics actor only hears when the kept totals are due to be saved (its thread owns the
    database connection)."""

    def __init__(self, book: MetricsBook, actor: pykka.ActorRef[Any]) -> None:
        self._book = book
        self._actor = actor

    def tell(self, message: Any) -> None:
        if self._book.record(message):
            self._actor.tell(SaveTotals())  # ActorDeadError after the stop: send() takes it


class MetricsActor(pykka.ThreadingActor):
    """Saves the kept counters into the database's totals; answers snapshot(). Reports told to
    it directly (not through a MetricsSink) are applied to the book as well."""

    def __init__(self, book: MetricsBook, config: WorkerConfig | None = None) -> None:
        super().__init__()
        self._book = book
        self._config = config  # its database keeps the totals (None: kept in memory only)
        self._db: Database | None = None

    def on_start(self) -> None:
        if self._config is not None:  # (opened here: a SQLite connection belongs to its thread)
            self._db = open_database(self._config.db_path, durability=self._config.durability)

    def on_stop(self) -> None:
        self._save()
        if self._db is not None:
            self._db.close()

    def _save(self) -> None:
        unsaved = self._book.take_unsaved()
        if self._db is not None and unsaved:
            try:
                add_totals(self._db, unsaved)
            except StorageError as exc:  # a count is not worth stopping a worker for
                logger.warning(
                    "metrics: could not keep totals in {}: {}", self._config and self._config.db_path, exc
                )

    def on_receive(self, message: Any) -> None:
        if isinstance(message, SaveTotals) or self._book.record(message):
            self._save()

    def snapshot(self) -> MetricsSnapshot:
        return self._book.snapshot()


class MetricsProxy(ActorMemberMixin, pykka.ActorProxy[MetricsActor]):
    snapshot = proxy_method(MetricsActor.snapshot)


def metrics_proxy(ref: pykka.ActorRef[MetricsActor]) -> MetricsProxy:
    return cast(MetricsProxy, ref.proxy())
