# An asyncio event loop in a thread of its own, for the parts of jobrelay that run one (the
# facilitator's connections, the HTTP server when it is given no loop). Invariant: when the loop
# stops, whatever is still scheduled on it is cancelled and given a bounded time to end, then the
# loop is closed: nothing is leaked, and a stop never waits forever on a stuck task.
from __future__ import annotations

import asyncio

__all__ = ["run_loop"]


def run_loop(loop: asyncio.AbstractEventLoop, *, grace: float = 1.0) -> None:
    """Run ``loop`` in the calling thread until ``loop.stop()``, then cancel what is left, wait
    at most ``grace`` seconds for it, and close the loop."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        # Again until none is left: a timer firing while the first ones end may start a task,
        # which closing the loop would drop unstarted ("coroutine ... was never awaited").
        deadline = loop.time() + grace
        while (tasks := asyncio.all_tasks(loop)) and loop.time() < deadline:
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.wait(tasks, timeout=max(0.0, deadline - loop.time())))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
