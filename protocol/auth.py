# Ed25519 mutual authentication, pure: keys, nonces and time come in as arguments, nothing is read
# from disk or a clock here. Both signatures of a handshake cover one Transcript (protocol version,
# both nonces, the facilitator's public key, the codec, the worker id) under different contexts, so
# neither can be reused for the other or for another facilitator or connection.
# Invariants: verify_challenge() returns only if the challenge was signed by the pinned facilitator
# key for this worker's nonce, else raises WRONG_KEY or BAD_SIGNATURE; verify_auth() either returns
# the verified worker id or raises RemoteProtocolError with one of UNKNOWN_KEY, WRONG_KEY,
# BAD_SIGNATURE, STALE_TIMESTAMP, REPLAYED_NONCE; it never accepts a nonce twice within the
# registry's memory.
from __future__ import annotations

import re
import unicodedata
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from jobrelay.protocol.errors import ErrorCode, RemoteProtocolError
from jobrelay.protocol.messages import Auth, Challenge

__all__ = [
    "AUTH_CONTEXT",
    "CHALLENGE_CONTEXT",
    "MAX_WORKER_ID",
    "NONCE_HEX_CHARS",
    "NonceRegistry",
    "Transcript",
    "check_nonce",
    "check_public_key",
    "facilitator_signature",
    "parse_authorized_keys",
    "public_key_hex",
    "verify_auth",
    "verify_challenge",
    "worker_id_problem",
    "worker_signature",
]

# Domain separation: one context per signer, so a facilitator's signature can never pass as a
# worker's (or the reverse), and neither is valid for anything outside jobrelay v2.
CHALLENGE_CONTEXT = b"jobrelay-challenge-v2"
AUTH_CONTEXT = b"jobrelay-auth-v2"
NONCE_HEX_CHARS = 64
"""Both nonces are 32 random bytes as lowercase hex: shorter ones would make a replay guessable."""

_NONCE = re.compile(r"[0-9a-f]{64}")
_KEY = re.compile(r"[0-9a-f]{64}")


def check_nonce(nonce: str, field: str) -> None:
    """Refuse a nonce that is not 32 bytes of lowercase hex.

    Raises:
        RemoteProtocolError: INVALID_FIELD naming ``field``.
    """
    if _NONCE.fullmatch(nonce) is None:
        raise RemoteProtocolError(
            ErrorCode.INVALID_FIELD, f"{field} must be {NONCE_HEX_CHARS} lowercase hex characters"
        )


def check_public_key(key: str) -> bool:
    """Whether ``key`` is a raw 32-byte Ed25519 public key in lowercase hex."""
    if _KEY.fullmatch(key) is None:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(key))
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Transcript:
    """What both signatures of one handshake bind (protocol v2, docs/PROTOCOL.md §4.3).

    Every field but ``worker_id`` is hex, decimal or a codec name, none containing NUL, and
    ``worker_id`` comes last: the NUL-joined bytes therefore parse one way only.
    """

    version: int
    worker_nonce: str
    facilitator_nonce: str
    facilitator_key: str
    codec: str
    worker_id: str

    def _fields(self) -> tuple[bytes, ...]:
        return (
            str(self.version).encode(),
            self.worker_nonce.encode(),
            self.facilitator_nonce.encode(),
            self.facilitator_key.encode(),
            self.codec.encode(),
        )

    def challenge_payload(self) -> bytes:
        """The exact bytes the facilitator signs in ``challenge``."""
        return b"\x00".join((CHALLENGE_CONTEXT, *self._fields(), self.worker_id.encode()))

    def auth_payload(self, worker_key: str, timestamp_ms: int) -> bytes:
        """The exact bytes the worker signs in ``auth``: the transcript plus its own key and clock."""
        return b"\x00".join(
            (
                AUTH_CONTEXT,
                *self._fields(),
                worker_key.encode(),
                str(timestamp_ms).encode(),
                self.worker_id.encode(),
            )
        )


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key as lowercase hex (the form used on the wire and in key files)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes_raw().hex()


def facilitator_signature(key: Ed25519PrivateKey, transcript: Transcript) -> str:
    """The facilitator's signature of ``transcript`` (hex), sent in ``challenge``."""
    return key.sign(transcript.challenge_payload()).hex()


def worker_signature(key: Ed25519PrivateKey, transcript: Transcript, timestamp_ms: int) -> str:
    """The worker's signature of ``transcript``, its own public key and ``timestamp_ms`` (hex)."""
    return key.sign(transcript.auth_payload(public_key_hex(key), timestamp_ms)).hex()


def _verifies(public_key: str, signature: str, payload: bytes) -> bool:
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key)).verify(
            bytes.fromhex(signature), payload
        )
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_challenge(challenge: Challenge, transcript: Transcript, *, pinned_key: str) -> None:
    """The worker's check of a ``challenge``: made by the facilitator it pinned, for this handshake.

    Raises:
        RemoteProtocolError: WRONG_KEY when the challenge names another key than ``pinned_key``
            (a relay, or a facilitator whose key changed), BAD_SIGNATURE when the signature does
            not cover this transcript under that key.
    """
    if challenge.public_key != pinned_key.lower():
        raise RemoteProtocolError(
            ErrorCode.WRONG_KEY,
            f"facilitator presented key {challenge.public_key[:16] or '(none)'}…, "
            f"but the pinned facilitator_key is {pinned_key[:16]}…",
        )
    if not _verifies(pinned_key, challenge.signature, transcript.challenge_payload()):
        raise RemoteProtocolError(
            ErrorCode.BAD_SIGNATURE, "facilitator's challenge signature does not verify"
        )


class NonceRegistry:
    """Remembers nonces that were used for a successful or failed auth, for ``ttl`` seconds.

    A facilitator shares one registry between all sessions so a captured ``auth`` frame cannot be
    replayed on another connection. Entries older than ``ttl`` are forgotten: by then the
    timestamp check refuses the frame anyway, so ``ttl`` must be ≥ twice the allowed clock skew.
    """

    def __init__(self, ttl: float = 600.0, max_entries: int = 100_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def use(self, nonce: str, now: float) -> bool:
        """Record ``nonce``; False when it was already used within ``ttl``."""
        while self._seen:
            oldest, at = next(iter(self._seen.items()))
            if now - at <= self.ttl and len(self._seen) < self.max_entries:
                break
            del self._seen[oldest]
        if nonce in self._seen:
            return False
        self._seen[nonce] = now
        return True


MAX_WORKER_ID = 256
"""The longest worker id, in characters: the wire's ``Id``."""


def worker_id_problem(worker_id: str) -> str:
    """Why ``worker_id`` cannot be a worker's id, or "" when it can.

    The rule of the authorized-keys file (PROTOCOL.md §4.3): 1..256 characters (the wire's
    ``Id``), no whitespace or ``#`` (they split a line and start a comment) and no control
    characters (which would let an id forge lines in a human log). ``jobrelay keygen``, the
    worker's config and the file's parser all apply this one rule, so a key that keygen makes
    is always one the facilitator can load.
    """
    if not 1 <= len(worker_id) <= MAX_WORKER_ID:
        return f"must be 1-{MAX_WORKER_ID} characters, got {len(worker_id)}"
    for char in worker_id:
        if char.isspace() or char == "#" or unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            return f"must not contain whitespace, '#' or control characters, found {char!r}"
    return ""


def parse_authorized_keys(text: str) -> dict[str, str]:
    """Parse an authorized-keys file: one ``<worker_id> <public key hex>`` per line, ``#`` comments.

    Lines are split at ``\\n`` only (``\\r\\n`` too): a control character inside a line
    is that line's error, not a hidden line break.

    Raises:
        ValueError: a line is malformed, its worker id breaks ``worker_id_problem``'s rule or
            appears twice (the message names the line number and what is wrong in it).
    """
    keys: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.removesuffix("\r").split("#", 1)[0].strip(" \t")
        if not line:
            continue
        parts = [part for part in line.replace("\t", " ").split(" ") if part]
        if len(parts) != 2:
            raise ValueError(
                f"line {number}: expected '<worker_id> <public_key_hex>', got {len(parts)} fields: {raw!r}"
            )
        worker_id, key = parts
        problem = worker_id_problem(worker_id)
        if problem:
            raise ValueError(f"line {number}: worker id {worker_id!r} {problem}")
        try:
            Ed25519PublicKey.from_public_bytes(bytes.fromhex(key))
        except ValueError:
            raise ValueError(f"line {number}: {key!r} is not a 32-byte Ed25519 key in hex") from None
        if worker_id in keys:
            raise ValueError(f"line {number}: worker id {worker_id!r} listed twice")
        keys[worker_id] = key.lower()
    return keys


def verify_auth(
    auth: Auth,
    *,
    transcript: Transcript,
    authorized: Mapping[str, str],
    nonces: NonceRegistry,
    now: float,
    max_skew: float,
) -> str:
    """Check an ``auth`` frame against the transcript of this session's hello and challenge.

    Returns:
        The authenticated worker id.

    Raises:
        RemoteProtocolError: with the code of the first failed check.
    """
    expected_key = authorized.get(auth.worker_id)
    if expected_key is None:
        raise RemoteProtocolError(ErrorCode.UNKNOWN_KEY, f"worker {auth.worker_id!r} is not authorized")
    if auth.public_key.lower() != expected_key:
        raise RemoteProtocolError(
            ErrorCode.WRONG_KEY, f"worker {auth.worker_id!r} presented a key that is not its own"
        )
    nonce = transcript.facilitator_nonce
    if auth.nonce != nonce:
        raise RemoteProtocolError(ErrorCode.REPLAYED_NONCE, "auth answers a nonce this session did not issue")
    # The transcript names our own key and this connection's nonces: a signature the worker made
    # for another facilitator (a relay's) or another connection does not verify here.
    if not _verifies(expected_key, auth.signature, transcript.auth_payload(expected_key, auth.timestamp_ms)):
        raise RemoteProtocolError(ErrorCode.BAD_SIGNATURE, "signature does not verify")
    skew = abs(now - auth.timestamp_ms / 1000.0)
    if skew > max_skew:
        raise RemoteProtocolError(
            ErrorCode.STALE_TIMESTAMP, f"timestamp is {skew:.1f}s from ours (limit {max_skew:.0f}s)"
        )
    if not nonces.use(nonce, now):
        raise RemoteProtocolError(ErrorCode.REPLAYED_NONCE, "nonce was already used")
    return auth.worker_id
