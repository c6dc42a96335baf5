#!/usr/bin/env python3
"""Call round-trip benchmark (issue 13): worker.call() → facilitator handler → response, on
loopback, with 1, 100 and 1,000 calls in flight.

One reference facilitator serving an ``echo`` method and one worker in this process. For each
level of concurrency the worker keeps that many calls outstanding (a new one starts as one
finishes) until --calls have completed; each call's round trip is timed from ``worker.call()`` to
its future resolving. Baseline in the same run: a bare WebSocket round trip (websocket-client →
a `websockets` echo server, one message in flight), the floor any call over a WebSocket pays.

Prints one table: in flight, calls, p50/p99 round trip, calls/s, and p50 / baseline p50.

Usage: nice -n 19 scripts/bench_calls.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import websocket
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger
from websockets.sync.server import ServerConnection, serve

from jobrelay.actors import WorkerConfig, start_worker
from jobrelay.actors.worker import Worker
from jobrelay.facilitator import FacilitatorConfig, start_facilitator
from jobrelay.protocol.auth import public_key_hex


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def raw_round_trips(n: int) -> list[float]:
    """A bare WebSocket echo: the floor of a call's round trip."""

    def echo(ws: ServerConnection) -> None:
        for message in ws:
            ws.send(message)

    with serve(echo, "127.0.0.1", 0) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.socket.getsockname()[1]
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}")
        try:
            out = []
            for i in range(n):
                start = time.perf_counter()
                ws.send(f'{{"type":"request","id":"{i}","method":"echo","params":{i}}}')
                ws.recv()
                out.append(time.perf_counter() - start)
            return out
        finally:
            ws.close()
            server.shutdown()
            thread.join(5)


def run_calls(worker: Worker, in_flight: int, total: int) -> tuple[list[float], float]:
    """Keep ``in_flight`` calls outstanding until ``total`` completed; (round trips, seconds)."""
    room = threading.Semaphore(in_flight)
    latencies: list[float] = []
    failures: list[BaseException] = []
    lock = threading.Lock()
    done = threading.Event()
    finished = [0]

    def finish(started: float) -> Any:
        def callback(future: Future[Any]) -> None:
            elapsed = time.perf_counter() - started
            with lock:
                if future.exception() is not None:
                    failures.append(future.exception())  # type: ignore[arg-type]
                latencies.append(elapsed)
                finished[0] += 1
                if finished[0] == total:
                    done.set()
            room.release()

        return callback

    begin = time.perf_counter()
    for i in range(total):
        room.acquire()
        started = time.perf_counter()
        worker.call("echo", i, timeout=60).add_done_callback(finish(started))
    if not done.wait(120):
        raise RuntimeError("calls did not finish in 120 s")
    if failures:
        raise RuntimeError(f"{len(failures)} calls failed, first: {failures[0]!r}")
    return latencies, time.perf_counter() - begin


def setup(folder: str) -> Iterator[Worker]:
    fkey, wkey = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    fac = start_facilitator(
        FacilitatorConfig(
            key=fkey.private_bytes_raw().hex(),
            db_path=f"{folder}/f.db",
            port=0,
            authorized_keys={"w1": public_key_hex(wkey)},
            durability="normal",
        )
    )
    try:
        fac.calls.serve("echo", lambda params: params)
        config = WorkerConfig(
            url=fac.url,
            worker_id="w1",
            key=wkey.private_bytes_raw().hex(),
            facilitator_key=public_key_hex(fkey),
            db_path=f"{folder}/w1.db",
            durability="normal",
            max_calls_in_flight=1000,
        )
        with start_worker(config, {}) as worker:
            worker.wait_connected(10)
            yield worker
    finally:
        fac.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    raw = raw_round_trips(min(args.calls, 2000))
    base = statistics.median(raw)
    rows = []
    with tempfile.TemporaryDirectory(prefix="jobrelay-calls-") as tmp:
        for worker in setup(tmp):
            run_calls(worker, 10, 200)  # warm up
            for level in (1, 100, 1000):
                total = max(args.calls, 3 * level)
                latencies, seconds = run_calls(worker, level, total)
                rows.append((level, total, latencies, seconds))
    print(f"\ncall round trip on loopback (baseline: bare WebSocket echo p50 {base * 1000:.3f} ms)")
    head = ("in flight", "calls", "p50 ms", "p99 ms", "calls/s", "p50/base")
    print("| " + " | ".join(f"{h:>{w}}" for h, w in zip(head, (9, 6, 8, 8, 8, 8), strict=True)) + " |")
    print(f"|{'-' * 11}|{'-' * 8}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
    print(
        f"| {'baseline':>9} | {len(raw):>6} | {base * 1000:8.3f} | {quantile(raw, 0.99) * 1000:8.3f} | "
        f"{len(raw) / sum(raw):8.0f} | {1.0:8.2f} |"
    )
    for level, total, latencies, seconds in rows:
        p50 = statistics.median(latencies)
        print(
            f"| {level:>9} | {total:>6} | {p50 * 1000:8.3f} | {quantile(latencies, 0.99) * 1000:8.3f} | "
            f"{total / seconds:8.0f} | {p50 / base:8.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
