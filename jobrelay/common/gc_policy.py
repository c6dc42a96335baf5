# Python's cyclic garbage collector, set for a process that holds thousands of long-lived
# connections (the facilitator; bench_scale's simulated workers).
#
# Why: CPython's defaults (700, 10, 10) run a young collection every 700 net allocations and,
# once the objects that survived since the last full collection reach a quarter of the old ones,
# a full collection over every tracked object. A connection is a few hundred tracked objects
# (transport, protocol, tasks, futures, session), so 10,000 of them make full collections of
# several million objects: measured at 10,000 simulated workers, 75 full collections of up to
# 1 s each, 57 s of the facilitator's 140 s of CPU. Objects of a connection attempt that is
# refused, or of one frame, live a few milliseconds: with a young generation of 50,000 most of
# them are freed by reference counting before any collection sees them, so far fewer reach the
# old generation, and full collections become rare (the same run: 0 full collections, 14 s in
# all). Garbage cycles are still collected, in larger, rarer batches (a bounded memory cost:
# ``YOUNG`` objects at most wait in the young generation).
#
# ``gc.freeze()`` first moves what start-up created (modules, classes, settings) out of every
# later collection: it lives as long as the process anyway.
from __future__ import annotations

import gc
import time
from typing import Final

__all__ = ["THRESHOLDS", "GcClock", "gc_clock", "tune_for_many_connections"]

YOUNG: Final = 50_000
THRESHOLDS: Final = (YOUNG, 20, 10)


class GcClock:
    """Collections and the time spent in them, per generation, measured by a ``gc.callbacks``
    hook (for /metrics: a process whose collections cost seconds should show it)."""

    def __init__(self) -> None:
        self.collections = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = 0.0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        took = time.perf_counter() - self._started
        generation = info.get("generation", 2)
        self.collections[generation] += 1
        self.seconds[generation] += took
        self.longest = max(self.longest, took)


_clock: GcClock | None = None


def tune_for_many_connections() -> GcClock:
    """Freeze what start-up made, set ``THRESHOLDS`` and start measuring collections (once per
    process; later calls return the same clock). Call it when start-up is done, before the
    first connection."""
    global _clock
    if _clock is None:
        gc.collect()
        gc.freeze()
        gc.set_threshold(*THRESHOLDS)
        _clock = GcClock()
        gc.callbacks.append(_clock)
    return _clock


def gc_clock() -> GcClock | None:
    """The process's clock if ``tune_for_many_connections`` ran, else None."""
    return _clock
