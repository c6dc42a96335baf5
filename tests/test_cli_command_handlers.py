"""A command handler never outlives its worker: `kill -9` of `jobrelay worker` ends the command's
whole process group, and the restarted worker reports the job `failed: worker_restarted` only once
no process of the previous life is left (real worker, facilitator and command processes)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobrelay.facilitator import Facilitator, FacilitatorConfig, start_facilitator
from tests.protocol_harness import FACILITATOR_KEY_HEX
from tests.test_cli_helpers import (
    ROOT,
    Service,
    clean_env,
    free_port,
    make_key,
    services,
    wait_until,
    worker_args,
)

pytestmark = pytest.mark.timeout(60)

# A silent handler: it starts a grandchild, records both pids, prints nothing and works "forever".
SILENT = """
import json, os, subprocess, sys
job = json.load(sys.stdin)
child = subprocess.Popen(["sleep", "120"])
with open(os.environ["PIDS_FILE"] + ".tmp", "w") as f:
    f.write(f"{os.getpid()} {child.pid}")
os.rename(os.environ["PIDS_FILE"] + ".tmp", os.environ["PIDS_FILE"])
child.wait()
"""


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, ended but not yet reaped by init, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.fixture
def facilitator(tmp_path: Path) -> Iterator[tuple[Facilitator, Path]]:
    key, public = make_key(tmp_path, "w1")
    config = FacilitatorConfig(
        key=FACILITATOR_KEY_HEX, db_path=str(tmp_path / "f.db"), authorized_keys={"w1": public},
        durability="normal", stop_timeout=3.0,
    )  # fmt: skip
    with start_facilitator(config) as fac:
        yield fac, key


@pytest.fixture
def handler_pids(tmp_path: Path) -> Iterator[Path]:
    """The file the silent handler writes its pids to; whatever it names is killed at the end."""
    path = tmp_path / "pids"
    yield path
    if path.exists():
        for pid in map(int, path.read_text().split()):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def start(tmp: Path, fac: Facilitator, key: Path, pids: Path) -> Service:
    script = tmp / "silent.py"
    script.write_text(SILENT)
    (tmp / "w1.ready").unlink(missing_ok=True)
    args = worker_args(
        tmp, f"ws://127.0.0.1:{fac.port}", "w1", key, "--handler", f"silent={sys.executable} {script}"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBRELAY_")}
    service = Service(args, tmp / "w1.log", env={**env, "PYTHONUNBUFFERED": "1", "PIDS_FILE": str(pids)})
    service.start().ready(tmp / "w1.ready")
    return service


def last_status(fac: Facilitator, job_id: str) -> tuple[str, str] | None:
    view = fac.job(job_id)
    return None if view is None or not view.history else (view.history[-1].status, view.history[-1].detail)


def run_silent_job(tmp: Path, fac: Facilitator, key: Path, pids: Path, running: list[Service]) -> list[int]:
    """Start a worker, give it a silent job, return the pids of the command and its child."""
    running.append(start(tmp, fac, key, pids))
    fac.submit("silent", {"n": 1}, job_id="j1", worker="w1")
    wait_until(pids.exists, 15, "the handler started")
    found = [int(p) for p in pids.read_text().split()]
    wait_until(lambda: last_status(fac, "j1") == ("running", ""), 10, "j1 running")
    return found


def kill9(service: Service) -> None:
    assert service.proc is not None
    service.proc.kill()  # SIGKILL to the worker alone, as an OOM killer or `kill -9 PID` does
    service.proc.wait(10)


def test_kill_9_of_the_worker_ends_the_handlers_process_group(
    tmp_path: Path, facilitator: tuple[Facilitator, Path], handler_pids: Path
) -> None:
    fac, key = facilitator
    with services() as running:
        pids = run_silent_job(tmp_path, fac, key, handler_pids, running)
        assert all(alive(pid) for pid in pids)
        kill9(running[0])
        wait_until(lambda: not any(alive(pid) for pid in pids), 5, "the handler and its child gone")
        running.append(start(tmp_path, fac, key, handler_pids))
        wait_until(lambda: last_status(fac, "j1") == ("failed", "worker_restarted"), 15, "j1 failed")


def test_restarted_worker_reports_only_after_the_old_handler_is_gone(
    tmp_path: Path, facilitator: tuple[Facilitator, Path], handler_pids: Path
) -> None:
    fac, key = facilitator
    with services() as running:
        pids = run_silent_job(tmp_path, fac, key, handler_pids, running)
        # Freeze the command's watchdog (its group leader), so it cannot end the group when the
        # worker dies: the restarted worker is then the only one that can.
        leader = os.getpgid(pids[0])
        os.kill(leader, signal.SIGSTOP)
        kill9(running[0])
        assert all(alive(pid) for pid in pids), "the frozen watchdog should have left them running"
        running.append(start(tmp_path, fac, key, handler_pids))
        wait_until(
            lambda: last_status(fac, "j1") is not None and last_status(fac, "j1") != ("running", ""), 15
        )
        assert last_status(fac, "j1") == ("failed", "worker_restarted")
        assert not [pid for pid in pids if alive(pid)], "reported failed while the old command ran"
        assert "its command from before the restart was still running" in running[1].text()


def docs_example() -> str:
    section = (ROOT / "docs" / "CLI.md").read_text().split("<!-- command-handler:", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "docs/CLI.md command handler example not found"
    return match.group(1)


def test_docs_command_handler_example_runs_as_pasted() -> None:
    script = docs_example()
    for port in ("8765", "8766"):  # the example's ports, swapped for free ones
        script = re.sub(rf"\b{port}\b", str(free_port()), script)
    proc = subprocess.Popen(
        ["bash", "-e", "-c", script], cwd=ROOT, env=clean_env(), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=45)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    assert "thumbs/cat.png written (64x64)" in out, out
    assert "completed" in out, out
