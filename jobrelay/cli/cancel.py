# `jobrelay cancel JOB`: ask the facilitator to cancel a job, wherever it is.
# Invariants: the answer names what happened, from the facilitator's own record: cancelled now
# (it was still queued there), requested (a durable cancel is on its way to the job's worker, which
# ends it `cancelled`; with --wait we wait for the ending), or a no-op (it had already ended, exit 0).
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from jobrelay.cli.api_client import TERMINAL, ApiError
from jobrelay.cli.argtypes import seconds
from jobrelay.cli.client import add_common, api_failure, make_client, timed_out
from jobrelay.cli.errors import EXIT_OK, EXIT_RUNTIME

__all__ = ["add_parser", "run_cancel"]

EPILOG = """\
examples:
  jobrelay cancel 5f0c...e1                          # wherever the job is: queued, sent, running
  jobrelay cancel order-17 --reason "customer changed the order" --wait 30

A job still queued at the facilitator ends `cancelled` at once. A job sent to a worker gets a
durable cancel, delivered once even if the worker is offline or restarting; the worker ends it
`cancelled` (a running handler sees ctx.cancelled, a command gets SIGTERM). A job that had already
ended is left as it is: the answer says how it ended.

Exit codes: 0 cancelled, requested, or already ended; 1 unknown job, facilitator unreachable, or
(with --wait) not ended `cancelled` in time; 2 bad arguments or API token.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], **kw: Any) -> None:
    p = sub.add_parser(
        "cancel",
        help="cancel a job (queued, sent, running, or on an offline worker)",
        epilog=EPILOG,
        description="Cancel a job through a running facilitator's HTTP API.",
        **kw,
    )
    add_common(p)
    p.add_argument("job_id", help="the job to cancel")
    p.add_argument("--reason", default="", help="why (recorded as the cancelled status's detail)")
    p.add_argument(
        "--wait", type=seconds, default=None, metavar="SECONDS", help="wait until the job has ended"
    )
    p.set_defaults(run=run_cancel)


def run_cancel(args: argparse.Namespace) -> int:
    client = make_client(args)
    try:
        answer = client.cancel(args.job_id, args.reason)
        if args.wait is not None and answer["cancelled"] and answer["status"] not in TERMINAL:
            answer["status"] = client.wait(args.job_id, args.wait).get("status")
    except ApiError as exc:
        return api_failure(exc)
    status = answer["status"]
    if args.json:
        print(json.dumps(answer))
    elif not answer["cancelled"]:
        print(f"job {args.job_id} had already ended ({status}): nothing to cancel")
    elif status == "cancelled":
        print(f"job {args.job_id} cancelled")
    else:
        print(f"job {args.job_id}: cancel sent to its worker (status now: {status})")
    if args.wait is not None and answer["cancelled"] and status not in TERMINAL:
        timed_out(f"job {args.job_id} to end", args.wait, answer)
        return EXIT_RUNTIME
    if args.wait is not None and answer["cancelled"] and status != "cancelled":
        print(f"jobrelay: job {args.job_id} ended {status!r}, not cancelled", file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK
