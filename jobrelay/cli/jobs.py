# `jobrelay jobs`: what a running facilitator knows of its jobs and workers, through its HTTP API.
# Invariants: every wait is bounded by its SECONDS and ends either with the awaited state or with
# a "timed out" line on stderr and exit 1; a status filter is checked against the statuses a job
# can have before anything is asked (an unknown one is a usage error naming them, never "(none)").
from __future__ import annotations

import argparse
import json
import time
from typing import Any

from jobrelay.cli.api_client import TERMINAL, ApiError, FacilitatorClient
from jobrelay.cli.argtypes import count, seconds
from jobrelay.cli.client import add_common, api_failure, make_client, timed_out
from jobrelay.cli.errors import EXIT_OK, EXIT_RUNTIME, UsageError
from jobrelay.cli.follow import follow
from jobrelay.cli.tables import ago, pct, print_job, stderr_line, table
from jobrelay.cli.watch import watch
from jobrelay.facilitator.server import LISTED_STATUSES

__all__ = ["add_parser", "job_status", "run"]

EPILOG = """\
examples:
  jobrelay jobs --facilitator http://127.0.0.1:8766                 # newest jobs first
  jobrelay jobs --status failed                                    # only failed ones
  jobrelay jobs --summary                                          # how many jobs have each status
  jobrelay jobs 5f0c...e1                                          # one job's status history
  jobrelay jobs 5f0c...e1 --wait 30                                # wait for its terminal status
  jobrelay jobs 5f0c...e1 --follow                                 # each status as it arrives
  jobrelay jobs --watch                                            # a live table (Ctrl-C stops)
  jobrelay jobs --watch --until-done                               # ... until every job listed ended
  jobrelay jobs --status running --wait-all 600                    # wait until those all ended
  jobrelay jobs --workers                                          # the workers the facilitator knows
  jobrelay jobs --json                                             # machine-readable

statuses: queued (no worker has it yet), accepted, running, completed, failed, rejected,
cancelled, retrying (another attempt will run), released (handed back by a draining worker).

Exit codes: 0 ok; 1 facilitator unreachable, job unknown, or (with --wait/--wait-all) not ended
in time (a "timed out" line says so) or ended other than completed; 2 bad arguments (an unknown
--status among them), or a missing, unknown or insufficient API token.
"""

_POLL = 0.2  # seconds between rounds of a --wait-all


def job_status(text: str) -> str:
    """A status to filter on: one a job can have.

    Raises:
        argparse.ArgumentTypeError: any other word.
    """
    status = text.strip().lower()
    if status not in LISTED_STATUSES:
        raise argparse.ArgumentTypeError(
            f"unknown status {text!r}; expected one of {', '.join(LISTED_STATUSES)}"
        )
    return status


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], **kw: Any) -> None:
    p = sub.add_parser(
        "jobs",
        help="list jobs, count them by status, or show one job's status history",
        epilog=EPILOG,
        description="List a running facilitator's jobs, or show one job's status history.",
        **kw,
    )
    add_common(p)
    p.add_argument("job_id", nargs="?", help="show this job's status history")
    p.add_argument("--status", type=job_status, default=None, help="only jobs whose last status is this")
    p.add_argument("--limit", type=count(0, 10_000), default=50, help="at most this many jobs (default 50)")
    wait = p.add_mutually_exclusive_group()
    wait.add_argument(
        "--wait",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="with JOB_ID: wait for its terminal status",
    )
    wait.add_argument(
        "--wait-all",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="wait until every listed job (after --status and --limit) has ended",
    )
    p.add_argument(
        "--follow",
        action="store_true",
        help="with JOB_ID: print each status as it arrives until the job ends (bounded by --wait)",
    )
    p.add_argument(
        "--watch",
        action="store_true",
        help="a live table of jobs and workers, redrawn every --interval (Ctrl-C stops; --wait bounds it)",
    )
    p.add_argument("--until-done", action="store_true", help="with --watch: stop once every job listed ended")
    p.add_argument(
        "--interval",
        type=seconds,
        default=0.5,
        metavar="SECONDS",
        help="with --watch: seconds between redraws",
    )
    shown = p.add_mutually_exclusive_group()
    shown.add_argument("--workers", action="store_true", help="list workers instead of jobs")
    shown.add_argument(
        "--summary",
        action="store_true",
        help="count every job by status (all of them: --limit does not apply)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if args.watch:
        if args.job_id or args.workers or args.follow or args.summary or args.wait_all is not None:
            raise UsageError(
                "jobs.watch (from --watch): lists every job; drop JOB_ID, --workers, --summary,"
                " --wait-all and --follow"
            )
        return watch(make_client(args), args)
    if args.until_done:
        raise UsageError("jobs.until_done (from --until-done): only with --watch")
    if args.follow:
        if not args.job_id:
            raise UsageError("jobs.follow (from --follow): give the JOB_ID to follow")
        try:
            view = follow(make_client(args), args.job_id, args.wait, as_json=args.json)
        except ApiError as exc:
            return api_failure(exc)
        if args.json:
            print(json.dumps(view))
        if view.get("status") not in TERMINAL:
            timed_out(f"job {args.job_id}", args.wait or 0.0, view)
        return EXIT_OK if view.get("status") == "completed" else EXIT_RUNTIME
    if args.wait is not None and not args.job_id:
        raise UsageError("jobs.wait (from --wait): needs a JOB_ID (for every listed job: --wait-all)")
    if args.job_id and (args.wait_all is not None or args.summary or args.workers):
        raise UsageError("jobs: JOB_ID goes with --wait, not with --wait-all, --summary or --workers")
    client = make_client(args)
    try:
        if args.workers:
            _print_workers(client.workers(), as_json=args.json)
            return EXIT_OK
        if args.summary:
            _print_summary(client.job_counts(), as_json=args.json)
            return EXIT_OK
        if args.job_id:
            return _one(client, args)
        jobs = client.jobs(args.status, args.limit)
        if args.wait_all is not None:
            jobs = _wait_all(client, jobs, args.wait_all)
    except ApiError as exc:
        return api_failure(exc)
    _print_jobs(jobs, as_json=args.json)
    if args.wait_all is None:
        return EXIT_OK
    return _verdict(jobs, args.wait_all)


def _one(client: FacilitatorClient, args: argparse.Namespace) -> int:
    view = client.wait(args.job_id, args.wait) if args.wait is not None else client.job(args.job_id)
    print_job(view, as_json=args.json)
    if args.wait is None:
        return EXIT_OK
    if view.get("status") not in TERMINAL:
        timed_out(f"job {args.job_id}", args.wait, view)
        return EXIT_RUNTIME
    return EXIT_OK if view.get("status") == "completed" else EXIT_RUNTIME


def _wait_all(client: FacilitatorClient, jobs: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    """The listed jobs, re-read until each has ended or ``timeout`` passed (one request per
    unfinished job a round: the list itself may have moved on since)."""
    deadline = time.monotonic() + timeout
    latest = {j["job_id"]: j for j in jobs}
    while True:
        waiting = [i for i, j in latest.items() if j["status"] not in TERMINAL]
        if not waiting or time.monotonic() >= deadline:
            return list(latest.values())
        time.sleep(_POLL)
        for job_id in waiting:
            view = client.job(job_id)
            latest[job_id] = {k: view.get(k) for k in latest[job_id]}


def _verdict(jobs: list[dict[str, Any]], timeout: float) -> int:
    unfinished = [j for j in jobs if j["status"] not in TERMINAL]
    if unfinished:
        stderr_line(
            f"jobrelay: timed out after {timeout:g} s waiting for {len(unfinished)} of {len(jobs)} "
            f"listed jobs (first: {unfinished[0]['job_id']}, {unfinished[0]['status'] or 'queued'})"
        )
        return EXIT_RUNTIME
    other = [j for j in jobs if j["status"] != "completed"]
    if other:
        stderr_line(f"jobrelay: {len(other)} of {len(jobs)} listed jobs ended other than completed")
        return EXIT_RUNTIME
    return EXIT_OK


def _print_jobs(jobs: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(jobs, indent=2))
        return
    table(
        ["JOB", "KIND", "STATUS", "WORKER", "PROGRESS", "UPDATED", "DETAIL"],
        [
            [
                j["job_id"],
                j["kind"],
                j["status"] or "queued",
                j["peer"] or "-",
                pct(j["progress"]),
                ago(j["updated_at"]),
                (j["detail"] or "")[:40],
            ]
            for j in jobs
        ],
    )


def _print_summary(counts: dict[str, int], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"counts": counts, "total": sum(counts.values())}, indent=2))
        return
    rows: list[list[Any]] = [[status, n] for status, n in counts.items() if n]
    table(["STATUS", "JOBS"], [*rows, ["total", sum(counts.values())]])


def _print_workers(workers: list[dict[str, Any]], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(workers, indent=2))
        return
    table(
        ["WORKER", "CONNECTED", "DRAINING", "OUTBOX", "UNFINISHED", "LAST CONTACT"],
        [
            [
                w["worker_id"],
                w["connected"],
                w["draining"],
                w["outbox_depth"],
                w["outstanding_jobs"],
                ago(w["last_contact"]),
            ]
            for w in workers
        ],
    )
