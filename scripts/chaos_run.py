"""scripts/chaos: a facilitator and N workers as separate processes, each worker behind a loopback
fault proxy, jobs and status updates flowing while a seeded schedule cuts, resets, blackholes,
refuses, slows and splits the links and SIGKILLs/SIGTERMs and restarts every process; then every
history is checked (see chaos_check.py) and a table printed. Exit 0: nothing lost, duplicated or
reordered and every job ended exactly once; 1: a violation (listed, files kept); 2: bad usage;
130: interrupted. Every process started is stopped by its process group on every way out.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from chaos_check import TERMINAL, Totals, check_job, format_table, parse_records
from chaos_faults import KINDS, apply, heal, make_schedule
from chaos_procs import Cluster, Timing, on_sigterm, run_cluster

from jobrelay.storage import inspect_database

__all__ = ["Submitter", "check_run", "drain", "main"]

EPILOG = f"""\
faults: {", ".join(KINDS)} (see scripts/chaos_faults.py)

examples:
  scripts/chaos                                  # 60 s, 2 workers, a random seed (printed)
  scripts/chaos --seed 7 --duration 600 --workers 3 --rate 8
  scripts/chaos --seed 7 --keep                  # keep logs and databases even when it passes

The same seed gives the same fault schedule. Exit 0 when every status update a worker accepted
reached the facilitator exactly once, in order, and every job ended exactly once; 1 otherwise.
"""


class Submitter(threading.Thread):
    """Submits ``chaos`` jobs at ``rate`` per second through the HTTP API; a job counts as submitted
    once the API answered 201. A failed POST (the facilitator is down) is retried with the same id,
    which the facilitator treats as the same job."""

    def __init__(self, cluster: Cluster, rate: float, seed: int, max_steps: int) -> None:
        super().__init__(name="chaos-submitter", daemon=True)
        self.cluster, self.rate, self.max_steps = cluster, rate, max_steps
        self.rng = random.Random(seed + 1)
        self.stop = threading.Event()
        self.steps: dict[str, int] = {}  # submitted job id → its steps
        self.errors: list[str] = []

    def run(self) -> None:
        started = time.monotonic()
        while not self.stop.is_set():
            n = len(self.steps)
            if self.stop.wait(max(0.0, started + n / self.rate - time.monotonic())):
                return
            steps = self.rng.randint(1, self.max_steps)
            body = {"kind": "chaos", "job_id": f"chaos-{n:06d}",
                    "payload": {"steps": steps, "pause": round(self.rng.uniform(0.02, 0.2), 3)}}  # fmt: skip
            while not self.stop.is_set():
                try:
                    status, doc = self.cluster.api().call("POST", "/jobs", body)
                except OSError:
                    self.stop.wait(0.2)  # the facilitator is restarting: try again shortly
                    continue
                if status == 201:
                    self.steps[str(body["job_id"])] = steps
                else:
                    self.errors.append(f"POST /jobs -> {status} {doc}")
                    self.stop.set()
                break


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/chaos", description=__doc__.split("\n\n")[0] if __doc__ else None,
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="schedule seed (default: random, printed)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of faults and submits (default 60)")
    p.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    p.add_argument("--rate", type=float, default=4.0, help="jobs submitted per second (default 4)")
    p.add_argument("--max-steps", type=int, default=4, help="most progress updates per job (default 4)")
    p.add_argument("--drain", type=float, default=120.0, help="seconds allowed for jobs to end after")
    p.add_argument("--keep", action="store_true", help="keep the run's folder even when it passes")
    args = p.parse_args(argv)
    if args.workers < 1 or args.rate <= 0 or args.duration < 5 or args.max_steps < 1:
        p.error("need --workers >= 1, --rate > 0, --duration >= 5, --max-steps >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1 << 31)
    folder = Path(tempfile.mkdtemp(prefix="jobrelay-chaos-"))
    signal.signal(signal.SIGTERM, on_sigterm)
    print(f"chaos: seed {seed}; replay: scripts/chaos --seed {seed} --duration {args.duration:g} "
          f"--workers {args.workers} --rate {args.rate:g}; files in {folder}", flush=True)  # fmt: skip
    cluster = Cluster(folder, args.workers, Timing())

    def chaos() -> bool:
        totals = Totals(seed)
        _run(args, seed, cluster, totals)
        print(format_table(totals), flush=True)
        for line in totals.problems[:30]:
            print(f"  VIOLATION {line}", flush=True)
        print(f"chaos: {'OK' if totals.ok else 'FAILED'} (seed {seed})", flush=True)
        return totals.ok

    return run_cluster("chaos", cluster, keep=args.keep, body=chaos)


def _run(args: argparse.Namespace, seed: int, cluster: Cluster, totals: Totals) -> None:
    schedule = make_schedule(seed, args.duration, args.workers, cluster.timing)
    cluster.start(time.monotonic() + 60.0)
    started = time.monotonic()  # the schedule's clock starts once everything runs
    submitter = Submitter(cluster, args.rate, seed, args.max_steps)
    submitter.start()
    stop = threading.Event()
    try:
        for fault in schedule:
            stop.wait(max(0.0, started + fault.at - time.monotonic()))
            print(f"  {time.monotonic() - started:6.1f}s  {fault.describe()}"
                  f"  ({len(submitter.steps)} jobs submitted)", flush=True)  # fmt: skip
            apply(fault, cluster, stop, time.monotonic() + 60.0)
            totals.faults[fault.kind] += 1
        stop.wait(max(0.0, started + args.duration - time.monotonic()))
    finally:
        submitter.stop.set()
        submitter.join(10.0)
        heal(cluster)
    if submitter.errors:
        raise RuntimeError("; ".join(submitter.errors[:3]))
    print(f"  {time.monotonic() - started:6.1f}s  faults over; {len(submitter.steps)} jobs submitted; "
          "draining", flush=True)  # fmt: skip
    drain(cluster, set(submitter.steps), time.monotonic() + args.drain)
    print(f"  {time.monotonic() - started:6.1f}s  drained; stopping the workers", flush=True)
    cluster.stop()  # every worker SIGTERMed: must exit 0 in time
    print(f"  {time.monotonic() - started:6.1f}s  checking", flush=True)
    check_run(cluster, submitter.steps, totals)
    totals.extra += [
        ("process starts (facilitator / workers)",
         f"{cluster.facilitator_starts} / {sum(m.starts for m in cluster.members)}"),
        ("unclean stops (SIGTERM: exit != 0 or late)", str(len(cluster.unclean_stops))),
        ("wall time", f"{time.monotonic() - started:.1f} s"),
        ("seed", str(seed)),
    ]  # fmt: skip
    totals.problems += cluster.unclean_stops


def drain(cluster: Cluster, ids: set[str], deadline: float) -> None:
    """Wait until every submitted job has a terminal status (or the deadline: the checker then
    reports the unfinished ones). Asks about the oldest unfinished job until it ends, so each
    poll costs a request or two."""
    pending = sorted(ids)
    last_print = time.monotonic()
    while pending and time.monotonic() < deadline:
        status, doc = cluster.api().call("GET", f"/jobs/{pending[0]}")
        if status == 200 and doc.get("status") in TERMINAL:
            pending.pop(0)
            continue
        if time.monotonic() - last_print > 10:
            last_print = time.monotonic()
            print(f"          waiting for {len(pending)} jobs, first {pending[0]}", flush=True)
        time.sleep(0.5)  # polling the facilitator's state, under the drain deadline


def check_run(cluster: Cluster, steps: dict[str, int], totals: Totals) -> None:
    records: dict[str, list[int]] = {}
    for member in cluster.members:
        lines = member.record.read_text().splitlines() if member.record.exists() else []
        found, torn = parse_records(lines)
        for job, recorded in found.items():
            records.setdefault(job, []).extend(recorded)
        if torn:
            totals.problems.append(f"{member.name}: {torn} torn record lines")
    totals.recorded = sum(len(r) for r in records.values())
    api = cluster.api()
    for job_id, n in sorted(steps.items()):
        status, doc = api.call("GET", f"/jobs/{job_id}")
        history: list[Any] = doc.get("history", []) if status == 200 else []
        totals.add(check_job(job_id, n, history, records.get(job_id, [])))
    _, doc = api.call("GET", "/workers")
    accepted = {w["worker_id"]: int(w["in_hwm"]) for w in doc["workers"]}
    mismatched = 0
    for member in cluster.members:
        sent = sum(s.last_seq for s in inspect_database(cluster.folder / f"{member.name}.db").outbox)
        if sent != accepted.get(member.name, 0):
            mismatched += 1
            totals.problems.append(f"{member.name}: sent {sent} data messages, facilitator accepted "
                                   f"{accepted.get(member.name, 0)}")  # fmt: skip
    totals.extra.append(("worker streams: sent != accepted", str(mismatched)))
    cluster.stop_facilitator()


if __name__ == "__main__":
    sys.exit(main())
