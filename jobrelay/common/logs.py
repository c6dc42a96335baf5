# Route stdlib logging (pykka, websockets, websocket-client) into loguru, so an actor's crash
# traceback, which pykka logs through the stdlib, is never lost.
from __future__ import annotations

import inspect
import logging

from loguru import logger

__all__ = ["InterceptHandler", "route_stdlib_logging"]


class InterceptHandler(logging.Handler):
    """The handler from loguru's documentation: re-emit each stdlib record through loguru."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        # Find the caller outside the logging module (loguru's documented recipe).
        frame, depth = inspect.currentframe(), 0
        while frame is not None and (depth == 0 or frame.f_code.co_filename == logging.__file__):
            frame = frame.f_back
            depth += 1
        logger.opt(depth=depth, exception=record.exc_info).log(level, record.getMessage())


def route_stdlib_logging(level: int = logging.INFO) -> None:
    """Install the intercept handler once (idempotent)."""
    root = logging.getLogger()
    if not any(isinstance(h, InterceptHandler) for h in root.handlers):
        root.addHandler(InterceptHandler())
    for name in ("pykka", "websockets", "websocket"):
        logging.getLogger(name).setLevel(level)
