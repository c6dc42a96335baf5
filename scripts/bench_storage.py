#!/usr/bin/env python3
"""Benchmark jobrelay.storage against bare sqlite3 doing the same work.

Prints one table; every figure comes from this run. Targets (issue 4): batched append at least
0.6 of bare sqlite3, replay at least 100,000 rows/s, RSS growth while streaming 1,000,000 rows
under 50 MB.

Usage: scripts/bench_storage.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from jobrelay.storage import Outbox, open_database

PAYLOAD = (
    b'{"type":"job_status","job_id":"7f3c2a9e-5b1d-4c8e-9a0f-123456789abc","status":"running",'
    b'"at":1732420000.123,"progress":0.42,"detail":"step 42 of 100"}'
)
KIND = "job_status"


def bare_connect(path: Path, synchronous: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {synchronous}")
    conn.execute(
        "CREATE TABLE IF NOT EXISTS outbox "
        "(seq INTEGER PRIMARY KEY, kind TEXT NOT NULL, payload BLOB NOT NULL, created_at REAL)"
    )
    return conn


def timed(fn: Callable[[], int]) -> float:
    """Run fn (returns a count) and return count per second."""
    start = time.perf_counter()
    count = fn()
    return count / (time.perf_counter() - start)


class Bench:
    def __init__(self, tmp: Path, quick: bool) -> None:
        self.tmp = tmp
        self.quick = quick
        self.rounds = 1 if quick else 5
        self.n = 0
        self.rows: list[tuple[str, str, str, str, str]] = []

    def fresh(self, name: str) -> Path:
        self.n += 1
        return self.tmp / f"{self.n}-{name}.db"

    def median(self, fn: Callable[[], tuple[float, float]]) -> tuple[float, float]:
        """Run fn (which measures jobrelay, then bare sqlite3) several times; median of each.

        fsync latency on a shared machine varies by 2x from second to second: interleaving the
        two sides and taking medians keeps the ratio honest.
        """
        results = [fn() for _ in range(self.rounds)]
        ours = statistics.median(r[0] for r in results)
        limit = statistics.median(r[1] for r in results)
        return ours, limit

    def single(self, durability: str, count: int) -> tuple[float, float]:
        return self.median(lambda: self._single(durability, count))

    def batched(self, count: int) -> tuple[float, float]:
        return self.median(lambda: self._batched(count))

    def acks(self, count: int) -> tuple[float, float]:
        return self.median(lambda: self._acks(count))

    def replay(self, count: int) -> tuple[float, float]:
        return self.median(lambda: self._replay(count))

    # ----------------------------------------------------------------- single-row commits

    def _single(self, durability: str, count: int) -> tuple[float, float]:
        with open_database(self.fresh("jr"), durability=durability) as db:  # type: ignore[arg-type]
            box = Outbox(db)

            def jr() -> int:
                for _ in range(count):
                    box.append(KIND, PAYLOAD)
                return count

            ours = timed(jr)
        conn = bare_connect(self.fresh("bare"), durability.upper())

        def bare() -> int:
            for seq in range(1, count + 1):
                conn.execute("INSERT INTO outbox VALUES (?, ?, ?, ?)", (seq, KIND, PAYLOAD, time.time()))
            return count

        limit = timed(bare)
        conn.close()
        return ours, limit

    # ----------------------------------------------------------------- batched commits

    def _batched(self, count: int, batch: int = 100) -> tuple[float, float]:
        items = [(KIND, PAYLOAD)] * batch
        with open_database(self.fresh("jr")) as db:
            box = Outbox(db, max_rows=10 * count)

            def jr() -> int:
                for _ in range(count // batch):
                    box.append_many(items)
                return count

            ours = timed(jr)
        conn = bare_connect(self.fresh("bare"), "FULL")

        def bare() -> int:
            seq = 0
            for _ in range(count // batch):
                now = time.time()
                conn.execute("BEGIN")
                conn.executemany(
                    "INSERT INTO outbox VALUES (?, ?, ?, ?)",
                    [(seq + i, KIND, PAYLOAD, now) for i in range(1, batch + 1)],
                )
                conn.execute("COMMIT")
                seq += batch
            return count

        limit = timed(bare)
        conn.close()
        return ours, limit

    # ----------------------------------------------------------------- acks

    def _acks(self, count: int, step: int = 100) -> tuple[float, float]:
        with open_database(self.fresh("jr")) as db:
            box = Outbox(db, max_rows=10 * count)
            for _ in range(count // 1000):
                box.append_many([(KIND, PAYLOAD)] * 1000)

            def jr() -> int:
                for upto in range(step, count + 1, step):
                    box.ack(upto)
                return count

            ours = timed(jr)
        conn = bare_connect(self.fresh("bare"), "FULL")
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO outbox VALUES (?, ?, ?, ?)",
            [(s, KIND, PAYLOAD, 0.0) for s in range(1, count + 1)],
        )
        conn.execute("COMMIT")

        def bare() -> int:
            for upto in range(step, count + 1, step):
                conn.execute("DELETE FROM outbox WHERE seq <= ?", (upto,))
            return count

        limit = timed(bare)
        conn.close()
        return ours, limit

    # ----------------------------------------------------------------- replay

    def _replay(self, count: int) -> tuple[float, float]:
        path = self.fresh("jr")
        build_backlog(path, count)
        with open_database(path) as db:
            box = Outbox(db)

            def jr() -> int:
                n = 0
                for _ in box.pending():
                    n += 1
                assert n == count
                return n

            ours = timed(jr)
        bare_path = self.fresh("bare")
        build_bare_backlog(bare_path, count)
        conn = sqlite3.connect(bare_path)

        def bare() -> int:
            n = 0
            for _ in conn.execute("SELECT seq, kind, payload, created_at FROM outbox ORDER BY seq"):
                n += 1
            return n

        limit = timed(bare)
        conn.close()
        return ours, limit

    def rss(self, count: int) -> tuple[float, float, float, float]:
        path, bare_path = self.fresh("jr-1m"), self.fresh("bare-1m")
        build_backlog(path, count)
        build_bare_backlog(bare_path, count)
        out = []
        for mode, file in (("jobrelay", path), ("bare", bare_path)):
            proc = subprocess.run(
                [sys.executable, __file__, "--rss-child", mode, str(file), str(count)],
                capture_output=True,
                text=True,
                timeout=600,
                check=True,
            )
            out.append(json.loads(proc.stdout))
        return (
            out[0]["growth_mb"],
            out[1]["growth_mb"],
            out[0]["rows_per_s"],
            out[1]["rows_per_s"],
        )


def build_backlog(path: Path, count: int) -> None:
    with open_database(path, durability="normal") as db:
        box = Outbox(db, max_rows=count + 1, max_bytes=1 << 40)
        chunk = [(KIND, PAYLOAD)] * 10_000
        left = count
        while left:
            n = min(left, len(chunk))
            box.append_many(chunk[:n])
            left -= n


def build_bare_backlog(path: Path, count: int) -> None:
    """The same backlog as bare sqlite3 would keep it: one row per message."""
    conn = bare_connect(path, "NORMAL")
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO outbox VALUES (?, ?, ?, ?)", ((s, KIND, PAYLOAD, 0.0) for s in range(1, count + 1))
    )
    conn.execute("COMMIT")
    conn.close()


def vm(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(field)


def rss_child(mode: str, path: str, count: int) -> None:
    """Stream every row once and report peak RSS growth (VmHWM) across the replay."""
    if mode == "jobrelay":
        db = open_database(path, check=False)
        box = Outbox(db)
        rows = box.pending()
    else:
        conn = sqlite3.connect(path)
        rows = conn.execute("SELECT seq, kind, payload, created_at FROM outbox ORDER BY seq")  # type: ignore[assignment]
    before = vm("VmHWM")
    start = time.perf_counter()
    n = 0
    for _ in rows:
        n += 1
    elapsed = time.perf_counter() - start
    assert n == count, (n, count)
    growth = (vm("VmHWM") - before) / 1e6
    print(json.dumps({"growth_mb": growth, "rows_per_s": n / elapsed}))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke run")
    parser.add_argument("--rss-child", nargs=3, metavar=("MODE", "DB", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        mode, path, count = args.rss_child
        rss_child(mode, path, int(count))
        return 0
    q = args.quick
    n_single = 200 if q else 2_000
    n_batched = 10_000 if q else 100_000
    n_ack = 10_000 if q else 100_000
    n_replay = 10_000 if q else 100_000
    n_rss = 100_000 if q else 1_000_000
    tmp = Path(tempfile.mkdtemp(prefix="jobrelay-bench-"))
    rows: list[tuple[str, str, str, str, str]] = []

    def add(name: str, ours: float, limit: float, unit: str, target: str) -> None:
        rows.append((name, f"{ours:,.0f} {unit}", f"{limit:,.0f} {unit}", f"{ours / limit:.2f}", target))

    try:
        bench = Bench(tmp, q)
        add("append, full, 1 row/commit", *bench.single("full", n_single), "rows/s", "")
        add("append, normal, 1 row/commit", *bench.single("normal", n_single), "rows/s", "")
        add("append_many x100, full", *bench.batched(n_batched), "rows/s", "ratio >= 0.6")
        add("ack every 100 rows, full", *bench.acks(n_ack), "rows/s", "")
        add(f"pending replay, {n_replay:,} backlog", *bench.replay(n_replay), "rows/s", ">= 100,000 rows/s")
        grow, bare_grow, rate, bare_rate = bench.rss(n_rss)
        add(f"pending replay, {n_rss:,} backlog", rate, bare_rate, "rows/s", "")
        rows.append(
            (f"peak RSS growth, {n_rss:,} rows", f"{grow:.1f} MB", f"{bare_grow:.1f} MB", "", "< 50 MB")
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        f"jobrelay storage benchmark ({'quick' if q else 'full'} run): Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, "
        f"payload {len(PAYLOAD)} B, median of {1 if q else 5} interleaved rounds"
    )
    header = ("operation", "jobrelay", "bare sqlite3", "ratio", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
