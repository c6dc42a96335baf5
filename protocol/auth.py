# Ed25519 challenge–response, pure: keys and time come in as arguments, nothing is read from
# disk or a clock here. Invariant: verify_auth() either returns the verified worker id or raises
# RemoteProtocolError with one of UNKNOWN_KEY, WRONG_KEY, BAD_SIGNATURE, STALE_TIMESTAMP,
# REPLAYED_NONCE; it never accepts a nonce twice within the registry's memory.
from __future__ import annotations

import unicodedata
from collections import OrderedDict
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from jobrelay.protocol.errors import ErrorCode, RemoteProtocolError
from jobrelay.protocol.messages import Auth

__all__ = [
    "AUTH_CONTEXT",
    "MAX_WORKER_ID",
    "NonceRegistry",
    "auth_payload",
    "parse_authorized_keys",
    "public_key_hex",
    "sign_challenge",
    "verify_auth",
    "worker_id_problem",
]

# Domain separation: a signature made for jobrelay auth can never be valid for anything else.
AUTH_CONTEXT = b"jobrelay-auth-v1"


def auth_payload(nonce: str, worker_id: str, timestamp_ms: int) -> bytes:
    """The exact bytes a worker signs: context, nonce, worker id and timestamp, NUL-separated."""
    return b"\x00".join((AUTH_CONTEXT, nonce.encode(), worker_id.encode(), str(timestamp_ms).encode()))


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The raw 32-byte public key as lowercase hex (the form used on the wire and in key files)."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes_raw().hex()


def sign_challenge(key: Ed25519PrivateKey, nonce: str, worker_id: str, timestamp_ms: int) -> str:
    """Sign a challenge; returns the signature as hex."""
    return key.sign(auth_payload(nonce, worker_id, timestamp_ms)).hex()


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
    nonce: str,
    authorized: Mapping[str, str],
    nonces: NonceRegistry,
    now: float,
    max_skew: float,
) -> str:
    """Check an ``auth`` frame against the challenge ``nonce`` this session issued.

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
    if auth.nonce != nonce:
        raise RemoteProtocolError(ErrorCode.REPLAYED_NONCE, "auth answers a nonce this session did not issue")
    try:
        Ed25519PublicKey.from_public_bytes(bytes.fromhex(expected_key)).verify(
            bytes.fromhex(auth.signature), auth_payload(nonce, auth.worker_id, auth.timestamp_ms)
        )
    except (InvalidSignature, ValueError):
        raise RemoteProtocolError(ErrorCode.BAD_SIGNATURE, "signature does not verify") from None
    skew = abs(now - auth.timestamp_ms / 1000.0)
    if skew > max_skew:
        raise RemoteProtocolError(
            ErrorCode.STALE_TIMESTAMP, f"timestamp is {skew:.1f}s from ours (limit {max_skew:.0f}s)"
        )
    if not nonces.use(nonce, now):
        raise RemoteProtocolError(ErrorCode.REPLAYED_NONCE, "nonce was already used")
    return auth.worker_id
