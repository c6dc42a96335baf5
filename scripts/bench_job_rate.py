#!/usr/bin/env python3
"""Jobs/s through jobrelay's own workers beside plain Celery on Redis, in the same run.

A job is: submit → request delivered → accepted → 3 progress updates → completed, with a handler
that does nothing else. Two ways to run it, each with 1 and with 4 worker processes:
- jobrelay: ``Facilitator.submit_many`` (the facilitator in this process) to real worker
  processes (``start_worker`` in a child each, so no GIL is shared), durability "full" on both
  ends; timed until the facilitator has every job completed; then every job's history is checked
  (accepted, running, the 3 progress values in order, completed, each once). The 1-worker rows pin the
  jobs to one worker (``submit_many(worker=…)``), the 4-worker rows let the facilitator route.
- plain Celery (the baseline): ``apply_async`` of a task that calls ``update_state`` 3 times,
  then ``AsyncResult.get()`` of every job; a `celery worker` with prefork concurrency 1 or 4 (one
  queue each), Celery's default prefetch multiplier (4), one redis-server on loopback.
Rounds interleave the four, so load from other users of the machine falls on all of them alike.
Prints one table: jobs/s median (min–max) and the ratio jobrelay / plain Celery.
Target (issue 16): jobs/s ≥ 2 × plain Celery.

Usage: nice -n 19 scripts/bench_job_rate.py [--jobs N] [--rounds R] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench_celery import APP, STEPS, plain_round
from bench_common import child, spread, table, wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from jobrelay.actors import JobContext, WorkerConfig, start_worker
from jobrelay.facilitator import Facilitator, FacilitatorConfig, JobView, start_facilitator
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.messages import JobRequest, JobStatus
from jobrelay.testing.celery_cluster import (
    REDIS_ENV,
    redis_server,
    start_celery_worker,
    stop_celery_worker,
    wait_celery_ready,
)

KIND = "steps"
WORKERS = ("w1", "w2", "w3", "w4")
SLOTS = 32  # handlers at once per worker (default): their durable updates share commits
PREFETCH = 32  # credit 64 per worker (default): a credit round trip never empties the pipeline
PROGRESS = [round(s / STEPS, 4) for s in range(1, STEPS + 1)]
EXPECTED = ["accepted", *["running"] * (1 + STEPS), "completed"]  # running: started, then 3 updates


def steps(job: JobRequest, ctx: JobContext) -> str:
    """The empty job: 3 progress updates (each durable before it returns), then completed."""
    for progress in PROGRESS:
        ctx.update(JobStatus.RUNNING, progress=progress)
    return f"{STEPS} steps"


def serve_worker(
    url: str, worker_id: str, key_file: str, facilitator_key: str, db: str, slots: str, prefetch: str
) -> None:
    """Child mode: one jobrelay worker until stdin closes; prints its pid once connected."""
    config = WorkerConfig(
        url=url,
        worker_id=worker_id,
        key_file=key_file,
        facilitator_key=facilitator_key,
        db_path=db,
        max_concurrent_jobs=int(slots),
        prefetch=int(prefetch),
    )
    with start_worker(config, {KIND: steps}) as worker:
        worker.wait_connected(30)
        print(os.getpid(), flush=True)
        sys.stdin.read()  # until the parent closes the pipe (or dies)


def relay_round(fac: Facilitator, jobs: int, tag: str, worker: str | None) -> float:
    """Seconds for ``jobs`` jobs, submit to the facilitator's last completed; then every job's
    history is checked."""
    started = time.perf_counter()
    ids = fac.submit_many([(KIND, None, f"{tag}-{i:06d}") for i in range(jobs)], worker=worker)
    views: list[JobView] = []
    deadline = time.monotonic() + 600
    for job_id in ids:  # one point read per poll: a count over the whole ledger grows with it
        while (view := fac.job(job_id)) is None or view.status != "completed":
            if time.monotonic() > deadline:
                raise TimeoutError(f"{tag}: {job_id} not completed in 600 s")
            time.sleep(0.002)
        views.append(view)
    elapsed = time.perf_counter() - started
    for view in views:
        statuses = [h.status for h in view.history if h.status in EXPECTED]
        progress = [h.progress for h in view.history if h.progress is not None]
        if statuses != EXPECTED or progress != PROGRESS or (worker and view.worker != worker):
            raise SystemExit(f"{view.job_id} on {view.worker}: history {[tuple(h) for h in view.history]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=1000, help="jobs per round (default 1,000)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200 jobs, 1 round")
    parser.add_argument("--slots", type=int, default=SLOTS, help=f"max_concurrent_jobs per worker ({SLOTS})")
    parser.add_argument("--prefetch", type=int, default=PREFETCH, help=f"prefetch per worker ({PREFETCH})")
    parser.add_argument("--serve-worker", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    if args.serve_worker:
        serve_worker(*args.serve_worker)
        return 0
    if args.quick:
        args.jobs, args.rounds = 200, 1
    with tempfile.TemporaryDirectory(prefix="jobrelay-bench-rate-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        server = stack.enter_context(redis_server(tmp))
        os.environ[REDIS_ENV] = server.url  # for this process's task module too
        celery_workers = [
            start_celery_worker(
                server.url,
                f"c{n}",
                tmp,
                app=APP,
                concurrency=n,
                options=("-Q", f"c{n}", "--prefetch-multiplier", "4"),
            )
            for n in (1, 4)
        ]
        for w in celery_workers:
            stack.callback(stop_celery_worker, w)
        fac = stack.enter_context(start_facilitator(facilitator_config(tmp)))
        procs = [start_relay_worker(fac, tmp, name, args.slots, args.prefetch) for name in WORKERS]
        for proc in procs:
            stack.callback(stop_child, proc)
        wait_celery_ready(server.url, celery_workers)
        wait_until(lambda: sum(v.connected for v in fac.workers()) == len(WORKERS), 30, "workers", every=0.01)
        return run(args, fac)


KEYS = {w: Ed25519PrivateKey.generate() for w in WORKERS}


def facilitator_config(tmp: Path) -> FacilitatorConfig:
    key = Ed25519PrivateKey.generate()
    return FacilitatorConfig(
        db_path=str(tmp / "fac.db"),
        key=key.private_bytes_raw().hex(),
        authorized_keys={w: public_key_hex(k) for w, k in KEYS.items()},
    )


def start_relay_worker(
    fac: Facilitator, tmp: Path, name: str, slots: int, prefetch: int
) -> subprocess.Popen[str]:
    key_file = tmp / f"{name}.key"
    key_file.write_text(KEYS[name].private_bytes_raw().hex())
    key_file.chmod(0o600)
    proc, _ = child(
        __file__,
        "--serve-worker",
        fac.url,
        name,
        str(key_file),
        fac.public_key,
        str(tmp / f"{name}.db"),
        str(slots),
        str(prefetch),
        stdin=True,
    )
    return proc


def stop_child(proc: subprocess.Popen[str]) -> None:
    """Close its stdin (it stops its worker and exits), SIGKILL if it has not after 15 s."""
    try:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def run(args: argparse.Namespace, fac: Facilitator) -> int:
    warm = min(100, args.jobs)
    plain_round(warm, "warm-c1", "c1")
    plain_round(warm, "warm-c4", "c4")
    relay_round(fac, warm, "warm-w1", "w1")
    relay_round(fac, warm, "warm-all", None)
    times: dict[str, list[float]] = {k: [] for k in ("plain1", "relay1", "plain4", "relay4")}
    for r in range(args.rounds):
        times["plain1"].append(plain_round(args.jobs, f"plain1-{r}", "c1"))
        times["relay1"].append(relay_round(fac, args.jobs, f"relay1-{r}", "w1"))
        times["plain4"].append(plain_round(args.jobs, f"plain4-{r}", "c4"))
        times["relay4"].append(relay_round(fac, args.jobs, f"relay4-{r}", None))
    rates = {k: [args.jobs / t for t in v] for k, v in times.items()}
    rows = []
    for n in (1, 4):
        plain, relay = rates[f"plain{n}"], rates[f"relay{n}"]
        ratio = statistics.median(relay) / statistics.median(plain)
        rows.append(
            (f"{n} worker{'s' if n > 1 else ''}", spread(relay), spread(plain), f"{ratio:.2f}", "≥ 2")
        )
    print(
        f"\njobs/s, submit → accepted → {STEPS} progress updates → completed, empty handler; "
        f"{args.jobs:,} jobs per round, median (min–max) of {args.rounds} interleaved rounds"
    )
    print(
        f"jobrelay: worker processes with {args.slots} slots + prefetch {args.prefetch}, durability full "
        "both ends; Celery: prefork concurrency 1 / 4, prefetch multiplier 4, one redis-server\n"
    )
    table(("workers", "jobrelay jobs/s", "plain Celery jobs/s", "ratio", "target"), rows)
    stats = fac.stats()
    print(f"(facilitator: store commits {stats.store_commits:,}, operations {stats.store_operations:,})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
