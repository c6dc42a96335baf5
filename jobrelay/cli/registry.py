# Every setting of the jobrelay command in one table: TOML section and key, flag, environment
# variable, type, default, meaning, and the library config field it feeds. Invariants: the
# environment name is derived from the flag (--max-jobs → JOBRELAY_MAX_JOBS) unless given; the
# README's configuration table is generated from here (markdown_table; a test compares).
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "FACILITATOR",
    "HANDLERS",
    "LOG",
    "REQUIRED",
    "STATUS",
    "WORKER",
    "Setting",
    "markdown_table",
    "show",
]

REQUIRED: Any = object()  # a setting without a default


@dataclass(frozen=True)
class Setting:
    """One setting.

    Attributes:
        section / key: where it lives in the TOML file (``[worker] url``); also its name.
        kind: the type flag and environment strings are parsed into (and TOML values must have).
        default: the command's default, REQUIRED, or None for "unset".
        help: one line for --help and the README.
        flag / env: the command-line flag and environment variable (None: not settable that way).
        config: True if it feeds the library's WorkerConfig/FacilitatorConfig field ``key``.
        metavar: the flag's metavar.
        bounds: for an int setting, the inclusive range ``(low, high)`` a value must lie in
            (checked when settings are resolved; None, i.e. unset, is always allowed).
        path: a file name; a relative one in a TOML file is relative to that file's folder (as
            from a flag or the environment it is relative to the current directory).
    """

    section: str
    key: str
    kind: Any
    default: Any
    help: str
    flag: str | None = None
    env: str | None = None
    config: bool = True
    metavar: str | None = None
    bounds: tuple[int, int] | None = None
    path: bool = False

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"


def _setting(
    section: str, key: str, kind: Any, default: Any, flag: str | None, help: str, **kw: Any
) -> Setting:
    if "env" not in kw and flag is not None:
        kw["env"] = "JOBRELAY_" + flag.removeprefix("--").upper().replace("-", "_")
    return Setting(section, key, kind, default, help, flag, **kw)


def _w(key: str, kind: Any, default: Any, flag: str | None, help: str, **kw: Any) -> Setting:
    return _setting("worker", key, kind, default, flag, help, **kw)


def _f(key: str, kind: Any, default: Any, flag: str | None, help: str, **kw: Any) -> Setting:
    return _setting("facilitator", key, kind, default, flag, help, **kw)


STRS = tuple[str, ...]
TABLE = dict[str, str]
HANDLERS = dict[str, str | dict[str, Any]]  # kind = command, or (TOML) kind = {command, options}
FORMATS = ("json", "msgpack")
PORT = (0, 65535)

# fmt: off
WORKER: tuple[Setting, ...] = (
    _w("url", str, REQUIRED, "--url", "facilitator URL, ws://host:port or wss://host:port"),
    _w("worker_id", str, REQUIRED, "--worker-id", "this worker's id (as in the authorized-keys file)"),
    _w("key_file", str, "", "--key-file", "file with the Ed25519 private key (from `jobrelay keygen`)",
       path=True),
    _w("key", str, "", None, "the private key itself, 64 hex chars (prefer key_file)", env="JOBRELAY_KEY"),
    _w("facilitator_key", str, "", "--facilitator-key",
       "required: the facilitator's public key to pin, 64 hex (`jobrelay keygen --facilitator` prints it)"),
    _w("db_path", str, REQUIRED, "--db", "the worker's SQLite file (outbox, inbox, job ledger)", path=True),
    _w("durability", str, "full", "--durability", "full (fsync each commit) or normal"),
    _w("max_concurrent_jobs", int, 4, "--max-jobs", "handlers running at once"),
    _w("prefetch", int, 1, "--prefetch",
       "jobs the facilitator may send beyond --max-jobs (credit = max-jobs + prefetch)"),
    _w("drain_timeout", float, 30.0, "--drain-timeout",
       "seconds SIGINT/SIGTERM lets running jobs finish before cancelling them (0: at once)"),
    _w("stop_timeout", float, 5.0, "--stop-timeout", "seconds the stop may take after that"),
    _w("backoff_base", float, 0.5, "--backoff-base", "first reconnect delay bound, seconds (full jitter)"),
    _w("backoff_cap", float, 30.0, "--backoff-cap", "largest reconnect delay, seconds"),
    _w("max_attempts", int, None, "--max-attempts",
       "failed connection attempts before giving up (unset: forever)"),
    _w("breaker_failure_threshold", int, 5, "--breaker-failure-threshold",
       "consecutive failed connection attempts that open the circuit breaker (no attempts while open)"),
    _w("breaker_recovery_timeout", float, 2.0, "--breaker-recovery-timeout",
       "seconds the open breaker waits before a half-open probe (then within one more, full jitter)"),
    _w("breaker_success_threshold", int, 1, "--breaker-success-threshold",
       "sessions opened in half-open state that close the breaker"),
    _w("local_mode_after", float, 30.0, "--local-mode-after",
       "seconds without a session before local mode (jobs go on); at once when the breaker opens"),
    _w("max_calls_in_flight", int, 1000, "--max-calls-in-flight",
       "calls to the facilitator outstanding at once (library: more wait or fail, the caller's choice)"),
    _w("call_rate", float, None, "--call-rate",
       "calls started a second at most, token bucket (unset: no limit)"),
    _w("call_burst", int, 100, "--call-burst", "calls the call bucket lets start at once"),
    _w("send_rate", float, None, "--send-rate",
       "data messages sent a second at most, token bucket (unset: no limit; they wait in the outbox)"),
    _w("send_burst", int, 1000, "--send-burst", "data messages the send bucket lets through at once"),
    _w("retry_auth_failures", bool, False, "--retry-auth-failures",
       "keep reconnecting after an authentication refusal (default: exit 3 at once)"),
    _w("connect_timeout", float, 10.0, "--connect-timeout", "TCP + WebSocket handshake timeout, seconds"),
    _w("ca_file", str, "", "--ca-file", "CA bundle for wss:// (default: the system store)", path=True),
    _w("max_outbox_rows", int, 1_000_000, "--max-outbox-rows", "outbox bound in rows (then publishers wait)"),
    _w("max_outbox_bytes", int, 1 << 30, "--max-outbox-bytes", "outbox bound in bytes"),
    _w("publish_timeout", float, 30.0, "--publish-timeout", "how long a status waits for outbox room"),
    _w("formats", STRS, FORMATS, "--formats", "codecs offered, preferred first (comma-separated)"),
    _w("max_frame_bytes", int, 1_048_576, "--max-frame-bytes", "largest WebSocket frame"),
    _w("max_batch", int, 1000, "--max-batch", "most data messages per frame"),
    _w("handshake_timeout", float, 10.0, "--handshake-timeout", "seconds to authenticate"),
    _w("handlers", HANDLERS, {}, "--handler",
       "job kind = command, repeatable (TOML: a [worker.handlers] table; a kind may be a table "
       "with `command` and options)", env="JOBRELAY_HANDLERS", config=False, metavar="KIND=COMMAND"),
    _w("handler_options", TABLE, {}, "--handler-option",
       "KIND:OPTION=VALUE, repeatable: resumable, concurrency, soft_time_limit, time_limit, kill_after "
       "of a command handler (see docs/CLI.md)", env="JOBRELAY_HANDLER_OPTIONS", config=False,
       metavar="KIND:OPTION=VALUE"),
    _w("time_limits", TABLE, {}, "--time-limit",
       "job kind = [SOFT/]HARD seconds: the kind's default time limits, repeatable "
       "(TOML: a [worker.time_limits] table; a job's own limits override them)",
       env="JOBRELAY_TIME_LIMITS", config=False, metavar="KIND=[SOFT/]HARD"),
    _w("celery_tasks", TABLE, {}, "--celery-task",
       "job kind = Celery task name, repeatable: the kind runs as that task on the cluster of "
       "--celery-broker (TOML: a [worker.celery_tasks] table; needs jobrelay[celery])",
       env="JOBRELAY_CELERY_TASKS", config=False, metavar="KIND=TASK"),
    _w("celery_broker", str, "", "--celery-broker",
       "Redis URL of the Celery broker for --celery-task kinds (also their result backend and "
       "progress channel)", config=False, metavar="URL"),
    _w("http_host", str, "127.0.0.1", "--http-host", "interface for /healthz and /metrics", config=False),
    _w("http_port", int, None, "--http-port", "port for /healthz and /metrics (unset: off; 0: any free port)",
       config=False, bounds=PORT),
    _w("ready_file", str, "", "--ready-file", "write {url, http_url, pid} as JSON here once running",
       config=False, path=True),
)

FACILITATOR: tuple[Setting, ...] = (
    _f("db_path", str, REQUIRED, "--db", "the facilitator's SQLite file", path=True),
    _f("host", str, "127.0.0.1", "--host", "interface workers connect to"),
    _f("port", int, 8765, "--port", "WebSocket port for workers (0: any free port)"),
    _f("key_file", str, None, "--key-file",
       "required (or key): the facilitator's own private key file (`jobrelay keygen --facilitator`); "
       "workers pin its public key", env="JOBRELAY_FACILITATOR_KEY_FILE", path=True),
    _f("key", str, "", None, "the facilitator's private key itself, 64 hex chars (prefer key_file)",
       env="JOBRELAY_FACILITATOR_PRIVATE_KEY"),
    _f("authorized_keys_file", str, None, "--authorized-keys", "file of `<worker_id> <public key>` lines",
       path=True),
    _f("authorized_keys", TABLE, {}, None, "worker id = public key (TOML table only)"),
    _f("tls_cert_file", str, None, "--tls-cert", "PEM certificate chain: serve wss:// (with tls_key_file)",
       path=True),
    _f("tls_key_file", str, None, "--tls-key", "PEM private key of that certificate", path=True),
    _f("durability", str, "full", "--durability", "full (fsync each commit) or normal"),
    _f("stop_timeout", float, 5.0, "--stop-timeout", "seconds SIGINT/SIGTERM may take to stop"),
    _f("max_inflight", int, 4000, "--max-inflight", "unacknowledged data messages per direction"),
    _f("max_frame_bytes", int, 1 << 20, "--max-frame-bytes", "largest WebSocket frame"),
    _f("max_batch", int, 1000, "--max-batch", "most data messages per frame"),
    _f("heartbeat_interval", float, 5.0, "--heartbeat-interval", "seconds between heartbeats to a worker"),
    _f("heartbeat_timeout", float, 20.0, "--heartbeat-timeout", "drop a worker silent this long"),
    _f("heartbeat_rate", float, 1000.0, "--heartbeat-rate",
       "most heartbeats/s across all workers: beyond, new sessions get a longer interval and timeout "
       "(0: fixed)"),
    _f("handshake_timeout", float, 10.0, "--handshake-timeout", "seconds a worker has to authenticate"),
    _f("max_clock_skew", float, 120.0, "--max-clock-skew", "largest accepted auth timestamp skew, seconds"),
    _f("ack_delay", float, 0.004, "--ack-delay",
       "seconds an ack may wait to cover later commits too (0: an ack per commit)"),
    _f("formats", STRS, FORMATS, "--formats", "codecs offered, preferred first (comma-separated)"),
    _f("max_workers", int, 20_000, "--max-workers", "connections held at once; more are refused (1013)"),
    _f("max_handshakes", int, 256, "--max-handshakes", "connections authenticating at once; others wait"),
    _f("max_unauthenticated", int, 512, "--max-unauthenticated", "connections not yet authenticated"),
    _f("max_unauthenticated_per_address", int, 128, "--max-unauth-per-address", "the same, per address"),
    _f("listen_backlog", int, 4096, "--listen-backlog", "pending TCP connections the listener queues"),
    _f("schedule_to_start_timeout", float, None, "--schedule-to-start-timeout",
       "seconds a job may wait for a worker of its kind, then `failed: no_worker` (unset: forever)"),
    _f("http_host", str, "127.0.0.1", "--http-host", "interface for the HTTP API, /healthz and /metrics",
       config=False),
    _f("http_port", int, 8766, "--http-port",
       "port for the HTTP API, /healthz and /metrics (0: any free port)", config=False, bounds=PORT),
    _f("api_tokens_file", str, None, "--api-tokens",
       "file of `<scope> <token>` lines (scope read or submit; mode 600): the HTTP API then needs "
       "`Authorization: Bearer <token>`", env="JOBRELAY_API_TOKENS_FILE", config=False, path=True),
    _f("http_allowed_hosts", STRS, (), "--http-allowed-hosts",
       "Host header names the HTTP API answers besides http_host and localhost (comma-separated; * any)",
       config=False),
    _f("http_allowed_origins", STRS, (), "--http-allowed-origins",
       "browser origins (scheme://host:port) allowed to call the HTTP API; any other Origin is refused",
       config=False),
    _f("http_public_paths", STRS, ("/healthz", "/metrics"), "--http-public-paths",
       "paths served without a token (a subset of /healthz,/metrics; empty: none)", config=False),
    _f("insecure_api", bool, False, "--insecure-api",
       "allow the HTTP API beyond loopback without api_tokens_file (refused otherwise)", config=False),
    _f("ready_file", str, "", "--ready-file", "write {url, http_url, pid} as JSON here once listening",
       config=False, path=True),
)

STATUS: tuple[Setting, ...] = (
    _w("db_path", str, REQUIRED, "--db", "the worker's SQLite file", config=False, path=True),
    _w("http_host", str, "127.0.0.1", "--http-host", "the worker's health interface", config=False),
    _w("http_port", int, None, "--http-port", "the worker's health port (unset: database only)",
       config=False, bounds=PORT),
)

LOG: tuple[Setting, ...] = (
    _setting("log", "level", str, "INFO", "--log-level",
             "TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR or CRITICAL"),
    _setting("log", "json", bool, False, "--log-json", "JSON lines on stderr instead of the human format"),
)
# fmt: on


def show(value: Any) -> str:
    """A default as it appears in --help."""
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def markdown_table() -> str:
    """The README's configuration table."""
    lines = [
        "| Setting | Flag | Environment | TOML key | Default | Meaning |",
        "|---|---|---|---|---|---|",
    ]
    for s in (*WORKER, *FACILITATOR, *LOG):
        default = "required" if s.default is REQUIRED else _doc_default(s.default)
        flag = f"`{s.flag}`" if s.flag else "–"
        env = f"`{s.env}`" if s.env else "–"
        meaning = s.help.replace("|", "\\|")
        lines.append(f"| {s.name} | {flag} | {env} | `[{s.section}] {s.key}` | {default} | {meaning} |")
    return "\n".join(lines)


def _doc_default(value: Any) -> str:
    if value is None:
        return "unset"
    if value in ("", {}, ()):
        return "empty"
    return f"`{show(value)}`"
