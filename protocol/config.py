# The settings both ends of a link share, validated one way. WorkerConfig and FacilitatorConfig
# derive from LinkConfig, so a limit means the same and is refused the same on either side.
# Invariant: check_link() raises ConfigError("<ConfigClass>.<field>: <rule>, got <value>") for the
# first bad value and touches no file, socket or clock.
from __future__ import annotations

import math
import threading
from typing import Any, Literal, NoReturn

import msgspec

from jobrelay.protocol.codec import FORMATS
from jobrelay.protocol.errors import ConfigError
from jobrelay.protocol.messages import MAX_BATCH

__all__ = ["MAX_FRAME_BYTES", "MIN_FRAME_BYTES", "LinkConfig", "is_duration"]

MIN_FRAME_BYTES = 1024
"""The smallest max_frame_bytes either side accepts: a handshake frame must fit."""
MAX_FRAME_BYTES = 1 << 30
"""The largest max_frame_bytes either side accepts: both ends hold a frame whole in memory, and a
value beyond 64 bits could not even be encoded in ``welcome`` (every connection would fail)."""


def is_duration(value: float) -> bool:
    """A usable timeout or interval: positive, finite and within what threads can wait for
    (``inf`` or ``nan`` would pass ``> 0`` checks and then fail deep inside a timer)."""
    return 0 < value <= threading.TIMEOUT_MAX and math.isfinite(value)


class LinkConfig(msgspec.Struct, kw_only=True, frozen=True):
    """What a worker and a facilitator both configure.

    Attributes:
        db_path: the SQLite file (created if absent; its directory must exist).
        durability: ``full`` (fsync per commit) or ``normal`` (may lose the last commits on
            power loss, never on a process crash).
        max_frame_bytes: largest WebSocket frame accepted or sent (1 KiB..1 GiB).
        max_batch: most data messages per frame (≤ 10,000, what a batch frame may carry).
        handshake_timeout: seconds allowed to authenticate a new connection.
        formats: codecs offered, preferred first.
        stop_timeout: default bound of ``stop()``, seconds.
    """

    db_path: str
    durability: Literal["full", "normal"] = "full"
    max_frame_bytes: int = 1 << 20
    max_batch: int = 1_000
    handshake_timeout: float = 10.0
    formats: tuple[Literal["json", "msgpack"], ...] = ("json", "msgpack")
    stop_timeout: float = 5.0

    def check_link(self) -> None:
        """Validate the shared fields.

        Raises:
            ConfigError: naming the first invalid field and what it must be.
        """
        if not self.db_path:
            self.bad("db_path", "must name a file", self.db_path)
        if self.durability not in ("full", "normal"):
            self.bad("durability", "must be 'full' or 'normal'", self.durability)
        if (
            not isinstance(self.max_frame_bytes, int)
            or not MIN_FRAME_BYTES <= self.max_frame_bytes <= MAX_FRAME_BYTES
        ):
            self.bad("max_frame_bytes", f"must be {MIN_FRAME_BYTES}..{MAX_FRAME_BYTES}", self.max_frame_bytes)
        self.check_counts("max_batch")
        if self.max_batch > MAX_BATCH:  # a larger batch is refused by the peer: nothing would flow
            self.bad("max_batch", f"must be ≤ {MAX_BATCH} (the most a batch frame may carry)", self.max_batch)
        self.check_durations("handshake_timeout", "stop_timeout")
        if not self.formats or any(f not in FORMATS for f in self.formats):
            self.bad("formats", f"must be a non-empty subset of {FORMATS}", self.formats)

    def check_counts(self, *names: str) -> None:
        """Each named field must be an integer >= 1.

        Raises:
            ConfigError: for the first that is not.
        """
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                self.bad(name, "must be ≥ 1", value)

    def check_durations(self, *names: str) -> None:
        """Each named field must be a finite number of seconds > 0.

        Raises:
            ConfigError: for the first that is not.
        """
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, int | float) or not is_duration(value):
                self.bad(name, "must be a finite number of seconds > 0", value)

    def error(self, field: str, rule: str, value: Any) -> ConfigError:
        """The one ConfigError shape both sides use (to raise ``from`` another error)."""
        return ConfigError(f"{type(self).__name__}.{field}: {rule}, got {value!r}")

    def bad(self, field: str, rule: str, value: Any) -> NoReturn:
        """Raise ``error(field, rule, value)``.

        Raises:
            ConfigError: always.
        """
        raise self.error(field, rule, value)
