# Helpers the benchmarks share: polling with a deadline, a child process that reports its port
# (or any number) on its first line, a child's memory from /proc, medians with their spread,
# the CPU a process used and what the machine's CPUs did meanwhile (steal included), and the one
# table format they print.
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "CpuSample",
    "CpuUse",
    "child",
    "cpu_sample",
    "cpu_use",
    "proc_kb",
    "spread",
    "table",
    "wait_until",
]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.001) -> None:
    """Poll ``predicate`` every ``every`` seconds until it holds.

    Raises:
        TimeoutError: it did not hold within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(every)


def child(script: str, *args: str, stdin: bool = False) -> tuple[subprocess.Popen[str], int]:
    """``python script args…``, once it printed a number on its first line (a port, a pid…).
    ``stdin``: a pipe to the child's stdin (a child that stops when it closes).

    Raises:
        RuntimeError: the child exited or printed something else first (it is killed).
    """
    proc = subprocess.Popen(
        [sys.executable, script, *args],
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin else None,
        text=True,
    )
    assert proc.stdout is not None
    line = ""
    try:
        line = proc.stdout.readline()
    finally:
        if not line.strip().isdigit():  # Ctrl-C included: the child must not outlive us
            proc.kill()
            proc.wait(10)
    if not line.strip().isdigit():
        raise RuntimeError(f"child {' '.join(args[:1])} did not start")
    return proc, int(line)


class CpuSample(NamedTuple):
    """CPU counters at one instant: the machine's (/proc/stat, all CPUs, in ticks) and each
    process's user + system seconds."""

    machine: tuple[int, ...]  # user nice system idle iowait irq softirq steal
    processes: dict[int, float]


class CpuUse(NamedTuple):
    """What happened between two samples: seconds of CPU per process; the share of the
    machine's CPU time that was busy, and the share the hypervisor gave to others (steal)."""

    seconds: dict[int, float]
    busy: float
    stolen: float


def cpu_sample(pids: Sequence[int]) -> CpuSample:
    ticks = os.sysconf("SC_CLK_TCK")
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:9]
    processes = {}
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        processes[pid] = (int(stat[11]) + int(stat[12])) / ticks
    return CpuSample(tuple(int(f) for f in fields), processes)


def cpu_use(before: CpuSample, after: CpuSample) -> CpuUse:
    delta = [b - a for a, b in zip(before.machine, after.machine, strict=True)]
    total = sum(delta) or 1
    idle = delta[3] + delta[4]
    return CpuUse(
        {pid: after.processes[pid] - before.processes[pid] for pid in before.processes},
        (total - idle - delta[7]) / total,
        delta[7] / total,
    )


def proc_kb(pid: int, field: str) -> int:
    """A /proc/PID/status field in kB (VmRSS, VmHWM…)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


def spread(values: Sequence[float], fmt: str = "{:,.0f}") -> str:
    """``median (min–max)`` of the values, each formatted with ``fmt``."""
    if len(values) == 1:
        return fmt.format(values[0])
    mid, low, high = statistics.median(values), min(values), max(values)
    return f"{fmt.format(mid)} ({fmt.format(low)}–{fmt.format(high)})"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a Markdown table, every column as wide as its widest cell."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
