"""bench_scale.py --profile DIR: py-spy samples the facilitator during one phase (jobs, storm).

A missed target should come with the profile that says why; this records one per phase as
collapsed stacks (``DIR/N-phase.txt``, one ``frame;frame;... count`` line per stack: grep-able,
and what flamegraph tools read) and prints the functions that hold most samples.
py-spy attaches by PID (root or ptrace rights); without it the bench runs unprofiled.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from scale_procs import Processes

__all__ = ["profiled", "top_functions"]

_RATE = 200  # samples/s: a 2,000-job phase gives a few thousand samples at little cost


@contextlib.contextmanager
def profiled(procs: Processes, pid: int, out: Path | None, name: str) -> Iterator[None]:
    """Sample ``pid`` while the body runs; no-op when ``out`` is None or py-spy is missing."""
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if out is None or spy is None:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.txt"
    path.unlink(missing_ok=True)  # a profile left by an earlier run is not this one's
    # --nonblocking: by default py-spy stops the process for every sample, which slows it down
    # more than the phase being measured can bear; --gil: what holds the GIL (work, not waits).
    cmd = [spy, "record", "--pid", str(pid), "--rate", str(_RATE), "--nonblocking", "--gil"]
    cmd += ["--format", "raw", "--output", str(path)]
    try:
        proc = procs.start(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError as exc:
        print(f"profile {name}: py-spy did not start ({exc}); this phase runs unprofiled", flush=True)
        yield
        return
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
        procs.stop(proc, 1.0)
        if path.exists():
            print(f"profile {path}:\n{top_functions(path)}", flush=True)


def top_functions(path: Path, count: int = 15) -> str:
    """The functions with most samples in their own frame (self) and anywhere on the stack."""
    own: Counter[str] = Counter()
    anywhere: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit():
            continue
        n = int(samples)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            anywhere[frame] += n
    if not total:
        return "  (no samples)"
    rows = [f"  {total:,} samples; self %, total %, function"]
    for frame, n in own.most_common(count):
        rows.append(f"  {100 * n / total:5.1f} {100 * anywhere[frame] / total:5.1f}  {frame}")
    return "\n".join(rows)
