"""Command handlers through a real worker (in-memory transport, real command processes): the
final stdout line as completion detail, per-kind concurrency, and no process left behind."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest

from jobrelay.actors import CommandHandler, CommandOptions, start_worker
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.messages import JobCancel, JobStatus
from jobrelay.testing import MemoryFacilitator
from tests.protocol_harness import FACILITATOR_KEY
from tests.test_actors_worker import KEY, config, terminal
from tests.test_cli_command_handlers import alive

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


@pytest.fixture
def facilitator() -> Iterator[MemoryFacilitator]:
    fac = MemoryFacilitator({"w1": public_key_hex(KEY)}, key=FACILITATOR_KEY)
    yield fac
    fac.stop()


def python(code: str, options: CommandOptions | None = None) -> CommandHandler:
    return CommandHandler([sys.executable, "-c", code], options)


def detail(fac: MemoryFacilitator, job_id: str) -> str:
    return fac.statuses(job_id)[-1].detail


def test_final_plain_stdout_line_is_the_completion_detail(
    tmp_path: Path, facilitator: MemoryFacilitator, caplog: pytest.LogCaptureFixture
) -> None:
    plain_last = python(
        "import json, sys; json.load(sys.stdin)\n"
        "print(json.dumps({'progress': 0.5, 'detail': 'half'}))\n"
        "print('chatter that is no status')\n"
        "print('written out.mp4 (3 MB)')\n"
    )
    status_last = python('print(\'{"status": "running", "progress": 1, "detail": "all done"}\')')
    silent = python("pass")
    handlers = {"plain": plain_last, "status": status_last, "silent": silent}
    with start_worker(config(tmp_path), handlers, transport_factory=facilitator.network) as worker:
        worker.wait_connected(5)
        for kind in handlers:
            facilitator.submit(kind, kind)
        facilitator.wait_for(lambda: all(terminal(facilitator, k) for k in handlers), timeout=30)
    assert terminal(facilitator, "plain") == [JobStatus.COMPLETED]
    assert detail(facilitator, "plain") == "written out.mp4 (3 MB)"
    assert [s.detail for s in facilitator.statuses("plain") if s.progress == 0.5] == ["half"]
    assert detail(facilitator, "status") == "all done"
    assert detail(facilitator, "silent") == ""
    journal = tmp_path / "worker.db.handlers"  # each group is forgotten once it has ended
    assert not journal.exists() or not any(journal.iterdir())


def test_concurrency_option_limits_jobs_of_its_kind(tmp_path: Path, facilitator: MemoryFacilitator) -> None:
    # Each job holds a lock directory while it runs: a second job of the kind running at the same
    # time cannot create it and fails. Other kinds still use the free slots meanwhile.
    lock = tmp_path / "lock"
    held = f"import os, time\nos.mkdir({str(lock)!r})\ntime.sleep(0.3)\nos.rmdir({str(lock)!r})\n"
    handlers = {"one": python(held, CommandOptions(concurrency=1)), "free": python("pass")}
    with start_worker(
        config(tmp_path, max_concurrent_jobs=4), handlers, transport_factory=facilitator.network
    ) as worker:
        worker.wait_connected(5)
        for n in range(4):
            facilitator.submit(f"one-{n}", "one")
        facilitator.submit("free-0", "free")
        jobs = [*(f"one-{n}" for n in range(4)), "free-0"]
        facilitator.wait_for(lambda: all(terminal(facilitator, j) for j in jobs), timeout=30)
        assert terminal(facilitator, "free-0") == [JobStatus.COMPLETED]
        # free-0 did not wait behind the four jobs of the limited kind.
        ends = {j: facilitator.statuses(j)[-1].at for j in jobs}
        assert ends["free-0"] < ends["one-1"]
    for n in range(4):
        assert terminal(facilitator, f"one-{n}") == [JobStatus.COMPLETED], facilitator.statuses(f"one-{n}")


def test_cancelled_command_leaves_no_process_of_its_group(
    tmp_path: Path, facilitator: MemoryFacilitator
) -> None:
    pids = tmp_path / "pids"
    code = (
        "import os, subprocess, sys\n"
        "child = subprocess.Popen(['sleep', '60'])\n"
        f"open({str(pids)!r}, 'w').write(f'{{os.getpid()}} {{child.pid}}')\n"
        "print('{\"progress\": 0.1}', flush=True)\n"
        "child.wait()\n"
    )
    with start_worker(
        config(tmp_path), {"long": python(code, CommandOptions(kill_after=1.0))},
        transport_factory=facilitator.network,
    ) as worker:  # fmt: skip
        worker.wait_connected(5)
        facilitator.submit("c1", "long")
        facilitator.wait_for(lambda: any(s.progress == 0.1 for s in facilitator.statuses("c1")), timeout=20)
        with facilitator.lock:
            facilitator.store.publish(JobCancel(job_id="c1", reason="user asked"))
            facilitator._send_pending()
        facilitator.wait_for(lambda: bool(terminal(facilitator, "c1")), timeout=20)
    assert terminal(facilitator, "c1") == [JobStatus.CANCELLED]
    assert not [pid for pid in map(int, pids.read_text().split()) if alive(pid)]
