# Every message jobrelay puts on the wire, as msgspec Structs.
# Invariants: one tagged base (tag field "type"); frames are frozen; every field added after v1
# gets a default so old peers still decode (msgspec schema evolution). Data bodies travel inside a
# sequenced ``Data`` envelope; session frames are never sequenced or stored.
from __future__ import annotations

import enum
from typing import Annotated, Any, Generic, TypeVar

import msgspec

__all__ = [
    "MAX_BATCH",
    "MAX_INFLIGHT",
    "MAX_KINDS",
    "MAX_SEQ",
    "PROTOCOL_VERSION",
    "TERMINAL_STATUSES",
    "Ack",
    "Auth",
    "Challenge",
    "Data",
    "DataBatch",
    "Error",
    "FacilitatorBody",
    "FacilitatorFrame",
    "Heartbeat",
    "Hello",
    "JobCancel",
    "JobRequest",
    "JobStatus",
    "JobStatusUpdate",
    "MachineSpecs",
    "Request",
    "Response",
    "Seq",
    "Welcome",
    "WorkerBody",
    "WorkerEvent",
    "WorkerFrame",
]

# 2: mutual authentication (the facilitator signs the challenge; both sign one transcript).
# 3: hello carries the worker's capabilities (job kinds, credit): jobs go where they can run.
PROTOCOL_VERSION = 3
# 2**53 - 1: the largest integer every JSON implementation represents exactly.
MAX_SEQ = 2**53 - 1
MAX_INFLIGHT = 1_000_000
"""The largest window a ``welcome`` may carry: a worker refuses more (so must a facilitator's config)."""
MAX_BATCH = 10_000
"""The most items a ``batch`` may carry: a receiver refuses more (so must either side's config)."""
MAX_KINDS = 1_024
"""The most job kinds a ``hello`` may announce."""

Seq = Annotated[int, msgspec.Meta(ge=1, le=MAX_SEQ)]
Mark = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
Id = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Hex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]*$", max_length=512)]
# Bounded above so Infinity (which msgpack carries and JSON cannot) is refused like NaN.
Timestamp = Annotated[float, msgspec.Meta(ge=0, le=MAX_SEQ)]
Millis = Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
Progress = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
# Runs of one job: at most 100 (retries beyond that are a loop, not a policy).
Attempt = Annotated[int, msgspec.Meta(ge=1, le=100)]
# A time limit in seconds: positive and at most a year (a larger one is a typo, not a limit).
LimitSeconds = Annotated[float, msgspec.Meta(gt=0.0, le=366 * 86400.0)]  # time_limits.MAX_LIMIT_SECONDS


class JobStatus(enum.StrEnum):
    """A job's lifecycle: accepted → running (with progress) → one terminal status."""

    ACCEPTED = "accepted"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    # Recorded by the facilitator only, never sent: an attempt failed and another will run.
    RETRYING = "retrying"
    # Not an ending: a draining worker hands a job it never started back to the facilitator,
    # which queues it for another worker. Sent only to a facilitator whose welcome says
    # ``releases`` (an optional v3 field with a default: a facilitator that does not set it
    # never sees one).
    RELEASED = "released"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATUSES


TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.REJECTED, JobStatus.CANCELLED}
)


class _Message(msgspec.Struct, tag_field="type", frozen=True, kw_only=True, gc=False):
    """Base of every frame and data body."""


# ---------------------------------------------------------------- data bodies (sequenced)


class JobRequest(_Message, tag="job_request", frozen=True):
    """Facilitator → worker: run a job of ``kind`` with ``payload``."""

    job_id: Id
    kind: Id
    payload: Any = None
    submitted_at: Timestamp = 0.0
    resumable: bool = False
    # Optional fields of v3 (defaults: none): seconds from the handler's start until it is
    # told to wrap up (soft) and until it is ended as ``failed: time_limit`` (hard). They override
    # the worker's per-kind defaults.
    soft_time_limit: LimitSeconds | None = None
    time_limit: LimitSeconds | None = None
    # Optional fields of v3 (defaults: one attempt): which run of the job this is, of at most
    # ``max_attempts``. A worker treats a higher attempt of a job id it has seen as new work.
    attempt: Attempt = 1
    max_attempts: Attempt = 1
    # Seconds before attempt 2; each later attempt waits twice as long (the facilitator's).
    retry_backoff: Annotated[float, msgspec.Meta(ge=0.0, le=86400.0)] = 0.0


class JobCancel(_Message, tag="job_cancel", frozen=True):
    """Facilitator → worker: stop a job that was sent earlier."""

    job_id: Id
    reason: str = ""


class JobStatusUpdate(_Message, tag="job_status", frozen=True):
    """Worker → facilitator: a job moved to ``status``."""

    job_id: Id
    status: JobStatus
    at: Timestamp
    progress: Progress | None = None
    detail: str = ""
    # Optional fields of v3: the request's attempt this status belongs to, and (on a
    # ``failed``) whether the failure is worth another attempt.
    attempt: Attempt = 1
    retryable: bool = False


class MachineSpecs(_Message, tag="machine_specs", frozen=True):
    """Worker → facilitator: what the worker's machine offers (free-form, JSON-safe)."""

    specs: dict[str, Any]
    at: Timestamp


class WorkerEvent(_Message, tag="worker_event", frozen=True):
    """Worker → facilitator: something the operator should see (started, draining, new epoch…)."""

    event: Id
    at: Timestamp
    detail: str = ""


WorkerBody = JobStatusUpdate | MachineSpecs | WorkerEvent
FacilitatorBody = JobRequest | JobCancel

B = TypeVar("B", WorkerBody, FacilitatorBody)


class Data(_Message, Generic[B], tag="data", frozen=True):
    """One sequenced data message of the sender's stream."""

    seq: Seq
    body: B


class DataBatch(_Message, Generic[B], tag="batch", frozen=True):
    """Several data messages with contiguous seqs in one frame (sent when a backlog exists)."""

    items: Annotated[list[Data[B]], msgspec.Meta(min_length=1, max_length=MAX_BATCH)]


# ---------------------------------------------------------------- session frames


class Hello(_Message, tag="hello", frozen=True):
    """Worker → facilitator, first frame of every connection."""

    version: int
    worker_id: Id
    codecs: tuple[str, ...] = ("json",)
    # v2; defaulted so a v1 hello still decodes and is refused as unsupported_version.
    nonce: Hex = ""
    # v3: the job kinds this worker runs; None: any kind (a client that routes kinds itself).
    kinds: Annotated[tuple[Id, ...], msgspec.Meta(max_length=MAX_KINDS)] | None = None
    # v3: how many unfinished job requests the facilitator may have at this worker at once (its
    # slots plus a small prefetch); None: no limit. 0 takes no jobs.
    credit: Annotated[int, msgspec.Meta(ge=0, le=MAX_INFLIGHT)] | None = None
    # v3: per-kind credit for kinds with their own concurrency (e.g. encode=2): at most this many
    # unfinished requests of that kind at once, within ``credit``. Absent kinds: only ``credit``.
    kind_credit: (
        Annotated[
            dict[Id, Annotated[int, msgspec.Meta(ge=0, le=MAX_INFLIGHT)]], msgspec.Meta(max_length=MAX_KINDS)
        ]
        | None
    ) = None


class Challenge(_Message, tag="challenge", frozen=True):
    """Facilitator → worker: a fresh nonce to sign, the codec both sides use after welcome, and
    the facilitator's key and its signature of the handshake transcript (v2)."""

    version: int
    nonce: Hex
    codec: str = "json"
    # v2; defaulted so a v1 challenge still decodes and is refused as unsupported_version.
    public_key: Hex = ""
    signature: Hex = ""


class Auth(_Message, tag="auth", frozen=True):
    """Worker → facilitator: the signed challenge plus the worker's durable stream state.

    ``signature`` is Ed25519 over ``Transcript.auth_payload(public_key, timestamp_ms)`` (auth.py).
    ``out_*`` describe the worker's outgoing stream, ``in_*`` what it accepted of the
    facilitator's stream (``in_epoch`` empty when it has never accepted anything).
    """

    worker_id: Id
    public_key: Hex
    nonce: Hex
    timestamp_ms: Millis
    signature: Hex
    out_epoch: Id
    out_acked: Mark = 0
    in_epoch: str = ""
    in_hwm: Mark = 0


class Welcome(_Message, tag="welcome", frozen=True):
    """Facilitator → worker: the session is open; where each stream resumes.

    ``ack`` is the facilitator's high-water mark of the worker's stream (the worker replays
    after it); ``out_epoch``/``out_acked`` describe the facilitator's stream to this worker.
    """

    session_id: Id
    ack: Mark
    out_epoch: Id
    out_acked: Mark = 0
    new_stream: bool = False
    heartbeat_interval_ms: Millis = 5_000
    heartbeat_timeout_ms: Millis = 20_000
    max_inflight: Annotated[int, msgspec.Meta(ge=1, le=MAX_INFLIGHT)] = 1_000
    max_frame_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 1_048_576
    # The facilitator takes back jobs a draining worker releases (JobStatus.RELEASED); optional
    # in v3, default false.
    releases: bool = False


class Ack(_Message, tag="ack", frozen=True):
    """Cumulative acknowledgement: every seq ≤ ``upto`` of the peer's stream is durable here."""

    upto: Mark


class Heartbeat(_Message, tag="heartbeat", frozen=True, omit_defaults=True):
    """Liveness, both directions. ``draining`` tells the facilitator to send no new jobs. From
    the facilitator, ``heartbeat_interval_ms`` and ``heartbeat_timeout_ms`` (both or neither)
    lengthen the session's values of its welcome from this heartbeat on (PROTOCOL §6.1).
    Fields at their default are not sent."""

    at: Timestamp
    draining: bool = False
    heartbeat_interval_ms: Millis | None = None
    heartbeat_timeout_ms: Millis | None = None


class Error(_Message, tag="error", frozen=True):
    """A typed error. After a ``fatal`` error the sender closes the connection; a non-fatal one
    (for example ``job_not_yours``) reports a refused data message and the session goes on."""

    code: str
    detail: str = ""
    fatal: bool = True


class Request(_Message, tag="request", frozen=True):
    """A request–reply call outside the data streams (not durable, not replayed)."""

    id: Id
    method: Id
    params: Any = None
    timeout_ms: Millis = 10_000


class Response(_Message, tag="response", frozen=True):
    """The answer to ``Request`` with the same ``id``: ``result`` when ``ok``, else ``code`` and
    ``error`` (a message)."""

    id: Id
    ok: bool = True
    result: Any = None
    error: str = ""
    # Optional within v3 (default ""): why ``ok`` is false, one of the call codes of PROTOCOL §6.2
    # (``unknown_method``, ``invalid_params``…); a receiver treats "" or an unknown code as
    # ``handler_failed``.
    code: Annotated[str, msgspec.Meta(max_length=64)] = ""


_Session = Ack | Heartbeat | Error | Request | Response

# What a facilitator can receive (sent by workers) and what a worker can receive.
WorkerFrame = Hello | Auth | _Session | Data[WorkerBody] | DataBatch[WorkerBody]
FacilitatorFrame = Challenge | Welcome | _Session | Data[FacilitatorBody] | DataBatch[FacilitatorBody]
