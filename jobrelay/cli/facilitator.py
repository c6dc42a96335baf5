# `jobrelay facilitator`: the reference facilitator server plus its HTTP API, /healthz and
# /metrics. Invariants: configuration is checked before anything listens (one-line errors, exit
# 2); SIGINT/SIGTERM stop within stop_timeout (exit 0), HTTP first so no submit races the stop.
from __future__ import annotations

import argparse
import contextlib
from typing import Any

from loguru import logger

from jobrelay.cli import logs
from jobrelay.cli.errors import EXIT_OK
from jobrelay.cli.service import ServiceLoop, check_ready_file, start_http, write_ready_file
from jobrelay.cli.settings import FACILITATOR, LOG, Resolved, add_flags, build_config, config_error, resolve
from jobrelay.cli.worker import check_db_path, print_config
from jobrelay.common.gc_policy import tune_for_many_connections
from jobrelay.common.http import HealthServer
from jobrelay.common.http_access import AccessPolicy, is_loopback, load_api_tokens
from jobrelay.facilitator import Facilitator, FacilitatorConfig, FacilitatorHealth, start_facilitator
from jobrelay.protocol.errors import ConfigError
from jobrelay.storage import StorageError

__all__ = ["add_parser", "api_access", "run"]

EPILOG = """\
examples:
  # listen for workers on 127.0.0.1:8765, HTTP API + /healthz + /metrics on 127.0.0.1:8766
  # (once: create its own key; give the printed public key to every worker as --facilitator-key)
  jobrelay keygen --facilitator --key-file facilitator.key
  jobrelay facilitator --key-file facilitator.key --authorized-keys authorized_keys --db facilitator.db

  # any free ports; write {url, http_url, pid} to a file once listening
  jobrelay facilitator --key-file facilitator.key --authorized-keys authorized_keys --db f.db \\
      --port 0 --http-port 0 --ready-file ready.json

  # from a config file, workers on every interface (the HTTP API stays on loopback)
  jobrelay facilitator --config facilitator.toml --host 0.0.0.0

  # the HTTP API on every interface: it then needs tokens (lines `submit <token>`, `read <token>`)
  jobrelay facilitator --config facilitator.toml --http-host 0.0.0.0 --api-tokens api_tokens \\
      --http-allowed-hosts relay.example.com

signals: SIGINT or SIGTERM stop within --stop-timeout (exit 0); a second one exits at once with
code 130. Exit 2: bad configuration (also: a tokens file that group or others may read, or the
HTTP API beyond loopback without --api-tokens unless --insecure-api is given).
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], **kw: Any) -> None:
    p = sub.add_parser(
        "facilitator",
        help="run the reference facilitator (workers connect to it; jobs are submitted to it)",
        description="Run the reference facilitator in the foreground until SIGINT/SIGTERM.",
        epilog=EPILOG,
        **kw,
    )
    add_flags(
        p,
        FACILITATOR,
        title="facilitator settings (flag > JOBRELAY_* env > [facilitator] in --config > default)",
    )
    p.add_argument("--print-config", action="store_true", help="print the resolved settings as JSON and exit")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    resolved = resolve(FACILITATOR, args, config_path=args.config)
    log = resolve(LOG, args, config_path=args.config)
    logs.check(log)
    config: FacilitatorConfig = build_config(resolved, FacilitatorConfig)
    check_db_path(resolved)
    check_ready_file(resolved)
    try:
        # Refuse a bad keys file or certificate, and (unless only printing the settings) a
        # missing or unreadable facilitator key, before anything starts.
        config.load_authorized_keys()
        config.tls_context()
        access = api_access(resolved)
        if args.print_config:
            print_config(resolved, log)
            return EXIT_OK
        config.load_key()
    except ConfigError as exc:
        raise config_error(resolved, exc) from None
    logs.configure(log.values["level"], json=log.values["json"])
    tune_for_many_connections()  # this process is the facilitator: see gc_policy.py
    fac = _start(config, resolved)
    http: HealthServer | None = None
    try:
        http = start_http(FacilitatorHealth(fac), resolved, loop=fac.loop, access=access)
        if http is None:  # (a listening HTTP server says where itself)
            logger.info("facilitator: no HTTP API, /healthz or /metrics (http_port unset)")
        write_ready_file(resolved.values["ready_file"], url=fac.url, http_url=http.url if http else None)

        def stop(timeout: float) -> None:
            if http is not None:
                http.stop()
            fac.stop(timeout)

        return ServiceLoop("facilitator", stop, config.stop_timeout).run()
    finally:
        if http is not None:
            http.stop()
        with contextlib.suppress(Exception):
            fac.stop(config.stop_timeout)


def api_access(resolved: Resolved) -> AccessPolicy:
    """Who may use the HTTP API, from the settings; checked before anything listens.

    Raises:
        UsageError: the tokens file is unreadable, malformed or open to group/others; a public
            path other than /healthz or /metrics; or the API would be served beyond loopback
            without tokens and without ``insecure_api``.
    """
    values = resolved.values
    tokens = None
    if values["api_tokens_file"]:
        try:
            tokens = load_api_tokens(values["api_tokens_file"])
        except ConfigError as exc:
            raise resolved.bad("api_tokens_file", str(exc)) from None
    try:
        access = AccessPolicy.for_bind(
            values["http_host"],
            tokens=tokens,
            extra_hosts=values["http_allowed_hosts"],
            origins=values["http_allowed_origins"],
            public_paths=values["http_public_paths"],
        )
    except ConfigError as exc:
        raise resolved.bad("http_public_paths", str(exc)) from None
    exposed = values["http_port"] is not None and not is_loopback(values["http_host"])
    # Refused rather than only warned about: a warning scrolls by, an open submit API is remote
    # code execution on every worker that runs a command handler.
    if exposed and tokens is None and not values["insecure_api"]:
        raise resolved.bad(
            "http_host",
            f"{values['http_host']} is beyond loopback and api_tokens_file is unset: anyone reaching the "
            "port could submit, cancel and read jobs; set --api-tokens (or accept it with --insecure-api)",
        )
    return access


def _start(config: FacilitatorConfig, resolved: Resolved) -> Facilitator:
    try:
        return start_facilitator(config)
    except ConfigError as exc:
        raise config_error(resolved, exc) from None
    except StorageError as exc:
        raise resolved.bad("db_path", str(exc).splitlines()[0]) from None
