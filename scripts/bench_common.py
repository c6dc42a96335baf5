# Helpers the benchmarks share: polling with a deadline, a child process that reports its port
# (or any number) on its first line, a child's memory from /proc, medians with their spread,
# and the one table format they print.
from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["child", "proc_kb", "spread", "table", "wait_until"]


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
