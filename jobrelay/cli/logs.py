# Logging set-up for the jobrelay command: loguru to stderr, a human format on a TTY (or when
# asked), JSON lines with --log-json; stdlib logging (pykka, websockets) routed into loguru.
# Invariants: configure() enables the library's logs (jobrelay/__init__ disables them: a library
# is quiet until its application asks) and replaces every loguru sink, so calling it twice never
# duplicates lines; a human-format record is exactly one line (plus a traceback when one is
# logged): control characters in the message and context are escaped at the format, not at each
# call site; a JSON record is one flat object per line (``json_line``), the fields a log shipper
# indexes, not loguru's nested record.
from __future__ import annotations

import json as jsonlib
import logging
import sys
import traceback
from datetime import UTC
from typing import Any

from loguru import logger

from jobrelay.cli.errors import UsageError
from jobrelay.cli.settings import Resolved
from jobrelay.common.logs import escape_controls, route_stdlib_logging

__all__ = ["CONTEXT", "LEVELS", "check", "configure", "json_line"]

LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")

# The message and context go in escaped (``_human``): a worker id, an error detail or a frame type
# sent by a peer must not end the line and forge the next one, nor drive the operator's terminal.
_HUMAN = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[_human_component]}</cyan>{extra[_human_context]} {extra[_human_message]}\n{exception}"
)


def _human(record: Any) -> str:
    """The human format, with every untrusted value escaped once, here, for every call site.
    Only the human sink sees the escaped copies; JSON lines keep the exact values (json escapes)."""
    extra = record["extra"]
    extra["_human_component"] = escape_controls(str(extra["component"]))
    extra["_human_context"] = escape_controls(extra["context"])
    extra["_human_message"] = escape_controls(record["message"])
    return _HUMAN


CONTEXT = ("worker_id", "session", "job_id")
"""The ids bound to a line (``logger.bind``), shown in brackets and as top-level JSON fields."""

# Fields of the human format's bookkeeping, never part of a JSON line.
_INTERNAL = frozenset({"component", "context", "_json"})


def _context(record: Any) -> None:
    extra = record["extra"]
    extra.setdefault("component", record["name"].rsplit(".", 1)[-1] if record["name"] else "-")
    bits = [f"{k}={extra[k]}" for k in CONTEXT if extra.get(k)]
    extra["context"] = f" [{' '.join(bits)}]" if bits else ""


def json_line(record: Any) -> str:
    """One record as one flat JSON object: ``time`` (ISO 8601, UTC), ``level``, ``message``,
    ``logger`` (the module), the ids of CONTEXT that are set, any other bound value, and
    ``exception`` (its traceback text) when one was logged. Values keep their exact text: JSON
    escapes what the human format must escape itself."""
    extra = record["extra"]
    doc: dict[str, Any] = {
        "time": record["time"].astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": record["level"].name,
        "message": record["message"],
        "logger": record["name"],
    }
    for key, value in extra.items():
        if key not in _INTERNAL and not key.startswith("_human") and value not in (None, ""):
            doc.setdefault(key, value)
    if record["exception"] is not None:
        exc_type, exc, tb = record["exception"]
        doc["exception"] = "".join(traceback.format_exception(exc_type, exc, tb)).rstrip("\n")
    return jsonlib.dumps(doc, default=str, ensure_ascii=False)


def _json_format(record: Any) -> str:
    record["extra"]["_json"] = json_line(record)
    return "{extra[_json]}\n"


def check(log: Resolved) -> None:
    """Refuse an unknown log level, naming its source.

    Raises:
        UsageError: the level is not one of LEVELS.
    """
    level = str(log.values["level"]).upper()
    if level not in LEVELS:
        raise log.bad("level", f"expected one of {', '.join(LEVELS)}, got {log.values['level']!r}")


def configure(level: str = "INFO", *, json: bool = False, **context: Any) -> None:
    """Send logs to stderr at ``level``; ``context`` (e.g. worker_id) is bound to every line.

    Raises:
        UsageError: an unknown level.
    """
    level = level.upper()
    if level not in LEVELS:
        raise UsageError(f"log.level: expected one of {', '.join(LEVELS)}, got {level!r}")
    logger.remove()
    logger.enable("jobrelay")
    logger.configure(extra=dict(context), patcher=_context)
    if json:
        logger.add(sys.stderr, level=level, format=_json_format, backtrace=False, diagnose=False)
    else:
        logger.add(
            sys.stderr,
            level=level,
            format=_human,
            colorize=sys.stderr.isatty(),
            backtrace=False,
            diagnose=False,
        )
    stdlib_level = logging.DEBUG if level in ("TRACE", "DEBUG") else logging.INFO
    route_stdlib_logging(stdlib_level)
    logging.getLogger().setLevel(stdlib_level)
