# `jobrelay status`: a running worker's state without stopping it. Invariants: the database is
# opened read-only (storage.inspect_database), the health endpoint is only read; exit 0 when the
# worker is healthy (or, without a health endpoint, when the database could be read), 1 when its
# /healthz says unhealthy or cannot be reached, 2 for bad settings.
from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from typing import Any

from jobrelay.cli.errors import EXIT_OK, EXIT_RUNTIME
from jobrelay.cli.settings import STATUS, add_flags, resolve
from jobrelay.storage import StorageError, inspect_database

__all__ = ["add_parser", "run"]

EPILOG = """\
examples:
  # from the database alone (read-only; safe while the worker runs)
  jobrelay status --db w1.db

  # plus the live connection state and running jobs from the worker's /healthz
  jobrelay status --db w1.db --http-port 9101

  # the same settings as the worker (JOBRELAY_DB, [worker] db_path/http_port in the TOML file)
  jobrelay status --config worker.toml --json

Exit codes: 0 healthy (or database read, without --http-port); 1 unhealthy or health endpoint
unreachable; 2 bad settings or unreadable database.
"""


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
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    resolved = resolve(STATUS, args, config_path=args.config)
    try:
        summary = inspect_database(resolved.values["db_path"])
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
    return code


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
    print(
        f"database    {db['path']} ({db['file_bytes']} bytes + {db['wal_bytes']} WAL) "
        f"at {time.strftime('%H:%M:%S')}"
    )
