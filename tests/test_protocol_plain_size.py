"""plain_size_limit: the size below which a publish skips check_sendable must never let through
a body check_sendable would refuse, and must be used for the plain body types."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobrelay.protocol.codec import check_sendable, plain_size_limit
from jobrelay.protocol.errors import LocalProtocolError
from jobrelay.protocol.messages import JobStatus, JobStatusUpdate, MachineSpecs, WorkerEvent

bodies = st.one_of(
    st.builds(
        WorkerEvent, event=st.text("abc-", min_size=1, max_size=8), at=st.floats(0, 1e9), detail=st.text()
    ),
    st.builds(
        JobStatusUpdate,
        job_id=st.just("j1"),
        status=st.sampled_from(JobStatus),
        at=st.floats(0, 1e9),
        detail=st.text(),
        attempt=st.integers(1, 2**70),
    ),
    st.builds(
        MachineSpecs, specs=st.dictionaries(st.text(max_size=4), st.integers() | st.text()), at=st.just(0.0)
    ),
)
formats = st.sampled_from([("json",), ("msgpack",), ("json", "msgpack")])


def sendable(body: Any, max_frame_bytes: int, fmts: tuple[str, ...]) -> bool:
    try:
        check_sendable(
            body,
            max_frame_bytes=max_frame_bytes,
            formats=fmts,
            json_body_size=len(msgspec.json.encode(body)),
        )
    except LocalProtocolError:
        return False
    return True


@given(bodies, st.integers(16, 4_000), formats)
def test_a_body_within_the_plain_limit_passes_the_full_check(
    body: Any, max_frame_bytes: int, fmts: tuple[str, ...]
) -> None:
    limit = plain_size_limit(type(body), max_frame_bytes=max_frame_bytes, formats=fmts)
    if limit is not None and len(msgspec.json.encode(body)) <= limit:
        assert sendable(body, max_frame_bytes, fmts)


@pytest.mark.parametrize("fmts", [("json",), ("msgpack",), ("json", "msgpack")])
def test_the_limit_is_the_check_s_own_edge_for_worker_events(fmts: tuple[str, ...]) -> None:
    """Up to the limit the fast path applies; just past it the full check refuses (the limit
    is not needlessly low either)."""
    frame = 1_000
    limit = plain_size_limit(WorkerEvent, max_frame_bytes=frame, formats=fmts)
    assert limit is not None
    empty = len(msgspec.json.encode(WorkerEvent(event="e", at=0.0)))

    def event(size: int) -> WorkerEvent:
        return WorkerEvent(event="e", at=0.0, detail="x" * (size - empty))

    assert len(msgspec.json.encode(event(limit))) == limit
    assert sendable(event(limit), frame, fmts)
    if fmts == ("json",):  # msgpack's bound is a vouch, not the edge: the full check decides
        assert not sendable(event(limit + 1), frame, fmts)


def test_types_whose_values_decide_get_no_limit() -> None:
    for kind in (MachineSpecs, JobStatusUpdate):  # free-form specs; typed int attempt
        assert plain_size_limit(kind, max_frame_bytes=1_000_000, formats=("json",)) is None
