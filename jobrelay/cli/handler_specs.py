# Command handlers from the worker's settings: `handlers` (KIND=COMMAND, or in TOML a table with
# `command` and options), `handler_options` (KIND:OPTION=VALUE) and `time_limits`
# (KIND=[SOFT/]HARD: a command kind's soft_time_limit/time_limit options, or a Python handler's
# defaults for the kind). Invariant: every option of
# every kind is checked here, before the worker starts; a bad one is a UsageError naming the
# setting, its source, the kind and the option (exit 2).
from __future__ import annotations

import dataclasses
import math
import shlex
from typing import Any

from jobrelay.actors.commands import CommandHandler, CommandOptions
from jobrelay.actors.handlers import Handler
from jobrelay.actors.job_limits import Limits, with_time_limits
from jobrelay.cli.samples import SAMPLE_HANDLERS
from jobrelay.cli.settings import Resolved
from jobrelay.protocol.time_limits import check_time_limits

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
            options[kind] = {
                name: _option(resolved, "handlers", kind, name, v, typed=True) for name, v in table.items()
            }
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
    limits = {
        kind: _limits(resolved, kind, text) for kind, text in resolved.values.get("time_limits", {}).items()
    }
    handlers.update(_celery_handlers(resolved, commands, limits))
    for kind, argv in commands.items():
        kind_options = options.get(kind, {})
        if kind in limits:
            if {"soft_time_limit", "time_limit"} & kind_options.keys():
                raise resolved.bad("time_limits", f"{kind}: its time limits are also set as handler options")
            soft, hard = limits.pop(kind)
            kind_options = {**kind_options, "soft_time_limit": soft, "time_limit": hard}
        try:
            handlers[kind] = CommandHandler(argv, CommandOptions(**kind_options))
        except ValueError as exc:
            raise resolved.bad("handlers", f"{kind}: {exc}") from None
    for kind, kind_limits in limits.items():  # Python handlers: wrapped with their kind's defaults
        if kind not in handlers:
            raise resolved.bad("time_limits", f"{kind}: no handler for this kind")
        handlers[kind] = with_time_limits(handlers[kind], kind_limits)
    return handlers


def _celery_handlers(
    resolved: Resolved, commands: dict[str, list[str]], limits: dict[str, Limits]
) -> dict[str, Handler]:
    """One CeleryHandler per ``celery_tasks`` kind (its time limits taken out of ``limits``)."""
    tasks: dict[str, str] = resolved.values.get("celery_tasks", {})
    if not tasks:
        return {}
    broker = resolved.values.get("celery_broker", "")
    if not broker:
        raise resolved.bad("celery_tasks", "needs --celery-broker redis://HOST:PORT/DB")
    try:
        from jobrelay.actors.celery_backend.backend import CeleryBackend, CeleryHandler  # noqa: PLC0415 - celery is optional
    except ImportError as exc:
        raise resolved.bad("celery_tasks", f"needs Celery: pip install 'jobrelay[celery]' ({exc})") from None
    try:
        backend = CeleryBackend(broker)
    except ValueError as exc:
        raise resolved.bad("celery_broker", str(exc)) from None
    handlers: dict[str, Handler] = {}
    for kind, name in tasks.items():
        if kind in commands:
            raise resolved.bad("celery_tasks", f"{kind}: also a command handler (--handler {kind}=...)")
        soft, hard = limits.pop(kind, Limits())
        try:
            handlers[kind] = CeleryHandler(name.strip(), backend, soft_time_limit=soft, time_limit=hard)
        except ValueError as exc:
            raise resolved.bad("celery_tasks", f"{kind}: {exc}") from None
    return handlers


def _limits(resolved: Resolved, kind: str, text: str) -> Limits:
    """``HARD`` or ``SOFT/HARD`` seconds (either side of the ``/`` may be empty)."""
    soft_text, _, hard_text = text.rpartition("/")
    try:
        soft = float(soft_text) if soft_text.strip() else None
        hard = float(hard_text) if hard_text.strip() else None
        check_time_limits(soft, hard)
    except (ValueError, TypeError) as exc:
        raise resolved.bad(
            "time_limits", f"{kind}: expected [SOFT/]HARD seconds, got {text!r} ({exc})"
        ) from None
    if soft is None and hard is None:
        raise resolved.bad("time_limits", f"{kind}: expected [SOFT/]HARD seconds, got {text!r}")
    return Limits(soft, hard)


def _split(resolved: Resolved, kind: str, command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise resolved.bad("handlers", f"{kind}: cannot split {command!r}: {exc}") from None
    if not argv:
        raise resolved.bad("handlers", f"{kind}: empty command")
    return argv


_EXPECTED = {
    "resumable": "expected true or false",
    "concurrency": "expected an integer >= 1",
    "soft_time_limit": "expected seconds > 0",
    "time_limit": "expected seconds > 0",
    "kill_after": "expected seconds >= 0",
}


def _option(resolved: Resolved, key: str, kind: str, name: str, value: Any, *, typed: bool = False) -> Any:
    """One option's value: parsed from a string (flags, environment), or ``typed`` as TOML has it
    (then a string is refused for a number or a boolean, as for every other TOML setting)."""
    where = f"{kind}:{name}: "
    if name not in OPTION_NAMES:
        raise resolved.bad(key, f"{where}unknown option; expected one of {', '.join(OPTION_NAMES)}")
    parsed = None if typed and isinstance(value, str) else _parse(name, value)
    if parsed is None:
        raise resolved.bad(key, f"{where}{_EXPECTED[name]}, got {value!r}")
    return parsed


def _parse(name: str, value: Any) -> bool | int | float | None:
    """``value`` as option ``name`` takes it, or None if it is not a valid one."""
    text = value.strip().lower() if isinstance(value, str) else None
    if name == "resumable":
        return value if isinstance(value, bool) else _BOOLS.get(text or "")
    number: Any = value
    if text is not None:
        try:
            number = int(text) if name == "concurrency" else float(text)
        except ValueError:
            return None
    if isinstance(number, bool):
        return None
    if name == "concurrency":
        return number if isinstance(number, int) and number >= 1 else None
    if not isinstance(number, int | float) or not math.isfinite(number):
        return None
    low_ok = number >= 0 if name == "kill_after" else number > 0
    return float(number) if low_ok else None
