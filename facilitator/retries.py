# Where the facilitator decides retries (store thread, inside the group commit that records the
# statuses). The facilitator owns a job's one ending: a ``failed`` the worker marked retryable,
# for the job's current attempt, with attempts left, is recorded as ``retrying`` (not terminal)
# and the job's stored request becomes the next attempt; after its backoff the hub releases it
# to the queue and it is routed like a new job. Any other status passes through unchanged.
# Invariants: a job has one terminal status whatever its attempts; a retry is decided once
# (the worker's stream is deduplicated, and the attempt must match the stored request's).
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, NamedTuple

import msgspec

from jobrelay.protocol.messages import JobRequest, JobStatus, JobStatusUpdate
from jobrelay.protocol.retries import retry_delay
from jobrelay.storage import retries as stored

if TYPE_CHECKING:
    from jobrelay.facilitator.store_ops import StoreState

__all__ = ["Retry", "decide_retries", "no_more_attempts", "release_retries"]

_ENCODER: Final = msgspec.json.Encoder()
_REQUEST: Final = msgspec.json.Decoder(JobRequest)


class Retry(NamedTuple):
    """A job whose next attempt is due in ``delay`` seconds."""

    job_id: str
    delay: float


class Decisions(NamedTuple):
    """What ``decide_retries`` made of a batch's status updates."""

    updates: list[JobStatusUpdate]  # to record (a retried failure became ``retrying``)
    retries: list[Retry]
    refused: list[str]  # job ids of ``retrying`` statuses a worker sent (the facilitator's alone)


def decide_retries(s: StoreState, worker_id: str, updates: Sequence[JobStatusUpdate]) -> Decisions:
    """Turn each retryable failure of ``worker_id``'s current attempt with attempts left into
    a ``retrying`` status and store the next attempt's request."""
    out: list[JobStatusUpdate] = []
    retries: list[Retry] = []
    refused: list[str] = []
    for update in updates:
        if update.status is JobStatus.RETRYING:
            refused.append(update.job_id)
            continue
        retry = (
            _retry(s, worker_id, update) if update.status is JobStatus.FAILED and update.retryable else None
        )
        if retry is None:
            out.append(update)
            continue
        request, delay = retry
        detail = f"attempt {update.attempt} failed: {update.detail}"[:1800]
        detail += f"; attempt {request.attempt} of {request.max_attempts} in {delay:g} s"
        out.append(msgspec.structs.replace(update, status=JobStatus.RETRYING, detail=detail))
        s.add_outstanding(worker_id, -1, request.kind)  # that attempt is over: the worker has room again
        retries.append(Retry(update.job_id, delay))
    return Decisions(out, retries, refused)


def _retry(s: StoreState, worker_id: str, update: JobStatusUpdate) -> tuple[JobRequest, float] | None:
    """The next attempt's request (stored now) and its delay, or None: no retry for ``update``."""
    record = s.ledger.get(update.job_id)
    payload = s.ledger.payload(update.job_id)
    if record is None or payload is None or record.peer != worker_id:
        return None  # refused as usual (not this worker's job)
    if record.status is not None and JobStatus(record.status).terminal:
        return None  # refused as usual (after the end)
    request = _REQUEST.decode(payload)
    # Statuses of an older attempt cannot come from this worker after a newer one was sent to
    # it (its stream is ordered), and another worker's are refused by ownership; the check
    # keeps a repeated failure from deciding a second retry all the same.
    if update.attempt != request.attempt or request.attempt >= request.max_attempts:
        return None
    following = msgspec.structs.replace(request, attempt=request.attempt + 1)
    stored.next_attempt(s.db, update.job_id, _ENCODER.encode(following))
    return following, retry_delay(request.retry_backoff, following.attempt)


def release_retries(s: StoreState, job_ids: Sequence[str]) -> list[str]:
    """Queue the jobs whose backoff is over (those still waiting: a cancel may have ended one)."""
    return stored.release_retries(s.db, job_ids)


def no_more_attempts(s: StoreState, job_id: str) -> None:
    """A cancel was sent for the job's current attempt: should that attempt fail retryably
    before the cancel reaches it, the failure ends the job instead of starting another."""
    payload = s.ledger.payload(job_id)
    if payload is None:
        return
    request = _REQUEST.decode(payload)
    if request.max_attempts > request.attempt:
        final = msgspec.structs.replace(request, max_attempts=request.attempt)
        stored.next_attempt(s.db, job_id, _ENCODER.encode(final))
