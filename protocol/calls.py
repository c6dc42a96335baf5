# Request–response calls over the session's ``request``/``response`` frames (docs/PROTOCOL.md
# §6.2): method declarations with msgspec types, the call error codes, the typed errors callers
# get, and the built-in methods' params and results. Sans-I/O: no threads, sockets or clocks.
# Invariants:
# - A call's outcome is exactly one of: its result (checked against the method's result type),
#   CallRejected(code, message), CallTimeout, ConnectionLost, CircuitOpen or CallThrottled.
# - Params and results are checked where they are decoded, never trusted: a mismatch is an
#   ``invalid_params`` rejection (responder) or ``invalid_result`` (requester), not a crash and
#   not a session error.
from __future__ import annotations

import enum
from typing import Annotated, Any

import msgspec

from jobrelay.protocol.errors import JobrelayError

__all__ = [
    "BUILTIN_METHODS",
    "CallCode",
    "CallError",
    "CallRejected",
    "CallThrottled",
    "CallTimeout",
    "CircuitOpen",
    "ConnectionLost",
    "HistoryEntry",
    "JobInfo",
    "JobInfoParams",
    "Lease",
    "LeaseAcquire",
    "LeaseId",
    "LeaseReleased",
    "MethodSpec",
    "Specs",
    "check_params",
    "check_result",
]


class CallCode(enum.StrEnum):
    """``response.code`` of a call that failed (docs/PROTOCOL.md §6.2). Receivers treat an unknown
    code like ``handler_failed``."""

    UNKNOWN_METHOD = "unknown_method"  # the responder serves no such method
    INVALID_PARAMS = "invalid_params"  # params do not match the method's declared type
    INVALID_RESULT = "invalid_result"  # (requester side) the result does not match its type
    HANDLER_FAILED = "handler_failed"  # the responder's handler raised
    OVERLOADED = "overloaded"  # the responder has too many calls running
    NOT_FOUND = "not_found"  # the thing asked about does not exist (e.g. job_info's job)
    LEASE_UNAVAILABLE = "lease_unavailable"  # not enough of the resource is free
    LEASE_UNKNOWN = "lease_unknown"  # no such lease (expired, released, or never granted)


class CallError(JobrelayError):
    """Base of every way a call can fail."""


class CallTimeout(CallError):
    """No response within the call's timeout."""


class CallRejected(CallError):
    """The responder answered ``ok: false`` (or its result did not match the declared type)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class ConnectionLost(CallError):
    """The session ended before the response, and the method is not idempotent (not re-sent); or
    there was no session to send it on."""


class CircuitOpen(CallError):
    """The circuit breaker is open: the call failed fast, nothing was sent."""


class CallThrottled(CallError):
    """The call rate or the calls-in-flight limit was reached and the caller asked not to wait."""


class MethodSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A method: its name, msgspec types of params and result (None: any JSON value), whether a
    call may be re-sent after a reconnect (idempotent) and whether it only reads (a read may be
    answered from its last result while the worker is in local mode, marked stale)."""

    name: str
    params: Any = None
    result: Any = None
    idempotent: bool = False
    read_only: bool = False


def check_params(spec: MethodSpec, params: Any) -> Any:
    """``params`` converted to the method's params type.

    Raises:
        CallRejected: ``invalid_params``, saying what is wrong.
    """
    if spec.params is None:
        return params
    try:
        return msgspec.convert(params, spec.params, strict=False)
    except msgspec.ValidationError as exc:
        raise CallRejected(CallCode.INVALID_PARAMS, f"{spec.name}: {exc}") from None


def check_result(spec: MethodSpec, result: Any) -> Any:
    """``result`` converted to the method's result type.

    Raises:
        CallRejected: ``invalid_result``, saying what is wrong.
    """
    if spec.result is None:
        return result
    try:
        return msgspec.convert(result, spec.result, strict=False)
    except msgspec.ValidationError as exc:
        raise CallRejected(CallCode.INVALID_RESULT, f"{spec.name}: {exc}") from None


# ---------------------------------------------------------------- built-in methods' types

_Name = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
Count = Annotated[int, msgspec.Meta(ge=1, le=1_000_000)]
Ttl = Annotated[float, msgspec.Meta(gt=0.0, le=86_400.0)]


class JobInfoParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    job_id: _Name


class HistoryEntry(msgspec.Struct, frozen=True):
    status: str
    at: float
    detail: str = ""
    progress: float | None = None


class JobInfo(msgspec.Struct, frozen=True):
    """``job_info``'s result: the job's current status (None: not started) and its history."""

    job_id: str
    kind: str
    status: str | None
    history: list[HistoryEntry]


class Specs(msgspec.Struct, frozen=True):
    """``specs``' result: what the worker's machine offers (free-form, JSON-safe)."""

    specs: dict[str, Any]
    at: float


class LeaseAcquire(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    resource: _Name
    ttl: Ttl
    count: Count = 1


class LeaseId(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    lease_id: _Name


class Lease(msgspec.Struct, frozen=True):
    """A granted lease: ``count`` of ``resource`` for the worker until ``expires_at`` (facilitator
    clock) unless renewed; the facilitator also keeps it alive while the holder's heartbeats
    arrive, and expires it ``ttl`` seconds after the last one."""

    lease_id: str
    resource: str
    count: int
    ttl: float
    expires_at: float


class LeaseReleased(msgspec.Struct, frozen=True):
    lease_id: str
    released: bool


BUILTIN_METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        # worker → facilitator
        MethodSpec(name="job_info", params=JobInfoParams, result=JobInfo, idempotent=True, read_only=True),
        MethodSpec(name="lease.acquire", params=LeaseAcquire, result=Lease),
        MethodSpec(name="lease.renew", params=LeaseId, result=Lease, idempotent=True),
        MethodSpec(name="lease.release", params=LeaseId, result=LeaseReleased, idempotent=True),
        # facilitator → worker
        MethodSpec(name="specs", params=None, result=Specs, idempotent=True, read_only=True),
    )
}
