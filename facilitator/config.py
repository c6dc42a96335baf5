# The reference facilitator's configuration: one typed, validated msgspec Struct.
# Invariant: a FacilitatorConfig that exists is valid (validated in __post_init__); every
# refusal is a ConfigError whose message starts with "FacilitatorConfig.<field>:".
from __future__ import annotations

import math
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.common.files import FileRefused, read_small_file
from jobrelay.protocol.auth import parse_authorized_keys, worker_id_problem
from jobrelay.protocol.config import LinkConfig, is_duration
from jobrelay.protocol.errors import ConfigError
from jobrelay.protocol.messages import MAX_INFLIGHT
from jobrelay.protocol.session import SessionConfig

__all__ = ["AUTHORIZED_KEYS_LIMIT", "FacilitatorConfig", "load_facilitator_config"]

_LONGEST_HEARTBEAT = 60.0  # seconds: heartbeat_rate never stretches an interval beyond this

AUTHORIZED_KEYS_LIMIT = 64 << 20
KEY_FILE_LIMIT = 4096  # the facilitator's own key file (64 hex characters and a newline)
"""The largest authorized-keys file read (about 500,000 workers' lines)."""


class FacilitatorConfig(LinkConfig, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """Settings of a reference facilitator (``start_facilitator``).

    Attributes:
        host: Interface to listen on.
        port: TCP port; 0 picks a free one (read it back from ``Facilitator.port``).
        authorized_keys: worker id → Ed25519 public key (hex), merged with the file's keys.
        authorized_keys_file: An authorized-keys file (``<worker_id> <public key hex>`` per line).
        max_inflight: Unacknowledged data messages allowed per direction and session (at most
            1,000,000, the most a worker accepts in ``welcome``).
        heartbeat_interval: Seconds between heartbeats sent to a worker.
        heartbeat_timeout: A worker silent this long is disconnected (close 4002).
        heartbeat_rate: Most heartbeats per second the facilitator sends (and so asks for) across
            all its workers. With more connections than ``heartbeat_rate × heartbeat_interval``,
            a new session's ``welcome`` gets a longer interval, ``connections / heartbeat_rate``,
            and a timeout longer by the same factor (rounded up to quarters, the interval never
            beyond 60 s): the keep-alive cost stops growing with the fleet (MQTT 5's Server
            Keep Alive does the same). A session keeps the values it opened with. 0: every
            session gets ``heartbeat_interval``.
        max_clock_skew: Largest difference between a worker's auth timestamp and our clock.
        max_workers: Connections held at once (authenticated or not); one more is refused
            with close code 1013 (try again later). Also capped by the open-file limit.
        max_handshakes: Connections authenticating at once; the others wait their turn (a
            reconnect storm is absorbed by pacing, not by a freeze).
        max_unauthenticated: Connections held that have not yet proved a worker key; one more
            is reset at once (the worker backs off and retries). Bounds what anonymous clients
            can hold, and admits a reconnect storm at the pace handshakes finish.
        max_unauthenticated_per_address: The same, per remote address.
        listen_backlog: The listening socket's backlog (pending TCP connections).
        schedule_to_start_timeout: Seconds a submitted job may wait for a worker that runs its
            kind and has credit, unless its submit says otherwise (``start_within``); still
            queued then, it ends ``failed`` with detail ``no_worker``. None: it waits as long
            as it takes.
        tls_cert_file / tls_key_file: PEM certificate chain and key: serve ``wss://`` (TLS).
        key_file: The facilitator's own Ed25519 private key (64 hex characters, from ``jobrelay
            keygen --facilitator``); it signs every challenge and workers pin its public key.
        key: That key itself, as hex (set exactly one of ``key`` and ``key_file``). Neither is
            generated: ``start_facilitator`` refuses to start without one (a new key on each
            start would make every worker's pin fail).
        ack_delay: Seconds an ack may wait after the previous one so that it covers the commits
            made meanwhile (0: an ack per commit). At a trickle of one message a frame, a worker
            otherwise reads an ack frame per message. An ack never waits while a quarter of the
            window is unacknowledged, nor past the session's end. Below ``heartbeat_interval``.

    The settings shared with the worker (``db_path``, ``durability``, ``max_frame_bytes``,
    ``max_batch``, ``handshake_timeout`` (close 4003 when missed), ``formats``,
    ``stop_timeout``) are documented on LinkConfig.
    """

    host: str = "127.0.0.1"
    port: int = 0
    authorized_keys: dict[str, str] = msgspec.field(default_factory=dict)
    authorized_keys_file: str | None = None
    max_inflight: int = 4_000
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 20.0
    heartbeat_rate: float = 1000.0
    max_clock_skew: float = 120.0
    max_workers: int = 20_000
    max_handshakes: int = 256
    max_unauthenticated: int = 512
    max_unauthenticated_per_address: int = 128
    listen_backlog: int = 4096
    schedule_to_start_timeout: float | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    key_file: str | None = None
    key: str = ""
    ack_delay: float = 0.004

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Check every field.

        Raises:
            ConfigError: naming the first invalid field and what it must be.
        """
        self.check_link()
        if not self.host:
            raise self.error("host", "must not be empty", self.host)
        if not 0 <= self.port <= 65535:
            raise self.error("port", "must be 0..65535", self.port)
        self.check_counts(
            "max_inflight",
            "max_workers",
            "max_handshakes",
            "max_unauthenticated",
            "max_unauthenticated_per_address",
            "listen_backlog",
        )
        if self.max_inflight > MAX_INFLIGHT:  # sent in welcome, which a worker would refuse
            raise self.error(
                "max_inflight", f"must be ≤ {MAX_INFLIGHT} (what a worker accepts)", self.max_inflight
            )
        self.check_durations("heartbeat_interval", "max_clock_skew")
        delay, most = self.ack_delay, self.heartbeat_interval
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not 0 <= delay < most:
            raise self.error("ack_delay", f"must be ≥ 0 and < heartbeat_interval ({most})", delay)
        if self.schedule_to_start_timeout is not None:
            self.check_durations("schedule_to_start_timeout")
        rate = self.heartbeat_rate
        if isinstance(rate, bool) or not isinstance(rate, int | float) or not 0 <= rate < math.inf:
            raise self.error("heartbeat_rate", "must be a finite number ≥ 0 (0: a fixed interval)", rate)
        if not (is_duration(self.heartbeat_timeout) and self.heartbeat_timeout > self.heartbeat_interval):
            raise self.error(
                "heartbeat_timeout",
                f"must be > heartbeat_interval ({self.heartbeat_interval})",
                self.heartbeat_timeout,
            )
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise self.error(
                "tls_cert_file", "set both tls_cert_file and tls_key_file (or neither)", self.tls_cert_file
            )
        if self.key and self.key_file:
            raise self.error("key", "set only one of key and key_file", "both")
        for worker_id, key in self.authorized_keys.items():
            problem = worker_id_problem(worker_id)
            if problem:
                raise self.error("authorized_keys", f"worker id {worker_id!r} {problem}", key)
            try:
                parse_authorized_keys(f"{worker_id} {key}")
            except ValueError as exc:
                raise self.error("authorized_keys", f"entry {worker_id!r}: {exc}", key) from None

    def tls_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (``wss://``), or None for plain ``ws://``.

        Raises:
            ConfigError: the certificate or key cannot be loaded.
        """
        if not self.tls_cert_file or not self.tls_key_file:
            return None
        for name, file in (("tls_cert_file", self.tls_cert_file), ("tls_key_file", self.tls_key_file)):
            if not Path(file).is_file():  # a FIFO would block the loader forever, a device feed it
                raise self.error(name, "must be a regular file", file)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise self.error(
                "tls_cert_file", f"cannot load certificate/key ({exc})", self.tls_cert_file
            ) from None
        return context

    def load_key(self) -> Ed25519PrivateKey:
        """The facilitator's own private key, from ``key`` or ``key_file``.

        Raises:
            ConfigError: neither is set, the file cannot be read, or it holds no 64-hex-char key.
        """
        field, text = "key", self.key
        if not self.key:
            field = "key_file"
            if not self.key_file:
                raise self.error(
                    field,
                    "required: the facilitator's own key (create one with `jobrelay keygen "
                    "--facilitator --key-file PATH`; workers pin the public key it prints)",
                    self.key_file,
                )
            try:
                # Like a worker's key: a regular file, small, readable by its owner only.
                raw = read_small_file(self.key_file, limit=KEY_FILE_LIMIT, private=True)
                text = raw.decode("utf-8")
            except (FileRefused, UnicodeError) as exc:
                raise self.error(field, f"cannot be read ({exc})", self.key_file) from None
        try:
            return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text.strip()))
        except ValueError:
            raise self.error(field, "expected an Ed25519 private key as 64 hex characters", "…") from None

    def load_authorized_keys(self) -> dict[str, str]:
        """The authorized keys: ``authorized_keys`` plus those of ``authorized_keys_file``.

        Raises:
            ConfigError: the file cannot be read (or is not a regular file, is larger than
                AUTHORIZED_KEYS_LIMIT, or is writable by group or others) or parsed, or lists a
                worker with another key.
        """
        keys = {worker_id: key.lower() for worker_id, key in self.authorized_keys.items()}
        if self.authorized_keys_file is None:
            return keys
        path = Path(self.authorized_keys_file)
        try:
            text = read_small_file(str(path), limit=AUTHORIZED_KEYS_LIMIT, trusted=True).decode("utf-8")
        except (FileRefused, UnicodeError) as exc:
            raise self.error("authorized_keys_file", f"cannot be read ({exc})", str(path)) from None
        try:
            from_file = parse_authorized_keys(text)
        except ValueError as exc:
            raise self.error("authorized_keys_file", f"{path}: {exc}", str(path)) from None
        for worker_id, key in from_file.items():
            if keys.get(worker_id, key) != key:
                raise self.error("authorized_keys_file", f"lists {worker_id!r} with another key", str(path))
            keys[worker_id] = key
        return keys

    def heartbeat_scale(self, connections: int) -> float:
        """How much longer than ``heartbeat_interval`` (and ``heartbeat_timeout``) a session
        opened with ``connections`` held gets: 1 up to ``heartbeat_rate × heartbeat_interval``
        connections, then in proportion, rounded up to a quarter (few distinct configs)."""
        if not self.heartbeat_rate:
            return 1.0
        scale = math.ceil(connections / (self.heartbeat_rate * self.heartbeat_interval) * 4) / 4
        # Never beyond _LONGEST_HEARTBEAT: a dead worker must not go unnoticed for many minutes,
        # whatever the budget (a tiny heartbeat_rate would otherwise ask for hours).
        return max(1.0, min(scale, _LONGEST_HEARTBEAT / self.heartbeat_interval))

    def session_config(self, scale: float = 1.0) -> SessionConfig:
        """The per-connection protocol limits derived from this config; heartbeats ``scale``
        times slower (``heartbeat_scale``)."""
        return SessionConfig(
            max_inflight=self.max_inflight,
            max_frame_bytes=self.max_frame_bytes,
            max_batch=self.max_batch,
            heartbeat_interval=self.heartbeat_interval * scale,
            heartbeat_timeout=self.heartbeat_timeout * scale,
            handshake_timeout=self.handshake_timeout,
            max_clock_skew=self.max_clock_skew,
            formats=self.formats,
            takes_releases=True,  # store_ops.release_jobs queues them again
            ack_delay=self.ack_delay,
        )


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
