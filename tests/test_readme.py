"""The README's examples run as written: the `## Library` section's, and every block marked
`<!-- runnable: ... -->`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli_helpers import ROOT, clean_env


def library_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Library\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the README's Library section"
    return match.group(1)


@pytest.mark.timeout(60)
def test_readme_library_example_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-c", library_example()], capture_output=True, text=True, timeout=45,
        env=clean_env(), cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    statuses = [line.split()[0] for line in result.stdout.splitlines() if line.strip()]
    assert statuses[0] == "accepted" and statuses[-1] == "completed", result.stdout


def celery_blocks() -> tuple[str, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Scaling out with Celery\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2, "the Celery section has tasks.py and run.py"
    return blocks[0], blocks[1]


@pytest.mark.timeout(90)
def test_readme_celery_example_runs_against_a_real_redis_and_celery_worker(tmp_path: Path) -> None:
    pytest.importorskip("celery")
    from jobrelay.testing.celery_cluster import (
        redis_server,
        start_celery_worker,
        stop_celery_worker,
        wait_celery_ready,
    )

    tasks, run = celery_blocks()
    (tmp_path / "tasks.py").write_text(tasks)
    (tmp_path / "run.py").write_text(run)
    with redis_server(tmp_path) as server:
        env = {**clean_env(), "REDIS_URL": server.url}
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("REDIS_URL", server.url)  # tasks.py reads it in the Celery worker
            worker = start_celery_worker(server.url, "readme", tmp_path, app="tasks", pythonpath=tmp_path)
        try:
            wait_celery_ready(server.url, [worker])
            result = subprocess.run(
                [sys.executable, str(tmp_path / "run.py")], capture_output=True, text=True, timeout=60,
                env=env, cwd=tmp_path, check=False,
            )  # fmt: skip
        finally:
            stop_celery_worker(worker)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert lines[0] == "accepted None " and lines[-1] == "completed None encoded talk.mp4", lines
    assert [line.split(" ", 2)[1] for line in lines[3:6]] == [
        "0.3333333333333333",
        "0.6666666666666666",
        "1.0",
    ]
    assert lines[1] == "running None dispatched to celery task " + lines[1].rsplit(" ", 1)[1]


def runnable_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"<!-- runnable:[^>]*-->\n```python\n(.*?)```", text, re.S)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("index", range(len(runnable_blocks())))
def test_readme_runnable_examples_run(index: int) -> None:
    result = subprocess.run(
        [sys.executable, "-c", runnable_blocks()[index]], capture_output=True, text=True, timeout=75,
        env=clean_env(), cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip(), "the example printed nothing"
    # A library is quiet until the application turns its logs on (README "Logging").
    assert result.stderr == "", result.stderr[-3000:]


@pytest.mark.timeout(60)
def test_the_library_logs_once_the_application_enables_it() -> None:
    # (after `import jobrelay`, whose import disables its logs)
    enabled = 'import jobrelay\nfrom loguru import logger\nlogger.enable("jobrelay")\n' + library_example()
    result = subprocess.run(
        [sys.executable, "-c", enabled], capture_output=True, text=True, timeout=45,
        env=clean_env(), cwd=ROOT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "facilitator: listening" in result.stderr and "worker w1 started" in result.stderr
