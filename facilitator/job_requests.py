# The job requests a submit stores, made and checked before anything is stored: ids and kinds in
# bounds, the worker authorized, and each request (or cancel) sendable in one frame in every
# offered codec — stored, one that is not would stop the worker's stream for good.
from __future__ import annotations

import secrets
import time
from collections.abc import Collection, Sequence
from typing import Any

from jobrelay.facilitator.config import FacilitatorConfig
from jobrelay.facilitator.errors import JobTooLarge
from jobrelay.facilitator.job_options import JobOptions
from jobrelay.protocol.codec import check_sendable
from jobrelay.protocol.errors import ErrorCode, LocalProtocolError
from jobrelay.protocol.messages import JobCancel, JobRequest

__all__ = ["check_frame", "make_requests"]


def make_requests(
    config: FacilitatorConfig,
    authorized: Collection[str],
    jobs: Sequence[tuple[str, Any, str | None]],
    worker: str | None,
    options: JobOptions,
) -> list[JobRequest]:
    """The requests of ``jobs`` ``(kind, payload, job_id or None)``, each checked.

    Raises:
        ValueError, JobTooLarge, TypeError: as for ``Facilitator.submit``.
    """
    if worker is not None and worker not in authorized:
        raise ValueError(f"worker {worker!r} is not in the authorized keys")
    options.check()
    now = time.time()
    requests: list[JobRequest] = []
    for kind, payload, given_id in jobs:
        job_id = given_id if given_id is not None else secrets.token_hex(12)
        for name, value in (("kind", kind), ("job_id", job_id)):
            if not 1 <= len(value) <= 256:
                raise ValueError(f"{name} must be 1..256 characters, got {value!r}")
        request = options.request(job_id, kind, payload, now)
        check_frame(request, f"job {job_id!r}", config.max_frame_bytes, config.formats)
        requests.append(request)
    return requests


def check_frame(
    body: JobRequest | JobCancel, what: str, max_frame_bytes: int, formats: Sequence[str]
) -> None:
    """Refuse a body that could not be sent in one frame in every offered codec (``what`` names
    it in the error); a facilitator's submits and cancels, the memory facilitator's too.

    Raises:
        JobTooLarge: It does not fit in max_frame_bytes.
        ValueError: A codec cannot encode it (e.g. msgpack and an integer beyond 64 bits).
    """
    try:
        check_sendable(body, max_frame_bytes=max_frame_bytes, formats=formats)
    except LocalProtocolError as exc:
        detail = exc.detail.removeprefix("the message ")
        if exc.code is ErrorCode.FRAME_TOO_LARGE:
            raise JobTooLarge(f"{what} {detail}") from None
        raise ValueError(f"{what} {detail}") from None
