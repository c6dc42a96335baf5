# Metrics actor: counters, gauges and histograms reported by the other actors with `tell`.
# Invariants: reporting never blocks the reporter; snapshot() is a consistent copy; the counters
# of KEPT are also added to the database's totals (storage/totals.py) at most every
# _FLUSH_EVERY seconds and at stop, so `jobrelay status` shows them across restarts (a kill -9
# loses at most the last second of them, never anything the protocol relies on).
from __future__ import annotations

import time
from collections import deque
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

__all__ = ["KEPT", "Histogram", "MetricsActor", "MetricsProxy", "MetricsSnapshot"]

_RESERVOIR = 2048
_FLUSH_EVERY = 1.0  # seconds between writes of the kept totals

KEPT: Final = frozenset(
    {"replayed", "duplicates_dropped", "reconnects", "published", "acked", "jobs_received", "jobs_duplicate"}
)
"""The counters whose totals are kept in the database across restarts."""


class Histogram(msgspec.Struct, frozen=True):
    count: int
    sum: float
    p50: float
    p99: float
    max: float


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


class MetricsActor(pykka.ThreadingActor):
    def __init__(
        self, config: WorkerConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self._config = config  # its database keeps the totals (None: kept in memory only)
        self._db: Database | None = None
        self._unsaved: dict[str, int] = {}
        self._clock = clock
        self._saved_at = clock()
        self._counters: dict[str, int] = {}
        self._gauges: dict[str, float] = {}
        self._samples: dict[str, deque[float]] = {}
        self._totals: dict[str, tuple[int, float, float]] = {}
        self._state = "disconnected"
        self._breaker = "closed"

    def on_start(self) -> None:
        if self._config is not None:  # (opened here: a SQLite connection belongs to its thread)
            self._db = open_database(self._config.db_path, durability=self._config.durability)

    def on_stop(self) -> None:
        self._save()
        if self._db is not None:
            self._db.close()

    def _save(self) -> None:
        unsaved, self._unsaved = self._unsaved, {}
        self._saved_at = self._clock()
        if self._db is not None and unsaved:
            try:
                add_totals(self._db, unsaved)
            except StorageError as exc:  # a count is not worth stopping a worker for
                logger.warning(
                    "metrics: could not keep totals in {}: {}", self._config and self._config.db_path, exc
                )

    def on_receive(self, message: Any) -> None:
        match message:
            case Count(name=name, n=n):
                self._counters[name] = self._counters.get(name, 0) + n
                if name in KEPT:
                    self._unsaved[name] = self._unsaved.get(name, 0) + n
                    if self._clock() - self._saved_at >= _FLUSH_EVERY:
                        self._save()
            case Gauge(name=name, value=value):
                self._gauges[name] = value
            case Observe(name=name, value=value):
                self._samples.setdefault(name, deque(maxlen=_RESERVOIR)).append(value)
                count, total, peak = self._totals.get(name, (0, 0.0, 0.0))
                self._totals[name] = (count + 1, total + value, max(peak, value))
            case StateChanged(state=state):
                self._state = state.value
                self._counters[f"state_{state.value}"] = self._counters.get(f"state_{state.value}", 0) + 1
            case BreakerChanged(before=before, after=after):
                self._breaker = after
                self._bump(f"breaker_to_{after}")
                if before == "closed" and after == "open":
                    self._bump("breaker_trips")
            case _:
                logger.error("Metrics got an unknown message {!r}", message)

    def _bump(self, name: str) -> None:
        self._counters[name] = self._counters.get(name, 0) + 1

    def snapshot(self) -> MetricsSnapshot:
        histograms = {}
        for name, samples in self._samples.items():
            ordered = sorted(samples)
            count, total, peak = self._totals[name]
            histograms[name] = Histogram(
                count=count,
                sum=total,
                p50=ordered[len(ordered) // 2],
                p99=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))],
                max=peak,
            )
        return MetricsSnapshot(
            at=time.time(),
            state=self._state,
            counters=dict(self._counters),
            gauges=dict(self._gauges),
            histograms=histograms,
            breaker=self._breaker,
        )


class MetricsProxy(ActorMemberMixin, pykka.ActorProxy[MetricsActor]):
    snapshot = proxy_method(MetricsActor.snapshot)


def metrics_proxy(ref: pykka.ActorRef[MetricsActor]) -> MetricsProxy:
    return cast(MetricsProxy, ref.proxy())
