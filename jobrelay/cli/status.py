# `jobrelay status`: a running worker's state without stopping it. Invariants: the database is
# opened read-only (storage.inspect_database), the health endpoint is only read; exit 0 when the
# worker is healthy (or, without a health endpoint, when the database could be read), 1 when its
# /healthz says unhealthy or cannot be reached, 2 for bad settings.
from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any

from jobrelay.cli.argtypes import seconds
from jobrelay.cli.errors import EXIT_OK, EXIT_RUNTIME
from jobrelay.cli.settings import STATUS, add_flags, resolve
from jobrelay.cli.tables import clock, pct, table
from jobrelay.storage import DatabaseSummary, StorageError, inspect_database, inspect_job

__all__ = ["add_parser", "run"]

EPILOG = """\
examples:
  # from the database alone (read-only; safe while the worker runs)
  jobrelay status --db w1.db

  # plus the live connection state and running jobs from the worker's /healthz
  jobrelay status --db w1.db --http-port 9101

  # the same settings as the worker (JOBRELAY_DB, [worker] db_path/http_port in the TOML file)
  jobrelay status --config worker.toml --json

  # wait (up to 60 s) until the worker is idle: nothing left to send, no job unfinished
  jobrelay status --db w1.db --wait-idle 60

  # what the worker itself recorded of one job: each status it published, in order
  jobrelay status --db w1.db --job 5f0c...e1

Exit codes: 0 healthy (or database read, without --http-port; idle, with --wait-idle); 1 unhealthy
or health endpoint unreachable, not idle in time (a "timed out" line says so), or (with --job) a
job the worker does not know; 2 bad settings or unreadable database.
"""

_POLL = 0.1  # seconds between reads of a --wait-idle


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], **kw: Any) -> None:
    p = sub.add_parser(
        "status",
        help="show a running worker's connection, outbox and jobs (read-only)",
        description="Show a worker's state from its database (read-only) and its /healthz endpoint.",
        epilog=EPILOG,
        **kw,
    )
    add_flags(p, STATUS, title="worker settings (flag > JOBRELAY_* env > [worker] in --config > default)")
    p.add_argument("--json", action="store_true", help="print JSON")
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--wait-idle",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="wait until the outbox is empty and no job is unfinished (read-only polling)",
    )
    what.add_argument("--job", metavar="JOB_ID", default=None, help="the worker's own record of this job")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    resolved = resolve(STATUS, args, config_path=args.config)
    path = resolved.values["db_path"]
    try:
        if args.job is not None:
            return _job(path, args.job, as_json=args.json)
        summary = inspect_database(path)
        if args.wait_idle is not None:
            summary = _wait_idle(path, summary, args.wait_idle)
    except StorageError as exc:
        raise resolved.bad("db_path", str(exc).splitlines()[0]) from None
    doc: dict[str, Any] = {
        "database": {
            "path": summary.path,
            "file_bytes": summary.file_bytes,
            "wal_bytes": summary.wal_bytes,
            "jobs_total": summary.jobs_total,
            "jobs_unfinished": summary.jobs_unfinished,
            "outbox": [s._asdict() for s in summary.outbox],
            "inbox": [s._asdict() for s in summary.inbox],
            "totals": summary.totals,
        }
    }
    code = EXIT_OK
    port = resolved.values["http_port"]
    if port is not None:
        url = f"http://{resolved.values['http_host']}:{port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                doc["health"] = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            doc["health"] = json.loads(exc.read() or b"{}")
            code = EXIT_RUNTIME
        except (urllib.error.URLError, OSError) as exc:
            doc["health"] = {"healthy": False, "reason": f"cannot reach {url}: {getattr(exc, 'reason', exc)}"}
            code = EXIT_RUNTIME
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        _print(doc)
    if args.wait_idle is not None and not _idle(summary):
        print(
            f"jobrelay: timed out after {args.wait_idle:g} s waiting for the worker to be idle "
            f"({_busy(summary)})",
            file=sys.stderr,
        )
        return EXIT_RUNTIME
    return code


def _idle(summary: DatabaseSummary) -> bool:
    return summary.jobs_unfinished == 0 and all(out.depth_rows == 0 for out in summary.outbox)


def _busy(summary: DatabaseSummary) -> str:
    unsent = sum(out.depth_rows for out in summary.outbox)
    return f"{unsent} message(s) unacknowledged, {summary.jobs_unfinished} job(s) unfinished"


def _wait_idle(path: str, summary: DatabaseSummary, timeout: float) -> DatabaseSummary:
    """Re-read the database (read-only) until it is idle or ``timeout`` passed; the last read."""
    deadline = time.monotonic() + timeout
    while not _idle(summary) and time.monotonic() < deadline:
        time.sleep(_POLL)
        summary = inspect_database(path)
    return summary


def _job(path: str, job_id: str, *, as_json: bool) -> int:
    found = inspect_job(path, job_id)
    if found is None:
        print(f"jobrelay: error: the worker's database {path} has no job {job_id!r}", file=sys.stderr)
        return EXIT_RUNTIME
    record, history = found
    if as_json:
        doc = {**record._asdict(), "history": [e._asdict() for e in history]}
        print(json.dumps(doc, indent=2))
        return EXIT_OK
    print(
        f"job {record.job_id}  kind {record.kind}  status {record.status or 'queued'}  "
        f"attempts {record.attempts}{'  cancel: ' + record.cancel_reason if record.cancel_reason else ''}"
    )
    table(
        ["#", "AT", "SENT STATUS", "PROGRESS", "DETAIL"],
        [[n, clock(e.at), e.status, pct(e.progress), e.detail] for n, e in enumerate(history, 1)],
    )
    return EXIT_OK


def _print(doc: dict[str, Any]) -> None:
    db = doc["database"]
    health = doc.get("health")
    if health is not None:
        verdict = "healthy" if health.get("healthy") else f"UNHEALTHY: {health.get('reason')}"
        print(f"worker      {health.get('worker_id', '?')}  {verdict}")
        print(f"connection  {health.get('state', '?')}", end="")
        age = health.get("last_contact_age")
        print(f"  (last contact {age:.1f}s ago)" if isinstance(age, int | float) else "")
        breaker = health.get("breaker")
        if isinstance(breaker, dict):
            line = f"breaker     {breaker.get('state', '?')}, {breaker.get('trips', 0)} trip(s)"
            retry_at = breaker.get("retry_at")
            if isinstance(retry_at, int | float):
                line += f", next probe in {max(0.0, retry_at - time.time()):.1f}s"
            print(line)
        local = health.get("local_mode")
        if isinstance(local, dict):
            contact = local.get("last_facilitator_contact")
            seen = (
                time.strftime("%H:%M:%S", time.localtime(contact))
                if isinstance(contact, int | float)
                else "never"
            )
            mode = "LOCAL (facilitator away)" if local.get("active") else "connected mode"
            activations = local.get("activations", 0)
            print(f"mode        {mode}, last facilitator contact {seen}, {activations} activation(s)")
        running = health.get("running_jobs") or []
        print(f"running     {len(running)} job(s){': ' + ', '.join(running[:10]) if running else ''}")
    else:
        print("connection  unknown (no --http-port; database only)")
    for out in db["outbox"]:
        age = out["oldest_unacked_age"]
        print(
            f"outbox      {out['stream']}: {out['depth_rows']} unacked ({out['depth_bytes']} bytes), "
            f"oldest {'-' if age is None else f'{age:.1f}s'}, "
            f"last seq {out['last_seq']}, acked {out['last_acked']}, "
            f"epoch {out['epoch']}"
        )
    for inbox in db["inbox"]:
        print(
            f"inbox       {inbox['stream']}: accepted up to {inbox['hwm']}, "
            f"{inbox['unconsumed']} unconsumed, epoch {inbox['epoch']}"
        )
    print(f"jobs        {db['jobs_total']} known, {db['jobs_unfinished']} unfinished")
    totals = db["totals"]
    print(
        f"totals      (since the database was made) {totals.get('published', 0)} published, "
        f"{totals.get('replayed', 0)} replayed, {totals.get('duplicates_dropped', 0)} duplicates dropped, "
        f"{totals.get('reconnects', 0)} reconnects"
    )
    print(
        f"database    {db['path']} ({db['file_bytes']} bytes + {db['wal_bytes']} WAL) "
        f"at {time.strftime('%H:%M:%S')}"
    )
