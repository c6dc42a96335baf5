"""scripts/bench_backlog.py --quick builds a backlog with the facilitator down, replays all of it
end to end under each link setting (the defaults, the earlier defaults, a large window),
measures the worker's memory and stop(), and leaves nothing running. The numbers themselves
depend on the machine: only their presence is checked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_bench_peers import left_behind, stop
from tests.test_cli_helpers import ROOT, clean_env

SCRIPT = ROOT / "scripts" / "bench_backlog.py"


@pytest.mark.timeout(90)
def test_quick_run_replays_every_message_and_stops(tmp_path: Path) -> None:
    # TMPDIR: the bench's databases and children all name a path under tmp_path.
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick", "--no-raw"],
        cwd=ROOT, env=clean_env(TMPDIR=str(tmp_path)), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=75)
        leftover = left_behind(tmp_path)
    finally:
        stop(proc)
        for line in left_behind(tmp_path):  # after a failure: no worker child left running
            os.kill(int(line.split(":")[0]), signal.SIGKILL)
    print(out)  # the table, for the CI log
    assert proc.returncode == 0, err
    replays = re.findall(r"\| replay end to end, [^|]+\| ([\d,]+) msg/s", out)
    assert len(replays) == 3 and all(int(r.replace(",", "")) > 0 for r in replays), out
    # every message of the backlog reached the facilitator, in each replay
    assert re.search(r"accepted in store commits: (20,000 in [\d,]+(, |\))){3}", out), out
    assert len(re.findall(r"growth, peak − empty +\| -?[\d.,]+ MB", out)) == 3, out
    assert re.search(r"Worker\.stop\(\) with the backlog unsent +\| [\d.]+ s", out), out
    assert leftover == []
