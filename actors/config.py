# The worker's typed configuration. Invariant: a WorkerConfig that passed check() has every
# value in range, a readable key and a ws:// or wss:// URL; errors name the field.
from __future__ import annotations

import math
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlparse

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.common.files import FileRefused, read_small_file
from jobrelay.protocol.auth import check_public_key, public_key_hex, worker_id_problem
from jobrelay.protocol.breaker import BreakerConfig
from jobrelay.protocol.config import LinkConfig
from jobrelay.protocol.errors import ConfigError
from jobrelay.protocol.session import SessionConfig

__all__ = ["KEY_FILE_LIMIT", "WorkerConfig", "generate_key", "load_key", "public_key_of"]

KEY_FILE_LIMIT = 4096
"""The largest key file read: a key is 64 hex characters, so anything larger is not one."""


class WorkerConfig(LinkConfig, kw_only=True, frozen=True):
    """Everything a worker needs. Only ``url``, ``worker_id``, a key and ``db_path`` are required.

    Attributes:
        url: the facilitator, ``ws://host:port`` or ``wss://host:port``.
        worker_id: this worker's id, as listed in the facilitator's authorized keys.
        key: Ed25519 private key as 64 hex characters (or use ``key_file``).
        key_file: a file holding that hex key (written by ``jobrelay keygen``).
        facilitator_key: the facilitator's Ed25519 public key (64 hex characters, printed by
            ``jobrelay keygen --facilitator``). Required: the worker signs only a challenge made
            by this key, so an endpoint it dials cannot relay another facilitator's handshake.
            There is no trust-on-first-use.
        db_path: the worker's SQLite file (outbox, inbox, job ledger).
        max_outbox_rows / max_outbox_bytes: outbox bounds; a full outbox blocks publishers.
        publish_timeout: how long a publish waits for room before failing with OutboxFull.
        max_concurrent_jobs: handlers running at once; further jobs wait in order.
        prefetch: job requests the facilitator may send beyond ``max_concurrent_jobs`` (they wait
            here, ready to start the moment a slot frees). The worker grants the facilitator
            credit for ``max_concurrent_jobs + prefetch`` unfinished jobs; more stay queued at
            the facilitator, where any other worker can take them.
        backoff_base / backoff_cap: full-jitter reconnect delays, seconds.
        max_attempts: consecutive failed connection attempts before giving up (None: forever).
        breaker_failure_threshold: consecutive failed connection attempts that open the
            connection's circuit breaker; while it is open no attempt is made.
        breaker_recovery_timeout: seconds the open breaker waits before a half-open probe; a probe
            then goes within one more such period (full jitter), so a worker is back within about
            two of them after the facilitator returns.
        breaker_success_threshold: sessions opened in half-open state that close the breaker.
        local_mode_after: seconds without a session before the worker enters local mode (at once
            when the breaker opens): it keeps running its jobs and keeps their statuses in the
            outbox; /healthz answers healthy with ``mode: local``.
        max_calls_in_flight: calls (``Worker.call``) outstanding at once; more wait or fail with
            CallThrottled (the caller's choice).
        call_rate: calls started a second at most (a token bucket; None: no limit).
        call_burst: calls the bucket lets start at once after a quiet spell.
        send_rate: data messages sent a second at most (a token bucket; None: no limit). Held
            messages wait in order; they are durable in the outbox, so a publisher never waits
            for this limit, only for outbox room.
        send_burst: data messages the bucket lets through at once after a quiet spell.
        retry_auth_failures: keep reconnecting after the facilitator refused our id or key (or we
            refused its key). Off by default: the worker then gives up at once (``Worker.gave_up``
            says why; `jobrelay worker` exits 3), since only a fixed key file ends the refusals.
        connect_timeout: TCP + WebSocket handshake timeout, seconds.
        ca_file: CA bundle for ``wss://`` (default: the system store).

    The limits shared with the facilitator (``durability``, ``max_frame_bytes``, ``max_batch``,
    ``handshake_timeout``, ``formats``, ``stop_timeout``) are documented on LinkConfig.
    """

    url: str
    worker_id: str
    key: str = ""
    key_file: str = ""
    facilitator_key: str = ""
    max_outbox_rows: int = 1_000_000
    max_outbox_bytes: int = 1 << 30
    publish_timeout: float = 30.0
    max_concurrent_jobs: int = 4
    prefetch: int = 1
    # Seconds a stop lets running jobs finish before cancelling them (0: cancel at once). Queued
    # jobs are handed back to the facilitator at the start of the stop either way.
    drain_timeout: float = 0.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    max_attempts: int | None = None
    breaker_failure_threshold: int = 5
    breaker_recovery_timeout: float = 2.0
    breaker_success_threshold: int = 1
    local_mode_after: float = 30.0
    max_calls_in_flight: int = 1000
    call_rate: float | None = None
    call_burst: int = 100
    send_rate: float | None = None
    send_burst: int = 1000
    retry_auth_failures: bool = False
    connect_timeout: float = 10.0
    ca_file: str = ""

    def check(self) -> None:
        """Validate every field.

        Raises:
            ConfigError: naming the first invalid field and what it should be.
        """
        parsed = urlparse(self.url)
        if parsed.scheme not in ("ws", "wss") or not parsed.hostname:
            self.bad("url", "expected ws://host:port or wss://host:port", self.url)
        try:
            port = parsed.port
        except ValueError:
            self.bad("url", "bad port", self.url)
        if port is None:
            # websocket-client would dial 80 (or 443): never where a facilitator listens by default.
            self.bad(
                "url",
                "no port; expected ws://host:port or wss://host:port (the facilitator's port)",
                self.url,
            )
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
            self.bad("url", "expected ws://host:port or wss://host:port, without a path", self.url)
        problem = worker_id_problem(self.worker_id)
        if problem:
            self.bad("worker_id", problem, self.worker_id)
        self.check_link()
        if bool(self.key) == bool(self.key_file):
            self.bad("key", "set exactly one of key and key_file", "both" if self.key else "neither")
        self.check_counts("max_outbox_rows", "max_outbox_bytes", "max_concurrent_jobs")
        if (
            not isinstance(self.prefetch, int)
            or isinstance(self.prefetch, bool)
            or not 0 <= self.prefetch <= 1000
        ):
            self.bad("prefetch", "expected an integer from 0 to 1000", self.prefetch)
        self.check_durations("publish_timeout", "backoff_base", "backoff_cap", "connect_timeout")
        if not (isinstance(self.drain_timeout, int | float) and 0 <= self.drain_timeout < math.inf):
            self.bad("drain_timeout", "must be a finite number of seconds ≥ 0", self.drain_timeout)
        if self.backoff_cap < self.backoff_base:
            self.bad("backoff_cap", f"must be ≥ backoff_base ({self.backoff_base})", self.backoff_cap)
        if self.max_attempts is not None:
            self.check_counts("max_attempts")
        self.check_counts("breaker_failure_threshold", "breaker_success_threshold")
        self.check_durations("breaker_recovery_timeout", "local_mode_after")
        self.check_counts("send_burst", "max_calls_in_flight", "call_burst")
        if self.call_rate is not None and not (
            isinstance(self.call_rate, int | float) and 0 < self.call_rate < math.inf
        ):
            self.bad(
                "call_rate", "must be a positive, finite number of calls a second, or unset", self.call_rate
            )
        if self.send_rate is not None and not (
            isinstance(self.send_rate, int | float) and 0 < self.send_rate < math.inf
        ):
            self.bad(
                "send_rate",
                "must be a positive, finite number of messages a second, or unset",
                self.send_rate,
            )
        if self.ca_file and not Path(self.ca_file).is_file():
            self.bad("ca_file", "no such file", self.ca_file)
        if not self.facilitator_key:
            self.bad(
                "facilitator_key",
                "required: pin the facilitator's public key (`jobrelay keygen --facilitator` prints "
                "it; no key is trusted on first use)",
                "",
            )
        if not check_public_key(self.facilitator_key.lower()):
            self.bad(
                "facilitator_key", "expected an Ed25519 public key as 64 hex characters", self.facilitator_key
            )
        load_key(self)

    def breaker_config(self) -> BreakerConfig:
        """The connection's circuit breaker (one connection attempt at a time: one trial)."""
        return BreakerConfig(
            failure_threshold=self.breaker_failure_threshold,
            recovery_timeout=self.breaker_recovery_timeout,
            success_threshold=self.breaker_success_threshold,
        )

    def session_config(self) -> SessionConfig:
        return SessionConfig(
            max_frame_bytes=self.max_frame_bytes,
            max_batch=self.max_batch,
            handshake_timeout=self.handshake_timeout,
            formats=self.formats,
        )


def _bad(field: str, why: str) -> NoReturn:
    raise ConfigError(f"WorkerConfig.{field}: {why}")


def load_key(config: WorkerConfig) -> Ed25519PrivateKey:
    """The worker's private key from ``key`` or ``key_file``.

    Raises:
        ConfigError: the file is missing or unreadable, not a regular file, larger than
            KEY_FILE_LIMIT, readable or writable by group or others, or the key is not 32 bytes
            of hex.
    """
    field, text = "key", config.key
    if config.key_file:
        field = "key_file"
        try:
            raw = read_small_file(config.key_file, limit=KEY_FILE_LIMIT, private=True)
        except FileRefused as exc:
            _bad(field, f"cannot read {config.key_file}: {exc}")
        text = raw.decode("utf-8", errors="replace")
    try:
        return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(text.strip()))
    except ValueError:
        _bad(field, "expected an Ed25519 private key as 64 hex characters")


def generate_key() -> str:
    """A new Ed25519 private key as 64 hex characters."""
    return Ed25519PrivateKey.generate().private_bytes_raw().hex()


def public_key_of(key: str) -> str:
    """The public key (hex, as the facilitator's authorized keys list it) of a private key hex.

    Raises:
        ValueError: ``key`` is not 64 hex characters.
    """
    return public_key_hex(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key)))
