"""scripts/soak: the chaos cluster (a facilitator and N workers as processes behind fault proxies)
at a steady job rate for N minutes, with a cut or reset of one link every --fault-every seconds;
RSS, open descriptors and threads of every process sampled from /proc each --sample seconds; a
table of first/last/slope per hour; then every history checked as in scripts/chaos. Exit 0 when
nothing was lost and nothing grows (descriptors and threads back within a small tolerance of the
first half's peak, RSS growth in the second half under --rss-mib); 1 otherwise; 130 interrupted.
No process is restarted (a restart would reset what the soak watches).
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from chaos_check import Totals, format_table
from chaos_procs import Cluster, Timing, on_sigterm, run_cluster
from chaos_run import Submitter, check_run, drain
from scale_procs import proc_stats

__all__ = ["Series", "main", "verdict"]

FD_SLACK, THREAD_SLACK = 8, 4  # a connection in progress, a job's handler thread or two


@dataclass
class Series:
    """One process's samples: (minutes since start, RSS MiB, descriptors, threads)."""

    name: str
    samples: list[tuple[float, float, int, int]] = field(default_factory=list)

    def slope(self, column: int) -> float:
        """Least-squares slope of ``column`` per hour."""
        xs = [s[0] for s in self.samples]
        ys = [float(s[column]) for s in self.samples]
        if len(xs) < 2:
            return 0.0
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        return 60.0 * sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def verdict(series: Series, rss_mib: float) -> str:
    """ "flat", or what grows: compares the second half of the samples with the first."""
    half = len(series.samples) // 2
    if half < 1:
        return "flat"
    first, second = series.samples[: half + 1], series.samples[half:]
    growing = []
    if max(s[2] for s in second) > max(s[2] for s in first) + FD_SLACK:
        growing.append("descriptors")
    if max(s[3] for s in second) > max(s[3] for s in first) + THREAD_SLACK:
        growing.append("threads")
    if second[-1][1] - second[0][1] > rss_mib:
        growing.append("RSS")
    return "GROWING: " + ", ".join(growing) if growing else "flat"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    about = __doc__.split("\n\n")[0] if __doc__ else None
    p = argparse.ArgumentParser(prog="scripts/soak", description=about)
    p.add_argument("--minutes", type=float, default=10.0, help="how long to soak (default 10)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--rate", type=float, default=4.0, help="jobs submitted per second (default 4)")
    p.add_argument("--fault-every", type=float, default=20.0, help="seconds between link cuts (default 20)")
    p.add_argument("--sample", type=float, default=60.0, help="seconds between samples (default 60)")
    p.add_argument("--rss-mib", type=float, default=20.0, help="RSS growth allowed in the second half")
    p.add_argument("--seed", type=int, default=None, help="seed for jobs and faults (default: random)")
    p.add_argument("--keep", action="store_true", help="keep the run's folder even when it passes")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    folder = Path(tempfile.mkdtemp(prefix="jobrelay-soak-"))
    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"soak: {args.minutes:g} min, seed {seed}, files in {folder}", flush=True)
    cluster = Cluster(folder, args.workers, Timing())
    return run_cluster("soak", cluster, keep=args.keep, body=lambda: _soak(args, seed, cluster))


def _soak(args: argparse.Namespace, seed: int, cluster: Cluster) -> bool:
    cluster.start(time.monotonic() + 60.0)
    assert cluster.fac is not None
    pids = {"facilitator": cluster.fac.proc.pid}
    pids.update({m.name: m.proc.pid for m in cluster.members if m.proc is not None})
    series = {name: Series(name) for name in pids}
    rng = random.Random(seed)
    submitter = Submitter(cluster, args.rate, seed, 4)
    submitter.start()
    stop = threading.Event()
    faults: Counter[str] = Counter()
    started = time.monotonic()
    end = started + args.minutes * 60.0
    next_sample, next_fault = started, started + args.fault_every
    try:
        while (now := time.monotonic()) < end + 0.001 or next_sample <= end:
            if now >= next_sample:
                minute = (now - started) / 60.0
                for name, pid in pids.items():
                    st = proc_stats(pid)  # OSError if it died: the soak fails
                    series[name].samples.append((minute, st.rss_kib / 1024, st.fds, st.threads))
                print(f"  {minute:5.1f} min  " + "  ".join(
                    f"{n} {s.samples[-1][1]:.0f}MiB/{s.samples[-1][2]}fd/{s.samples[-1][3]}th"
                    for n, s in series.items()) + f"  ({len(submitter.steps)} jobs)", flush=True)  # fmt: skip
                next_sample += args.sample
            if now >= next_fault:
                rst = rng.random() < 0.5
                rng.choice(cluster.members).proxy.cut(rst=rst)
                faults["rst" if rst else "cut"] += 1
                next_fault += args.fault_every
            stop.wait(max(0.0, min(next_sample, next_fault) - time.monotonic()))
    finally:
        submitter.stop.set()
        submitter.join(10.0)
    drain(cluster, set(submitter.steps), time.monotonic() + 120.0)
    cluster.stop()
    totals = Totals(seed, faults=faults)
    check_run(cluster, submitter.steps, totals)
    print(format_table(totals))
    width = max(len(n) for n in series)
    print(f"{'process':<{width}}  {'RSS MiB first→last':>20} {'/h':>7}  {'fds':>9} {'/h':>6}  "
          f"{'threads':>9} {'/h':>6}  verdict")  # fmt: skip
    flat = True
    for name, s in series.items():
        first, last = s.samples[0], s.samples[-1]
        v = verdict(s, args.rss_mib)
        flat &= v == "flat"
        print(f"{name:<{width}}  {first[1]:>9.1f}→{last[1]:<9.1f} {s.slope(1):>+7.1f}  "
              f"{first[2]:>4}→{last[2]:<4} {s.slope(2):>+6.1f}  {first[3]:>4}→{last[3]:<4} "
              f"{s.slope(3):>+6.1f}  {v}")  # fmt: skip
    ok = totals.ok and flat
    for line in totals.problems[:30]:
        print(f"  VIOLATION {line}")
    print(f"soak: {'OK' if ok else 'FAILED'} (seed {seed})", flush=True)
    return ok


if __name__ == "__main__":
    sys.exit(main())
