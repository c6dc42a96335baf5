# `jobrelay submit` and `jobrelay jobs`: clients of a running facilitator's HTTP API (the HTTP
# client itself, with its retry and job-id invariants, is api_client.py). Invariants: user errors
# exit 2, an unreachable facilitator or a server error exits 1, each with one line on stderr.
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobrelay.cli.api_client import ApiError, FacilitatorClient
from jobrelay.cli.argtypes import backoff_seconds, count, limit_seconds, seconds
from jobrelay.cli.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, UsageError
from jobrelay.cli.follow import follow
from jobrelay.cli.watch import watch

__all__ = [
    "ApiError",
    "FacilitatorClient",
    "add_common",
    "add_parsers",
    "api_failure",
    "api_token",
]


SUBMIT_EPILOG = """\
examples:
  # submit a `sleep` job (built into `jobrelay worker`) to any connected worker; prints its id
  jobrelay submit --facilitator http://127.0.0.1:8766 sleep --payload '{"seconds": 2}'

  # to one worker, with your own id (submitting the same id again changes nothing)
  jobrelay submit --facilitator http://127.0.0.1:8766 echo --payload '"hi"' --worker w1 --job-id order-17

  # give up (failed: no_worker) unless a worker that runs `encode` takes it within 60 s
  jobrelay submit encode --payload '{"file": "a.mp4"}' --start-within 60

  # submit and wait for the terminal status (exit 1 unless it completed)
  jobrelay submit sleep --payload 1 --wait 30

  # told to wrap up after 60 s (a command gets SIGTERM), ended as failed: time_limit after 90 s
  jobrelay submit render --payload '{"scene": 4}' --soft-time-limit 60 --time-limit 90

  # up to 2 more attempts after a retryable failure, the first after 5 s, the next after 10 s
  jobrelay submit render --payload '{"scene": 4}' --retries 2 --retry-backoff 5

The facilitator URL can also come from JOBRELAY_FACILITATOR. A facilitator started with
--api-tokens needs a token: JOBRELAY_API_TOKEN=<token>, or --token-file FILE (or
JOBRELAY_API_TOKEN_FILE) naming a file that holds it; `submit` needs a token of scope submit.
"""

JOBS_EPILOG = """\
examples:
  jobrelay jobs --facilitator http://127.0.0.1:8766                 # newest jobs first
  jobrelay jobs --status failed                                    # only failed ones
  jobrelay jobs 5f0c...e1                                          # one job's status history
  jobrelay jobs 5f0c...e1 --wait 30                                # wait for its terminal status
  jobrelay jobs 5f0c...e1 --follow                                 # each status as it arrives
  jobrelay jobs --watch                                            # a live table (Ctrl-C stops)
  jobrelay jobs --watch --until-done                               # ... until every job listed ended
  jobrelay jobs --workers                                          # the workers the facilitator knows
  jobrelay jobs --json                                             # machine-readable

Exit codes: 0 ok; 1 facilitator unreachable, job unknown, or (with --wait) not completed in time
or ended other than completed; 2 bad arguments, or a missing, unknown or insufficient API token.
"""


def add_common(p: argparse.ArgumentParser) -> None:
    """The flags every API command has: --facilitator, --timeout, --token-file, --json."""
    p.add_argument(
        "--facilitator",
        default=os.environ.get("JOBRELAY_FACILITATOR") or "http://127.0.0.1:8766",
        help="the facilitator's HTTP API (default: $JOBRELAY_FACILITATOR or http://127.0.0.1:8766)",
    )
    p.add_argument(
        "--timeout", type=seconds, default=10.0, help="seconds to keep retrying an unreachable facilitator"
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        default=os.environ.get("JOBRELAY_API_TOKEN_FILE") or None,
        help="file holding the API token (its first line: the token, or `<scope> <token>`); "
        "default: $JOBRELAY_API_TOKEN, else $JOBRELAY_API_TOKEN_FILE",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def api_token(token_file: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The API token: ``token_file``'s first non-comment line (its last field, so a line of the
    facilitator's tokens file works too), else $JOBRELAY_API_TOKEN, else None. Never a flag with the
    token itself: command lines are visible to every user of the machine (ps).

    Raises:
        UsageError: the file cannot be read or holds no token.
    """
    env = os.environ if env is None else env
    if not token_file:
        return env.get("JOBRELAY_API_TOKEN", "").strip() or None
    try:
        text = Path(token_file).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise UsageError(f"client.token_file (from --token-file): cannot read {token_file}: {why}") from None
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            return fields[-1]
    raise UsageError(f"client.token_file (from --token-file): {token_file} holds no token")


def _client(args: argparse.Namespace) -> FacilitatorClient:
    return FacilitatorClient(args.facilitator, timeout=args.timeout, token=api_token(args.token_file))


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], **kw: Any) -> None:
    p = sub.add_parser(
        "submit",
        help="submit a job to a running facilitator",
        epilog=SUBMIT_EPILOG,
        description="Submit a job through a running facilitator's HTTP API; prints the job id.",
        **kw,
    )
    add_common(p)
    p.add_argument("kind", help="the job kind (a handler name on the worker, e.g. sleep or echo)")
    p.add_argument("--payload", default=None, help="the job's input as JSON (default: null)")
    p.add_argument(
        "--worker", default=None, help="send it to this worker only (default: any worker that runs KIND)"
    )
    p.add_argument("--job-id", default=None, help="the job's id (default: a new random id)")
    p.add_argument(
        "--start-within",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="fail it (failed: no_worker) if no worker running KIND has taken it by then "
        "(default: the facilitator's schedule_to_start_timeout; unset: it waits)",
    )
    p.add_argument(
        "--wait", type=seconds, default=None, metavar="SECONDS", help="wait for the terminal status"
    )
    p.add_argument(
        "--soft-time-limit",
        type=limit_seconds,
        default=None,
        metavar="SECONDS",
        help="tell the handler to wrap up this long after it started (a command gets SIGTERM)",
    )
    p.add_argument(
        "--time-limit",
        type=limit_seconds,
        default=None,
        metavar="SECONDS",
        help="end the job as failed: time_limit this long after its handler started",
    )
    p.add_argument(
        "--retries",
        type=count(0, 99),
        default=0,
        metavar="N",
        help="run it again up to N times after a retryable failure (default 0: never)",
    )
    p.add_argument(
        "--retry-backoff",
        type=backoff_seconds,
        default=0.0,
        metavar="SECONDS",
        help="wait this long before the first retry, twice as long before each next (default 0)",
    )
    p.set_defaults(run=run_submit)

    p = sub.add_parser(
        "jobs",
        help="list jobs, or show one job's status history",
        epilog=JOBS_EPILOG,
        description="List a running facilitator's jobs, or show one job's status history.",
        **kw,
    )
    add_common(p)
    p.add_argument("job_id", nargs="?", help="show this job's status history")
    p.add_argument("--status", default=None, help="only jobs whose last status is this")
    p.add_argument("--limit", type=count(0, 10_000), default=50, help="at most this many jobs (default 50)")
    p.add_argument(
        "--wait",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="with JOB_ID: wait for its terminal status",
    )
    p.add_argument("--workers", action="store_true", help="list workers instead of jobs")
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
    p.set_defaults(run=run_jobs)


def run_submit(args: argparse.Namespace) -> int:
    payload: Any = None
    if args.payload is not None:
        try:
            payload = json.loads(args.payload)
        except ValueError as exc:
            raise UsageError(f"submit.payload (from --payload): not JSON: {exc}") from None
    soft, hard = args.soft_time_limit, args.time_limit
    if soft is not None and hard is not None and soft >= hard:
        raise UsageError(
            f"submit.soft_time_limit (from --soft-time-limit): {soft} s is not below --time-limit {hard} s"
        )
    client = _client(args)
    try:
        job_id = client.submit(
            args.kind,
            payload,
            job_id=args.job_id,
            worker=args.worker,
            start_within=args.start_within,
            soft_time_limit=soft,
            time_limit=hard,
            retries=args.retries,
            retry_backoff=args.retry_backoff,
        )
        if args.wait is None:
            print(json.dumps({"job_id": job_id}) if args.json else job_id)
            return EXIT_OK
        if args.json:  # one JSON document: the job as it ended
            view = client.wait(job_id, args.wait)
            _print_job(view, as_json=True)
        else:
            view = follow(client, job_id, args.wait, as_json=False)
    except ApiError as exc:
        return api_failure(exc)
    return EXIT_OK if view.get("status") == "completed" else EXIT_RUNTIME


def run_jobs(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        if args.workers:
            workers = client.workers()
            if args.json:
                print(json.dumps(workers, indent=2))
            else:
                _table(
                    ["WORKER", "CONNECTED", "DRAINING", "OUTBOX", "UNFINISHED", "LAST CONTACT"],
                    [
                        [
                            w["worker_id"],
                            w["connected"],
                            w["draining"],
                            w["outbox_depth"],
                            w["outstanding_jobs"],
                            _ago(w["last_contact"]),
                        ]
                        for w in workers
                    ],
                )
            return EXIT_OK
        if args.watch:
            if args.job_id or args.workers or args.follow:
                raise UsageError(
                    "jobs.watch (from --watch): lists every job; drop JOB_ID, --workers and --follow"
                )
            return watch(client, args)
        if args.until_done:
            raise UsageError("jobs.until_done (from --until-done): only with --watch")
        if args.follow:
            if not args.job_id:
                raise UsageError("jobs.follow (from --follow): give the JOB_ID to follow")
            view = follow(client, args.job_id, args.wait, as_json=args.json)
            if args.json:
                print(json.dumps(view))
            return EXIT_OK if view.get("status") == "completed" else EXIT_RUNTIME
        if args.job_id:
            view = client.wait(args.job_id, args.wait) if args.wait is not None else client.job(args.job_id)
            _print_job(view, as_json=args.json)
            if args.wait is not None and view.get("status") != "completed":
                return EXIT_RUNTIME
            return EXIT_OK
        jobs = client.jobs(args.status, args.limit)
    except ApiError as exc:
        return api_failure(exc)
    if args.json:
        print(json.dumps(jobs, indent=2))
    else:
        _table(
            ["JOB", "KIND", "STATUS", "WORKER", "PROGRESS", "UPDATED", "DETAIL"],
            [
                [
                    j["job_id"],
                    j["kind"],
                    j["status"] or "queued",
                    j["peer"] or "-",
                    _pct(j["progress"]),
                    _ago(j["updated_at"]),
                    (j["detail"] or "")[:40],
                ]
                for j in jobs
            ],
        )
    return EXIT_OK


def api_failure(exc: ApiError) -> int:
    """Print the API error; its exit code (2 for a refused request or token, else 1)."""
    hint = " (set JOBRELAY_API_TOKEN or --token-file)" if exc.status == 401 else ""
    print(f"jobrelay: error: {exc}{hint}", file=sys.stderr)
    # 413: job too large; 401/403: the token is missing, unknown or of too small a scope
    return EXIT_USAGE if exc.status in (400, 401, 403, 413) else EXIT_RUNTIME


def _print_job(view: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(view, indent=2))
        return
    print(
        f"job {view['job_id']}  kind {view['kind']}  worker {view['peer'] or '-'}  "
        f"status {view['status'] or 'queued'}"
    )
    print(f"payload {json.dumps(view.get('payload'))}")
    _table(
        ["#", "AT", "STATUS", "PROGRESS", "DETAIL"],
        [
            [
                n,
                time.strftime("%H:%M:%S", time.localtime(e["at"])) + f".{int(e['at'] % 1 * 1000):03d}",
                e["status"],
                _pct(e["progress"]),
                e["detail"],
            ]
            for n, e in enumerate(view["history"], 1)
        ],
    )


def _pct(progress: float | None) -> str:
    return "-" if progress is None else f"{progress * 100:.0f}%"


def _ago(at: float | None) -> str:
    if not at:
        return "-"
    return f"{max(0.0, time.time() - at):.1f}s ago"


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print("(none)")
