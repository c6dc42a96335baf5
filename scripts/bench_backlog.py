#!/usr/bin/env python3
"""A large backlog end to end: replay after reconnect, the worker's memory, and stop() with it.

One run, the worker in a child process (so its RSS is its own), the facilitator in this one,
durability "full" on both ends, loopback:
1. a worker starts with its facilitator down (RSS "empty"), publishes N worker events (~200 B
   each, ``publish_many`` in chunks) and stops with all N unsent: how long ``Worker.stop()`` took;
2. the bare storage layer reads the same rows (``Outbox.pending()``): the replay baseline;
3. a worker starts again on that database (RSS "with the backlog", idle), the facilitator starts
   on the port it dials, and the time until the facilitator has accepted every message is the
   end-to-end replay rate; the worker's RSS is sampled through the replay (peak);
4. raw websocket-client one-way throughput of the same messages, 1,000 a frame as the replay sends
   them, into a server that stores nothing (bench_e2e's ceiling): a second baseline.
Each replay runs on a copy of the same backlog: with the default link settings, with the smaller
defaults of earlier versions, and with a larger window and batch (the facilitator's
``max_inflight``, ``max_batch`` both ends).
Targets (issue 16): replay ≥ 100,000 msg/s end to end, RSS growth < 50 MB.

Usage: nice -n 19 scripts/bench_backlog.py [--messages N] [--quick] [--no-raw]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import NamedTuple

from bench_common import child, proc_kb, table, wait_until
from bench_e2e import raw_ceiling
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from jobrelay.actors import WorkerConfig, start_worker
from jobrelay.facilitator import FacilitatorConfig, start_facilitator
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.codec import worker_codec
from jobrelay.protocol.messages import Data, DataBatch, WorkerEvent
from jobrelay.storage import Outbox, open_database

PAD = "x" * 72  # a ~200 B frame, about a job status update with some detail
CHUNK = 10_000  # publish_many batch: one mailbox message and one commit each


def body(i: int) -> WorkerEvent:
    return WorkerEvent(event="bench", at=time.time(), detail=f"message {i:08d} {PAD}")


def serve_worker(
    port: str, key_file: str, facilitator_key: str, db: str, publish: str, durability: str, batch: str
) -> None:
    """Child mode: a worker dialling ``port`` (where nothing listens yet). Prints its pid and then
    its last seq; if ``publish`` > 0, publishes that many events on the next line on stdin (prints
    the seconds it took); on the next line (or EOF), stops the worker and prints how long stop()
    took."""
    n = int(publish)
    config = WorkerConfig(
        url=f"ws://127.0.0.1:{port}",
        worker_id="bench",
        key_file=key_file,
        facilitator_key=facilitator_key,
        db_path=db,
        max_outbox_rows=max(n, 1) + 1000,
        max_outbox_bytes=1 << 34,
        backoff_base=0.01,
        backoff_cap=0.05,  # redial within 50 ms of the facilitator's start
        breaker_failure_threshold=1_000_000,
        local_mode_after=3600.0,
        durability=durability,  # type: ignore[arg-type]
        max_batch=int(batch),
    )
    worker = start_worker(config)
    print(os.getpid(), flush=True)
    print(worker.outbox.out_marks().get(timeout=30)[2], flush=True)
    if n:
        sys.stdin.readline()  # the parent has read our RSS before the backlog
        t0 = time.perf_counter()
        futures = [
            worker.outbox.publish_many([body(i) for i in range(start, min(n, start + CHUNK))])
            for start in range(0, n, CHUNK)
        ]
        for future in futures:
            future.get(timeout=600)
        print(time.perf_counter() - t0, flush=True)
    sys.stdin.readline()
    t0 = time.perf_counter()
    worker.stop()
    print(time.perf_counter() - t0, flush=True)


FRAME = worker_codec().encode(Data(seq=1_000_000, body=body(999_999)))
RAW_BATCH = 1_000  # the raw baseline sends the replay's frames: 1,000 messages each (the default batch)
RAW_FRAME = worker_codec().encode(
    DataBatch(items=[Data(seq=seq, body=body(seq)) for seq in range(1_000_000, 1_000_000 + RAW_BATCH)])
)


class Worker(NamedTuple):
    proc: subprocess.Popen[str]
    last_seq: int

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline()

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def stop(self) -> float:
        """Seconds Worker.stop() took in the child."""
        self.send("stop")
        seconds = float(self.line())
        self.proc.wait(30)
        return seconds


def start_child(
    tmp: Path, db: Path, port: int, fac_public: str, publish: int, durability: str, batch: int
) -> Worker:
    proc, _ = child(
        __file__,
        "--serve-worker",
        str(port),
        str(tmp / "worker.key"),
        fac_public,
        str(db),
        str(publish),
        durability,
        str(batch),
        stdin=True,
    )
    try:
        assert proc.stdout is not None
        return Worker(proc, int(proc.stdout.readline()))
    except BaseException:
        proc.kill()
        proc.wait(10)
        raise


def settled_rss(pid: int) -> int:
    """VmRSS in kB once it stopped moving (start-up threads and imports done)."""
    last = -1
    for _ in range(50):
        now = proc_kb(pid, "VmRSS")
        if now == last:
            return now
        last = now
        time.sleep(0.1)  # sampling a process we do not control: nothing to wait on instead
    return last


def storage_replay(db: Path) -> float:
    """Rows/s of the bare storage layer reading the same backlog once, in this process."""
    with open_database(db, check=False) as opened:
        box = Outbox(opened, "out")
        t0 = time.perf_counter()
        n = sum(1 for _ in box.pending())
        return n / (time.perf_counter() - t0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Bench:
    """One backlog, built once; each replay runs on a copy of it."""

    def __init__(self, tmp: Path, n: int, durability: str) -> None:
        self.tmp, self.n, self.durability = tmp, n, durability
        self.key = Ed25519PrivateKey.generate()
        (tmp / "worker.key").write_text(self.key.private_bytes_raw().hex())
        (tmp / "worker.key").chmod(0o600)
        self.fac_key = Ed25519PrivateKey.generate()
        self.fac_public = public_key_hex(self.fac_key.public_key())
        self.db = tmp / "backlog" / "worker.db"
        self.db.parent.mkdir()

    def build(self) -> tuple[float, float, int]:
        """``(publish seconds, stop() seconds, RSS kB before publishing)``."""
        first = start_child(self.tmp, self.db, free_port(), self.fac_public, self.n, self.durability, 500)
        try:
            rss_empty = settled_rss(first.proc.pid)
            first.send("publish")
            publish_s = float(first.line())
            return publish_s, first.stop(), rss_empty
        finally:
            first.proc.kill()
            first.proc.wait(10)

    def replay(self, name: str, window: int, batch: int) -> Replay:
        here = self.tmp / name
        here.mkdir()
        for part in self.db.parent.iterdir():  # the database with its -wal, as the worker left it
            shutil.copy(part, here / part.name)
        port = free_port()
        worker = start_child(self.tmp, here / self.db.name, port, self.fac_public, 0, self.durability, batch)
        peak = 0
        done = threading.Event()
        try:
            rss_backlog = settled_rss(worker.proc.pid)

            def sample() -> None:
                nonlocal peak
                while not done.wait(0.02):
                    peak = max(peak, proc_kb(worker.proc.pid, "VmRSS"))

            sampler = threading.Thread(target=sample, daemon=True)
            config = FacilitatorConfig(
                db_path=str(here / "fac.db"),
                key=self.fac_key.private_bytes_raw().hex(),
                port=port,
                durability=self.durability,  # type: ignore[arg-type]
                max_inflight=window,
                max_batch=batch,
                authorized_keys={"bench": public_key_hex(self.key)},
            )
            sampler.start()
            t0 = time.perf_counter()
            with start_facilitator(config) as fac:
                wait_until(
                    lambda: fac.stats().data_accepted >= worker.last_seq, 3600, "the replay", every=0.005
                )
                seconds = time.perf_counter() - t0
                done.set()
                sampler.join(5)
                stats = fac.stats()
                worker.stop()
        finally:
            done.set()
            worker.proc.kill()
            worker.proc.wait(10)
            shutil.rmtree(here, ignore_errors=True)
        return Replay(name, seconds, stats.data_accepted, stats.store_commits, rss_backlog, peak)


class Replay(NamedTuple):
    name: str
    seconds: float
    accepted: int  # by the facilitator
    commits: int  # the facilitator's store commits during the replay
    rss_backlog: int  # kB, the worker idle with the backlog, before the facilitator started
    rss_peak: int  # kB, during the replay


_DEFAULTS = FacilitatorConfig(db_path="unused.db")  # the worker's max_batch default is the same
SETTINGS = (
    (
        f"defaults (window {_DEFAULTS.max_inflight:,}, batch {_DEFAULTS.max_batch:,})",
        _DEFAULTS.max_inflight,
        _DEFAULTS.max_batch,
    ),
    ("window 2,000, batch 1,000 (the defaults before)", 2000, 1000),
    ("window 10,000, batch 2,000", 10_000, 2000),
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=1_000_000, help="backlog size (default 1,000,000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 20,000 messages")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw websocket baseline")
    parser.add_argument("--durability", choices=("full", "normal"), default="full", help="both ends")
    parser.add_argument("--serve-worker", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logger.remove()
    logger.enable("jobrelay")
    logger.add(sys.stderr, level="WARNING")
    if args.serve_worker:
        logger.remove()
        logger.add(sys.stderr, level="ERROR")  # not a line per refused dial while the facilitator is down
        serve_worker(*args.serve_worker)
        return 0
    n = 20_000 if args.quick else args.messages
    with tempfile.TemporaryDirectory(prefix="jobrelay-bench-backlog-") as tmp:
        bench = Bench(Path(tmp), n, args.durability)
        built = bench.build()
        storage = storage_replay(bench.db)
        replays = [bench.replay(f"replay{i}", window, batch) for i, (_, window, batch) in enumerate(SETTINGS)]
    raw = None if args.no_raw else raw_ceiling(max(1, n // RAW_BATCH), RAW_FRAME) * RAW_BATCH
    print_table(n, args.durability, built, storage, replays, raw)
    return 0


def print_table(
    n: int,
    durability: str,
    built: tuple[float, float, int],
    storage: float,
    replays: list[Replay],
    raw: float | None,
) -> None:
    publish_s, stop_s, rss_empty = built
    mb = 1024  # kB per MB (of /proc's kB)
    rows = []
    for (label, _, _), r in zip(SETTINGS, replays, strict=True):
        rate = n / r.seconds
        rows.append(
            (
                f"replay end to end, {label}",
                f"{rate:,.0f} msg/s",
                f"{storage:,.0f} rows/s",
                f"{rate / storage:.2f}",
                "≥ 100,000 msg/s",
            )
        )
        if raw is not None:
            rows.append(("", "", f"{raw:,.0f} msg/s (raw ws)", f"{rate / raw:.2f}", ""))
    rows.append(("worker RSS, empty outbox", f"{rss_empty / mb:,.1f} MB", "", "", ""))
    for (label, _, _), r in zip(SETTINGS, replays, strict=True):
        rows += [
            (
                f"worker RSS, backlog unsent, idle ({label.split(' (')[0]})",
                f"{r.rss_backlog / mb:,.1f} MB",
                "",
                "",
                "",
            ),
            (f"worker RSS peak in replay, {label}", f"{r.rss_peak / mb:,.1f} MB", "", "", ""),
            ("  growth, peak − empty", f"{(r.rss_peak - rss_empty) / mb:,.1f} MB", "", "", "< 50 MB"),
        ]
    rows += [
        ("Worker.stop() with the backlog unsent", f"{stop_s:.2f} s", "", "", "≤ stop_timeout (5 s)"),
        ("publish_many, durable (building the backlog)", f"{n / publish_s:,.0f} msg/s", "", "", ""),
    ]
    print(
        f"\njobrelay backlog benchmark: {n:,} worker events ({len(FRAME)} B frames), "
        f"durability {durability} both ends, worker in its own process, loopback"
    )
    table(("measure", "jobrelay", "baseline: storage pending() / raw ws", "ratio", "target"), rows)
    commits = ", ".join(f"{r.accepted:,} in {r.commits:,}" for r in replays)
    print(f"(facilitator: data messages accepted in store commits: {commits})")


if __name__ == "__main__":
    sys.exit(main())
