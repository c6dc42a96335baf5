"""Time limits over real sockets: a real facilitator, a real worker, real command processes.

What a user relies on: a job submitted with ``soft_time_limit``/``time_limit`` (or a kind whose
handler declares defaults) is told to wrap up at the soft limit and ends as ``failed:
time_limit`` at the hard one, with exactly one ending; a command's whole process group is gone
after the hard limit; a Python handler's late result is ignored.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from jobrelay.actors import (
    CommandHandler,
    JobCancelled,
    JobContext,
    TimeLimitExceeded,
    WorkerConfig,
    start_worker,
    time_limits,
)
from jobrelay.facilitator import Facilitator
from jobrelay.protocol.codec import Codec
from jobrelay.protocol.errors import ErrorCode, RemoteProtocolError
from jobrelay.protocol.messages import Data, FacilitatorFrame, JobRequest, JobStatus
from tests.facilitator_client import KEYS, wait_until
from tests.protocol_harness import FACILITATOR_PUBLIC

pytestmark = pytest.mark.timeout(60)

TERMINAL = {s.value for s in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.REJECTED, JobStatus.CANCELLED)}


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


def worker_config(fac: Facilitator, tmp_path: Path, **overrides: object) -> WorkerConfig:
    fields: dict[str, object] = {
        "url": fac.url,
        "worker_id": "w1",
        "key": KEYS["w1"].private_bytes_raw().hex(),
        "facilitator_key": FACILITATOR_PUBLIC,
        "db_path": str(tmp_path / "worker.db"),
    }
    fields.update(overrides)
    return WorkerConfig(**fields)  # type: ignore[arg-type]


def endings(fac: Facilitator, job_id: str) -> list[tuple[str, str]]:
    view = fac.job(job_id)
    assert view is not None
    return [(e.status, e.detail) for e in view.history if e.status in TERMINAL]


def ended(fac: Facilitator, job_id: str) -> bool:
    view = fac.job(job_id)
    return view is not None and view.record.status in TERMINAL


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting for a reaper does not count)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_python_handler_soft_then_hard_limit_late_result_ignored(fac: Facilitator, tmp_path: Path) -> None:
    saw_soft = threading.Event()
    release = threading.Event()
    late: list[str] = []

    def stubborn(job: JobRequest, ctx: JobContext) -> str:
        wait_until(lambda: ctx.soft_limit_reached, 20)
        saw_soft.set()
        release.wait(30)  # ignores the soft limit and the hard one's cancel: a stuck handler
        try:
            ctx.update(progress=1.0)
        except JobCancelled:
            late.append("update refused")
        return "late result"

    def quick(job: JobRequest, ctx: JobContext) -> str:
        return "done"

    config = worker_config(fac, tmp_path, max_concurrent_jobs=1)
    with start_worker(config, {"stubborn": stubborn, "quick": quick}) as worker:
        worker.wait_connected(10)
        fac.submit("stubborn", job_id="slow", soft_time_limit=0.3, time_limit=1.0)
        wait_until(lambda: ended(fac, "slow"), 20)
        assert saw_soft.is_set()
        assert endings(fac, "slow") == [("failed", "time_limit")]
        # The stuck thread no longer holds the job's slot: the next job runs meanwhile.
        fac.submit("quick", job_id="next")
        wait_until(lambda: ended(fac, "next"), 20)
        assert endings(fac, "next") == [("completed", "done")]
        release.set()
        wait_until(lambda: bool(late), 20)
        wait_until(lambda: not any(t.name == "jobrelay-handler-slow" for t in threading.enumerate()), 20)
        assert late == ["update refused"]
        assert endings(fac, "slow") == [("failed", "time_limit")]
        assert fac.stats().refused_updates == 0  # nothing late was even sent


def test_kind_default_limit_and_the_jobs_own_limit_overrides_it(fac: Facilitator, tmp_path: Path) -> None:
    @time_limits(hard=0.5)
    def patient(job: JobRequest, ctx: JobContext) -> str:
        ctx.wait_cancelled(1.5)  # finishes in 1.5 s unless stopped
        return "finished"

    with start_worker(worker_config(fac, tmp_path), {"patient": patient}) as worker:
        worker.wait_connected(10)
        fac.submit("patient", job_id="default")
        fac.submit("patient", job_id="own", time_limit=20)
        wait_until(lambda: ended(fac, "default") and ended(fac, "own"), 30)
        assert endings(fac, "default") == [("failed", "time_limit")]
        assert endings(fac, "own") == [("completed", "finished")]


COMMAND = """
import os, pathlib, signal, subprocess, sys, time
out = pathlib.Path(sys.argv[1])
ignore = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"
child = subprocess.Popen([sys.executable, "-c", ignore])
signal.signal(signal.SIGTERM, lambda *_: (out / "soft").touch())
(out / "pids").write_text(f"{os.getpid()} {child.pid}")
while True:
    time.sleep(0.05)
"""


def test_command_soft_limit_is_sigterm_and_hard_limit_kills_the_process_group(
    fac: Facilitator, tmp_path: Path
) -> None:
    handler = CommandHandler(
        [sys.executable, "-c", COMMAND, str(tmp_path)], soft_time_limit=2.0, time_limit=4.0
    )
    pids: list[int] = []
    try:
        with start_worker(worker_config(fac, tmp_path), {"cmd": handler}) as worker:
            worker.wait_connected(10)
            fac.submit("cmd", job_id="c1")
            wait_until(lambda: (tmp_path / "pids").exists() and " " in (tmp_path / "pids").read_text(), 20)
            pids = [int(p) for p in (tmp_path / "pids").read_text().split()]
            wait_until(lambda: ended(fac, "c1"), 30)
            assert (tmp_path / "soft").exists()  # the soft limit reached the command as SIGTERM
            assert endings(fac, "c1") == [("failed", "time_limit")]
            # The child ignored SIGTERM and was never waited for by the test: only a signal to
            # the whole group ends it.
            wait_until(lambda: not any(alive(p) for p in pids), 10)
    finally:
        for pid in pids:
            if alive(pid):
                os.kill(pid, 9)


def test_a_command_that_stops_at_the_soft_limit_ends_as_time_limit(fac: Facilitator, tmp_path: Path) -> None:
    plain = CommandHandler([sys.executable, "-c", "import time; time.sleep(60)"])  # SIGTERM: default

    def wraps_up(job: JobRequest, ctx: JobContext) -> None:
        wait_until(lambda: ctx.soft_limit_reached, 20)
        raise TimeLimitExceeded

    with start_worker(worker_config(fac, tmp_path), {"cmd": plain, "py": wraps_up}) as worker:
        worker.wait_connected(10)
        fac.submit("cmd", job_id="c", soft_time_limit=0.3, time_limit=30)
        fac.submit("py", job_id="p", soft_time_limit=0.3, time_limit=30)
        wait_until(lambda: ended(fac, "c") and ended(fac, "p"), 20)  # long before the hard limit
    assert endings(fac, "c") == [("failed", "time_limit")]
    assert endings(fac, "p") == [("failed", "time_limit")]


def test_submit_refuses_limits_a_request_cannot_carry(fac: Facilitator) -> None:
    for soft, hard in ((None, 0), (None, -1.0), (None, float("nan")), (None, 1e9), (5.0, 5.0), (0.0, None)):
        with pytest.raises(ValueError, match="time_limit"):
            fac.submit("k", soft_time_limit=soft, time_limit=hard)
    with pytest.raises(TypeError, match="time_limit"):
        fac.submit("k", time_limit="10")  # type: ignore[arg-type]
    assert fac.jobs() == []


def test_a_request_with_a_bad_limit_is_refused_at_decode() -> None:
    codec = Codec(FacilitatorFrame, "json")
    body = b'{"type":"data","seq":1,"body":{"type":"job_request","job_id":"j","kind":"k","time_limit":%s}}'
    for bad in (b"-1", b"0", b"1e12", b'"10"'):
        with pytest.raises(RemoteProtocolError) as info:
            codec.decode(body % bad)
        assert info.value.code is ErrorCode.INVALID_FIELD
    frame = codec.decode(body % b"2.5")
    assert isinstance(frame, Data) and isinstance(frame.body, JobRequest)
    assert frame.body.time_limit == 2.5 and frame.body.soft_time_limit is None
