# The two halves of a sequenced stream inside one session: what we send (the one send window,
# the queue of data handed over beyond it, cumulative acks) and what we receive (dedup against
# the high-water mark, gap detection).
# Invariants: the sender never has more than `window` unacked seqs outstanding and sends seqs
# contiguously from the resume point; data handed over beyond the window waits in its queue, in
# order, until acks make room; the receiver passes each seq to the application at most once per
# session and never acknowledges a seq the application has not made durable.
from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jobrelay.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

__all__ = ["Receiver", "Sender", "StreamMarks", "resolve_resume"]


@dataclass(frozen=True, slots=True)
class StreamMarks:
    """Durable facts about the two streams of one worker–facilitator pair, as stored locally.

    Attributes:
        out_epoch: epoch of the stream we send.
        out_acked: highest seq of our stream the peer acknowledged.
        out_last_seq: highest seq assigned in our stream.
        in_epoch: epoch of the peer's stream we accepted from ("" when none yet).
        in_hwm: highest seq of the peer's stream we accepted durably.
    """

    out_epoch: str
    out_acked: int = 0
    out_last_seq: int = 0
    in_epoch: str = ""
    in_hwm: int = 0


def resolve_resume(local_epoch: str, local_hwm: int, peer_epoch: str, peer_acked: int) -> tuple[int, bool]:
    """Where a receiver resumes a peer's stream: ``(high-water mark, is_new_stream)``.

    Both ends run this same function on the same inputs so they agree without another round
    trip. A different epoch means the peer's store is new (deleted or replaced): its stream starts
    over after what the peer says was acknowledged, and its seq 1 is never mistaken for an old
    seq 1. With the same epoch the mark never goes below what the peer knows was acknowledged
    (our own store may have been restored from an older backup).
    """
    if local_epoch != peer_epoch:
        return peer_acked, True
    return max(local_hwm, peer_acked), False


class Sender:
    """Our outgoing stream within one session: the one send window.

    ``sent`` counts what went on the wire, ``acked`` what the peer acknowledged; the owner may
    hand over more than the window allows (``queue``), up to ``handover_limit``: the surplus is
    sent the moment an ack opens the window, without waiting for the owner.
    """

    __slots__ = ("_queued", "acked", "last_seq", "sent", "window")

    def __init__(self, resume_after: int, last_seq: int, window: int) -> None:
        self.acked = resume_after
        self.sent = resume_after
        self.last_seq = last_seq
        self.window = window
        self._queued: deque[tuple[int, Any]] = deque()

    @property
    def in_flight(self) -> int:
        return self.sent - self.acked

    @property
    def capacity(self) -> int:
        """How many more data messages may be sent before an ack arrives."""
        return self.window - self.in_flight

    @property
    def handed(self) -> int:
        """The highest seq handed over so far (sent, or queued to be sent)."""
        return self._queued[-1][0] if self._queued else self.sent

    @property
    def queued(self) -> int:
        """Messages handed over that wait for room in the window."""
        return len(self._queued)

    def handover_limit(self, windows: int) -> int:
        """The highest seq the owner should hand over now to keep ``windows`` windows ready."""
        return self.acked + self.window * windows

    def note_appended(self, last_seq: int) -> None:
        """Storage assigned seqs up to ``last_seq`` (they may now be sent)."""
        self.last_seq = max(self.last_seq, last_seq)

    def queue(self, items: Sequence[tuple[int, Any]]) -> None:
        """Hand over ``items`` (``(seq, body)``, contiguous after ``handed``) to be sent in order.

        Raises:
            LocalProtocolError: SEQ_GAP when the seqs do not continue ``handed`` one by one
                (nothing is queued then).
        """
        expected = self.handed + 1
        for offset, (seq, _) in enumerate(items):
            if seq != expected + offset:
                raise LocalProtocolError(
                    ErrorCode.SEQ_GAP, f"next seq to hand over is {expected + offset}, not {seq}"
                )
        self._queued.extend(items)

    def sendable(self) -> list[tuple[int, Any]]:
        """Take from the queue what the window has room for now (oldest first)."""
        count = min(self.capacity, len(self._queued))
        return [self._queued.popleft() for _ in range(count)]

    def take(self, first_seq: int, count: int) -> None:
        """Reserve ``count`` seqs starting at ``first_seq`` for sending.

        Raises:
            LocalProtocolError: not the next seq, or the window would overflow.
        """
        if first_seq != self.sent + 1:
            raise LocalProtocolError(
                ErrorCode.SEQ_GAP, f"next seq to send is {self.sent + 1}, not {first_seq}"
            )
        if count > self.capacity:
            raise LocalProtocolError(
                ErrorCode.WINDOW_EXCEEDED, f"{count} messages > window capacity {self.capacity}"
            )
        self.sent += count
        self.last_seq = max(self.last_seq, self.sent)

    def on_ack(self, upto: int) -> bool:
        """Apply a cumulative ack; True when it advanced.

        Raises:
            RemoteProtocolError: the peer acknowledged a seq we never sent.
        """
        if upto > self.sent:
            raise RemoteProtocolError(ErrorCode.ACK_OUT_OF_RANGE, f"ack {upto} > last sent seq {self.sent}")
        if upto <= self.acked:
            return False
        self.acked = upto
        return True


class Receiver:
    """The peer's stream within one session."""

    __slots__ = ("acked", "due_at", "seen", "sent", "sent_at", "window")

    def __init__(self, hwm: int, window: int) -> None:
        self.seen = hwm  # highest seq handed to the application in this session
        self.acked = hwm  # highest seq the application made durable (an ack may still wait)
        self.sent = hwm  # highest seq we told the peer is durable
        self.sent_at = -math.inf  # when it went (-inf: none yet, or the owner keeps no clock)
        self.due_at: float | None = None  # when a held ack goes out
        self.window = window

    def classify(self, seq: int) -> bool:
        """True if ``seq`` is new and next in order, False if it is a duplicate.

        Raises:
            RemoteProtocolError: SEQ_GAP (a seq was skipped) or WINDOW_EXCEEDED.
        """
        if seq <= self.seen:
            return False
        if seq != self.seen + 1:
            raise RemoteProtocolError(ErrorCode.SEQ_GAP, f"expected seq {self.seen + 1}, got {seq}")
        if seq - self.sent > self.window:  # counted from what the peer was told
            raise RemoteProtocolError(
                ErrorCode.WINDOW_EXCEEDED,
                f"seq {seq} is beyond the window of {self.window} after {self.sent}",
            )
        self.seen = seq
        return True

    def acknowledge(self, upto: int) -> bool:
        """The application made everything ≤ ``upto`` durable; True when that is news (an ack is
        due: the session sends it now or holds it, see ``ack_sent``).

        Raises:
            LocalProtocolError: ``upto`` was never received.
        """
        if upto > self.seen:
            raise LocalProtocolError(
                ErrorCode.ACK_OUT_OF_RANGE, f"cannot ack {upto}: only {self.seen} received"
            )
        if upto <= self.acked:
            return False
        self.acked = upto
        return True

    def ack_now(self, now: float | None, delay: float) -> bool:
        """After ``acknowledge`` said news: whether the ack goes now. Not within ``delay`` of
        the last one (it waits until ``due_at``), unless a quarter of the window would wait:
        the peer must not stall on an ack held back."""
        if now is None or now - self.sent_at >= delay or self.acked - self.sent >= max(1, self.window // 4):
            return True
        if self.due_at is None:
            self.due_at = self.sent_at + delay
        return False

    def ack_sent(self, now: float | None = None) -> int:
        """An ack of everything made durable goes out (at ``now``); its ``upto``."""
        self.due_at = None
        if now is not None:
            self.sent_at = now
        self.sent = self.acked
        return self.sent
