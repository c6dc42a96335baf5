"""scripts/bench_scale.py --quick runs end to end against the real `jobrelay facilitator` command:
200 simulated workers connect, 200 jobs complete exactly once, a reconnect storm brings everyone
back, and nothing times out (the numbers themselves are not checked: they depend on the machine)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_cli_helpers import ROOT, clean_env


@pytest.mark.timeout(150)
@pytest.mark.alone  # 200 workers connecting at once: their storm would overflow others' listen queues
def test_bench_scale_quick(tmp_path: Path) -> None:
    out_file = tmp_path / "scale.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "bench_scale.py"), "--quick", "--json", str(out_file)],
        cwd=ROOT, env=clean_env(), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # it stops its own children on SIGTERM; not here
            proc.wait(5)
    print(out)  # the table, for the CI log
    assert proc.returncode == 0, out
    doc = json.loads(out_file.read_text())
    [row] = doc["rows"]
    assert row["n"] == 200 and row["error"] == ""
    assert row["connected"] == 200 and row["facilitator_connected"] == 200
    assert row["connect_s"] is not None
    assert row["jobs"] == 200 and row["jobs_completed_once"] == 200, row["job_problems"]
    assert row["job_problems"] == []
    [storm] = row["storms"]
    assert storm["cut"] == 200
    assert storm["reconnected"] == 200 and storm["reconnect_s"] is not None
    assert storm["facilitator"]["sessions_opened"] == 200
    assert row["heartbeat_timeouts_facilitator"] == 0 and row["heartbeat_timeouts_workers"] == 0
    assert row["sim_errors"] == 0, row["sim_error_texts"]
    assert row["full"]["fds"] >= row["empty"]["fds"] + 200  # a socket per worker, at least
    assert row["idle_cpu"] >= 0 and set(row["gap_max_s"]) >= {"idle", "jobs", "storm1"}
