"""A worker process for end-to-end tests (run as a script so tests can SIGKILL it).

Usage: e2e_worker_child.py URL WORKER_ID KEY_HEX DB_PATH
Runs a worker with the ``steps`` handler (payload {"steps": n, "pause": s}: n progress updates,
pausing s seconds between them) and prints "ready" once connected. Stops on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading

from loguru import logger

from jobrelay.actors import JobContext, WorkerConfig, start_worker
from jobrelay.protocol.messages import JobRequest


def steps(job: JobRequest, ctx: JobContext) -> str:
    payload = job.payload or {}
    n, pause = int(payload.get("steps", 3)), float(payload.get("pause", 0.0))
    for i in range(n):
        if pause and ctx.wait_cancelled(pause):
            return "cancelled"
        ctx.update(progress=(i + 1) / n, detail=f"step {i + 1}/{n}")
    return "ok"


def main() -> None:
    url, worker_id, key, db, facilitator_key = sys.argv[1:6]
    logger.remove()
    logger.enable("jobrelay")  # the library is quiet unless an application enables it
    logger.add(sys.stderr, level="WARNING")
    config = WorkerConfig(
        url=url,
        worker_id=worker_id,
        key=key,
        facilitator_key=facilitator_key,
        db_path=db,
        backoff_base=0.05,
        backoff_cap=0.5,
        max_concurrent_jobs=8,
    )
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    worker = start_worker(config, {"steps": steps})
    try:
        worker.wait_connected(30)
        print("ready", flush=True)
        done.wait()
    finally:
        worker.stop(5)


if __name__ == "__main__":
    main()
