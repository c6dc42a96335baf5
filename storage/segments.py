# Outbox segments: the messages of one append, stored as one row (their kinds, their sizes and
# their payloads end to end), so a burst costs one b-tree insert and one delete instead of one
# per message, and a replay reads a few large rows instead of a million small ones.
# Invariants: a segment holds MAX_MESSAGES messages or fewer, with contiguous seqs first…last;
# ``sizes`` is one little-endian uint32 per message and sums to len(payloads); ``kinds`` is one
# kind shared by every message, or one per message joined by "\n" (a kind never holds "\n").
from __future__ import annotations

import sys
from array import array
from collections.abc import Iterator, Sequence
from typing import Final, NamedTuple

__all__ = [
    "MAX_BYTES",
    "MAX_MESSAGES",
    "CorruptSegment",
    "OutboxRow",
    "Packed",
    "pack",
    "payload_bytes",
    "unpack",
]

# Most messages in one segment: bounds what one pending() step holds in memory.
MAX_MESSAGES: Final = 1000
# A new segment starts once this many payload bytes are in one (a larger message is alone).
MAX_BYTES: Final = 1 << 20

_LITTLE: Final = sys.byteorder == "little"


class OutboxRow(NamedTuple):
    """One unacknowledged message."""

    seq: int
    kind: str
    payload: bytes
    created_at: float


class Packed(NamedTuple):
    """One segment as stored: ``messages`` messages packed into three columns."""

    messages: int
    kinds: str
    sizes: bytes
    payloads: bytes


def _sizes_blob(sizes: Sequence[int]) -> bytes:
    packed = array("I", sizes)
    if not _LITTLE:
        packed.byteswap()
    return packed.tobytes()


def _sizes(blob: bytes) -> array[int]:
    sizes = array("I")
    sizes.frombytes(blob)
    if not _LITTLE:
        sizes.byteswap()
    return sizes


def pack(items: Sequence[tuple[str, bytes]]) -> Iterator[Packed]:
    """``(kind, payload)`` items in order, as segments of MAX_MESSAGES / MAX_BYTES at most.

    Raises:
        ValueError: A kind is empty or holds a newline.
    """
    start = 0
    n = len(items)
    while start < n:
        end, nbytes = start, 0
        while end < n and end - start < MAX_MESSAGES and (end == start or nbytes < MAX_BYTES):
            nbytes += len(items[end][1])
            end += 1
        chunk = items[start:end]
        kinds = [k for k, _ in chunk]
        first = kinds[0]
        if not first or any("\n" in k or not k for k in set(kinds)):
            raise ValueError(f"message kinds must be non-empty and hold no newline: {sorted(set(kinds))!r}")
        joined = first if kinds.count(first) == len(kinds) else "\n".join(kinds)
        payloads = [p for _, p in chunk]
        yield Packed(len(chunk), joined, _sizes_blob([len(p) for p in payloads]), b"".join(payloads))
        start = end


class CorruptSegment(ValueError):
    """A stored segment does not add up (its sizes, kinds, payloads or seqs disagree)."""


def unpack(
    first: int, last: int, kinds: str, sizes: bytes, payloads: bytes, created_at: float, after: int = 0
) -> Iterator[OutboxRow]:
    """The segment's messages with seq > ``after``, in order.

    Raises:
        CorruptSegment: The columns disagree (checked before the first message is yielded).
    """
    lengths = _sizes(sizes) if len(sizes) % 4 == 0 else None
    names = kinds.split("\n") if "\n" in kinds else None
    count = last - first + 1
    if (
        lengths is None
        or len(lengths) != count
        or sum(lengths) != len(payloads)
        or (names is not None and len(names) != count)
    ):
        raise CorruptSegment(f"stored segment of seqs {first}…{last} is corrupt")
    skip = max(0, after - first + 1)
    offset = sum(lengths[:skip]) if skip else 0
    for i in range(skip, len(lengths)):
        end = offset + lengths[i]
        yield OutboxRow(first + i, kinds if names is None else names[i], payloads[offset:end], created_at)
        offset = end


def payload_bytes(first: int, sizes: bytes, lo: int, hi: int) -> int:
    """Payload bytes of the segment's messages with ``lo < seq <= hi``."""
    lengths = _sizes(sizes)
    start = max(0, lo - first + 1)
    stop = min(len(lengths), hi - first + 1)
    return sum(lengths[start:stop]) if stop > start else 0
