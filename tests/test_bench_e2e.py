"""scripts/bench_e2e.py --quick runs a real worker against a real facilitator (a child process)
and the raw sink, and prints every row of its table: throughput, publish latency beside the disk's
fdatasync floor, and the CPU each process used per message with what the machine's CPUs did
meanwhile (steal included: the latency's tail on a shared machine follows it), and that latency
run second by second. The numbers depend on the machine; only their shape is checked."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

from tests.test_cli_helpers import ROOT, clean_env

SCRIPT = ROOT / "scripts" / "bench_e2e.py"


def test_quick_run_prints_every_row() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--quick"],
        cwd=ROOT, env=clean_env(), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:  # its facilitator and sink are in its process group
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    assert proc.returncode == 0, err[-2000:]
    for row in (
        r"durable e2e, publish → facilitator commit → ack\s*\|\s*[\d,]+ msg/s\s*\|\s*[\d,]+ msg/s",
        r"publish latency p50 at 1,000 msg/s\s*\|\s*[\d.]+ ms\s*\|\s*[\d.]+ ms \(fdatasync\)",
        r"publish latency p99 at 1,000 msg/s\s*\|\s*[\d.]+ ms\s*\|\s*[\d.]+ ms \(fdatasync\)",
    ):
        assert re.search(row, out), (row, out)
    cpu = re.search(r"worker / facilitator\s*\|\s*([\d,]+) µs / ([\d,]+) µs", out)
    assert cpu is not None, out
    assert all(int(v.replace(",", "")) > 0 for v in cpu.groups())  # both processes did the work
    machine = re.search(r"busy / stolen by the hypervisor\s*\|\s*(\d+)% / (\d+)%", out)
    assert machine is not None, out
    busy, stolen = (int(v) for v in machine.groups())
    assert 0 < busy <= 100 and 0 <= stolen <= 100
    # --quick's latency run is one second: one row, counting at most its 1,000 publishes.
    seconds = re.findall(r"^\| (\d+)\s*\| ([\d.]+) ms\s*\| (\d+)\s*\| (\d+)% / (\d+)%", out, re.M)
    assert [row[0] for row in seconds] == ["1"], out
    assert 0 <= int(seconds[0][2]) <= 1000


def test_bad_latency_seconds_is_refused() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--latency-seconds", "0"],
        check=False, cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--latency-seconds between 1 and 3600" in proc.stderr
