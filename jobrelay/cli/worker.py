# `jobrelay worker`: a long-running worker process. Invariants: configuration is fully checked
# (one-line errors, exit 2) before any actor starts; SIGINT/SIGTERM drain (queued jobs handed
# back, running ones given drain_timeout) and stop within drain_timeout + stop_timeout (exit 0);
# the health server starts after the worker and stops before it.
from __future__ import annotations

import argparse
import contextlib
import json
import os
from pathlib import Path
from typing import Any

from jobrelay.actors import WorkerHealth
from jobrelay.actors.config import WorkerConfig
from jobrelay.actors.worker import Worker, start_worker
from jobrelay.cli import logs
from jobrelay.cli.errors import EXIT_AUTH, EXIT_OK, EXIT_RUNTIME
from jobrelay.cli.handler_specs import handlers_from
from jobrelay.cli.service import ServiceLoop, check_ready_file, start_http, write_ready_file
from jobrelay.cli.settings import LOG, WORKER, Resolved, add_flags, build_config, resolve
from jobrelay.common.http import HealthServer
from jobrelay.storage import StorageError

__all__ = ["add_parser", "check_db_path", "run"]

EPILOG = """\
examples:
  # run worker w1 against a local facilitator; `sleep` and `echo` are built in
  # (--facilitator-key: the line `jobrelay keygen --facilitator` printed for that facilitator)
  jobrelay worker --url ws://127.0.0.1:8765 --worker-id w1 --key-file w1.key --db w1.db \\
      --facilitator-key 5f1b…(64 hex chars)

  # map job kinds to external commands (job JSON on stdin, one JSON status per stdout line)
  jobrelay worker --config worker.toml --handler 'resize=convert-job --fast' --handler 'ping=./ping.sh'

  # serve /healthz and /metrics on 127.0.0.1:9101, JSON logs for a log shipper
  jobrelay worker --config worker.toml --http-port 9101 --log-json

  # show the settings it would use (and where each came from), then exit
  JOBRELAY_URL=ws://fac:8765 jobrelay worker --config worker.toml --print-config

signals: SIGINT or SIGTERM drains (exit 0): the facilitator is told, queued jobs are handed back
to it for other workers, running jobs get --drain-timeout (default 30 s; 0: none) to finish and
are then cancelled, and the stop takes at most --stop-timeout more. A second one exits at once
with code 130 (everything accepted is already durable). Exit 2: bad configuration.
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], **kw: Any) -> None:
    p = sub.add_parser(
        "worker",
        help="run a worker: connect to a facilitator and run jobs",
        description="Run a jobrelay worker in the foreground until SIGINT/SIGTERM.",
        epilog=EPILOG,
        **kw,
    )
    add_flags(p, WORKER, title="worker settings (flag > JOBRELAY_* env > [worker] in --config > default)")
    p.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    p.set_defaults(run=run)


def check_db_path(resolved: Resolved, key: str = "db_path") -> None:
    """Refuse a database path whose directory is missing or that cannot be read and written.

    Raises:
        UsageError: naming the setting and its source.
    """
    path = Path(resolved.values[key])
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise resolved.bad(key, f"{path} is a directory, expected a database file")
    if not parent.is_dir():
        raise resolved.bad(key, f"directory {parent} does not exist")
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise resolved.bad(key, f"cannot read and write {path}")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise resolved.bad(key, f"cannot create a file in {parent}")


def print_config(*parts: Resolved) -> None:
    doc = {
        p.section: {k: {"value": v, "source": p.source(k)} for k, v in p.values.items() if k != "key"}
        for p in parts
    }
    print(json.dumps(doc, indent=2, default=list))


def run(args: argparse.Namespace) -> int:
    resolved = resolve(WORKER, args, config_path=args.config)
    log = resolve(LOG, args, config_path=args.config)
    logs.check(log)
    config: WorkerConfig = build_config(resolved, WorkerConfig)
    check_db_path(resolved)
    check_ready_file(resolved)
    handlers = handlers_from(resolved)
    if args.print_config:
        print_config(resolved, log)
        return EXIT_OK
    logs.configure(log.values["level"], json=log.values["json"], worker_id=config.worker_id)
    try:
        worker = start_worker(config, handlers)
    except StorageError as exc:
        raise resolved.bad("db_path", str(exc).splitlines()[0]) from None
    http: HealthServer | None = None
    try:
        http = start_http(WorkerHealth(worker), resolved)
        write_ready_file(resolved.values["ready_file"], url=config.url, http_url=http.url if http else None)

        def stop(timeout: float) -> None:
            if http is not None:
                http.stop()
            worker.stop(config.stop_timeout)

        # The whole bound: running jobs may take drain_timeout to finish, then the stop itself.
        bound = config.drain_timeout + config.stop_timeout
        return ServiceLoop("worker", stop, bound, failed=lambda: _failed(worker)).run()
    finally:
        if http is not None:
            http.stop()
        if not worker.stopped:
            with contextlib.suppress(Exception):
                worker.stop(config.stop_timeout)


def _failed(worker: Worker) -> tuple[str, int] | None:
    if worker.stopped:
        return "the worker stopped (an actor crashed; see the log above)", EXIT_RUNTIME
    with contextlib.suppress(Exception):
        match worker.gave_up():
            case "auth_refused":
                return "authentication was refused (fix the key, or --retry-auth-failures)", EXIT_AUTH
            case "max_attempts":
                return "the connection gave up (max_attempts reached)", EXIT_RUNTIME
    return None
