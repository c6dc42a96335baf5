#!/usr/bin/env python3
"""Scale benchmark: one facilitator process holding N simulated workers (issue "A facilitator
that holds 10,000 workers").

The facilitator runs as its own process through `jobrelay facilitator` with its default settings
(or --facilitator-cmd, e.g. another checkout's `.venv/bin/python -m jobrelay facilitator`), so
the threaded and the asyncio implementation are measured the same way, from outside. The workers
are simulated: K processes (scripts/simchild.py), each running many workers
(scripts/simworkers.py) on one asyncio loop, each worker with its own Ed25519 key, speaking the
real protocol from source addresses 127.0.0.2-9. The facilitator is pinned to the first CPU and
the simulator to the others (--facilitator-cpus). For each N, with a fresh facilitator and
database:

- connect: every worker starts at once (or --connect-rate per second); the time until all N
  sessions are open as the workers see it (the facilitator's /stats must then say N);
- the facilitator's RSS, open descriptors and threads once all are connected (/proc/PID);
- its idle CPU over --idle-seconds (utime+stime, as a fraction of one core);
- heartbeat gaps: the longest silence of the facilitator on any connection (any frame counts),
  and heartbeat timeouts (the facilitator's /stats and the sessions the workers saw end so);
- jobs: --jobs jobs submitted through POST /jobs by 16 concurrent submitters, job i to worker
  i mod N; done when the worker receives the facilitator's ack of its `completed` update (acked
  only after the facilitator committed it); then every job is read back with GET /jobs/{id} and
  must show exactly accepted, running, completed on the named worker;
- reconnect storm: every connection aborted at once (no close handshake), then the time until
  all N are open again, with the failed connection attempts (timeouts, refusals) and closes.
Per phase the JSON also has wall time, CPU seconds of the facilitator and of the simulator, and
the TCP listen-queue overflows and SYN retransmits of the network namespace.

Prints one markdown table (a row per N), a totals line and a notes line; --json FILE writes
everything. Every process it starts is stopped by its process group id (also on Ctrl-C, SIGTERM
and errors), and every wait has a deadline.

Usage: scripts/bench_scale.py [--workers 100,1000,5000,10000] [--quick] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import FrameType

from scale_keys import make_facilitator_key, make_keys
from scale_procs import Api, Children, FacilitatorProcess, Processes, proc_stats, tcp_counters
from scale_profile import profiled
from scale_report import Row, Storm, derive, merge, notes, percentile, table, take_gaps
from simchild import Report, raise_nofile
from simworkers import BENCH_KIND

SUBMITTERS = 16  # concurrent POST /jobs (and GET /jobs/{id}) clients
SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]  # workers' source addresses: ephemeral ports x8
SETTLE = 1.0  # seconds between "all connected" and the idle window
EXPECTED_HISTORY = ["accepted", "running", "completed"]


def cpu_split(k: int) -> tuple[set[int] | None, set[int] | None]:
    """The facilitator's CPUs (the first ``k`` we may use) and the simulator's (the others); no
    pinning when ``k`` is 0 or leaves the simulator none. Unpinned, the simulator's connection
    bursts take the CPU the facilitator needs just then, and the results measure the scheduler."""
    cpus = sorted(os.sched_getaffinity(0))
    if k <= 0 or len(cpus) <= k:
        return None, None
    return set(cpus[:k]), set(cpus[k:])


def in_parallel(api: Api, work: Callable[[str], str], items: list[str], timeout: float) -> list[str]:
    """``work(item)`` for every item on SUBMITTERS threads; returns the non-empty results.

    Each thread first opens its keep-alive connection, one thread at a time: the facilitator's
    HTTP listen backlog is small (5, socketserver's default), and a burst of new connections would
    add SYN retransmits (1 s) to the first requests, which is not what the jobs phase measures.
    """
    todo, results = iter(items), []
    lock, warm, start = threading.Lock(), threading.Lock(), threading.Barrier(SUBMITTERS)

    def loop() -> None:
        try:
            with warm:
                api.call("GET", "/stats")
            start.wait(timeout)
            while True:
                with lock:
                    item = next(todo, None)
                if item is None:
                    return
                if result := work(item):
                    with lock:
                        results.append(result)
        except (OSError, threading.BrokenBarrierError) as exc:
            with lock:
                results.append(f"submitter failed: {type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(SUBMITTERS)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout + 60  # each call is bounded; this is the backstop
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return results


def run_jobs(row: Row, api: Api, children: Children, n: int, count: int, timeout: float) -> None:
    """Submit ``count`` jobs (job i to worker i mod n), wait for their completion, check each."""
    ids = {f"n{n}-j{i:05d}": f"w{i % n:05d}" for i in range(count)}
    submitted: dict[str, float] = {}
    posted: dict[str, float] = {}  # POST answered (the job is committed)
    deadline = time.monotonic() + timeout

    def submit(job_id: str) -> str:
        if time.monotonic() >= deadline:
            return f"{job_id}: not submitted by the deadline"
        submitted[job_id] = time.monotonic()
        status, doc = api.call(
            "POST",
            "/jobs",
            {"kind": BENCH_KIND, "payload": {"i": job_id}, "job_id": job_id, "worker": ids[job_id]},
        )
        posted[job_id] = time.monotonic()
        return "" if status == 201 else f"{job_id}: POST /jobs -> {status} {doc}"

    problems = in_parallel(api, submit, list(ids), timeout)
    row.jobs = count
    children.wait_jobs(set(ids), deadline)
    deadline = time.monotonic() + timeout
    ok: set[str] = set()

    def check(job_id: str) -> str:
        if time.monotonic() >= deadline:
            return f"{job_id}: not checked by the deadline"
        status, doc = api.call("GET", f"/jobs/{job_id}")
        history = [h["status"] for h in doc.get("history", [])] if status == 200 else None
        done = children.done.get(job_id, [])
        if history != EXPECTED_HISTORY or doc.get("peer") != ids[job_id]:
            return f"{job_id}: GET -> {status}, history {history}, peer {doc.get('peer')!r}"
        if [d[0] for d in done] != [ids[job_id]]:
            return f"{job_id}: completions reported by workers {[d[0] for d in done]}"
        ok.add(job_id)
        return ""

    problems += in_parallel(api, check, list(ids), timeout)
    row.job_problems = problems[:20]
    row.jobs_completed_once = len(ok)
    done = {j: d[0][2] for j, d in children.done.items() if j in submitted and d}
    latencies = sorted(at - submitted[j] for j, at in done.items())
    if latencies:
        last = max(done.values())
        row.jobs_per_s = len(latencies) / (last - min(submitted.values()))
        row.latency_ms = {
            "p50": statistics.median(latencies) * 1000,
            "p99": percentile(latencies, 0.99) * 1000,
            "max": latencies[-1] * 1000,
        }
        post = sorted(posted[j] - submitted[j] for j in posted)
        row.latency_ms |= {
            "post_p50": statistics.median(post) * 1000,
            "post_p99": percentile(post, 0.99) * 1000,
        }


class Phases:
    """Per phase: wall time, CPU seconds of the facilitator and of the simulator processes, the
    network namespace's TCP listen-queue and SYN-retransmit counters, and the children's gaps and
    counters (a report round from the children at each end)."""

    def __init__(self, row: Row, children: Children, pid: int) -> None:
        self.row, self.children, self.pid = row, children, pid
        self.restart()

    def _now(self, reports: list[Report]) -> dict[str, float]:
        cpu = proc_stats(self.pid).cpu_seconds
        now = {"wall": time.monotonic(), "facilitator": cpu, "simulator": sum(r.cpu_seconds for r in reports)}
        return now | tcp_counters()

    def restart(self) -> None:
        """The next phase starts now (what happened since is not recorded)."""
        self.mark = self._now(self.children.report())

    def end(self, phase: str) -> list[Report]:
        reports = self.children.report()
        now = self._now(reports)
        self.row.phases[phase] = {k: now[k] - self.mark[k] for k in now}
        self.mark = now
        take_gaps(self.row, phase, reports)
        return reports


def run_storm(row: Row, api: Api, children: Children, phases: Phases, n: int, timeout: float) -> None:
    """Abort every connection at once; until all N are open again (and the facilitator says so)."""
    before = api.stats()
    started = time.monotonic()
    opened_at = children.cut(started + timeout)
    storm = Storm(reconnected=children.connected())
    if opened_at is not None:
        storm.reconnect_s = opened_at - started
    if api.wait_connected(n, time.monotonic() + 30) == n:
        storm.facilitator_reconnect_s = time.monotonic() - started
    after = api.stats()
    keys = ("sessions_opened", "connections_replaced", "auth_failures", "heartbeat_timeouts")
    storm.facilitator = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    reports = phases.end(f"storm{len(row.storms) + 1}")
    storm.cut = sum(r.cut for r in reports)
    storm.attempt_failures = merge(r.attempt_failures for r in reports)
    storm.closes = merge(r.closes for r in reports)
    row.storms.append(storm)


def run_load(
    row: Row,
    args: argparse.Namespace,
    api: Api,
    children: Children,
    phases: Phases,
    procs: Processes,
    pid: int,
) -> None:
    """The jobs phase, then the reconnect storms (each profiled with --profile)."""
    n = row.n
    with profiled(procs, pid, args.profile, f"{n}-jobs"):
        run_jobs(row, api, children, n, args.jobs, args.job_timeout)
        phases.end("jobs")  # before the profiler's own stop, which is not the phase's
    for i in range(args.storms):
        with profiled(procs, pid, args.profile, f"{n}-storm{i + 1}"):
            run_storm(row, api, children, phases, n, args.connect_timeout)


def run_one(
    n: int, args: argparse.Namespace, tmp: Path, keys: Path, public: list[str], procs: Processes
) -> Row:
    """Every measurement at one N, with a fresh facilitator and database; errors end up in the row."""
    row = Row(n)
    folder = tmp / f"n{n}"
    folder.mkdir()
    (folder / "authorized_keys").write_text("".join(public[:n]))
    fac_public = make_facilitator_key(folder)
    fac: FacilitatorProcess | None = None
    children: Children | None = None
    try:
        cmd = shlex.split(args.facilitator_cmd)
        fac_cpus, sim_cpus = (set(cpus) if cpus else None for cpus in args.cpu_split)
        fac = FacilitatorProcess.start(cmd, folder, procs, time.monotonic() + 30, fac_cpus)
        api = Api(fac.http_url)
        row.empty = proc_stats(fac.pid)
        children = Children.start(
            fac.url, keys, n, min(args.procs, n), SOURCES, folder, procs, fac_public, sim_cpus
        )
        children.wait_ready(time.monotonic() + 60)
        phases = Phases(row, children, fac.pid)
        started = time.monotonic()
        opened_at = children.connect(started + args.connect_timeout, args.connect_rate)
        row.connected = children.connected()
        row.facilitator_connected = api.wait_connected(n, time.monotonic() + (30 if opened_at else 1))
        if row.facilitator_connected == n:
            row.facilitator_connect_s = time.monotonic() - started
        row.full = proc_stats(fac.pid)
        reports = phases.end("connect")
        row.connect_failures = merge([*(r.attempt_failures for r in reports), *(r.closes for r in reports)])
        if opened_at is None or row.facilitator_connected != n:
            row.error = (
                f"{row.connected}/{n} connected after {args.connect_timeout:g} s "
                f"(facilitator: {row.facilitator_connected})"
            )
            return row
        row.connect_s = opened_at - started
        time.sleep(SETTLE)
        phases.restart()
        time.sleep(args.idle_seconds)
        phases.end("idle")
        idle = row.phases["idle"]
        row.idle_cpu, row.sim_idle_cpu = idle["facilitator"] / idle["wall"], idle["simulator"] / idle["wall"]
        run_load(row, args, api, children, phases, procs, fac.pid)
        row.after_storm = proc_stats(fac.pid)
        row.heartbeat_timeouts_facilitator = api.stats().get("heartbeat_timeouts", 0)
        return row
    except (TimeoutError, RuntimeError, OSError) as exc:
        row.error = f"{type(exc).__name__}: {exc}"
        return row
    finally:
        if children is not None:
            children.stop(procs)
        if fac is not None:
            fac.stop(procs)
            if row.error:
                print(f"N={n}: {row.error}; facilitator log tail:\n{fac.log_tail()}", file=sys.stderr)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", default="100,1000,5000,10000", help="comma-separated N values")
    parser.add_argument("--idle-seconds", type=float, default=60.0, help="idle CPU window")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per N")
    parser.add_argument("--storms", type=int, default=1, help="reconnect storms per N")
    parser.add_argument("--procs", type=int, default=4, help="simulated-worker processes")
    parser.add_argument(
        "--connect-rate", type=float, default=0.0, help="first connect: workers started per second (0: all)"
    )
    parser.add_argument("--connect-timeout", type=float, default=180.0, help="bound on connecting all N (s)")
    parser.add_argument("--job-timeout", type=float, default=120.0, help="bound on completing the jobs (s)")
    parser.add_argument(
        "--facilitator-cmd",
        default=f"{shlex.quote(sys.executable)} -m jobrelay facilitator",
        help="command that runs `jobrelay facilitator` (its flags are appended)",
    )
    parser.add_argument(
        "--facilitator-cpus",
        type=int,
        default=1,
        help="pin the facilitator to this many CPUs, the simulated workers to the rest (0: no pinning)",
    )
    parser.add_argument("--quick", action="store_true", help="N=200, idle 5 s, 200 jobs, one storm")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument(
        "--profile", type=Path, metavar="DIR", help="py-spy the facilitator in the jobs and storm phases"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, databases)")
    args = parser.parse_args()
    if args.quick:
        args.workers, args.idle_seconds, args.jobs, args.storms = "200", 5.0, 200, 1
        args.connect_timeout, args.job_timeout = 30.0, 30.0
    args.ns = sorted({int(x) for x in args.workers.split(",") if x.strip()})
    args.cpu_split = [sorted(cpus) if cpus else None for cpus in cpu_split(args.facilitator_cpus)]
    return args


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def main() -> int:
    args = parse_args()
    signal.signal(signal.SIGTERM, _interrupt)  # stop everything we started, as on Ctrl-C
    raise_nofile()  # the facilitator inherits it
    started = time.monotonic()
    procs = Processes()
    rows: list[Row] = []
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    try:
        keys, public = make_keys(max(args.ns), tmp)
        for n in args.ns:
            print(f"N={n:,} ...", file=sys.stderr, flush=True)
            rows.append(run_one(n, args, tmp, keys, public, procs))
    except KeyboardInterrupt as exc:
        print(f"interrupted ({exc or 'SIGINT'}): stopping every process started", file=sys.stderr)
        return 130
    finally:
        procs.stop_all()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    derive(rows)
    wall = time.monotonic() - started
    print(
        "jobrelay scale benchmark: N simulated workers on one facilitator process, loopback, "
        f"{os.cpu_count()} cores"
    )
    print("\n".join(table(rows)))
    print(notes(rows, args, SUBMITTERS, wall))
    if args.json:
        doc = {
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "rows": [asdict(r) for r in rows],
            "wall_s": wall,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
