"""tests/alone.py: the suite's readers-writer lock, which keeps an `alone` test from running
beside any other when pytest-xdist runs the suite in several processes."""

from __future__ import annotations

import threading
from pathlib import Path

from tests.alone import held

WAIT = 10.0  # seconds: what "it happens" may take
NOT_YET = 0.3  # seconds: how long "it has not happened" is watched


def hold(
    directory: Path, exclusive: bool, got: threading.Event, release: threading.Event
) -> threading.Thread:
    def run() -> None:
        with held(directory, exclusive=exclusive):
            got.set()
            release.wait(WAIT)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_shared_holders_run_together_and_an_exclusive_one_waits_for_them(tmp_path: Path) -> None:
    events = {name: (threading.Event(), threading.Event()) for name in ("a", "b", "alone")}
    threads = [hold(tmp_path, False, *events["a"]), hold(tmp_path, False, *events["b"])]
    assert events["a"][0].wait(WAIT) and events["b"][0].wait(WAIT)  # together
    threads.append(hold(tmp_path, True, *events["alone"]))
    assert not events["alone"][0].wait(NOT_YET)
    events["a"][1].set()
    assert not events["alone"][0].wait(NOT_YET)  # b still runs
    events["b"][1].set()
    assert events["alone"][0].wait(WAIT)
    events["alone"][1].set()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()


def test_a_waiting_exclusive_holder_is_not_starved_by_new_shared_ones(tmp_path: Path) -> None:
    first, alone, later = ((threading.Event(), threading.Event()) for _ in range(3))
    threads = [hold(tmp_path, False, *first)]
    assert first[0].wait(WAIT)
    threads.append(hold(tmp_path, True, *alone))
    assert not alone[0].wait(NOT_YET)
    threads.append(hold(tmp_path, False, *later))  # arrives while the exclusive one waits
    assert not later[0].wait(NOT_YET)
    first[1].set()
    assert alone[0].wait(WAIT)
    assert not later[0].is_set()  # the exclusive one went first, and alone
    alone[1].set()
    assert later[0].wait(WAIT)
    later[1].set()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive()
