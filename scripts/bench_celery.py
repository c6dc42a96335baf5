#!/usr/bin/env python3
"""Jobs through Celery end to end: jobrelay-on-Celery beside plain Celery on the same Redis.

One run starts a redis-server (loopback, no persistence) and 2 `celery worker` processes of 2
prefork children each (jobrelay.testing.celery_tasks), then times N jobs, each reporting 3
progress updates, from submit to completed:
- plain Celery: ``apply_async`` of a task that reports progress with ``update_state`` (the
  latest only), then ``AsyncResult.get()`` of every job;
- jobrelay-on-Celery: ``Facilitator.submit_many`` to a jobrelay worker whose kind runs as a
  RelayedTask, every status durable in both ledgers and relayed in order, until the facilitator
  has every job completed (each with its 3 progress updates, checked).
Prints a table with jobs/s and the ratio jobrelay / plain.

Usage: nice -n 19 scripts/bench_celery.py [--jobs N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pykka
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from jobrelay.actors import WorkerConfig, start_worker
from jobrelay.actors.celery_backend import celery_task
from jobrelay.actors.config import generate_key
from jobrelay.facilitator import Facilitator, FacilitatorConfig, start_facilitator
from jobrelay.protocol.auth import public_key_hex
from jobrelay.testing.celery_cluster import (
    redis_server,
    start_celery_worker,
    stop_celery_worker,
    wait_celery_ready,
)

APP = "jobrelay.testing.celery_tasks"
STEPS = 3


def plain_round(jobs: int, tag: str, queue: str | None = None) -> float:
    """Seconds for ``jobs`` plain Celery jobs, submit to the last result (sent to ``queue``,
    default Celery's own)."""
    from jobrelay.testing.celery_tasks import plain_steps

    route = {} if queue is None else {"queue": queue}
    started = time.perf_counter()
    results = [plain_steps.apply_async(({"steps": STEPS},), **route) for _ in range(jobs)]
    for result in results:
        assert result.get(timeout=120) == f"{STEPS} steps", tag
    return time.perf_counter() - started


def relay_round(fac: Facilitator, jobs: int, tag: str) -> float:
    """Seconds for ``jobs`` jobrelay-on-Celery jobs, submit to the facilitator's last completed."""
    started = time.perf_counter()
    ids = fac.submit_many([("steps", {"steps": STEPS}, f"{tag}-{i:05d}") for i in range(jobs)])
    wanted = set(ids)
    deadline = time.monotonic() + 300
    while sum(1 for r in fac.jobs(status="completed", limit=jobs * 4) if r.job_id in wanted) < jobs:
        if time.monotonic() > deadline:
            raise SystemExit(f"{tag}: not every job completed in 300 s")
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    for job_id in ids[:: max(1, jobs // 20)]:  # a sample: statuses in order, each once
        view = fac.job(job_id)
        assert view is not None
        progress = [h.progress for h in view.history if h.progress is not None]
        if progress != [round(s / STEPS, 4) for s in range(1, STEPS + 1)]:
            raise SystemExit(f"{job_id}: progress {progress} in {[tuple(h) for h in view.history]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=300, help="jobs per round (default 300)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, alternating the two (default 3)")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    with tempfile.TemporaryDirectory(prefix="jobrelay-bench-celery-") as tmp_name:
        tmp = Path(tmp_name)
        with redis_server(tmp) as server:
            os.environ["JOBRELAY_CELERY_REDIS"] = server.url  # for this process's task module too
            workers = [start_celery_worker(server.url, f"b{i}", tmp, app=APP) for i in (1, 2)]
            try:
                wait_celery_ready(server.url, workers)
                return run(args, tmp, server.url)
            finally:
                for w in workers:
                    stop_celery_worker(w)
                pykka.ActorRegistry.stop_all(timeout=5)


def run(args: argparse.Namespace, tmp: Path, url: str) -> int:
    worker_key = Ed25519PrivateKey.generate()
    fac_config = FacilitatorConfig(
        db_path=str(tmp / "fac.db"),
        key=generate_key(),
        authorized_keys={"bench": public_key_hex(worker_key)},
    )
    with start_facilitator(fac_config) as fac:
        config = WorkerConfig(
            url=fac.url,
            worker_id="bench",
            key=worker_key.private_bytes_raw().hex(),
            facilitator_key=fac.public_key,
            db_path=str(tmp / "worker.db"),
            max_concurrent_jobs=256,
        )
        with start_worker(config, {"steps": celery_task("jobrelay.demo.steps", broker=url)}) as worker:
            worker.wait_connected(10)
            plain_round(20, "warm-up")
            relay_round(fac, 20, "warm")
            plain_times, relay_times = [], []
            for r in range(args.rounds):
                plain_times.append(plain_round(args.jobs, f"plain-{r}"))
                relay_times.append(relay_round(fac, args.jobs, f"relay-{r}"))
            snap = worker.snapshot()
    plain = args.jobs / min(plain_times)
    relay = args.jobs / min(relay_times)
    rows = [
        ("plain Celery (apply_async + result)", plain, 1.0),
        ("jobrelay on Celery (submit → completed)", relay, relay / plain),
    ]
    print(
        f"\n{args.jobs} jobs per round, {STEPS} progress updates each, best of {args.rounds} rounds; "
        "2 celery workers × 2 prefork processes, one Redis"
    )
    print(f"{'path':<42} {'jobs/s':>9} {'ratio':>7}")
    for name, rate, ratio in rows:
        print(f"{name:<42} {rate:>9.1f} {ratio:>7.2f}")
    print(
        f"jobrelay counters: celery_dispatched={snap.counter('celery_dispatched')} "
        f"celery_relayed={snap.counter('celery_relayed')} jobs_completed={snap.counter('jobs_completed')}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
