#!/usr/bin/env python3
"""Job lifecycle benchmark: how soon a submitted job starts, and how credit drains a backlog.

Prints one table from one run (facilitator and workers in this process, loopback, durability
"full" on both ends unless --durability says otherwise):

- submit → handler start latency p50/p99 with an idle worker (jobs one at a time), beside the
  floor of any networked dispatch measured in the same run: a websocket message round trip to a
  `websockets` echo server on loopback, with the ratio;
- 200 short jobs (2 ms each) drained by 2 workers × 2 slots: with credit (prefetch 1, the
  default) beside push-all (prefetch 1,000: what the facilitator did before credit), the most
  jobs each worker held at once, each worker's share and the wall time.

Usage: scripts/bench_jobs.py [--jobs N] [--latency-jobs N] [--durability full|normal]
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

import pykka
import websocket
from bench_common import wait_until
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger
from websockets.sync.server import ServerConnection, serve

from jobrelay.actors import JobContext, Worker, WorkerConfig, start_worker
from jobrelay.facilitator import Facilitator, FacilitatorConfig, start_facilitator
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.messages import JobRequest

KEYS = {w: Ed25519PrivateKey.generate() for w in ("w1", "w2")}
FACILITATOR_KEY = Ed25519PrivateKey.generate()
TERMINAL = ("completed", "failed", "rejected", "cancelled")


def facilitator(tmp: Path, durability: str) -> Facilitator:
    return start_facilitator(
        FacilitatorConfig(
            key=FACILITATOR_KEY.private_bytes_raw().hex(),
            db_path=str(tmp / "fac.db"),
            port=0,
            authorized_keys={w: public_key_hex(k) for w, k in KEYS.items()},
            durability=durability,  # type: ignore[arg-type]
        )
    )


def worker(
    fac: Facilitator,
    tmp: Path,
    worker_id: str,
    handler: object,
    *,
    slots: int,
    prefetch: int,
    durability: str,
) -> Worker:
    config = WorkerConfig(
        url=fac.url,
        worker_id=worker_id,
        key=KEYS[worker_id].private_bytes_raw().hex(),
        facilitator_key=public_key_hex(FACILITATOR_KEY.public_key()),
        db_path=str(tmp / f"{worker_id}.db"),
        durability=durability,  # type: ignore[arg-type]
        max_concurrent_jobs=slots,
        prefetch=prefetch,
    )
    w = start_worker(config, {"k": handler})  # type: ignore[dict-item]
    w.wait_connected(10)
    return w


def finished(fac: Facilitator, ids: list[str]) -> bool:
    return all((v := fac.job(j)) is not None and v.status in TERMINAL for j in ids)


def ws_round_trip(n: int) -> list[float]:
    def echo(ws: ServerConnection) -> None:
        for message in ws:
            ws.send(message)

    with serve(echo, "127.0.0.1", 0) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        client = websocket.create_connection(f"ws://127.0.0.1:{server.socket.getsockname()[1]}", timeout=5)
        try:
            out = []
            for _ in range(n):
                t0 = time.perf_counter()
                client.send(b"x" * 200, opcode=websocket.ABNF.OPCODE_BINARY)
                client.recv()
                out.append(time.perf_counter() - t0)
            return out
        finally:
            client.close()
            server.shutdown()


def start_latency(n: int, durability: str) -> list[float]:
    started: dict[str, float] = {}
    event = threading.Event()

    def handler(job: JobRequest, ctx: JobContext) -> None:
        started[job.job_id] = time.perf_counter()
        event.set()

    with tempfile.TemporaryDirectory() as tmp:
        fac = facilitator(Path(tmp), durability)
        w = worker(fac, Path(tmp), "w1", handler, slots=1, prefetch=0, durability=durability)
        try:
            wait_until(lambda: any(v.connected for v in fac.workers()), 10, "w1 connected")
            out = []
            for i in range(n + 5):  # the first 5 warm up
                event.clear()
                t0 = time.perf_counter()
                job_id = fac.submit("k", None, job_id=f"j{i}")
                if not event.wait(10):
                    raise TimeoutError(f"job {job_id} did not start")
                wait_until(functools.partial(finished, fac, [job_id]), 10, "its end")  # idle again
                if i >= 5:
                    out.append(started[job_id] - t0)
            return out
        finally:
            w.stop(5)
            fac.stop()


class Drain(NamedTuple):
    seconds: float
    held: dict[str, int]
    shares: dict[str, int]


def drain(jobs: int, prefetch: int, durability: str) -> Drain:
    held: dict[str, int] = {"w1": 0, "w2": 0}
    most: dict[str, int] = {"w1": 0, "w2": 0}
    lock = threading.Lock()

    with tempfile.TemporaryDirectory() as tmp:
        fac = facilitator(Path(tmp), durability)
        workers = []
        for name in ("w1", "w2"):

            def short(job: JobRequest, ctx: JobContext) -> None:
                time.sleep(0.002)  # the job's own work

            workers.append(
                worker(fac, Path(tmp), name, short, slots=2, prefetch=prefetch, durability=durability)
            )
        try:
            time.sleep(0.2)  # both sessions settle before the burst (a benchmark, not a test)
            t0 = time.perf_counter()
            ids = fac.submit_many([("k", i, None) for i in range(jobs)])
            stop = threading.Event()

            def sample() -> None:  # the most unfinished jobs each worker held at once
                while not stop.is_set():
                    counts = {w.worker_id: w.outstanding_jobs for w in fac.workers()}
                    with lock:
                        for name, count in counts.items():
                            most[name] = max(most.get(name, 0), count)
                    time.sleep(0.005)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            wait_until(lambda: finished(fac, ids), 300, f"{jobs} jobs")
            seconds = time.perf_counter() - t0
            stop.set()
            sampler.join(5)
            shares = {name: 0 for name in held}
            for job_id in ids:
                view = fac.job(job_id)
                if view is not None:
                    shares[view.record.peer] = shares.get(view.record.peer, 0) + 1
            return Drain(seconds, dict(most), shares)
        finally:
            for w in workers:
                w.stop(5)
            fac.stop()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--jobs", type=int, default=200, help="jobs in the drain run (default 200)")
    parser.add_argument("--latency-jobs", type=int, default=200, help="jobs in the latency run (default 200)")
    parser.add_argument("--durability", choices=("full", "normal"), default="full")
    args = parser.parse_args()
    logger.remove()
    try:
        floor = ws_round_trip(args.latency_jobs)
        latency = start_latency(args.latency_jobs, args.durability)
        credit = drain(args.jobs, 1, args.durability)
        push_all = drain(args.jobs, 1000, args.durability)
    finally:
        pykka.ActorRegistry.stop_all(timeout=5)
    rows: list[tuple[str, str, str, str]] = []
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        ours, base = pct(latency, q), pct(floor, q)
        rows.append(
            (f"submit → handler start {name} (ms)", f"{ours:.2f}", f"{base:.3f}", f"{ours / base:.1f}")
        )
    ratio = credit.seconds / push_all.seconds
    rows.append(("drain: seconds", f"{credit.seconds:.2f}", f"{push_all.seconds:.2f}", f"{ratio:.2f}"))
    jobs_s = (args.jobs / credit.seconds, args.jobs / push_all.seconds)
    rows.append(("drain: jobs/s", f"{jobs_s[0]:.0f}", f"{jobs_s[1]:.0f}", f"{jobs_s[0] / jobs_s[1]:.2f}"))
    for name in ("w1", "w2"):
        rows.append(
            (
                f"drain: most held at once by {name}",
                str(credit.held.get(name, 0)),
                str(push_all.held.get(name, 0)),
                "",
            )
        )
        rows.append(
            (
                f"drain: jobs run by {name}",
                str(credit.shares.get(name, 0)),
                str(push_all.shares.get(name, 0)),
                "",
            )
        )
    runs = f"{args.latency_jobs} latency jobs, {args.jobs} drain jobs"
    print(f"\njob lifecycle, durability {args.durability!r}: {runs}\n")
    print(f"| {'measure':<36} | {'jobrelay':>9} | {'baseline':>9} | {'ratio':>6} |")
    print(f"|{'-' * 38}|{'-' * 11}|{'-' * 11}|{'-' * 8}|")
    for row in rows:
        print(f"| {row[0]:<36} | {row[1]:>9} | {row[2]:>9} | {row[3]:>6} |")
    print("\nbaseline: a websocket echo round trip (latency rows); push-all, prefetch 1,000 (drain rows)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
