"""The handshake parts of the fuzzers, in one place so a handshake change (e.g. a facilitator key
the worker pins) is adapted here only.

- ``client_handshake``: the hostile client authenticates as a real worker (hello, signed auth) so
  its garbage reaches the states past authentication.
- ``server_handshake``: the hostile server answers a real worker's hello with a challenge signed
  with the facilitator key the worker pins (protocol v2: the worker checks it) and its auth with
  a welcome, without verifying the worker's signature (the worker is the target, not us).
Every receive is bounded by ``timeout``; a refusal raises ``HandshakeRefused``.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.server import ServerConnection

from jobrelay.protocol.auth import Transcript, facilitator_signature, public_key_hex, worker_signature
from jobrelay.protocol.messages import PROTOCOL_VERSION, Auth, Challenge, Hello, Welcome

__all__ = ["Accepted", "HandshakeRefused", "ServerStream", "Welcomed", "client_handshake", "server_handshake"]


class HandshakeRefused(Exception):
    """The peer answered the handshake with something else than the next handshake frame."""


@dataclass(frozen=True)
class Welcomed:
    """What the hostile client learnt from the facilitator's welcome."""

    codec: str
    ack: int  # the facilitator's high-water mark of our stream
    max_frame_bytes: int


async def _recv(ws: ClientConnection | ServerConnection, want: str, timeout: float) -> dict[str, Any]:
    raw = await asyncio.wait_for(ws.recv(decode=False), timeout)
    doc = msgspec.json.decode(raw)
    if not isinstance(doc, dict) or doc.get("type") != want:
        raise HandshakeRefused(f"expected {want}, got {bytes(raw)[:200]!r}")
    return doc


async def client_handshake(
    ws: ClientConnection,
    *,
    worker_id: str,
    key: Ed25519PrivateKey,
    epoch: str,
    out_acked: int,
    codecs: tuple[str, ...],
    timeout: float,
) -> Welcomed:
    """Authenticate as ``worker_id``: our stream is ``epoch``, acknowledged up to ``out_acked``.

    Raises:
        HandshakeRefused: an error frame or an unexpected frame instead of challenge/welcome.
        TimeoutError, websockets.ConnectionClosed: the facilitator went silent or away.
    """
    nonce = secrets.token_hex(32)
    hello = Hello(version=PROTOCOL_VERSION, worker_id=worker_id, codecs=codecs, nonce=nonce)
    await ws.send(msgspec.json.encode(hello), text=True)
    challenge = await _recv(ws, "challenge", timeout)
    stamp = int(time.time() * 1000)
    transcript = Transcript(
        version=PROTOCOL_VERSION,
        worker_nonce=nonce,
        facilitator_nonce=str(challenge["nonce"]),
        facilitator_key=str(challenge.get("public_key", "")),
        codec=str(challenge.get("codec", "json")),
        worker_id=worker_id,
    )  # the facilitator's signature is not checked: it is the target, not us
    auth = Auth(
        worker_id=worker_id,
        public_key=public_key_hex(key),
        nonce=challenge["nonce"],
        timestamp_ms=stamp,
        signature=worker_signature(key, transcript, stamp),
        out_epoch=epoch,
        out_acked=out_acked,
    )
    await ws.send(msgspec.json.encode(auth), text=True)
    welcome = await _recv(ws, "welcome", timeout)
    return Welcomed(
        codec=str(challenge.get("codec", "json")),
        ack=int(welcome["ack"]),
        max_frame_bytes=int(welcome.get("max_frame_bytes", 1_048_576)),
    )


@dataclass(frozen=True)
class Accepted:
    """What the hostile server learnt from the worker's auth."""

    auth: Auth
    hwm: int  # the worker's high-water mark of our stream: our next new seq is hwm + 1
    codec: str


@dataclass
class ServerStream:
    """The hostile server's stream to the worker, kept across connections like a real one."""

    epoch: str
    last_seq: int = 0  # the highest seq we ever sent (the worker may have stored any of them)


async def server_handshake(
    ws: ServerConnection,
    stream: ServerStream,
    *,
    key: Ed25519PrivateKey,
    timeout: float,
    max_frame_bytes: int,
) -> Accepted:
    """Answer the worker's hello and auth. The worker's stream resumes after ``auth.out_acked``
    (nothing it sent is acknowledged beyond what it already knew).

    Raises:
        HandshakeRefused, TimeoutError, websockets.ConnectionClosed.
    """
    hello = await _recv(ws, "hello", timeout)
    codec = "msgpack" if "msgpack" in hello.get("codecs", ()) and secrets.randbelow(4) == 0 else "json"
    nonce = secrets.token_hex(32)
    transcript = Transcript(
        version=PROTOCOL_VERSION,
        worker_nonce=str(hello.get("nonce", "")),
        facilitator_nonce=nonce,
        facilitator_key=public_key_hex(key),
        codec=codec,
        worker_id=str(hello.get("worker_id", "")),
    )
    challenge = Challenge(
        version=PROTOCOL_VERSION,
        nonce=nonce,
        codec=codec,
        public_key=public_key_hex(key),
        signature=facilitator_signature(key, transcript),
    )
    await ws.send(msgspec.json.encode(challenge), text=True)
    auth = msgspec.convert(await _recv(ws, "auth", timeout), Auth)
    # The worker's mark of our stream: what it stored if it knows our epoch; we claim nothing was
    # acknowledged, so the worker resumes from what it stored (never beyond what we sent).
    hwm = auth.in_hwm if auth.in_epoch == stream.epoch else 0
    welcome = Welcome(
        session_id=secrets.token_hex(4),
        ack=auth.out_acked,
        out_epoch=stream.epoch,
        out_acked=0,
        heartbeat_interval_ms=2_000,
        heartbeat_timeout_ms=20_000,
        max_frame_bytes=max_frame_bytes,
    )
    await ws.send(msgspec.json.encode(welcome), text=True)
    return Accepted(auth, hwm, codec)
