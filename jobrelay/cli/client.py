# `jobrelay submit` and what every client of a running facilitator's HTTP API shares (`jobs` is
# jobs.py; the HTTP client itself, with its retry and job-id invariants, is api_client.py).
# Invariants: user errors exit 2, an unreachable facilitator or a server error exits 1, each with
# one line on stderr; a facilitator that does not answer at once is retried, and said so.
from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jobrelay.cli.api_client import TERMINAL, ApiError, FacilitatorClient
from jobrelay.cli.argtypes import backoff_seconds, count, limit_seconds, seconds
from jobrelay.cli.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, UsageError
from jobrelay.cli.follow import follow
from jobrelay.cli.tables import print_job, stderr_line

__all__ = [
    "ApiError",
    "FacilitatorClient",
    "add_common",
    "add_parsers",
    "api_failure",
    "api_token",
    "make_client",
    "timed_out",
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


def make_client(args: argparse.Namespace) -> FacilitatorClient:
    """The API client the flags of ``add_common`` describe; it says on stderr, once, when the
    facilitator does not answer at first and it keeps trying (for up to --timeout seconds)."""
    return FacilitatorClient(
        args.facilitator, timeout=args.timeout, token=api_token(args.token_file), on_retry=stderr_line
    )


def timed_out(what: str, seconds: float, view: dict[str, Any]) -> None:
    """The line a --wait that ran out prints (the exit code says it failed; this says why)."""
    status = view.get("status") or "queued"
    print(f"jobrelay: timed out after {seconds:g} s waiting for {what} (still {status})", file=sys.stderr)


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
    client = make_client(args)
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
        else:
            view = follow(client, job_id, args.wait, as_json=False)
    except ApiError as exc:
        return api_failure(exc)
    if args.json:
        print_job(view, as_json=True)
    if view.get("status") not in TERMINAL:
        timed_out(f"job {job_id}", args.wait, view)
    return EXIT_OK if view.get("status") == "completed" else EXIT_RUNTIME


def api_failure(exc: ApiError) -> int:
    """Print the API error; its exit code (2 for a refused request or token, else 1)."""
    hint = " (set JOBRELAY_API_TOKEN or --token-file)" if exc.status == 401 else ""
    print(f"jobrelay: error: {exc}{hint}", file=sys.stderr)
    # 413: job too large; 401/403: the token is missing, unknown or of too small a scope
    return EXIT_USAGE if exc.status in (400, 401, 403, 413) else EXIT_RUNTIME
