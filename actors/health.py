# The worker's health and metrics source for the shared HTTP server (jobrelay.common.http).
# Invariant: every value is read at request time from the running worker's actors, in the HTTP
# server's thread pool (never on its event loop), so the short blocking asks here are fine.
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from jobrelay.actors.metrics import BUCKETS, COUNTERS, GAUGES, HISTOGRAM_HELP
from jobrelay.common.http import HealthReport, HealthServer, metric_name

if TYPE_CHECKING:
    from jobrelay.actors.worker import Worker

__all__ = ["WorkerHealth", "serve_worker"]

_ASK_TIMEOUT = 2.0


class WorkerHealth:
    """Health and metrics of a running :class:`Worker`.

    Healthy means work can flow: the connection is ``connected`` and either nothing is waiting
    for an acknowledgement or the facilitator acknowledged something within ``ack_stall`` seconds.
    In local mode (the facilitator unreachable for ``local_mode_after`` seconds, or the breaker
    open) the answer is the documented "healthy but local": 200, ``mode: "local"``, with a
    ``reason`` saying so: the worker is doing what it should while its facilitator is away.
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
        breaker = worker.connection.breaker().get(timeout=_ASK_TIMEOUT)
        local = worker.connection.local_mode().get(timeout=_ASK_TIMEOUT)
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
            "breaker": msgspec.to_builtins(breaker),
            "mode": "local" if local.active else "connected",
            "local_mode": msgspec.to_builtins(local),
        }
        if state != "connected" and local.active:
            since = f" since {time.strftime('%H:%M:%S', time.localtime(local.since))}" if local.since else ""
            return HealthReport(True, f"local mode{since}: facilitator unreachable (state: {state})", body)
        if state != "connected":
            return HealthReport(False, f"not connected (state: {state})", body)
        if stats.depth_rows and since_ack > self.ack_stall:
            return HealthReport(
                False, f"acks stalled: {stats.depth_rows} pending, none acked for {since_ack:.0f}s", body
            )
        return HealthReport(True, "", body)

    def metrics(self) -> Iterator[Metric]:
        """The worker's metrics (Prometheus conventions: HELP texts from the catalogue in
        metrics.py, its counters at 0 from the start, histograms for latencies)."""
        snap = self.worker.snapshot()
        labels = ["worker_id"]
        wid = [self.worker.config.worker_id]
        states = CounterMetricFamily(
            "jobrelay_worker_state_changes",
            "Connection state changes, by new state",
            labels=[*labels, "state"],
        )
        breaker_moves = CounterMetricFamily(
            "jobrelay_worker_breaker_transitions",
            "Connection circuit breaker transitions, by the state entered",
            labels=[*labels, "to"],
        )
        counters = dict.fromkeys(COUNTERS, 0)
        for name, count in snap.counters.items():
            if name.startswith("state_"):
                states.add_metric([*wid, name.removeprefix("state_")], count)
            elif name.startswith("breaker_to_"):
                breaker_moves.add_metric([*wid, name.removeprefix("breaker_to_")], count)
            else:
                counters[name] = count
        for name, count in sorted(counters.items()):
            help_text = COUNTERS.get(name, f"Worker counter {name}")
            family = CounterMetricFamily(f"jobrelay_worker_{metric_name(name)}", help_text, labels=labels)
            family.add_metric(wid, count)
            yield family
        yield states
        yield breaker_moves
        breaker = GaugeMetricFamily(
            "jobrelay_worker_breaker_state",
            "1 for the connection circuit breaker's current state",
            labels=[*labels, "state"],
        )
        for name in ("closed", "open", "half_open"):
            breaker.add_metric([*wid, name], 1.0 if snap.breaker == name else 0.0)
        yield breaker
        state = GaugeMetricFamily(
            "jobrelay_worker_connection_state",
            "1 for the current connection state",
            labels=[*labels, "state"],
        )
        for name in ("disconnected", "connecting", "authenticating", "connected", "backoff", "closed"):
            state.add_metric([*wid, name], 1.0 if snap.state == name else 0.0)
        yield state
        for name, value in sorted(snap.gauges.items()):
            help_text = GAUGES.get(name, f"Worker gauge {name}")
            gauge = GaugeMetricFamily(f"jobrelay_worker_{metric_name(name)}", help_text, labels=labels)
            gauge.add_metric(wid, value)
            yield gauge
        calls = GaugeMetricFamily(
            "jobrelay_worker_calls_in_flight", "Calls to the facilitator outstanding now", labels=labels
        )
        calls.add_metric(wid, float(self.worker.caller.gate.in_flight))
        yield calls
        if not self.worker.stopped:
            stats = self.worker.outbox.stats().get(timeout=_ASK_TIMEOUT)
            age = GaugeMetricFamily(
                "jobrelay_worker_outbox_oldest_unacked_seconds",
                "Age of the oldest outbox message not yet acknowledged (0 when none)",
                labels=labels,
            )
            age.add_metric(wid, stats.oldest_unacked_age or 0.0)
            yield age
        for name in sorted(BUCKETS):
            hist = snap.histograms.get(name)
            histogram = HistogramMetricFamily(
                f"jobrelay_worker_{metric_name(name)}_seconds", HISTOGRAM_HELP[name], labels=labels
            )
            bounds, cumulative = BUCKETS[name], (0,) * len(BUCKETS[name])
            if hist is not None:
                bounds, cumulative = hist.bounds, hist.buckets
            count = hist.count if hist is not None else 0
            buckets = [(str(float(b)), n) for b, n in zip(bounds, cumulative, strict=True)]
            histogram.add_metric(wid, [*buckets, ("+Inf", count)], hist.sum if hist is not None else 0.0)
            yield histogram


def serve_worker(worker: Worker, host: str = "127.0.0.1", port: int = 0) -> HealthServer:
    """Start a HealthServer for a worker."""
    return HealthServer(WorkerHealth(worker), host, port).start()
