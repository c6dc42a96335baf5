#!/usr/bin/env python3
"""One process of simulated workers (simworkers.py), driven by bench_scale.py over pipes.

Pipe protocol, one JSON object per line:
- parent → child (stdin): `Command` {"cmd": "connect" | "cut" | "report" | "stop", "rate": R};
  EOF = stop.
- child → parent (stdout): `Ready` once the keys are loaded; `Status` (connected count, phase)
  and `Jobs` (jobs done) every 0.2 s when something changed and at once when all are open;
  one `Report` per "report"; `Failure` if the process fails.
`connect` starts every worker at once (or R per second); `cut` aborts every connection (no close
handshake) and the workers reconnect; each of them starts a new phase, whose `Status.all_open_at`
is set when every worker is open again. Times are `time.monotonic()` (one clock for every process on Linux).

Invariants: stdout carries only pipe messages; the soft RLIMIT_NOFILE is raised to the hard one;
stopping closes the connections cleanly within 3 s, then ends the workers' tasks.

Usage (by bench_scale.py): simchild.py --url ws://127.0.0.1:PORT --keys FILE --first I --count N
--facilitator-key HEX
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import sys
import time
from typing import Literal

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from simworkers import SimWorker, Tally

from jobrelay.actors.config import WorkerConfig
from jobrelay.common.gc_policy import tune_for_many_connections

__all__ = ["ChildMessage", "Command", "Failure", "Jobs", "Ready", "Report", "Status", "raise_nofile"]

_STATUS_EVERY = 0.2  # seconds between Status/Jobs lines (only when something changed)
_LAG_EVERY = 0.1  # the loop-lag probe's period
_STOP_CLOSE = 3.0  # seconds the clean closes at stop may take together


class Command(msgspec.Struct, frozen=True):
    cmd: Literal["connect", "cut", "report", "stop"]
    rate: float = 0.0  # connect: workers started per second by this process (0: all at once)


class Ready(msgspec.Struct, tag="ready", frozen=True):
    child: int
    workers: int


class Status(msgspec.Struct, tag="status", frozen=True):
    """``phase`` counts connect/cut commands; ``all_open_at``: when every worker of this process
    had an open session after the latest one (None: not yet)."""

    child: int
    phase: int
    connected: int
    all_open_at: float | None


class Jobs(msgspec.Struct, tag="jobs", frozen=True):
    """Jobs done since the last Jobs line: (job_id, worker_id, request received at, facilitator's
    ack of the `completed` update received at)."""

    child: int
    items: list[tuple[str, str, float, float]]


class Report(msgspec.Struct, tag="report", frozen=True):
    """Since the previous report: per connection the longest gap between frames from the
    facilitator (an open one's current silence included), why connections ended, failed
    connection attempts, the loop's worst lag. Totals: the rest."""

    child: int
    gaps: list[float]
    closes: dict[str, int]
    attempt_failures: dict[str, int]
    loop_lag_max: float
    heartbeat: tuple[float, float]  # interval, timeout from the facilitator's welcome (0, 0: none open)
    heartbeat_timeouts: int
    duplicate_requests: int
    cancels: int
    cpu_seconds: float
    cut: int  # connections aborted by the latest cut
    errors: int
    error_texts: list[str]


class Failure(msgspec.Struct, tag="failure", frozen=True):
    child: int
    detail: str


ChildMessage = Ready | Status | Jobs | Report | Failure


def raise_nofile() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Child:
    """The workers of this process and the pipe to the parent."""

    def __init__(
        self, index: int, url: str, keys: list[tuple[str, str]], sources: list[str], facilitator_key: str
    ) -> None:
        self.index = index
        # The worker's defaults, and the facilitator key every simulated worker pins.
        config = WorkerConfig(url=url, worker_id="sim", key="", facilitator_key=facilitator_key, db_path="")
        self.tally = Tally(total=len(keys), on_all_open=self.send_status)
        self.workers = [
            SimWorker(
                self.tally,
                config,
                worker_id,
                Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key)),
                sources[i % len(sources)],
            )
            for i, (worker_id, key) in enumerate(keys)
        ]
        self.phase = 0
        self.cut_count = 0
        self.lag_max = 0.0
        self._sent: tuple[int, int, float | None] | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def emit(self, message: ChildMessage) -> None:
        sys.stdout.buffer.write(msgspec.json.encode(message) + b"\n")
        sys.stdout.buffer.flush()

    def send_status(self) -> None:
        tally = self.tally
        if tally.done:
            self.emit(Jobs(self.index, tally.done))
            tally.done = []
        state = (self.phase, tally.connected, tally.all_open_at)
        if state != self._sent:
            self._sent = state
            self.emit(Status(self.index, *state))

    def report(self) -> None:
        tally, now = self.tally, time.monotonic()
        heartbeat = (0.0, 0.0)
        for session in (w.session for w in self.workers if w.session is not None and w.session.is_open):
            heartbeat = (session.heartbeat_interval, session.heartbeat_timeout)
            break
        usage = resource.getrusage(resource.RUSAGE_SELF)
        self.send_status()
        self.emit(
            Report(
                child=self.index,
                gaps=[w.gap(now) for w in self.workers],
                closes=dict(tally.closes),
                attempt_failures=dict(tally.attempt_failures),
                loop_lag_max=self.lag_max,
                heartbeat=heartbeat,
                heartbeat_timeouts=tally.counts["heartbeat_timeouts"],
                duplicate_requests=tally.counts["duplicate_requests"],
                cancels=tally.counts["cancels"],
                cpu_seconds=usage.ru_utime + usage.ru_stime,
                cut=self.cut_count,
                errors=tally.errors,
                error_texts=tally.error_texts,
            )
        )
        tally.closes.clear()
        tally.attempt_failures.clear()
        self.lag_max = 0.0

    def connect(self, rate: float) -> None:
        self.phase += 1
        self.tally.expect_all_open()
        delays = [i / rate if rate > 0 else 0.0 for i in range(len(self.workers))]
        self._tasks = [asyncio.create_task(w.run(d)) for w, d in zip(self.workers, delays, strict=True)]

    def cut(self) -> None:
        self.phase += 1
        self.tally.expect_all_open()
        self.cut_count = sum(w.cut() for w in self.workers)
        self.send_status()

    async def stop(self) -> None:
        """Close every connection cleanly (bounded), then end the workers' tasks."""
        self.tally.stopping = True
        closing = [asyncio.create_task(w.ws.close()) for w in self.workers if w.ws is not None]
        if closing:
            await asyncio.wait(closing, timeout=_STOP_CLOSE)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        background = [asyncio.create_task(self._status_loop()), asyncio.create_task(self._lag_loop())]
        self.emit(Ready(self.index, len(self.workers)))
        decoder = msgspec.json.Decoder(Command)
        try:
            while line := await stdin.readline():
                command = decoder.decode(line)
                match command.cmd:
                    case "connect":
                        self.connect(command.rate)
                    case "cut":
                        self.cut()
                    case "report":
                        self.report()
                    case "stop":
                        break
        finally:
            for task in background:
                task.cancel()
            await self.stop()

    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(_STATUS_EVERY)
            self.send_status()

    async def _lag_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + _LAG_EVERY
            await asyncio.sleep(_LAG_EVERY)
            self.lag_max = max(self.lag_max, loop.time() - due)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="the facilitator, ws://127.0.0.1:PORT")
    parser.add_argument("--keys", required=True, help="file of '<worker_id> <private key hex>' lines")
    parser.add_argument("--first", type=int, required=True, help="first line of --keys to use")
    parser.add_argument("--count", type=int, required=True, help="how many workers (lines)")
    parser.add_argument("--child", type=int, default=0, help="this process's index (in its messages)")
    parser.add_argument("--facilitator-key", required=True, help="the facilitator's public key (hex) to pin")
    parser.add_argument("--sources", default="127.0.0.1", help="comma-separated source addresses")
    args = parser.parse_args()
    raise_nofile()
    with open(args.keys) as f:
        lines = f.read().splitlines()[args.first : args.first + args.count]
    keys = [(parts[0], parts[1]) for parts in (line.split() for line in lines)]
    child = Child(args.child, args.url, keys, args.sources.split(","), args.facilitator_key)
    tune_for_many_connections()  # thousands of connections per process, like the facilitator
    try:
        asyncio.run(child.serve())
    except Exception as exc:
        child.emit(Failure(args.child, f"{type(exc).__name__}: {exc}"))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
