# `jobrelay demo`: every guarantee in under a minute. An in-process facilitator, a worker
# SUBPROCESS (so it can be SIGKILLed) reaching it through a severable loopback TCP proxy, 500 jobs
# with progress updates, two connection cuts and one kill -9 + restart; beside it a second worker
# of another kind (demo_routing.py), so jobs submitted to no worker in particular show routing by
# kind; then every job's history is checked. Invariants: exit 0 only if every job ended exactly
# once, every status update arrived exactly once, in order, and each job ran where its kind runs;
# the temp directory is removed unless the run failed or --keep.
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from jobrelay.actors.config import generate_key
from jobrelay.cli import logs
from jobrelay.cli.argtypes import count, seconds
from jobrelay.cli.demo_routing import THUMBS_ID, ThumbnailWorker, routing_rows, submit_thumbnails
from jobrelay.cli.demo_worker import WORKER_ID, DemoFailed, WorkerProcess
from jobrelay.cli.errors import EXIT_OK, EXIT_RUNTIME
from jobrelay.cli.settings import LOG, resolve
from jobrelay.facilitator import Facilitator, FacilitatorConfig, start_facilitator
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.messages import TERMINAL_STATUSES
from jobrelay.storage import inspect_database
from jobrelay.storage.ledger import StatusEntry
from jobrelay.testing.proxy import TcpProxy

__all__ = ["add_parser", "check_history", "run"]

EPILOG = """\
examples:
  jobrelay demo                 # 500 jobs, 2 cuts, 1 kill -9; about 15 s
  jobrelay demo --jobs 2000     # a longer run
  jobrelay demo --keep          # keep the temp directory (databases, worker log)
  jobrelay demo --celery        # the jobs on 2 Celery workers; one pool process killed mid-task

Exit code 0 when every job ended exactly once and every status update arrived exactly once, in
order; 1 otherwise (the problems are listed and the temp directory is kept).
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], **kw: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="run a facilitator and a worker, break things, prove nothing was lost",
        description="Run the demo: 500 jobs through cuts and a kill -9; exits non-zero on any loss.",
        epilog=EPILOG,
        **kw,
    )
    p.add_argument(
        "--jobs", type=count(1, 1_000_000), default=None, help="jobs to submit (default 500; --celery: 80)"
    )
    p.add_argument(
        "--job-seconds", type=seconds, default=None, help="each job's duration (default 0.15; --celery: 0.6)"
    )
    p.add_argument("--steps", type=count(1, 10_000), default=3, help="progress updates per job (default 3)")
    p.add_argument(
        "--max-jobs", type=count(1, 10_000), default=8, help="the worker's concurrent jobs (default 8)"
    )
    p.add_argument("--deadline", type=seconds, default=55.0, help="give up after this many seconds")
    p.add_argument("--keep", action="store_true", help="keep the temp directory")
    p.add_argument(
        "--celery",
        action="store_true",
        help="run the jobs on 2 Celery workers (real redis-server and `celery worker` processes; "
        "needs jobrelay[celery]), kill one pool process mid-task and the jobrelay worker once",
    )
    p.set_defaults(run=run)


# ------------------------------------------------------------------------------ checking


def expected_history(steps: int) -> list[tuple[str, float | None]]:
    """The non-terminal statuses of a sample `sleep` job, in order."""
    return [
        ("accepted", None),
        ("running", None),
        *[("running", round(step / steps, 4)) for step in range(1, steps + 1)],
    ]


def check_history(history: list[StatusEntry], steps: int) -> tuple[str, str]:
    """Classify one job's history: ``("completed" | "restarted", "")`` or ``("bad", why)``. A good
    history is a prefix of the expected statuses (all of them for a completed job), then exactly
    one terminal status: completed, or failed with detail worker_restarted."""
    seen = [(e.status, e.progress) for e in history]
    terminals = [s for s, _ in seen if s in TERMINAL_STATUSES]
    if not terminals:
        return "bad", f"no terminal status (lost): {seen}"
    if len(terminals) > 1 or seen[-1][0] not in TERMINAL_STATUSES:
        return "bad", f"{len(terminals)} terminal statuses: {seen}"
    body, last = seen[:-1], history[-1]
    expected = expected_history(steps)
    if body != expected[: len(body)]:
        return "bad", f"statuses duplicated, missing or out of order: {seen}"
    if last.status == "completed" and body == expected:
        return "completed", ""
    if last.status == "failed" and last.detail == "worker_restarted":
        return "restarted", ""
    return "bad", f"unexpected end {last.status}: {last.detail!r} after {seen[:-1]}"


# ------------------------------------------------------------------------------ the worker


# ------------------------------------------------------------------------------ display


class Progress:
    """A live bar on a TTY, a plain line per second otherwise (CI logs)."""

    def __init__(self, total: int, started: float) -> None:
        self.total = total
        self.started = started
        self.tty = sys.stdout.isatty()
        self._last_line = 0.0

    def event(self, text: str) -> None:
        prefix = "\r\033[K" if self.tty else ""
        print(f"{prefix}  {time.monotonic() - self.started:5.1f}s  {text}", flush=True)

    def update(self, done: int, updates: int, *, force: bool = False) -> None:
        now = time.monotonic()
        elapsed = now - self.started
        if self.tty:
            width = 30
            filled = int(width * done / max(1, self.total))
            bar = "█" * filled + "░" * (width - filled)
            sys.stdout.write(
                f"\r\033[K  [{bar}] {done}/{self.total} jobs · {updates} updates · {elapsed:4.1f}s"
            )
            sys.stdout.flush()
        elif force or now - self._last_line >= 1.0:
            self._last_line = now
            print(
                f"  {elapsed:5.1f}s  {done}/{self.total} jobs done, {updates} status updates delivered",
                flush=True,
            )

    def finish(self) -> None:
        if self.tty:
            sys.stdout.write("\n")


# ------------------------------------------------------------------------------ the run


def run(args: argparse.Namespace) -> int:
    if args.celery:
        from jobrelay.cli.demo_celery import run_celery  # noqa: PLC0415 - celery is optional

        return run_celery(args)
    args.jobs = args.jobs or 500
    args.job_seconds = 0.15 if args.job_seconds is None else args.job_seconds
    log = resolve(LOG, args, config_path=args.config)
    logs.check(log)
    tmp = Path(tempfile.mkdtemp(prefix="jobrelay-demo-"))
    explicit = log.source("level") != "default"
    logs.configure(log.values["level"] if explicit else "ERROR", json=log.values["json"])
    logger.add(str(tmp / "facilitator.log"), level="INFO", serialize=True)
    ok = False
    try:
        ok = _demo(args, tmp)
    except DemoFailed as exc:
        print(f"\njobrelay demo: FAILED: {exc}", flush=True)
    finally:
        if ok and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"  files kept in {tmp} (worker.log, facilitator.log, databases)")
    return EXIT_OK if ok else EXIT_RUNTIME


def _demo(args: argparse.Namespace, tmp: Path) -> bool:
    started = time.monotonic()
    deadline = started + args.deadline
    key = generate_key()
    key_path = tmp / "demo.key"
    key_path.write_text(key + "\n")
    key_path.chmod(0o600)
    public = public_key_hex(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key)))
    print(f"jobrelay demo: {args.jobs} jobs × {args.steps} progress updates, 2 connection cuts, 1 kill -9")
    thumbs = ThumbnailWorker(tmp)
    config = FacilitatorConfig(
        db_path=str(tmp / "facilitator.db"),
        authorized_keys={WORKER_ID: public, THUMBS_ID: thumbs.public_key},
        key=generate_key(),  # the facilitator's own; the worker pins its public key
        heartbeat_interval=1.0,
        heartbeat_timeout=5.0,
        stop_timeout=3.0,
    )
    with start_facilitator(config) as fac, TcpProxy(("127.0.0.1", fac.port)) as proxy:
        worker = WorkerProcess(tmp, proxy.url, args.max_jobs, fac.public_key)
        try:
            thumbs.start(fac)
            return _drive(args, fac, proxy, worker, thumbs, started, deadline)
        finally:
            thumbs.stop()
            worker.stop(8.0)


def _drive(
    args: argparse.Namespace,
    fac: Facilitator,
    proxy: TcpProxy,
    worker: WorkerProcess,
    thumbs: ThumbnailWorker,
    started: float,
    deadline: float,
) -> bool:
    progress = Progress(args.jobs, started)
    worker.start(deadline)
    progress.event(
        f"facilitator {fac.url}; worker process {worker.proc.pid if worker.proc else '?'} "
        f"via proxy {proxy.url}"
    )
    payload = {"seconds": args.job_seconds, "steps": args.steps}
    # No worker named: each job goes to a worker that runs its kind (sleep: the worker process;
    # thumbnail: the in-process thumbnail worker), as its credit allows.
    ids = fac.submit_many([("sleep", payload, f"job-{n:05d}") for n in range(args.jobs)])
    thumb_ids = submit_thumbnails(fac, max(1, args.jobs // 10))
    progress.event(f"submitted {len(ids)} sleep and {len(thumb_ids)} thumbnail jobs (durable before routing)")
    id_set = set(ids)

    def cut() -> None:
        links = proxy.cut()
        progress.event(f"cut the connection (severed {links} link{'s' * (links != 1)})")

    def kill_and_restart() -> None:
        worker.scrape()
        pid = worker.proc.pid if worker.proc else "?"
        worker.kill()
        progress.event(f"kill -9 the worker (pid {pid}); restarting it")
        worker.start(deadline)
        progress.event(f"worker restarted (pid {worker.proc.pid if worker.proc else '?'})")

    events: list[tuple[float, Callable[[], None]]] = [(0.2, cut), (0.45, kill_and_restart), (0.7, cut)]
    last_scrape = 0.0
    done = 0
    while True:
        records = fac.jobs(limit=args.jobs + len(thumb_ids) + 10)
        done = sum(1 for r in records if r.job_id in id_set and r.status in TERMINAL_STATUSES)
        if events and done >= events[0][0] * args.jobs:
            events.pop(0)[1]()
        now = time.monotonic()
        if now - last_scrape > 0.5:
            worker.scrape()
            last_scrape = now
        progress.update(done, fac.stats().data_accepted)
        if done >= args.jobs and not events:
            break
        if now > deadline:
            progress.finish()
            raise DemoFailed(f"only {done}/{args.jobs} jobs ended within {args.deadline:g}s")
        if worker.proc is not None and worker.proc.poll() is not None:
            progress.finish()
            raise DemoFailed(f"the worker exited with {worker.proc.returncode}; see worker.log")
        time.sleep(0.1)
    worker.scrape()
    progress.update(done, fac.stats().data_accepted, force=True)
    progress.finish()
    stop_started = time.monotonic()
    code = worker.stop(8.0)
    stop_seconds = time.monotonic() - stop_started
    progress.event(f"stopped the worker with SIGTERM: exit {code} in {stop_seconds:.2f}s")
    thumbs.stop()
    return _verify(args, fac, worker, ids, thumb_ids, code, started, proxy.cuts)


def _verify(
    args: argparse.Namespace,
    fac: Facilitator,
    worker: WorkerProcess,
    ids: list[str],
    thumb_ids: list[str],
    stop_code: int | None,
    started: float,
    cuts: int,
) -> bool:
    records = {r.job_id: r for r in fac.jobs(limit=len(ids) + len(thumb_ids) + 10)}
    routed, problems = routing_rows(records, {"sleep": WORKER_ID, "thumbnail": THUMBS_ID})
    unfinished = [j for j in thumb_ids if (r := records.get(j)) is None or r.status != "completed"]
    if unfinished:
        problems.append(f"{len(unfinished)} thumbnail jobs did not complete (first: {unfinished[0]})")
    outcome = {"completed": 0, "restarted": 0, "bad": 0}
    delivered = 0
    for job_id in ids:
        view = fac.job(job_id)
        if view is None:
            problems.append(f"{job_id}: unknown to the facilitator")
            continue
        delivered += len(view.history)
        verdict, why = check_history(view.history, args.steps)
        outcome[verdict] += 1
        if why:
            problems.append(f"{job_id}: {why}")
    summary = inspect_database(worker.tmp / "worker.db")
    sent = sum(s.last_seq for s in summary.outbox)
    views = {w.worker_id: w for w in fac.workers()}
    accepted = views[WORKER_ID].in_hwm if WORKER_ID in views else 0
    stats = fac.stats()
    if sent != accepted:
        problems.append(f"the worker sent {sent} data messages, the facilitator accepted {accepted}")
    if delivered != accepted:
        problems.append(f"{accepted} data messages accepted but {delivered} status entries recorded")
    if stop_code != 0:
        problems.append(f"the worker did not stop cleanly on SIGTERM (exit {stop_code})")
    wall = time.monotonic() - started
    rows = [
        ("sleep jobs submitted", f"{len(ids)}"),
        ("sleep jobs completed", f"{outcome['completed']}"),
        (
            "jobs failed: worker_restarted",
            f"{outcome['restarted']}  (running at the kill -9; ended exactly once)",
        ),
        ("jobs lost or duplicated", f"{outcome['bad']}"),
        *routed,
        ("status updates sent (worker db)", f"{sent}"),
        ("status updates delivered", f"{delivered}  (facilitator accepted {accepted})"),
        (
            "duplicates dropped",
            f"{stats.duplicates_dropped + worker.total('duplicates_dropped')}  "
            f"(facilitator {stats.duplicates_dropped}, worker {worker.total('duplicates_dropped')})",
        ),
        ("replayed after reconnect", f"{worker.total('replayed')}  (worker → facilitator)"),
        ("reconnects", f"{max(0, stats.sessions_opened - 2)}  (sessions opened − 2 workers)"),
        ("connection cuts", f"{cuts}"),
        ("worker restarts (kill -9)", f"{worker.incarnation - 1}"),
        ("wall time", f"{wall:.1f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    print()
    print(f"  {'':-<{width}}  {'':-<12}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"  {'':-<{width}}  {'':-<12}")
    if problems:
        print(f"\njobrelay demo: FAILED: {len(problems)} problem(s):")
        for line in problems[:20]:
            print(f"  - {line}")
        return False
    print(
        "\njobrelay demo: OK: every job ended exactly once; "
        "every status update arrived exactly once, in order."
    )
    return True
