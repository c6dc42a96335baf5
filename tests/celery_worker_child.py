"""A jobrelay worker process whose `steps` kind runs as the Celery task tests.steps (run as a
script so tests can SIGKILL it).

Usage: celery_worker_child.py URL WORKER_ID KEY_HEX DB_PATH FACILITATOR_KEY REDIS_URL [TASK]
(TASK: the Celery task of kind `steps`, default tests.steps)
Prints "ready" once connected. Stops on SIGTERM.
"""

from __future__ import annotations

import signal
import sys
import threading

from loguru import logger

from jobrelay.actors import WorkerConfig, start_worker
from jobrelay.actors.celery_backend import celery_task


def main() -> None:
    url, worker_id, key, db, facilitator_key, redis_url = sys.argv[1:7]
    task = sys.argv[7] if len(sys.argv) > 7 else "tests.steps"
    logger.enable("jobrelay")  # the library is quiet unless an application enables it
    logger.remove()
    logger.add(sys.stderr, level="INFO")
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
    worker = start_worker(config, {"steps": celery_task(task, broker=redis_url)})
    try:
        worker.wait_connected(30)
        print("ready", flush=True)
        done.wait()
    finally:
        worker.stop(5)


if __name__ == "__main__":
    main()
