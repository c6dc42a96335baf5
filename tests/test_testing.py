"""jobrelay.testing: the docs/TESTING.md example runs as written, and MemoryFacilitator keeps its
promises (clear errors, no thread left behind)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobrelay import (
    JobContext,
    JobRequest,
    JobStatus,
    JobStatusUpdate,
    JobTooLarge,
    MachineSpecs,
    WorkerConfig,
    generate_key,
    public_key_of,
)
from jobrelay.actors import start_worker
from jobrelay.protocol.session import SessionConfig
from jobrelay.testing import MemoryFacilitator
from tests.protocol_harness import FACILITATOR_KEY, FACILITATOR_PUBLIC

from .test_cli_helpers import ROOT

pytestmark = pytest.mark.timeout(60)

THREAD_NAME = "jobrelay-memory-facilitator"


def docs_example() -> str:
    """The first python block of docs/TESTING.md."""
    match = re.search(r"```python\n(.*?)```", (ROOT / "docs" / "TESTING.md").read_text(), re.S)
    assert match, "no python block in docs/TESTING.md"
    return match.group(1)


def readme_fragment() -> str:
    """The python block of the README's "Testing your handlers" section (a fragment: it uses
    ``key``, ``tmp_path`` and ``resize`` without defining them)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Testing your handlers\n", 1)[1].split("\n## ", 1)[0]
    assert "(docs/TESTING.md)" in section
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the README's Testing section"
    return match.group(1)


def poll(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def serving_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == THREAD_NAME]


@pytest.fixture
def key() -> str:
    return generate_key()


@pytest.fixture
def facilitator(key: str) -> Iterator[MemoryFacilitator]:
    with MemoryFacilitator({"w1": public_key_of(key)}, key=FACILITATOR_KEY) as fac:
        yield fac


def worker_config(tmp_path: Path, key: str, max_concurrent_jobs: int = 4) -> WorkerConfig:
    return WorkerConfig(
        facilitator_key=FACILITATOR_PUBLIC,
        url=MemoryFacilitator.url,
        worker_id="w1",
        key=key,
        db_path=str(tmp_path / "w1.db"),
        backoff_base=0.01,
        backoff_cap=0.05,
        max_concurrent_jobs=max_concurrent_jobs,
    )


def test_the_docs_example_runs_and_its_jobs_end_as_documented(tmp_path: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "docs_testing_example"}
    exec(compile(docs_example(), "docs/TESTING.md", "exec"), namespace)
    made: list[MemoryFacilitator] = []

    class Recording(MemoryFacilitator):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    namespace["MemoryFacilitator"] = Recording  # the example's set-up looks the name up when it runs
    tests = {name: f for name, f in namespace.items() if name.startswith("test_") and callable(f)}
    assert list(tests) == [
        "test_resize_reports_progress_then_completes",
        "test_a_payload_without_an_image_fails_the_job",
        "test_a_cancelled_render_ends_cancelled",
    ]
    for name, test in tests.items():
        (tmp_path / name).mkdir()
        test(tmp_path / name)  # runs the example's own assertions

    assert len(made) == 3
    assert all(f.stopped for f in made)
    assert not serving_threads()
    completed, failed, cancelled = made
    assert [(s.job_id, s.status, s.progress) for s in completed.statuses()] == [
        ("j1", JobStatus.ACCEPTED, None),
        ("j1", JobStatus.RUNNING, None),
        ("j1", JobStatus.RUNNING, 0.5),
        ("j1", JobStatus.RUNNING, 1.0),
        ("j1", JobStatus.COMPLETED, None),
    ]
    assert completed.statuses("j1")[-1].detail == "resized cat.png"
    assert [s.status for s in failed.statuses("j2")] == [
        JobStatus.ACCEPTED,
        JobStatus.RUNNING,
        JobStatus.FAILED,
    ]
    assert failed.statuses("j2")[-1].detail == "KeyError: 'image'"
    statuses = [s.status for s in cancelled.statuses("j3")]
    assert statuses[0] is JobStatus.ACCEPTED
    assert statuses[-1] is JobStatus.CANCELLED
    assert [s for s in statuses if s.terminal] == [JobStatus.CANCELLED]


def test_the_readme_fragment_runs_given_what_it_leaves_out(tmp_path: Path, key: str) -> None:
    def resize(job: JobRequest, ctx: JobContext) -> str:
        ctx.update(progress=1.0)
        return "resized"

    namespace: dict[str, Any] = {
        "MemoryFacilitator": MemoryFacilitator,
        "JobStatus": JobStatus,
        "WorkerConfig": WorkerConfig,
        "public_key_of": public_key_of,
        "start_worker": start_worker,
        "key": key,
        "tmp_path": tmp_path,
        "resize": resize,
    }
    exec(compile(readme_fragment(), "README.md", "exec"), namespace)
    assert namespace["facilitator"].stopped
    assert not serving_threads()


def test_stop_ends_the_serving_thread_and_every_thread_it_started(key: str) -> None:
    before = set(threading.enumerate())
    facilitator = MemoryFacilitator({"w1": public_key_of(key)}, key=FACILITATOR_KEY)
    started = set(threading.enumerate()) - before
    assert [t.name for t in started] == [THREAD_NAME]
    assert "waiting" in repr(facilitator)
    facilitator.stop()
    assert not any(t.is_alive() for t in started)
    assert facilitator.stopped
    facilitator.stop()  # again: nothing happens


def test_leaving_the_with_block_stops_it_while_a_worker_is_connected(tmp_path: Path, key: str) -> None:
    with MemoryFacilitator({"w1": public_key_of(key)}, key=FACILITATOR_KEY) as facilitator:
        worker = start_worker(worker_config(tmp_path, key), transport_factory=facilitator.transport_factory)
        try:
            worker.wait_connected(10)
            facilitator.wait_for(lambda: facilitator.connected)
            (thread,) = serving_threads()
        except BaseException:
            worker.stop()
            raise
    try:
        assert not thread.is_alive()
        assert not facilitator.connected
        # The worker saw its connection go and cannot get a new one.
        poll(lambda: worker.state().value != "connected")
        attempts = facilitator.network.attempts
        poll(lambda: facilitator.network.attempts > attempts)
        assert facilitator.sessions == 1
    finally:
        worker.stop()


def test_wait_for_job_says_why_it_timed_out(facilitator: MemoryFacilitator) -> None:
    facilitator.submit("lonely", "resize")
    with pytest.raises(TimeoutError, match=r"'lonely' did not finish within 0.2 s: statuses so far: none; "
                       r"no worker ever connected"):  # fmt: skip
        facilitator.wait_for_job("lonely", timeout=0.2)
    with pytest.raises(ValueError, match="never submitted"):
        facilitator.wait_for_job("unknown", timeout=0.2)
    with pytest.raises(TimeoutError, match=r"condition not met within 0\.1 s"):
        facilitator.wait_for(lambda: False, timeout=0.1)


def test_a_wrong_key_shows_in_the_timeout_message(tmp_path: Path, facilitator: MemoryFacilitator) -> None:
    config = worker_config(tmp_path, generate_key())  # not the authorized key
    with start_worker(config, transport_factory=facilitator.transport_factory):
        facilitator.submit("j", "resize")
        facilitator.wait_for(lambda: bool(facilitator.closes))
        with pytest.raises(TimeoutError, match=r"no worker is connected \(last session ended: .+\)"):
            facilitator.wait_for_job("j", timeout=0.2)
    assert facilitator.status("j") is None


def test_submit_and_cancel_refuse_what_cannot_work(key: str) -> None:
    small = SessionConfig(heartbeat_interval=0.5, heartbeat_timeout=5.0, max_frame_bytes=1024)
    with MemoryFacilitator({"w1": public_key_of(key)}, small, key=FACILITATOR_KEY) as facilitator:
        with pytest.raises(ValueError, match=r"job_id must be 1\.\.256"):
            facilitator.submit("", "resize")
        with pytest.raises(ValueError, match=r"kind must be 1\.\.256"):
            facilitator.submit("j", "k" * 257)
        with pytest.raises(JobTooLarge, match="job 'big'"):
            facilitator.submit("big", "resize", "x" * 2000)
        with pytest.raises(ValueError, match="a Python object is not a JSON value"):
            facilitator.submit("odd", "resize", object())
        assert facilitator.store.sent == []  # nothing refused was stored
        assert facilitator.submit("j", "resize") == "j"
        assert facilitator.submit("j", "resize", {"other": 1}) == "j"  # same id: nothing new
        assert len(facilitator.store.sent) == 1
        assert not facilitator.cancel("unknown")
        assert facilitator.cancel("j", "not needed")
        with pytest.raises(JobTooLarge):
            facilitator.cancel("j", "r" * 2000)
    with pytest.raises(RuntimeError, match="stopped"):
        facilitator.submit("late", "resize")
    with pytest.raises(RuntimeError, match="stopped"):
        facilitator.cancel("j")


def test_jobs_wait_for_a_worker_and_cancel_reaches_a_queued_job(
    tmp_path: Path, key: str, facilitator: MemoryFacilitator
) -> None:
    release = threading.Event()

    def busy(job: JobRequest, ctx: JobContext) -> str:
        release.wait(10)
        return "done"

    facilitator.network.refuse.set()
    facilitator.submit("first", "busy")  # no worker yet: kept until one connects
    facilitator.submit("second", "busy")
    config = worker_config(tmp_path, key, max_concurrent_jobs=1)
    with start_worker(config, {"busy": busy}, transport_factory=facilitator.transport_factory) as worker:
        worker.outbox.publish(MachineSpecs(specs={"cpus": 1}, at=time.time())).get(timeout=5)
        poll(lambda: facilitator.network.attempts >= 1)
        assert facilitator.sessions == 0
        facilitator.network.refuse.clear()
        facilitator.wait_for(lambda: facilitator.status("second") is JobStatus.ACCEPTED)
        assert facilitator.status("first") in {JobStatus.ACCEPTED, JobStatus.RUNNING}
        assert facilitator.cancel("second", "no room")  # queued behind "first": ends at once
        assert facilitator.wait_for_job("second").status is JobStatus.CANCELLED
        release.set()
        assert facilitator.wait_for_job("first").detail == "done"
        assert not facilitator.cancel("first")
    received = facilitator.received()
    assert [b for b in received if isinstance(b, JobStatusUpdate)] == facilitator.statuses()
    assert MachineSpecs(specs={"cpus": 1}, at=received[0].at) == received[0]  # published before any job ran
