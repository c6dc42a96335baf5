"""The fuzzers (scripts/fuzz): their frame classes hold against the real sessions in process, and
a short run against real processes, each way, leaves both ends alive, serving a well-behaved
peer, back to their baseline of descriptors and threads, and without a log line per frame."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.protocol import events as ev
from jobrelay.protocol.auth import NonceRegistry, public_key_hex
from jobrelay.protocol.messages import Welcome
from jobrelay.protocol.session import FacilitatorSession, SessionConfig, WorkerSession
from jobrelay.protocol.streams import StreamMarks
from tests.test_cli_helpers import ROOT, clean_env

sys.path.insert(0, str(ROOT / "scripts"))
from fuzz_frames import HARD, FrameGen, Side, Stream

KEY = Ed25519PrivateKey.generate()
FACILITATOR_KEY = Ed25519PrivateKey.generate()
LIMIT = 65_536
CONFIG = SessionConfig(max_frame_bytes=LIMIT, formats=("json", "msgpack"))
NOW = time.time()
HWM = 500  # what each side has accepted of the fuzzer's stream when the session opens


def _sessions(fmt: str, worker_marks: StreamMarks) -> tuple[WorkerSession, FacilitatorSession]:
    """A worker offering only ``fmt`` and a facilitator, through hello, a signed challenge and a
    signed auth (protocol v2); the welcome is left to the caller."""
    worker = WorkerSession(
        worker_id="w", key=KEY, facilitator_key=public_key_hex(FACILITATOR_KEY), nonce="01" * 32,
        marks=worker_marks, now=NOW, config=SessionConfig(max_frame_bytes=LIMIT, formats=(fmt,)),
    )  # fmt: skip
    facilitator = FacilitatorSession(
        nonce="ab" * 32, session_id="s", key=FACILITATOR_KEY, authorized={"w": public_key_hex(KEY)},
        nonces=NonceRegistry(), now=NOW, config=CONFIG,
    )  # fmt: skip
    for frame in worker.data_to_send():  # hello
        facilitator.receive_data(frame.data.decode(), NOW)
    for frame in facilitator.data_to_send():  # challenge
        worker.receive_data(frame.data.decode(), NOW)
    for frame in worker.data_to_send():  # auth
        facilitator.receive_data(frame.data.decode(), NOW)
    return worker, facilitator


def _facilitator(fmt: str) -> FacilitatorSession:
    """A facilitator session opened by a worker that offered only ``fmt``."""
    _, session = _sessions(
        fmt, StreamMarks(out_epoch="wepoch", out_acked=HWM, out_last_seq=HWM, in_epoch="", in_hwm=0)
    )
    session.accept(
        StreamMarks(out_epoch="fepoch", out_acked=0, out_last_seq=0, in_epoch="wepoch", in_hwm=HWM)
    )
    assert session.is_open
    session.data_to_send()
    return session


def _worker(fmt: str) -> WorkerSession:
    """A worker session opened by a facilitator that chose ``fmt``."""
    marks = StreamMarks(out_epoch="wepoch", out_acked=0, out_last_seq=0, in_epoch="fepoch", in_hwm=HWM)
    session, _ = _sessions(fmt, marks)
    welcome = Welcome(session_id="s", ack=0, out_epoch="fepoch", out_acked=HWM, max_frame_bytes=LIMIT)
    session.receive_data(msgspec.json.encode(welcome).decode(), NOW)
    assert session.is_open
    return session


def _open(side: Side, fmt: str) -> FacilitatorSession | WorkerSession:
    """The target's session for a fuzzer playing ``side``."""
    return _facilitator(fmt) if side == "worker" else _worker(fmt)


def _feed(session: FacilitatorSession | WorkerSession, frame: tuple[bytes, bool]) -> list[ev.Event]:
    data, _text = frame
    session.receive_data(data, NOW)
    return session.events_received()


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
@pytest.mark.parametrize("side", ["worker", "facilitator"])
def test_soft_frames_never_close_an_open_session(side: Side, fmt: str) -> None:
    """What the fuzzers send most of must be taken without closing (else a fuzz connection would
    carry one frame): 5,000 soft frames of a seeded generator, one open session throughout."""
    session = _open(side, fmt)
    gen = FrameGen(random.Random(f"{side}/{fmt}"), side, fmt, LIMIT)
    stream = Stream(hwm=HWM, next_seq=HWM + 1, new_left=200)
    for i in range(5_000):
        name, frame = gen.soft(stream)
        events = _feed(session, frame)
        closed = [e for e in events if isinstance(e, ev.Closed)]
        assert not closed, f"frame {i} ({name}) closed the session: {closed} {frame[0][:300]!r}"
    assert session.is_open


@pytest.mark.parametrize("name", HARD)
@pytest.mark.parametrize("side", ["worker", "facilitator"])
def test_each_hard_frame_closes_the_session_with_one_typed_error(side: Side, name: str) -> None:
    """Every class of garbage is refused: the session closes at once, sending at most one error
    frame (none when the garbage was itself a fatal error), and ignores what comes after."""
    for seed in range(5):
        session = _open(side, "json")
        gen = FrameGen(random.Random(seed), side, "json", LIMIT)
        session.data_to_send()
        _, frame = gen.hard(Stream(hwm=HWM, next_seq=HWM + 1), name)
        events = _feed(session, frame)
        assert [type(e) for e in events if isinstance(e, ev.Closed)] == [ev.Closed], (seed, frame[0][:200])
        sent = [msgspec.json.decode(f.data) for f in session.data_to_send()]
        assert len(sent) <= 1 and all(doc["type"] == "error" and doc["fatal"] for doc in sent), sent
        assert _feed(session, gen.soft(Stream())[1]) == [] and session.data_to_send() == []


def _run_fuzz(tmp_path: Path, target: str) -> dict[str, Any]:
    out = tmp_path / f"{target}.json"
    cmd = [sys.executable, str(ROOT / "scripts" / "fuzz_main.py"), target, "--frames", "20000", "--seed", "1"]
    cmd += ["--json", str(out), "--workdir", str(tmp_path / "work"), "--time-limit", "60"]
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        env=clean_env(),
        start_new_session=True,  # killed with its whole group below if it overruns
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = proc.communicate(timeout=150)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # it stops its own children on the way out; not here
            proc.wait(5)
    print(output)  # the table, for the CI log
    [doc] = json.loads(out.read_text())
    assert proc.returncode == 0, doc["failed"]
    return dict(doc)


def _assert_survived(doc: dict[str, Any]) -> None:
    assert doc["frames"] >= 20_000 and doc["sessions"] >= 2
    assert doc["target_alive"] and doc["exit_code"] == 0
    assert doc["peer_ok"], doc["peer_detail"]
    before, after = doc["before"], doc["after"]
    assert after["fds"] <= before["fds"] + 2 and after["threads"] <= before["threads"], (before, after)
    assert doc["lines_per_session"] <= 5, doc["log_top"]
    # Nothing is logged once per frame: no message more often than there were hostile sessions.
    assert all(n <= doc["sessions"] + 2 for _, n in doc["log_top"]), doc["log_top"]
    assert doc["failed"] == []


@pytest.mark.timeout(180)
def test_short_fuzz_of_a_facilitator_process(tmp_path: Path) -> None:
    """20,000 hostile frames at a `jobrelay facilitator` (authenticated and not) while a real
    worker completes every job submitted through the HTTP API meanwhile."""
    doc = _run_fuzz(tmp_path, "client")
    _assert_survived(doc)
    assert "completed" in doc["peer_detail"]


@pytest.mark.timeout(180)
def test_short_fuzz_of_a_worker_process(tmp_path: Path) -> None:
    """20,000 hostile frames at a `jobrelay worker` from a hostile server; when the server turns
    well-behaved the worker delivers its whole outbox and runs new jobs."""
    doc = _run_fuzz(tmp_path, "server")
    _assert_survived(doc)
    assert "outbox_depth 0" in doc["peer_detail"]
