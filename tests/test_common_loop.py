"""jobrelay.common.loop.run_loop: a stop cancels every task, also one started while stopping."""

from __future__ import annotations

import asyncio
import threading

import pytest

from jobrelay.common.loop import run_loop

pytestmark = pytest.mark.timeout(30)


def test_a_task_started_while_the_loop_stops_is_cancelled_not_dropped() -> None:
    loop = asyncio.new_event_loop()
    late: list[asyncio.Task[None]] = []
    started = threading.Event()

    async def never_ends() -> None:
        await asyncio.sleep(60)

    async def slow_to_cancel() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            # As a deadline timer does at shutdown: a new task, after the stop took its snapshot.
            late.append(loop.create_task(never_ends()))
            await asyncio.sleep(0.05)
            raise

    thread = threading.Thread(target=run_loop, args=(loop,), kwargs={"grace": 2.0}, daemon=True)
    thread.start()
    try:
        asyncio.run_coroutine_threadsafe(slow_to_cancel(), loop)
        assert started.wait(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        assert not thread.is_alive() and loop.is_closed()
        assert len(late) == 1 and late[0].cancelled()  # was: left pending, dropped by close()
    finally:
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)


def test_a_stuck_task_does_not_hold_the_stop_beyond_the_grace() -> None:
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def ignores_cancel() -> None:
        started.set()
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                continue

    thread = threading.Thread(target=run_loop, args=(loop,), kwargs={"grace": 0.3}, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(ignores_cancel(), loop)
    assert started.wait(5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    assert not thread.is_alive() and loop.is_closed()
