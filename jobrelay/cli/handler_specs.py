# Command handlers from the worker's settings: `handlers` (KIND=COMMAND, or in TOML a table with
# `command` and options) and `handler_options` (KIND:OPTION=VALUE). Invariant: every option of
# every kind is checked here, before the worker starts; a bad one is a UsageError naming the
# setting, its source, the kind and the option (exit 2).
from __future__ import annotations

import dataclasses
import math
import shlex
from typing import Any

from jobrelay.actors.commands import CommandHandler, CommandOptions
from jobrelay.actors.handlers import Handler
from jobrelay.cli.samples import SAMPLE_HANDLERS
from jobrelay.cli.settings import Resolved

__all__ = ["OPTION_NAMES", "handlers_from"]

OPTION_NAMES = tuple(f.name for f in dataclasses.fields(CommandOptions))
_BOOLS = {
    "true": True,
    "yes": True,
    "on": True,
    "1": True,
    "false": False,
    "no": False,
    "off": False,
    "0": False,
}


def handlers_from(resolved: Resolved) -> dict[str, Handler]:
    """The sample handlers plus one CommandHandler per configured kind.

    Raises:
        UsageError: a command cannot be split or is empty; an option is unknown, has a bad value,
            or names a kind with no command.
    """
    handlers: dict[str, Handler] = dict(SAMPLE_HANDLERS)
    commands: dict[str, list[str]] = {}
    options: dict[str, dict[str, Any]] = {}
    for kind, spec in resolved.values["handlers"].items():
        where = f"{kind}: "
        if isinstance(spec, dict):
            table = dict(spec)
            command = table.pop("command", None)
            if not isinstance(command, str):
                raise resolved.bad("handlers", f'{where}a handler table needs `command = "..."`')
            options[kind] = {name: _option(resolved, "handlers", kind, name, v) for name, v in table.items()}
        else:
            command = spec
        commands[kind] = _split(resolved, kind, command)
    for key, raw in resolved.values["handler_options"].items():
        kind, sep, name = key.partition(":")
        kind, name = kind.strip(), name.strip()
        if not sep or not kind or not name:
            raise resolved.bad("handler_options", f"expected KIND:OPTION=VALUE, got {key}={raw}")
        if kind not in commands:
            raise resolved.bad(
                "handler_options", f"{kind}: no command handler of that kind (--handler {kind}=...)"
            )
        options.setdefault(kind, {})[name] = _option(resolved, "handler_options", kind, name, raw)
    for kind, argv in commands.items():
        try:
            handlers[kind] = CommandHandler(argv, CommandOptions(**options.get(kind, {})))
        except ValueError as exc:
            raise resolved.bad("handlers", f"{kind}: {exc}") from None
    return handlers


def _split(resolved: Resolved, kind: str, command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise resolved.bad("handlers", f"{kind}: cannot split {command!r}: {exc}") from None
    if not argv:
        raise resolved.bad("handlers", f"{kind}: empty command")
    return argv


def _option(resolved: Resolved, key: str, kind: str, name: str, value: Any) -> Any:
    """One option's value, typed (flags and the environment give strings, TOML typed values)."""
    where = f"{kind}:{name}: "
    if name not in OPTION_NAMES:
        raise resolved.bad(key, f"{where}unknown option; expected one of {', '.join(OPTION_NAMES)}")
    if name == "resumable":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _BOOLS:
            return _BOOLS[value.strip().lower()]
        raise resolved.bad(key, f"{where}expected true or false, got {value!r}")
    if name == "concurrency":
        try:
            number = int(value.strip()) if isinstance(value, str) else value
        except ValueError:
            number = None
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise resolved.bad(key, f"{where}expected an integer >= 1, got {value!r}")
        return number
    try:
        seconds = float(value.strip()) if isinstance(value, str) else value
    except ValueError:
        seconds = None
    zero_ok = name == "kill_after"
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, int | float)
        or not math.isfinite(seconds)
        or seconds < 0
        or (seconds == 0 and not zero_ok)
    ):
        raise resolved.bad(key, f"{where}expected seconds {'>= 0' if zero_ok else '> 0'}, got {value!r}")
    return float(seconds)
