"""Celery tasks for the Celery backend's tests (imported by real `celery worker` processes).

The broker, result backend and relay channel are the Redis at $JOBRELAY_CELERY_REDIS. A task that
takes a ``gate`` waits before each step until the test pushes to that Redis list, so a test
decides when each step happens (no sleeps to hope a race away).
"""

from __future__ import annotations

import os
import time
from typing import Any

import redis
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded

from jobrelay.actors.celery_backend import RelayedTask, report

URL = os.environ.get("JOBRELAY_CELERY_REDIS", "redis://127.0.0.1:6379/0")

app = Celery("jobrelay_tests", broker=URL, backend=URL)
app.conf.update(
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    jobrelay_lease_seconds=2.0,
)


def _gate(payload: dict[str, Any], step: int) -> None:
    gate = payload.get("gate")
    if gate and redis.Redis.from_url(URL).blpop([gate], timeout=60) is None:
        raise TimeoutError(f"gate {gate} not opened for step {step}")


@app.task(base=RelayedTask, name="tests.steps")
def steps(payload: dict[str, Any]) -> str:
    n = int(payload.get("steps", 3))
    for i in range(n):
        _gate(payload, i)
        report(progress=(i + 1) / n, detail=f"step {i + 1}/{n}")
    return f"{n} steps done"


@app.task(base=RelayedTask, name="tests.fail")
def fail(payload: dict[str, Any]) -> None:
    raise ValueError(f"bad input {payload!r}")


@app.task(base=RelayedTask, name="tests.stubborn")
def stubborn(payload: dict[str, Any]) -> str:
    """Reports once, then runs on for a minute, through its soft time limit too."""
    report(progress=0.1, detail="working")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            time.sleep(0.05)
        except SoftTimeLimitExceeded:
            if not payload.get("ignore_soft"):
                raise
    return "never"


@app.task(name="tests.plain")
def plain(payload: dict[str, Any]) -> str:
    """Not a RelayedTask: only its result tells how it ended."""
    return f"plain {payload!r}"
