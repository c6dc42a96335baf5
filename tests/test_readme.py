"""The README's examples run as written: the `## Library` section's, and every block marked
`<!-- runnable: ... -->`."""

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
