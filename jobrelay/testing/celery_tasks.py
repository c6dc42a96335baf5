# The Celery app of `jobrelay demo --celery` and scripts/bench_celery.py, imported by real
# `celery worker` processes (`celery -A jobrelay.testing.celery_tasks worker`). Its broker, result
# backend and relay channel are the Redis at $JOBRELAY_CELERY_REDIS.
from __future__ import annotations

import os
import time
from typing import Any

import celery

from jobrelay.actors.celery_backend.task import RelayedTask, report
from jobrelay.testing.celery_cluster import REDIS_ENV

__all__ = ["app", "plain_steps", "relayed_steps"]

_URL = os.environ.get(REDIS_ENV, "redis://127.0.0.1:6379/0")

app = celery.Celery("jobrelay_demo", broker=_URL, backend=_URL)
app.conf.update(
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    jobrelay_lease_seconds=3.0,
)


def _steps(payload: dict[str, Any]) -> tuple[int, float]:
    return int(payload.get("steps", 3)), float(payload.get("seconds", 0.0))


@app.task(base=RelayedTask, name="jobrelay.demo.steps")  # type: ignore[untyped-decorator]
def relayed_steps(payload: dict[str, Any]) -> str:
    """``steps`` progress reports over ``seconds``, relayed by jobrelay."""
    steps, seconds = _steps(payload)
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        report(progress=round(step / steps, 4), detail=f"step {step}/{steps}")
    return f"{steps} steps"


@app.task(bind=True, name="jobrelay.bench.plain_steps")  # type: ignore[untyped-decorator]
def plain_steps(self: Any, payload: dict[str, Any]) -> str:
    """The same in plain Celery: progress through the result backend (each overwrites the last)."""
    steps, seconds = _steps(payload)
    for step in range(1, steps + 1):
        time.sleep(seconds / steps)
        self.update_state(state="PROGRESS", meta={"progress": round(step / steps, 4)})
    return f"{steps} steps"
