"""The garbage-collector settings of a process holding thousands of connections (gc_policy):
collections measured, start-up objects frozen, young generation of YOUNG, and garbage cycles
still collected without anyone calling gc.collect()."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

import pytest

from jobrelay.common.gc_policy import THRESHOLDS, YOUNG, GcClock

pytestmark = pytest.mark.timeout(60)


def test_the_clock_counts_each_collection_and_its_time() -> None:
    clock = GcClock()
    gc.callbacks.append(clock)
    try:
        gc.collect(0)
        gc.collect()
    finally:
        gc.callbacks.remove(clock)
    assert clock.collections[0] >= 1 and clock.collections[2] >= 1
    assert clock.seconds[2] > 0
    assert 0 < clock.longest <= sum(clock.seconds)


def test_a_tuned_process_still_collects_garbage_cycles_by_itself() -> None:
    # In a fresh process (the settings are process-wide): cycles made after the tuning are freed
    # by the collector's own schedule once YOUNG more objects were allocated.
    script = textwrap.dedent(
        f"""
        import gc, weakref
        from jobrelay.common.gc_policy import tune_for_many_connections
        clock = tune_for_many_connections()
        assert tune_for_many_connections() is clock
        print(gc.get_threshold(), gc.get_freeze_count() > 0)

        class Node:
            pass

        freed = []
        for _ in range(100):
            a, b = Node(), Node()
            a.other, b.other = b, a
            weakref.finalize(a, freed.append, 1)
        del a, b
        keep = [[] for _ in range({YOUNG} * 2)]
        print(len(freed), clock.collections[0] >= 1)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=50
    )
    assert done.returncode == 0, done.stderr
    thresholds, collected = done.stdout.splitlines()
    assert thresholds == f"{THRESHOLDS} True"
    assert collected == "100 True"
