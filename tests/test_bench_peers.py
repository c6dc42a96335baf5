"""scripts/bench_peers.py --quick runs every peer for real (jobrelay, mosquitto, nats-server,
rabbitmq-server, the raw websocket sink) and prints one row of numbers for each; an interrupted
run stops every process it started. The numbers themselves depend on the machine: not checked.

Skipped, saying what is missing, when a broker's Debian package or a client from the `bench`
extra is not installed (.ci/run installs the packages, scripts/test the extra)."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_cli_helpers import ROOT, clean_env

sys.path.insert(0, str(ROOT / "scripts"))
from bench_brokers import Broker, BrokerError, missing_debs

SCRIPT = ROOT / "scripts" / "bench_peers.py"
PEERS = ("jobrelay", "paho-mqtt", "nats-py", "pika", "raw websocket")

missing = missing_debs() + [m for m in ("paho", "nats", "pika") if importlib.util.find_spec(m) is None]
installed = pytest.mark.skipif(bool(missing), reason=f"not installed: {', '.join(missing)}")


def start(tmp_path: Path, *args: str) -> subprocess.Popen[str]:
    # TMPDIR: every directory the bench makes (and so every broker's cwd) is under tmp_path.
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--no-install", *args],
        cwd=ROOT, env=clean_env(TMPDIR=str(tmp_path)), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def left_behind(tmp_path: Path) -> list[str]:
    """Processes still running in a directory under tmp_path (each broker runs in its own) or
    naming one (the facilitator child and its database)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cwd = os.readlink(f"/proc/{pid}/cwd")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue  # gone, or not ours to read
        if cwd.startswith(str(tmp_path)) or str(tmp_path) in cmd:
            found.append(f"{pid}: {cmd}")
    return found


def stop(proc: subprocess.Popen[str]) -> None:
    """SIGTERM first, so that the script stops its brokers (they run in sessions of their own),
    then SIGKILL to its group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture
def bench_tmp(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    for line in left_behind(tmp_path):  # after a failure: do not leave brokers running
        os.kill(int(line.split(":")[0]), signal.SIGKILL)


@installed
@pytest.mark.timeout(90)
def test_quick_run_measures_every_peer(bench_tmp: Path) -> None:
    proc = start(bench_tmp, "--quick")
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        stop(proc)
    print(out)  # the table, for the CI log
    assert proc.returncode == 0, err
    rows = [line for line in out.splitlines() if line.startswith("| ") and "msg/s" not in line]
    assert [r for p in PEERS for r in rows if p in r] == rows and len(rows) == len(PEERS), out
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert re.fullmatch(r"[\d,]+", cells[2]) and int(cells[2].replace(",", "")) > 0, row
    assert rows[-1].split("|")[5].strip() == "1.00"  # the ceiling's own ratio
    assert left_behind(bench_tmp) == []


@installed
@pytest.mark.timeout(90)
def test_ctrl_c_stops_every_broker(bench_tmp: Path) -> None:
    proc = start(bench_tmp, "--messages", "1000000", "--rounds", "1")
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert line == "brokers started\n", line + proc.stderr.read()
        running = "".join(left_behind(bench_tmp))
        assert all(b in running for b in ("mosquitto", "nats-server", "epmd", "beam.smp")), running
        proc.send_signal(signal.SIGINT)  # to the script alone, as if only it had the terminal
        proc.communicate(timeout=45)
    finally:
        stop(proc)
    assert proc.returncode != 0
    assert left_behind(bench_tmp) == []


class Refused(Broker):
    """A broker that exits at once, as one with a bad config or a taken port would."""

    name = "refused"

    def command(self) -> tuple[list[str], dict[str, str]]:
        return [sys.executable, "-c", "print('listener: address in use'); raise SystemExit(3)"], {}


@pytest.mark.timeout(30)
def test_a_broker_that_does_not_start_says_why(bench_tmp: Path) -> None:
    broker = Refused(bench_tmp)
    with pytest.raises(BrokerError, match="refused did not start: listener: address in use"), broker:
        pass
    assert broker.procs == [] and left_behind(bench_tmp) == []
