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
from jobrelay.cli.errors import UsageError
from jobrelay.cli.registry import FACILITATOR, HANDLERS, LOG, REQUIRED, STATUS, WORKER, Setting, show
from jobrelay.common.files import FileRefused, read_small_file
from jobrelay.protocol.errors import ConfigError

__all__ = [
    "CONFIG_FILE_LIMIT",
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

CONFIG_FILE_LIMIT = 1 << 20
"""The largest --config file read: a settings file is a few kilobytes."""


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
            if s.default is REQUIRED or s.default in (None, "", {}, ())
            else f" (default: {show(s.default)})"
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
        elif _is_table(s.kind):
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
        text = read_small_file(path, limit=CONFIG_FILE_LIMIT).decode("utf-8")
    except (FileRefused, UnicodeError) as exc:
        raise UsageError(f"--config: cannot read {path}: {exc}") from None
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
        UsageError: a value has the wrong type or is out of its bounds, or a required setting is
            missing.
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
            out.values[s.key] = _beside(toml_name, s, _convert(s, toml[s.key], out, strict=True))
        elif s.default is not REQUIRED:
            out.sources[s.key] = "default"
            out.values[s.key] = s.default
        else:
            where = " or ".join(x for x in (s.flag, s.env, f"{s.key} in [{s.section}] of --config") if x)
            raise UsageError(f"{s.name}: required; set {where}")
        _check_bounds(s, out)
    return out


def _beside(toml_name: str, s: Setting, value: Any) -> Any:
    """A relative file name from a TOML file, made relative to that file's folder: the file
    names its neighbours, wherever the command is started from."""
    if not s.path or not isinstance(value, str) or not value:
        return value
    path = Path(value).expanduser()
    return value if path.is_absolute() else str(Path(toml_name).parent / path)


def _check_bounds(s: Setting, out: Resolved) -> None:
    """Refuse an int outside the setting's ``bounds`` (e.g. a port above 65535), naming its source."""
    value = out.values[s.key]
    if s.bounds is None or value is None:
        return
    low, high = s.bounds
    if not low <= value <= high:
        raise out.bad(s.key, f"must be {low}..{high}, got {value}")


def _parse_text(s: Setting, raw: str | list[str], out: Resolved) -> Any:
    """Parse a flag or environment value (strings) into the setting's type."""
    if _is_table(s.kind):
        items = raw if isinstance(raw, list) else [p for p in re.split(r"[;\n]", raw) if p.strip()]
        mapping: dict[str, str] = {}
        for item in items:
            kind, sep, command = item.partition("=")
            if not sep or not kind.strip() or not command.strip():
                raise out.bad(s.key, f"expected {s.metavar or 'KEY=VALUE'}, got {item!r}")
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


def _is_table(kind: Any) -> bool:
    """Settings given as repeated KEY=VALUE flags (or `;`-separated in the environment)."""
    return bool(kind == dict[str, str] or kind == HANDLERS)


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
    if kind == HANDLERS:
        return "expected a table of commands (each a string, or a table with `command`)"
    return f"expected {kind}"


# ------------------------------------------------------------------------ typed library config

_FIELD = re.compile(r"^(?:Worker|Facilitator)Config\.(\w+): (.*)$", re.S)


def build_config(resolved: Resolved, cls: type[Any]) -> Any:
    """Build (and check) WorkerConfig or FacilitatorConfig from resolved settings.

    Raises:
        UsageError: naming the setting and its source.
    """
    values = {
        s.key: resolved.values[s.key] for s in _settings_of(cls) if s.config and s.key in resolved.values
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
    if field_name == "?":
        return UsageError(f"{resolved.section}: {why}")
    return resolved.bad(field_name, why)


def _msgspec_field(message: str) -> str:
    if "`$." in message:
        return message.rsplit("`$.", 1)[-1].rstrip("`").split(".")[0].split("[")[0]
    if "required field" in message:
        return message.rsplit("`", 2)[-2]
    return "?"


def _strip_at(why: str) -> str:
    # msgspec appends " - at `$.field`"; the setting is already named.
    return re.sub(r" - at `\$[^`]*`$", "", why)
