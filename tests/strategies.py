"""Hypothesis strategies for every protocol message (valid values only)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from jobrelay.protocol import messages as m

ids = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=20)
hexes = st.binary(max_size=32).map(bytes.hex)
seqs = st.integers(min_value=1, max_value=m.MAX_SEQ)
marks = st.integers(min_value=0, max_value=m.MAX_SEQ)
times = st.floats(min_value=0, max_value=4e9, allow_nan=False)
millis = st.integers(min_value=0, max_value=m.MAX_SEQ)
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)

job_requests = st.builds(
    m.JobRequest, job_id=ids, kind=ids, payload=json_values, submitted_at=times, resumable=st.booleans()
)
job_cancels = st.builds(m.JobCancel, job_id=ids, reason=st.text(max_size=20))
status_updates = st.builds(
    m.JobStatusUpdate,
    job_id=ids,
    status=st.sampled_from(m.JobStatus),
    at=times,
    progress=st.none() | st.floats(min_value=0, max_value=1),
    detail=st.text(max_size=20),
)
machine_specs = st.builds(
    m.MachineSpecs, specs=st.dictionaries(st.text(max_size=8), json_values, max_size=4), at=times
)
worker_events = st.builds(m.WorkerEvent, event=ids, at=times, detail=st.text(max_size=20))
worker_bodies = st.one_of(status_updates, machine_specs, worker_events)
facilitator_bodies = st.one_of(job_requests, job_cancels)


def data_frames(bodies: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    single = st.builds(m.Data, seq=seqs, body=bodies)
    batch = st.builds(m.DataBatch, items=st.lists(single, min_size=1, max_size=4))
    return single | batch


session_frames = st.one_of(
    st.builds(m.Ack, upto=marks),
    st.builds(m.Heartbeat, at=times, draining=st.booleans()),
    st.builds(m.Error, code=st.text(max_size=20), detail=st.text(max_size=20), fatal=st.booleans()),
    st.builds(m.Request, id=ids, method=ids, params=json_values, timeout_ms=millis),
    st.builds(m.Response, id=ids, ok=st.booleans(), result=json_values, error=st.text(max_size=20)),
)

worker_frames = st.one_of(
    st.builds(
        m.Hello,
        version=st.integers(0, 5),
        worker_id=ids,
        codecs=st.lists(st.sampled_from(["json", "msgpack"])).map(tuple),
        nonce=st.one_of(st.just("cd" * 32), hexes),
    ),
    st.builds(
        m.Auth,
        worker_id=ids,
        public_key=hexes,
        nonce=hexes,
        timestamp_ms=millis,
        signature=hexes,
        out_epoch=ids,
        out_acked=marks,
        in_epoch=st.text(max_size=10),
        in_hwm=marks,
    ),
    session_frames,
    data_frames(worker_bodies),
)
facilitator_frames = st.one_of(
    st.builds(
        m.Challenge,
        version=st.integers(0, 5),
        nonce=hexes,
        codec=st.sampled_from(["json", "msgpack"]),
        public_key=hexes,
        signature=hexes,
    ),
    st.builds(
        m.Welcome,
        session_id=ids,
        ack=marks,
        out_epoch=ids,
        out_acked=marks,
        new_stream=st.booleans(),
        heartbeat_interval_ms=millis,
        heartbeat_timeout_ms=millis,
        max_inflight=st.integers(1, 1_000_000),
        max_frame_bytes=st.integers(1024, 2**31),
    ),
    session_frames,
    data_frames(facilitator_bodies),
)
