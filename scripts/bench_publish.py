#!/usr/bin/env python3
"""Publishing into the worker's durable outbox: `publish()` one by one vs `publish_many()`.

The worker runs with no facilitator reachable, so every figure is the local, durable cost (each
future resolves once its commit is on disk, durability "full" unless --durability says
otherwise): N messages of ~200 B published as fast as the caller can, the futures collected and
waited for at the end. Prints one table from one run, `publish()` as the baseline, median of
--rounds rounds. Target (issue 16): publish_many ≥ 100,000 msg/s durable locally.

Usage: scripts/bench_publish.py [--messages N] [--batch N] [--rounds N] [--durability full|normal]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import pykka
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from jobrelay.actors import Worker, WorkerConfig, start_worker
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.messages import WorkerEvent

DETAIL = "x" * 150  # with the envelope, about 200 B stored per message


def worker(tmp: Path, durability: str) -> Worker:
    config = WorkerConfig(
        url="ws://127.0.0.1:9",  # the discard port: nothing answers, nothing is sent
        worker_id="bench",
        key=Ed25519PrivateKey.generate().private_bytes_raw().hex(),
        facilitator_key=public_key_hex(Ed25519PrivateKey.generate().public_key()),
        db_path=str(tmp / "w.db"),
        durability=durability,  # type: ignore[arg-type]
        backoff_base=5.0,
        backoff_cap=5.0,
    )
    return start_worker(config)


def one_by_one(w: Worker, n: int) -> float:
    t0 = time.perf_counter()
    futures = [w.outbox.publish(WorkerEvent(event="e", at=0.0, detail=DETAIL)) for _ in range(n)]
    for f in futures:
        f.get(timeout=120)
    return n / (time.perf_counter() - t0)


def batched(w: Worker, n: int, size: int) -> float:
    t0 = time.perf_counter()
    futures = []
    for start in range(0, n, size):
        bodies = [WorkerEvent(event="e", at=0.0, detail=DETAIL) for _ in range(min(size, n - start))]
        futures.append(w.outbox.publish_many(bodies))
    for f in futures:
        f.get(timeout=120)
    return n / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="messages per publish_many call")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--durability", choices=("full", "normal"), default="full")
    args = parser.parse_args()
    logger.remove()
    singles: list[float] = []
    many: list[float] = []
    try:
        for _ in range(args.rounds):  # interleaved: both see the same machine
            for results, run in ((singles, one_by_one), (many, batched)):
                with tempfile.TemporaryDirectory() as tmp:
                    w = worker(Path(tmp), args.durability)
                    try:
                        rate = (
                            run(w, args.messages)
                            if run is one_by_one
                            else batched(w, args.messages, args.batch)
                        )
                        results.append(rate)
                    finally:
                        w.stop(10)
    finally:
        pykka.ActorRegistry.stop_all(timeout=5)
    single, batch = statistics.median(singles), statistics.median(many)
    print(f"\n{args.messages:,} messages × {args.rounds} rounds, durability {args.durability!r}, medians\n")
    print(f"| {'publishing':<34} | {'msg/s':>9} | {'min–max':>17} | {'ratio':>5} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 19}|{'-' * 7}|")
    spread = f"{min(singles):>8,.0f}–{max(singles):<8,.0f}"
    print(f"| {'publish() one by one (baseline)':<34} | {single:>9,.0f} | {spread} | {1:>5.2f} |")
    label = f"publish_many() × {args.batch}"
    print(
        f"| {label:<34} | {batch:>9,.0f} | {min(many):>8,.0f}–{max(many):<8,.0f} | {batch / single:>5.2f} |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
