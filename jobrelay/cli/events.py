# `jobrelay events`: the facilitator's live events (GET /events), like `celery events` or `nats sub`.
# Invariants: on a terminal, colour and rich's styles; piped, plain lines (one per event, never
# wrapped); a stream the facilitator drops (this reader was too slow) ends with one line on stderr
# and exit 1; Ctrl-C, --count or a facilitator that stops end it with exit 0.
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Final

from rich.console import Console
from rich.text import Text

from jobrelay.cli.api_client import ApiError, FacilitatorClient
from jobrelay.cli.argtypes import count
from jobrelay.cli.client import add_common, api_failure, api_token
from jobrelay.cli.errors import EXIT_OK, EXIT_RUNTIME
from jobrelay.cli.follow import STATUS_STYLE, clock

__all__ = ["add_parser", "print_event", "run"]

EPILOG = """\
examples:
  jobrelay events                                  # every event, one line each, until Ctrl-C
  jobrelay events --type job. --json               # job events as JSON lines
  jobrelay events --worker w1                      # what happens on worker w1
  jobrelay events --job 5f0c...e1 --count 3        # the next 3 events of one job, then exit

Event types: job.submitted, job.routed, job.status, job.ended, job.released, worker.connected,
worker.draining, worker.gone. The stream is live only: events from before it opened are not
replayed (read those with `jobrelay jobs`). A reader that falls 1,000 events behind is dropped by the
facilitator (exit 1, with a line on stderr) rather than slowing it down.

Exit codes: 0 stopped (Ctrl-C, --count reached, the facilitator stopped); 1 facilitator unreachable
or the stream dropped; 2 bad arguments or API token.
"""

_TYPE_STYLE: Final = {"job.ended": "bold", "worker.connected": "green", "worker.gone": "red"}
_FIELDS: Final = ("job_id", "kind", "worker", "status", "progress", "detail", "attempt", "draining", "code")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], **kw: Any) -> None:
    p = sub.add_parser(
        "events",
        help="stream the facilitator's live events (jobs and workers)",
        description="Print the facilitator's events as they happen: jobs submitted, routed, their "
        "statuses and endings; workers connecting, draining and going away.",
        epilog=EPILOG,
        **kw,
    )
    add_common(p)
    p.add_argument("--job", default=None, help="only this job's events")
    p.add_argument("--worker", default=None, help="only events of this worker")
    p.add_argument("--type", default=None, metavar="PREFIX", help="only events whose type starts so (job.)")
    p.add_argument("--count", type=count(1, 10**9), default=None, metavar="N", help="exit after N events")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    client = FacilitatorClient(args.facilitator, timeout=args.timeout, token=api_token(args.token_file))
    console = Console(highlight=False, soft_wrap=True)
    seen = 0
    try:
        for event in client.events(job=args.job, worker=args.worker, type=args.type):
            kind = event["type"]
            if kind == "stream.open":
                continue
            if kind == "stream.dropped":
                print(
                    f"jobrelay: error: the facilitator dropped this stream: {event.get('reason')}",
                    file=sys.stderr,
                )
                return EXIT_RUNTIME
            if kind == "stream.closed":
                print("jobrelay: the facilitator closed the stream (stopping)", file=sys.stderr)
                return EXIT_OK
            print_event(console, event, as_json=args.json)
            seen += 1
            if args.count is not None and seen >= args.count:
                return EXIT_OK
    except ApiError as exc:
        return api_failure(exc)
    except KeyboardInterrupt:
        return EXIT_OK  # the usual way to stop watching
    except BrokenPipeError:  # `jobrelay events | head`: the reader has what it wanted
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - Python flushes stdout at exit
        return EXIT_OK
    print("jobrelay: the event stream ended", file=sys.stderr)
    return EXIT_RUNTIME


def print_event(console: Console, event: dict[str, Any], *, as_json: bool) -> None:
    """One event: a JSON line, or ``HH:MM:SS.mmm  TYPE  key=value ...`` (styled on a terminal)."""
    if as_json:
        console.out(json.dumps(event), highlight=False)
        return
    line = Text(clock(event["at"]) + "  ")
    kind = str(event["type"])
    line.append(f"{kind:<17}", style=_TYPE_STYLE.get(kind, ""))
    for name in _FIELDS:
        value = event.get(name)
        if value is None or value == "" or (name == "attempt" and value == 1):
            continue
        text = f"{value * 100:.0f}%" if name == "progress" else str(value)
        if " " in text or not text:
            text = json.dumps(text)
        line.append(f" {name.removesuffix('_id')}=")
        line.append(text, style=STATUS_STYLE.get(text, "") if name == "status" else "")
    console.print(line)
