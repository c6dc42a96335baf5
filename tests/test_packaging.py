"""The source distribution is complete: built with `python -m build --sdist` (as a packager
would), it carries the license the metadata names, the docs, and a test suite that runs from the
unpacked tree (conftest and helpers included), against the package in that tree."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.test_cli_helpers import ROOT, clean_env


@pytest.fixture(scope="module")
def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    build = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--outdir", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=240, env=clean_env(), check=False,
    )  # fmt: skip
    assert build.returncode == 0, build.stdout[-2000:] + build.stderr[-2000:]
    (archive,) = out.glob("jobrelay-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(out, filter="data")
    (tree,) = (p for p in out.iterdir() if p.is_dir())
    return tree


@pytest.mark.timeout(400)
def test_the_sdist_carries_license_docs_and_test_helpers(unpacked: Path) -> None:
    assert "MIT License" in (unpacked / "LICENSE").read_text()
    assert "License-File: LICENSE" in (unpacked / "PKG-INFO").read_text()
    for name in ("conftest.py", "test_cli_helpers.py", "protocol_harness.py", "facilitator_client.py"):
        assert (unpacked / "tests" / name).exists(), name
    assert (unpacked / "docs" / "CLI.md").exists()
    assert (unpacked / "docs" / "container" / "compose.yaml").exists()
    assert (unpacked / "jobrelay" / "storage" / "lock.py").is_file()  # the symlinked rooms, as files
    assert not list(unpacked.rglob("*.db")) and not list(unpacked.rglob("__pycache__"))


@pytest.mark.timeout(400)
def test_the_tests_run_from_the_unpacked_sdist(unpacked: Path) -> None:
    env = clean_env(PYTHONPATH=str(unpacked))  # its own jobrelay, not this checkout's
    where = subprocess.run(
        [sys.executable, "-c", "import jobrelay; print(jobrelay.__file__)"],
        capture_output=True, text=True, timeout=60, env=env, cwd=unpacked, check=True,
    )  # fmt: skip
    assert where.stdout.strip() == str(unpacked / "jobrelay" / "__init__.py")
    collect = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        capture_output=True, text=True, timeout=240, env=env, cwd=unpacked, check=False,
    )  # fmt: skip
    assert collect.returncode == 0, collect.stdout[-3000:] + collect.stderr[-2000:]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x",
         "-o", "addopts=--import-mode=importlib",  # one -q (setup.cfg's and ours hide the summary)
         "tests/test_package.py", "tests/test_container_docs.py", "tests/test_cli_config.py"],
        capture_output=True, text=True, timeout=240, env={**env, "COVERAGE_PROCESS_START": ""},
        cwd=unpacked, check=False,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "[100%]" in run.stdout  # (-q twice, with setup.cfg's: progress only, no summary line)
