# What one side of a link keeps durably, modelled in plain Python: the protocol tests use one per
# side and MemoryFacilitator one for its side. Invariant: it changes only when its owner says so
# (publish, ack): it survives reconnects, not the process.
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobrelay.protocol.session import FacilitatorSession, WorkerSession
from jobrelay.protocol.streams import StreamMarks

__all__ = ["MemoryStore", "send_window"]


def send_window(session: WorkerSession | FacilitatorSession, out: Mapping[int, Any], last_seq: int) -> bool:
    """Send the stored, unacknowledged messages ``out`` (seq → body) that the session's window
    has room for, in seq order, up to ``last_seq``.

    Returns:
        True if anything was sent.
    """
    first = session.sender.sent + 1
    count = min(session.sender.capacity, last_seq - session.sender.sent)
    if count <= 0:
        return False
    session.send_data([(seq, out[seq]) for seq in range(first, first + count)])
    return True


@dataclass
class MemoryStore:
    """A plain-Python model of what one side of a link keeps durably: its outgoing stream (every
    message not yet acknowledged, by seq) and how far it accepted the peer's stream.

    It lives in memory only: it survives reconnects (which is what tests of a worker need) but not
    the process. The protocol tests use one per side; MemoryFacilitator uses one for its side.

    Attributes:
        out_epoch: This side's stream epoch.
        out: Unacknowledged outgoing messages, seq → body.
        out_last_seq: The last seq assigned to an outgoing message.
        out_acked: The peer has made our stream durable up to this seq.
        in_epoch: The epoch of the peer's stream we accept from ("" before the first session).
        in_hwm: The last seq of the peer's stream we accepted.
        delivered: Every message of the peer's stream the application received, in order.
        sent: Every message the application published, in order.
    """

    out_epoch: str
    out: dict[int, Any] = field(default_factory=dict)
    out_last_seq: int = 0
    out_acked: int = 0
    in_epoch: str = ""
    in_hwm: int = 0
    delivered: list[Any] = field(default_factory=list)
    sent: list[Any] = field(default_factory=list)

    def marks(self) -> StreamMarks:
        """Where both streams stand, for the handshake."""
        return StreamMarks(self.out_epoch, self.out_acked, self.out_last_seq, self.in_epoch, self.in_hwm)

    def publish(self, body: Any) -> int:
        """Append ``body`` to the outgoing stream.

        Returns:
            Its seq.
        """
        self.out_last_seq += 1
        self.out[self.out_last_seq] = body
        self.sent.append(body)
        return self.out_last_seq

    def send_window(self, session: WorkerSession | FacilitatorSession) -> bool:
        """Send what the session's window allows of the unacknowledged messages (see ``send_window``)."""
        return send_window(session, self.out, self.out_last_seq)

    def ack(self, upto: int) -> None:
        """The peer made our stream durable up to ``upto``: forget those messages.

        Raises:
            ValueError: ``upto`` is beyond the last seq we assigned.
        """
        if upto > self.out_last_seq:
            raise ValueError(f"peer acknowledged seq {upto}, we only assigned up to {self.out_last_seq}")
        for seq in range(self.out_acked + 1, upto + 1):
            self.out.pop(seq, None)
        self.out_acked = max(self.out_acked, upto)
