# Layered settings for the jobrelay command: flags, then JOBRELAY_* environment variables, then a
# TOML file (--config), then defaults. Invariants: every value remembers where it came from, and
# every refusal is a UsageError whose one-line message names the setting and that source
# ("worker.url (from JOBRELAY_URL): ..."); values are converted to the library's typed config with
# msgspec (strings from flags/env are parsed, TOML values must already have the right type).
from __future__ import annotations

import argparse
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from jobrelay.actors.config import WorkerConfig
from jobrelay.actors.errors import ConfigError
from jobrelay.cli.errors import UsageError

__all__ = [
    "FACILITATOR",
    "LOG",
    "STATUS",
    "WORKER",
    "Resolved",
    "Setting",
    "add_flags",
    "load_toml",
    "resolve",
]


@dataclass(frozen=True)
class Setting:
    """One setting: its key in the TOML section, its flag, its environment variable.

    ``target`` is the library config field it feeds ("" for settings of the command itself).
    ``kind`` is the Python type used to parse flag/env strings; ``default`` the command's default.
    """

    section: str
    key: str
    kind: Any
    default: Any
    help: str
    flag: str | None = None
    env: str | None = None
    target: str = ""
    metavar: str | None = None

    @property
    def name(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def dest(self) -> str:
        return self.key


_NO_DEFAULT: Any = object()  # required: no default


def _w(
    key: str, kind: Any, default: Any, help: str, flag: str | None = None, env: str | None = None, **kw: Any
) -> Setting:
    return Setting("worker", key, kind, default, help, flag, env, **kw)


def _f(
    key: str, kind: Any, default: Any, help: str, flag: str | None = None, env: str | None = None, **kw: Any
) -> Setting:
    return Setting("facilitator", key, kind, default, help, flag, env, **kw)


WORKER: tuple[Setting, ...] = (
    _w(
        "url",
        str,
        _NO_DEFAULT,
        "facilitator URL, ws://host:port or wss://host:port",
        "--url",
        "JOBRELAY_URL",
        target="url",
    ),
    _w(
        "worker_id",
        str,
        _NO_DEFAULT,
        "this worker's id (as in the authorized-keys file)",
        "--worker-id",
        "JOBRELAY_WORKER_ID",
        target="worker_id",
    ),
    _w(
        "key_file",
        str,
        "",
        "file with the Ed25519 private key (from `jobrelay keygen`)",
        "--key-file",
        "JOBRELAY_KEY_FILE",
        target="key_file",
    ),
    _w(
        "key",
        str,
        "",
        "the private key itself, 64 hex chars (prefer key_file)",
        None,
        "JOBRELAY_KEY",
        target="key",
    ),
    _w(
        "db_path",
        str,
        _NO_DEFAULT,
        "the worker's SQLite file (outbox, inbox, job ledger)",
        "--db",
        "JOBRELAY_DB",
        target="db_path",
    ),
    _w(
        "durability",
        str,
        "full",
        "full (fsync each commit) or normal",
        "--durability",
        "JOBRELAY_DURABILITY",
        target="durability",
    ),
    _w(
        "max_concurrent_jobs",
        int,
        4,
        "handlers running at once",
        "--max-jobs",
        "JOBRELAY_MAX_JOBS",
        target="max_concurrent_jobs",
    ),
    _w(
        "stop_timeout",
        float,
        5.0,
        "seconds SIGINT/SIGTERM may take to drain and stop",
        "--stop-timeout",
        "JOBRELAY_STOP_TIMEOUT",
        target="stop_timeout",
    ),
    _w(
        "backoff_base",
        float,
        0.5,
        "first reconnect delay bound, seconds (full jitter)",
        "--backoff-base",
        "JOBRELAY_BACKOFF_BASE",
        target="backoff_base",
    ),
    _w(
        "backoff_cap",
        float,
        30.0,
        "largest reconnect delay, seconds",
        "--backoff-cap",
        "JOBRELAY_BACKOFF_CAP",
        target="backoff_cap",
    ),
    _w(
        "max_attempts",
        int,
        None,
        "failed connection attempts before giving up (unset: forever)",
        "--max-attempts",
        "JOBRELAY_MAX_ATTEMPTS",
        target="max_attempts",
    ),
    _w(
        "connect_timeout",
        float,
        10.0,
        "TCP + WebSocket handshake timeout, seconds",
        "--connect-timeout",
        "JOBRELAY_CONNECT_TIMEOUT",
        target="connect_timeout",
    ),
    _w(
        "ca_file",
        str,
        "",
        "CA bundle for wss:// (default: system store)",
        "--ca-file",
        "JOBRELAY_CA_FILE",
        target="ca_file",
    ),
    _w(
        "max_outbox_rows",
        int,
        1_000_000,
        "outbox bound in rows (then publishers block)",
        "--max-outbox-rows",
        "JOBRELAY_MAX_OUTBOX_ROWS",
        target="max_outbox_rows",
    ),
    _w(
        "max_outbox_bytes",
        int,
        1 << 30,
        "outbox bound in bytes",
        "--max-outbox-bytes",
        "JOBRELAY_MAX_OUTBOX_BYTES",
        target="max_outbox_bytes",
    ),
    _w(
        "publish_timeout",
        float,
        30.0,
        "how long a status waits for outbox room",
        "--publish-timeout",
        "JOBRELAY_PUBLISH_TIMEOUT",
        target="publish_timeout",
    ),
    _w(
        "formats",
        tuple[str, ...],
        ("json", "msgpack"),
        "codecs offered, preferred first (comma-separated)",
        "--formats",
        "JOBRELAY_FORMATS",
        target="formats",
    ),
    _w(
        "max_frame_bytes",
        int,
        1_048_576,
        "largest WebSocket frame",
        "--max-frame-bytes",
        "JOBRELAY_MAX_FRAME_BYTES",
        target="max_frame_bytes",
    ),
    _w(
        "max_batch",
        int,
        500,
        "most data messages per frame",
        "--max-batch",
        "JOBRELAY_MAX_BATCH",
        target="max_batch",
    ),
    _w(
        "handshake_timeout",
        float,
        10.0,
        "seconds to authenticate",
        "--handshake-timeout",
        "JOBRELAY_HANDSHAKE_TIMEOUT",
        target="handshake_timeout",
    ),
    _w(
        "handlers",
        dict[str, str],
        {},
        "job kind = command, repeatable (TOML: a [worker.handlers] table)",
        "--handler",
        "JOBRELAY_HANDLERS",
        metavar="KIND=COMMAND",
    ),
    _w(
        "http_host",
        str,
        "127.0.0.1",
        "interface for /healthz and /metrics",
        "--http-host",
        "JOBRELAY_HTTP_HOST",
    ),
    _w(
        "http_port",
        int,
        None,
        "port for /healthz and /metrics (unset: off; 0: any free port)",
        "--http-port",
        "JOBRELAY_HTTP_PORT",
    ),
    _w(
        "ready_file",
        str,
        "",
        "write {url, http_url, pid} as JSON here once running",
        "--ready-file",
        "JOBRELAY_READY_FILE",
    ),
)

FACILITATOR: tuple[Setting, ...] = (
    _f("db_path", str, _NO_DEFAULT, "the facilitator's SQLite file", "--db", "JOBRELAY_DB", target="db_path"),
    _f("host", str, "127.0.0.1", "interface workers connect to", "--host", "JOBRELAY_HOST", target="host"),
    _f(
        "port",
        int,
        8765,
        "WebSocket port for workers (0: any free port)",
        "--port",
        "JOBRELAY_PORT",
        target="port",
    ),
    _f(
        "authorized_keys_file",
        str,
        None,
        "file of `<worker_id> <public key>` lines",
        "--authorized-keys",
        "JOBRELAY_AUTHORIZED_KEYS",
        target="authorized_keys_file",
    ),
    _f(
        "authorized_keys",
        dict[str, str],
        {},
        "worker id = public key (TOML table only)",
        target="authorized_keys",
    ),
    _f(
        "durability",
        str,
        "full",
        "full (fsync each commit) or normal",
        "--durability",
        "JOBRELAY_DURABILITY",
        target="durability",
    ),
    _f(
        "stop_timeout",
        float,
        5.0,
        "seconds SIGINT/SIGTERM may take to stop",
        "--stop-timeout",
        "JOBRELAY_STOP_TIMEOUT",
        target="stop_timeout",
    ),
    _f(
        "max_inflight",
        int,
        1000,
        "unacknowledged data messages per direction",
        "--max-inflight",
        "JOBRELAY_MAX_INFLIGHT",
        target="max_inflight",
    ),
    _f(
        "max_frame_bytes",
        int,
        1 << 20,
        "largest WebSocket frame",
        "--max-frame-bytes",
        "JOBRELAY_MAX_FRAME_BYTES",
        target="max_frame_bytes",
    ),
    _f(
        "max_batch",
        int,
        500,
        "most data messages per frame",
        "--max-batch",
        "JOBRELAY_MAX_BATCH",
        target="max_batch",
    ),
    _f(
        "heartbeat_interval",
        float,
        5.0,
        "seconds between heartbeats to a worker",
        "--heartbeat-interval",
        "JOBRELAY_HEARTBEAT_INTERVAL",
        target="heartbeat_interval",
    ),
    _f(
        "heartbeat_timeout",
        float,
        20.0,
        "drop a worker silent this long",
        "--heartbeat-timeout",
        "JOBRELAY_HEARTBEAT_TIMEOUT",
        target="heartbeat_timeout",
    ),
    _f(
        "handshake_timeout",
        float,
        10.0,
        "seconds a worker has to authenticate",
        "--handshake-timeout",
        "JOBRELAY_HANDSHAKE_TIMEOUT",
        target="handshake_timeout",
    ),
    _f(
        "max_clock_skew",
        float,
        120.0,
        "largest accepted auth timestamp skew, seconds",
        "--max-clock-skew",
        "JOBRELAY_MAX_CLOCK_SKEW",
        target="max_clock_skew",
    ),
    _f(
        "formats",
        tuple[str, ...],
        ("json", "msgpack"),
        "codecs offered, preferred first (comma-separated)",
        "--formats",
        "JOBRELAY_FORMATS",
        target="formats",
    ),
    _f(
        "tick_interval",
        float,
        0.5,
        "how often connections check deadlines, seconds",
        "--tick-interval",
        "JOBRELAY_TICK_INTERVAL",
        target="tick_interval",
    ),
    _f(
        "http_host",
        str,
        "127.0.0.1",
        "interface for the HTTP API, /healthz and /metrics",
        "--http-host",
        "JOBRELAY_HTTP_HOST",
    ),
    _f(
        "http_port",
        int,
        8766,
        "port for the HTTP API, /healthz and /metrics (0: any free port)",
        "--http-port",
        "JOBRELAY_HTTP_PORT",
    ),
    _f(
        "ready_file",
        str,
        "",
        "write {url, http_url, pid} as JSON here once listening",
        "--ready-file",
        "JOBRELAY_READY_FILE",
    ),
)

STATUS: tuple[Setting, ...] = (
    Setting("worker", "db_path", str, _NO_DEFAULT, "the worker's SQLite file", "--db", "JOBRELAY_DB"),
    Setting(
        "worker",
        "http_host",
        str,
        "127.0.0.1",
        "the worker's health interface",
        "--http-host",
        "JOBRELAY_HTTP_HOST",
    ),
    Setting(
        "worker",
        "http_port",
        int,
        None,
        "the worker's health port (unset: database only)",
        "--http-port",
        "JOBRELAY_HTTP_PORT",
    ),
)

LOG: tuple[Setting, ...] = (
    Setting(
        "log",
        "level",
        str,
        "INFO",
        "TRACE, DEBUG, INFO, SUCCESS, WARNING, ERROR or CRITICAL",
        "--log-level",
        "JOBRELAY_LOG_LEVEL",
    ),
    Setting(
        "log",
        "json",
        bool,
        False,
        "JSON lines on stderr instead of the human format",
        "--log-json",
        "JOBRELAY_LOG_JSON",
    ),
)


def add_flags(
    parser: argparse.ArgumentParser, settings: Sequence[Setting], *, title: str = "settings"
) -> None:
    """Add one flag per setting; the flag's default is None (unset), so layers below can apply."""
    group = parser.add_argument_group(title)
    for s in settings:
        if s.flag is None:
            continue
        env = f" [env {s.env}]" if s.env else ""
        default = (
            ""
            if s.default is _NO_DEFAULT or s.default in (None, "", {})
            else f" (default: {_show(s.default)})"
        )
        if s.kind is bool:
            group.add_argument(
                s.flag,
                dest=f"{s.section}__{s.key}",
                action="store_const",
                const="true",
                default=None,
                help=f"{s.help}{default}{env}",
            )
        elif s.kind == dict[str, str]:
            group.add_argument(
                s.flag,
                dest=f"{s.section}__{s.key}",
                action="append",
                default=None,
                metavar=s.metavar,
                help=f"{s.help}{env}",
            )
        else:
            group.add_argument(
                s.flag,
                dest=f"{s.section}__{s.key}",
                default=None,
                metavar=s.metavar or s.key.upper(),
                help=f"{s.help}{default}{env}",
            )


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass
class Resolved:
    """Values of one command's settings and where each came from."""

    values: dict[str, Any] = field(default_factory=dict)  # key → typed value
    sources: dict[str, str] = field(
        default_factory=dict
    )  # key → "--flag" / "JOBRELAY_X" / "file.toml" / "default"
    section: str = ""

    def source(self, key: str) -> str:
        return self.sources.get(key, "default")

    def bad(self, key: str, why: str) -> UsageError:
        return UsageError(f"{self.section}.{key} (from {self.source(key)}): {why}")


def load_toml(path: str | None, section: str, settings: Sequence[Setting]) -> tuple[dict[str, Any], str]:
    """The ``[section]`` table of a TOML file (and the file name for messages).

    Raises:
        UsageError: the file cannot be read or parsed, or has unknown keys or sections.
    """
    if not path:
        return {}, ""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise UsageError(f"--config: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"--config: {path} is not valid TOML: {exc}") from None
    known_sections = {"worker", "facilitator", "log"}
    for name, value in doc.items():
        if name not in known_sections or not isinstance(value, dict):
            raise UsageError(
                f"{name} (from {path}): unknown section; expected [worker], [facilitator] or [log]"
            )
    table = dict(doc.get(section, {}))
    keys = {s.key for s in settings if s.section == section}
    all_keys = {s.key for s in (*WORKER, *FACILITATOR, *LOG) if s.section == section}
    for key in table:
        if key not in all_keys:
            raise UsageError(f"{section}.{key} (from {path}): unknown setting")
    return {k: v for k, v in table.items() if k in keys}, path


def resolve(
    settings: Sequence[Setting],
    args: argparse.Namespace,
    *,
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
) -> Resolved:
    """Merge flags > environment > TOML > defaults for ``settings`` (all of one section).

    Raises:
        UsageError: a value has the wrong type or a required setting is missing.
    """
    env = os.environ if env is None else env
    section = settings[0].section
    toml, toml_name = load_toml(config_path, section, settings)
    out = Resolved(section=section)
    for s in settings:
        flag_value = getattr(args, f"{s.section}__{s.key}", None)
        if flag_value is not None:
            out.sources[s.key] = s.flag or s.key
            out.values[s.key] = _parse_text(s, flag_value, out)
        elif s.env and env.get(s.env, "") != "":
            out.sources[s.key] = s.env
            out.values[s.key] = _parse_text(s, env[s.env], out)
        elif s.key in toml:
            out.sources[s.key] = toml_name
            out.values[s.key] = _convert(s, toml[s.key], out, strict=True)
        elif s.default is not _NO_DEFAULT:
            out.sources[s.key] = "default"
            out.values[s.key] = s.default
        else:
            where = " or ".join(x for x in (s.flag, s.env, f"{s.key} in [{s.section}] of --config") if x)
            raise UsageError(f"{s.name}: required; set {where}")
    return out


def _parse_text(s: Setting, raw: str | list[str], out: Resolved) -> Any:
    """Parse a flag or environment value (strings) into the setting's type."""
    if s.kind == dict[str, str]:
        items = raw if isinstance(raw, list) else [p for p in re.split(r"[;\n]", raw) if p.strip()]
        mapping: dict[str, str] = {}
        for item in items:
            kind, sep, command = item.partition("=")
            if not sep or not kind.strip() or not command.strip():
                raise out.bad(s.key, f"expected KIND=COMMAND, got {item!r}")
            mapping[kind.strip()] = command.strip()
        return mapping
    assert isinstance(raw, str)
    text = raw.strip()
    if s.kind == tuple[str, ...]:
        return tuple(p.strip() for p in text.split(",") if p.strip())
    if s.default is None and text.lower() in ("none", "forever", "off"):
        return None
    if s.kind is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise out.bad(s.key, f"expected true or false, got {raw!r}")
    return _convert(s, text, out, strict=False)


def _convert(s: Setting, value: Any, out: Resolved, *, strict: bool) -> Any:
    kind = s.kind if s.default is not None else s.kind | None
    try:
        return msgspec.convert(value, kind, strict=strict)
    except msgspec.ValidationError:
        raise out.bad(s.key, f"{_type_name(s.kind)}, got {value!r}") from None


def _type_name(kind: Any) -> str:
    names = {
        int: "expected an integer",
        float: "expected a number",
        str: "expected a string",
        bool: "expected true or false",
    }
    if kind in names:
        return names[kind]
    if kind == tuple[str, ...]:
        return "expected a list of strings"
    if kind == dict[str, str]:
        return "expected a table of strings"
    return f"expected {kind}"


# ------------------------------------------------------------------------ typed library config

_FIELD = re.compile(r"^(?:Worker|Facilitator)Config\.(\w+): (.*)$", re.S)


def build_config(resolved: Resolved, cls: type[Any]) -> Any:
    """Build (and check) WorkerConfig or FacilitatorConfig from resolved settings.

    Raises:
        UsageError: naming the setting and its source.
    """
    values = {
        s.target: resolved.values[s.key] for s in _settings_of(cls) if s.target and s.key in resolved.values
    }
    try:
        config = msgspec.convert(values, cls, strict=True)
        if isinstance(config, WorkerConfig):
            config.check()
    except (ConfigError, msgspec.ValidationError) as exc:
        raise config_error(resolved, exc) from None
    return config


def _settings_of(cls: type[Any]) -> tuple[Setting, ...]:
    return WORKER if cls is WorkerConfig else FACILITATOR


def config_error(resolved: Resolved, exc: Exception) -> UsageError:
    """Turn a library ConfigError/ValidationError into a UsageError naming setting and source."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    match = _FIELD.match(text)
    field_name = match.group(1) if match else _msgspec_field(text)
    why = _strip_at(match.group(2) if match else text)
    by_target = {
        s.target: s.key for s in (*WORKER, *FACILITATOR) if s.target and s.section == resolved.section
    }
    if field_name == "?":
        return UsageError(f"{resolved.section}: {why}")
    return resolved.bad(by_target.get(field_name, field_name), why)


def _msgspec_field(message: str) -> str:
    if "`$." in message:
        return message.rsplit("`$.", 1)[-1].rstrip("`").split(".")[0].split("[")[0]
    if "required field" in message:
        return message.rsplit("`", 2)[-2]
    return "?"


def _strip_at(why: str) -> str:
    # msgspec appends " - at `$.field`"; the setting is already named.
    return re.sub(r" - at `\$[^`]*`$", "", why)


def markdown_table() -> str:
    """The README's configuration table, generated from the settings above (a test compares)."""
    lines = [
        "| Setting | Flag | Environment | TOML key | Default | Meaning |",
        "|---|---|---|---|---|---|",
    ]
    for s in (*WORKER, *FACILITATOR, *LOG):
        default = "required" if s.default is _NO_DEFAULT else _doc_default(s.default)
        flag = f"`{s.flag}`" if s.flag else "–"
        env = f"`{s.env}`" if s.env else "–"
        meaning = s.help.replace("|", "\\|")
        lines.append(f"| {s.name} | {flag} | {env} | `[{s.section}] {s.key}` | {default} | {meaning} |")
    return "\n".join(lines)


def _doc_default(value: Any) -> str:
    if value is None:
        return "unset"
    if value in ("", {}):
        return "empty"
    return f"`{_show(value)}`"
