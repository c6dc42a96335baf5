"""The worker's metrics are counted in place by the threads that report them (MetricsBook behind
a MetricsSink): no report is lost when many threads report at once, a snapshot is a consistent
copy, and the Metrics actor is asked to save the kept totals at most once a second, not once per
report."""

from __future__ import annotations

import threading

import pytest

from jobrelay.actors.actor_messages import Count, Gauge, Observe
from jobrelay.actors.metrics import MetricsBook

pytestmark = pytest.mark.timeout(60)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_reports_from_many_threads_are_all_counted() -> None:
    book = MetricsBook()
    start = threading.Barrier(4)

    def report() -> None:
        start.wait(10)
        for i in range(5_000):
            book.record(Count("data_sent"))
            book.record(Observe("ack_latency", i / 1_000_000))

    threads = [threading.Thread(target=report) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(t.is_alive() for t in threads)
    snap = book.snapshot()
    assert snap.counter("data_sent") == 20_000
    latency = snap.histograms["ack_latency"]
    assert latency.count == 20_000 and latency.buckets[-1] <= latency.count
    assert latency.buckets == tuple(sorted(latency.buckets))  # cumulative, as Prometheus reads them


def test_saving_the_kept_totals_is_asked_once_a_second_not_per_report() -> None:
    clock = Clock()
    book = MetricsBook(clock)
    assert not book.record(Count("published", 3))  # kept, but saved less than a second ago
    assert not book.record(Count("frames_sent"))  # not kept: never asks
    clock.now = 1.0
    assert book.record(Count("published"))  # due: asked once…
    assert not book.record(Count("published"))  # …not again until it is saved
    book.record(Gauge("outbox_depth", 7.0))
    assert book.take_unsaved() == {"published": 5}
    assert book.take_unsaved() == {}
    clock.now = 1.5
    assert not book.record(Count("acked"))
    clock.now = 2.0
    assert book.record(Count("acked"))
    snap = book.snapshot()
    assert snap.counter("published") == 5 and snap.counter("frames_sent") == 1
    assert snap.gauges == {"outbox_depth": 7.0}
