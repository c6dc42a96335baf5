# `jobrelay demo --celery`: the jobs of a jobrelay worker fanned out to a Celery cluster. A real
# redis-server (loopback, no persistence) and 2 `celery worker` processes of 2 prefork children
# each run `jobrelay.demo.steps` (jobrelay.testing.celery_tasks); the jobrelay worker is a
# subprocess with `--celery-task`. Mid-run one Celery pool process is killed (SIGKILL) while it
# runs a task, and the jobrelay worker is killed (kill -9) and restarted. Jobs carry one retry.
# Invariants: exit 0 only if every job ended exactly once, completed, and within each attempt its
# progress arrived in order with nothing duplicated; everything started is stopped by its PID.
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from loguru import logger

from jobrelay.actors.config import generate_key, public_key_of
from jobrelay.cli import logs
from jobrelay.cli.demo_worker import WORKER_ID, DemoFailed, WorkerProcess
from jobrelay.cli.errors import EXIT_OK, EXIT_RUNTIME
from jobrelay.cli.settings import LOG, resolve
from jobrelay.facilitator import Facilitator, FacilitatorConfig, start_facilitator
from jobrelay.facilitator.job_options import JobOptions
from jobrelay.protocol.messages import TERMINAL_STATUSES
from jobrelay.storage.ledger import StatusEntry

__all__ = ["check_attempts", "run_celery"]

TASK = "jobrelay.demo.steps"
APP = "jobrelay.testing.celery_tasks"


def check_attempts(history: list[StatusEntry], steps: int) -> tuple[str, str]:
    """``("completed" | "retried", "")`` or ``("bad", why)``: exactly one terminal status, completed;
    each attempt's progress in order, never twice; the last attempt's complete."""
    terminals = [e for e in history if e.status in TERMINAL_STATUSES]
    if len(terminals) != 1 or history[-1].status != "completed":
        return "bad", f"{len(terminals)} terminal statuses, last {history[-1].status if history else None}"
    attempts: list[list[float]] = [[]]
    for entry in history:
        if entry.status == "retrying":
            attempts.append([])
        elif entry.progress is not None:
            attempts[-1].append(round(entry.progress, 4))
    want = [round(s / steps, 4) for s in range(1, steps + 1)]
    for seen in attempts:
        if seen != want[: len(seen)]:
            return "bad", f"progress duplicated, missing or out of order: {seen}"
    if attempts[-1] != want:
        return "bad", f"the last attempt's progress is incomplete: {attempts[-1]}"
    return ("retried" if len(attempts) > 1 else "completed"), ""


def run_celery(args: argparse.Namespace) -> int:
    try:
        from jobrelay.testing.celery_cluster import redis_server  # noqa: PLC0415 - optional
    except ImportError as exc:
        print(f"jobrelay demo --celery: needs Celery: pip install 'jobrelay[celery]' ({exc})")
        return EXIT_RUNTIME
    log = resolve(LOG, args, config_path=args.config)
    logs.check(log)
    logs.configure(
        log.values["level"] if log.source("level") != "default" else "ERROR", json=log.values["json"]
    )
    args.jobs = args.jobs or 80
    args.job_seconds = 0.6 if args.job_seconds is None else args.job_seconds
    tmp = Path(tempfile.mkdtemp(prefix="jobrelay-demo-celery-"))
    ok = False
    try:
        with redis_server(tmp) as server:
            ok = _cluster(args, tmp, server.url)
    except (DemoFailed, RuntimeError) as exc:
        print(f"\njobrelay demo --celery: FAILED: {exc}", flush=True)
    finally:
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"  files kept in {tmp} (worker.log, celery-*.log, databases)")
    return EXIT_OK if ok else EXIT_RUNTIME


def _cluster(args: argparse.Namespace, tmp: Path, url: str) -> bool:
    from jobrelay.testing.celery_cluster import (  # noqa: PLC0415 - optional
        start_celery_worker,
        stop_celery_worker,
        wait_celery_ready,
    )

    workers = [start_celery_worker(url, f"celery{i}", tmp, app=APP) for i in (1, 2)]
    try:
        wait_celery_ready(url, workers)
        key = generate_key()
        (tmp / "demo.key").write_text(key + "\n")
        (tmp / "demo.key").chmod(0o600)
        config = FacilitatorConfig(
            db_path=str(tmp / "facilitator.db"),
            authorized_keys={WORKER_ID: public_key_of(key)},
            key=generate_key(),
            stop_timeout=3.0,
        )
        with start_facilitator(config) as fac:
            worker = WorkerProcess(tmp, fac.url, 64, fac.public_key)
            worker.extra = ["--celery-task", f"steps={TASK}", "--celery-broker", url]
            try:
                return _drive(args, fac, worker, url)
            finally:
                worker.stop(8.0)
    finally:
        for w in workers:
            stop_celery_worker(w)


def _running_pid(url: str, fac: Facilitator, ids: list[str]) -> tuple[str, int] | None:
    """A job whose task runs now, and the pid of the Celery pool process running it."""
    from jobrelay.actors.celery_backend.channel import Channel, client_for  # noqa: PLC0415

    for record in fac.jobs(status="running", limit=len(ids) + 10):
        holder, leased = Channel(client_for(url), record.job_id).holder_and_lease()
        if holder and leased and " pid " in holder:
            return record.job_id, int(holder.rsplit(" pid ", 1)[1])
    return None


def _drive(args: argparse.Namespace, fac: Facilitator, worker: WorkerProcess, url: str) -> bool:
    started = time.monotonic()
    deadline = started + args.deadline

    def say(text: str) -> None:
        print(f"  {time.monotonic() - started:5.1f}s  {text}", flush=True)

    print(
        f"jobrelay demo --celery: {args.jobs} jobs × {args.steps} progress updates on 2 Celery workers; "
        "1 pool process killed mid-task, 1 kill -9 of the jobrelay worker"
    )
    worker.start(deadline)
    pid = worker.proc.pid if worker.proc else "?"
    say(f"redis {url}; 2 celery workers × 2 processes; jobrelay worker pid {pid}")
    payload = {"seconds": args.job_seconds, "steps": args.steps}
    jobs = [("steps", payload, f"job-{n:04d}") for n in range(args.jobs)]
    ids = fac.submit_many(jobs, options=JobOptions(retries=1))
    say(f"submitted {len(ids)} jobs (each may be retried once)")
    killed: tuple[str, int] | None = None
    restarted = False
    while True:
        done = sum(1 for r in fac.jobs(limit=args.jobs + 10) if r.status in TERMINAL_STATUSES)
        if killed is None and done >= args.jobs // 5 and (found := _running_pid(url, fac, ids)):
            killed = found
            with contextlib.suppress(ProcessLookupError):
                os.kill(found[1], signal.SIGKILL)
            say(f"SIGKILL the Celery pool process {found[1]} while it runs {found[0]}")
        if killed and not restarted and done >= args.jobs // 2:
            worker.scrape()
            pid = worker.proc.pid if worker.proc else "?"
            worker.kill()
            say(f"kill -9 the jobrelay worker (pid {pid}) while its Celery tasks run; restarting it")
            worker.start(deadline)
            restarted = True
        if done >= args.jobs and killed and restarted:
            break
        if time.monotonic() > deadline:
            raise DemoFailed(f"only {done}/{args.jobs} jobs ended within {args.deadline:g}s")
        if worker.proc is not None and worker.proc.poll() is not None:
            raise DemoFailed(f"the jobrelay worker exited with {worker.proc.returncode}; see worker.log")
        time.sleep(0.05)
    worker.scrape()
    code = worker.stop(8.0)
    return _verify(args, fac, worker, ids, killed, code, time.monotonic() - started)


def _verify(
    args: argparse.Namespace,
    fac: Facilitator,
    worker: WorkerProcess,
    ids: list[str],
    killed: tuple[str, int] | None,
    stop_code: int | None,
    wall: float,
) -> bool:
    outcome = {"completed": 0, "retried": 0, "bad": 0}
    problems: list[str] = []
    hosts: dict[str, int] = {}
    delivered = 0
    for job_id in ids:
        view = fac.job(job_id)
        if view is None:
            problems.append(f"{job_id}: unknown to the facilitator")
            continue
        delivered += len(view.history)
        verdict, why = check_attempts(view.history, args.steps)
        outcome[verdict] += 1
        if why:
            problems.append(f"{job_id}: {why}")
        starts = [e.detail for e in view.history if " started on " in e.detail]
        if starts:
            host = starts[-1].split(" started on ", 1)[1].split("@", 1)[0]
            hosts[host] = hosts.get(host, 0) + 1
    lost = fac.job(killed[0]) if killed is not None else None
    if killed is not None and lost is not None and not any("worker_lost" in e.detail for e in lost.history):
        problems.append(f"{killed[0]}: its killed task did not end as worker_lost")
    if stop_code != 0:
        problems.append(f"the jobrelay worker did not stop cleanly on SIGTERM (exit {stop_code})")
    rows = [
        ("jobs submitted", f"{len(ids)}"),
        ("jobs completed", f"{outcome['completed'] + outcome['retried']}"),
        ("jobs retried after worker_lost", f"{outcome['retried']}"),
        ("jobs lost or duplicated", f"{outcome['bad']}"),
        ("jobs per Celery worker", ", ".join(f"{h} {n}" for h, n in sorted(hosts.items()))),
        ("Celery pool process killed", f"pid {killed[1]} running {killed[0]}" if killed else "none"),
        ("jobrelay worker kill -9 + restart", "1"),
        ("tasks re-attached after the restart", f"{worker.total('celery_reattached')}"),
        (
            "task messages sent",
            f"{worker.total('celery_dispatched')}  (a re-attached task not yet started: again)",
        ),
        ("task updates relayed", f"{worker.total('celery_relayed')}"),
        ("status updates delivered", f"{delivered}"),
        ("wall time", f"{wall:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    if len(hosts) < 2:
        problems.append(f"the jobs did not fan out to both Celery workers: {hosts}")
    if problems:
        print(f"\njobrelay demo --celery: FAILED: {len(problems)} problem(s):")
        for line in problems[:20]:
            print(f"  - {line}")
        return False
    print("\njobrelay demo --celery: OK: every job ended exactly once; every update arrived once, in order.")
    logger.debug("demo done")
    return True
