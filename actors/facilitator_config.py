# The reference facilitator's configuration: one typed, validated msgspec Struct.
# Invariant: a FacilitatorConfig that exists is valid (validated in __post_init__); every
# refusal is a ConfigError whose message starts with "FacilitatorConfig.<field>:".
from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

import msgspec

from jobrelay.actors.config import is_duration
from jobrelay.actors.errors import ConfigError
from jobrelay.protocol.auth import parse_authorized_keys
from jobrelay.protocol.codec import FORMATS, Format
from jobrelay.protocol.session import SessionConfig

__all__ = ["FacilitatorConfig", "load_facilitator_config"]


class FacilitatorConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Settings of a reference facilitator (``start_facilitator``).

    Attributes:
        db_path: The SQLite file (created if absent; its directory must exist).
        host: Interface to listen on.
        port: TCP port; 0 picks a free one (read it back from ``Facilitator.port``).
        authorized_keys: worker id → Ed25519 public key (hex), merged with the file's keys.
        authorized_keys_file: An authorized-keys file (``<worker_id> <public key hex>`` per line).
        durability: ``"full"`` (fsync per commit) or ``"normal"`` (see docs/STORAGE.md).
        max_inflight: Unacknowledged data messages allowed per direction and session.
        max_frame_bytes: Largest WebSocket frame accepted or sent.
        max_batch: Most data messages per frame sent to a worker.
        heartbeat_interval: Seconds between heartbeats sent to a worker.
        heartbeat_timeout: A worker silent this long is disconnected (close 4002).
        handshake_timeout: A connection that does not authenticate in time is closed (4003).
        max_clock_skew: Largest difference between a worker's auth timestamp and our clock.
        formats: Codecs offered to workers, preferred first.
        tick_interval: How often each connection checks its deadlines (seconds).
        tls_cert_file / tls_key_file: PEM certificate chain and key: serve ``wss://`` (TLS).
        stop_timeout: Default bound of ``Facilitator.stop()``.
    """

    db_path: str
    host: str = "127.0.0.1"
    port: int = 0
    authorized_keys: dict[str, str] = msgspec.field(default_factory=dict)
    authorized_keys_file: str | None = None
    durability: Literal["full", "normal"] = "full"
    max_inflight: int = 1000
    max_frame_bytes: int = 1 << 20
    max_batch: int = 500
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 20.0
    handshake_timeout: float = 10.0
    max_clock_skew: float = 120.0
    formats: tuple[str, ...] = ("json", "msgpack")
    tick_interval: float = 0.5
    stop_timeout: float = 5.0
    tls_cert_file: str | None = None
    tls_key_file: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field.

        Raises:
            ConfigError: naming the first invalid field and what it must be.
        """
        if not self.db_path:
            raise _bad("db_path", "must name a file", self.db_path)
        if not self.host:
            raise _bad("host", "must not be empty", self.host)
        if not 0 <= self.port <= 65535:
            raise _bad("port", "must be 0..65535", self.port)
        if self.durability not in ("full", "normal"):
            raise _bad("durability", "must be 'full' or 'normal'", self.durability)
        for name in ("max_inflight", "max_batch"):
            if getattr(self, name) < 1:
                raise _bad(name, "must be >= 1", getattr(self, name))
        if self.max_frame_bytes < 1024:
            raise _bad("max_frame_bytes", "must be >= 1024", self.max_frame_bytes)
        for name in (
            "heartbeat_interval",
            "handshake_timeout",
            "max_clock_skew",
            "tick_interval",
            "stop_timeout",
        ):
            if not is_duration(getattr(self, name)):
                raise _bad(name, "must be a finite number of seconds > 0", getattr(self, name))
        if not (is_duration(self.heartbeat_timeout) and self.heartbeat_timeout > self.heartbeat_interval):
            raise _bad(
                "heartbeat_timeout",
                f"must be > heartbeat_interval ({self.heartbeat_interval})",
                self.heartbeat_timeout,
            )
        if not self.formats or any(f not in FORMATS for f in self.formats):
            raise _bad("formats", f"must be a non-empty subset of {FORMATS}", self.formats)
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise _bad(
                "tls_cert_file", "set both tls_cert_file and tls_key_file (or neither)", self.tls_cert_file
            )
        for worker_id, key in self.authorized_keys.items():
            try:
                parse_authorized_keys(f"{worker_id} {key}")
            except ValueError as exc:
                raise _bad("authorized_keys", f"entry {worker_id!r}: {exc}", key) from None

    def tls_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (``wss://``), or None for plain ``ws://``.

        Raises:
            ConfigError: the certificate or key cannot be loaded.
        """
        if not self.tls_cert_file or not self.tls_key_file:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise _bad("tls_cert_file", f"cannot load certificate/key ({exc})", self.tls_cert_file) from None
        return context

    def load_authorized_keys(self) -> dict[str, str]:
        """The authorized keys: ``authorized_keys`` plus those of ``authorized_keys_file``.

        Raises:
            ConfigError: the file cannot be read or parsed, or lists a worker with another key.
        """
        keys = {worker_id: key.lower() for worker_id, key in self.authorized_keys.items()}
        if self.authorized_keys_file is None:
            return keys
        path = Path(self.authorized_keys_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeError) as exc:
            raise _bad("authorized_keys_file", f"cannot be read ({exc})", str(path)) from None
        try:
            from_file = parse_authorized_keys(text)
        except ValueError as exc:
            raise _bad("authorized_keys_file", f"{path}: {exc}", str(path)) from None
        for worker_id, key in from_file.items():
            if keys.get(worker_id, key) != key:
                raise _bad("authorized_keys_file", f"lists {worker_id!r} with another key", str(path))
            keys[worker_id] = key
        return keys

    def session_config(self) -> SessionConfig:
        """The per-connection protocol limits derived from this config."""
        formats = tuple(cast(Format, f) for f in self.formats)  # validated against FORMATS
        return SessionConfig(
            max_inflight=self.max_inflight,
            max_frame_bytes=self.max_frame_bytes,
            max_batch=self.max_batch,
            heartbeat_interval=self.heartbeat_interval,
            heartbeat_timeout=self.heartbeat_timeout,
            handshake_timeout=self.handshake_timeout,
            max_clock_skew=self.max_clock_skew,
            formats=formats,
        )


def _bad(field: str, rule: str, value: Any) -> ConfigError:
    return ConfigError(f"FacilitatorConfig.{field}: {rule}, got {value!r}")


def load_facilitator_config(values: Mapping[str, Any]) -> FacilitatorConfig:
    """Build a config from plain values (e.g. parsed TOML/JSON), converting types strictly.

    Raises:
        ConfigError: a field has the wrong type, is unknown, missing or invalid.
    """
    try:
        return msgspec.convert(dict(values), FacilitatorConfig, strict=False, from_attributes=False)
    except msgspec.ValidationError as exc:
        text = str(exc)
        raise ConfigError(f"FacilitatorConfig.{_field_of(text)}: {text}") from None


def _field_of(message: str) -> str:
    """The top-level field a msgspec validation message is about ("?" when it names none)."""
    if "`$." in message:
        return message.rsplit("`$.", 1)[-1].rstrip("`").split(".")[0].split("[")[0]
    if "required field" in message or "unknown field" in message:
        return message.rsplit("`", 2)[-2]
    return "?"
