"""The README's library example runs as written (extracted from the `## Library` section)."""

from __future__ import annotations

import re
import subprocess
import sys

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
