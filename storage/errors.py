# Typed errors of the storage layer.
# Invariants: every failure that can leave a public storage method is a JobrelayError subclass
# defined here; no bare sqlite3.Error escapes storage/. Each message says what happened, to which
# file, and what the operator or caller should do about it.
from __future__ import annotations

from pathlib import Path

from jobrelay.protocol.errors import JobrelayError

__all__ = [
    "AckOutOfRange",
    "OutboxFull",
    "StorageError",
    "TerminalStatusError",
    "UnknownJobError",
]


class StorageError(JobrelayError):
    """The durable store could not do what was asked; the message says what to do.

    Attributes:
        path: The database file concerned, when known.
    """

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.path = str(path) if path is not None else None


class OutboxFull(JobrelayError):
    """Appending would exceed the outbox bounds; nothing was stored (back-pressure).

    The caller should wait for acknowledgements (which delete rows) and retry, or fail the
    publish with a deadline. It is not a StorageError: the store is healthy, just full.

    Attributes:
        stream: The outbox stream that is full.
        depth_rows: Unacknowledged rows currently stored.
        depth_bytes: Unacknowledged payload bytes currently stored.
        max_rows: The configured row bound.
        max_bytes: The configured byte bound.
        adding_rows: Rows the refused call tried to add.
        adding_bytes: Payload bytes the refused call tried to add.
    """

    def __init__(
        self,
        stream: str,
        *,
        depth_rows: int,
        depth_bytes: int,
        max_rows: int,
        max_bytes: int,
        adding_rows: int,
        adding_bytes: int,
    ) -> None:
        super().__init__(
            f"outbox {stream!r} is full: {depth_rows} rows / {depth_bytes} bytes stored, adding "
            f"{adding_rows} rows / {adding_bytes} bytes would exceed the bounds "
            f"({max_rows} rows / {max_bytes} bytes); wait for the peer to acknowledge "
            "(which frees space) and retry, or raise the bounds"
        )
        self.stream = stream
        self.depth_rows = depth_rows
        self.depth_bytes = depth_bytes
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self.adding_rows = adding_rows
        self.adding_bytes = adding_bytes


class AckOutOfRange(StorageError):
    """An acknowledgement named a seq that was never assigned (a protocol violation by the peer).

    Attributes:
        stream: The outbox stream.
        upto: The acknowledged seq.
        last_seq: The last seq this stream assigned.
    """

    def __init__(self, stream: str, upto: int, last_seq: int, *, path: str | Path | None) -> None:
        super().__init__(
            f"ack {upto} on outbox {stream!r} is beyond the last assigned seq {last_seq}; "
            "the peer acknowledged data we never sent (its store belongs to another epoch or "
            "it is buggy): nothing was deleted; close the session with ack_out_of_range",
            path=path,
        )
        self.stream = stream
        self.upto = upto
        self.last_seq = last_seq


class UnknownJobError(StorageError):
    """A status was recorded for a job id the ledger has never seen."""

    def __init__(self, job_id: str, *, path: str | Path | None) -> None:
        super().__init__(
            f"job {job_id!r} is not in the ledger; record_request() must come first "
            "(a status for an unknown job is a caller bug or a job of another worker)",
            path=path,
        )
        self.job_id = job_id


class TerminalStatusError(StorageError):
    """A status was recorded for a job that already has a terminal status."""

    def __init__(self, job_id: str, existing: str, new: str, *, path: str | Path | None) -> None:
        super().__init__(
            f"job {job_id!r} already ended with {existing!r}; refusing to record {new!r} "
            "(every job ends exactly once: drop the late update)",
            path=path,
        )
        self.job_id = job_id
        self.existing = existing
        self.new = new
