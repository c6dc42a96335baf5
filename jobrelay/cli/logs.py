# Logging set-up for the jobrelay command: loguru to stderr, a human format on a TTY (or when
# asked), JSON lines with --log-json; stdlib logging (pykka, websockets) routed into loguru.
# Invariant: configure() replaces every loguru sink, so calling it twice never duplicates lines.
from __future__ import annotations

import logging
import sys
from typing import Any

from loguru import logger

from jobrelay.cli.errors import UsageError
from jobrelay.cli.settings import Resolved
from jobrelay.common.logs import route_stdlib_logging

__all__ = ["LEVELS", "check", "configure"]

LEVELS = ("TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL")

_HUMAN = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
    "<cyan>{extra[component]}</cyan>{extra[context]} {message}"
)


def _context(record: Any) -> None:
    extra = record["extra"]
    extra.setdefault("component", record["name"].rsplit(".", 1)[-1] if record["name"] else "-")
    bits = [f"{k}={extra[k]}" for k in ("worker_id", "session", "job_id") if extra.get(k)]
    extra["context"] = f" [{' '.join(bits)}]" if bits else ""


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
    logger.configure(extra=dict(context), patcher=_context)
    if json:
        logger.add(sys.stderr, level=level, serialize=True, backtrace=False, diagnose=False)
    else:
        logger.add(
            sys.stderr,
            level=level,
            format=_HUMAN,
            colorize=sys.stderr.isatty(),
            backtrace=False,
            diagnose=False,
        )
    stdlib_level = logging.DEBUG if level in ("TRACE", "DEBUG") else logging.INFO
    route_stdlib_logging(stdlib_level)
    logging.getLogger().setLevel(stdlib_level)
