#!/usr/bin/env python3
"""jobrelay beside the brokers people would pick instead: one table from one run.

Every peer publishes N copies of one ~200 B payload (the JSON of the WorkerEvent jobrelay sends)
with at most 1,000 unacknowledged, timed from the first publish to the last acknowledgement:
- jobrelay durable end to end: worker publish_many() → facilitator (child process) → ack, both
  ends durability "full" (scripts/bench_e2e.py's setup);
- paho-mqtt QoS 1 → mosquitto;
- nats-py JetStream publish_async with its PubAck, file storage → nats-server;
- pika publisher confirms, persistent messages in a durable queue → rabbitmq-server;
- raw websocket-client frames into a `websockets` server that stores nothing and acks nothing:
  the ceiling (scripts/bench_e2e.py's raw_ceiling; frames masked in C, as jobrelay's worker
  masks them).
Rounds are interleaved (each round runs every peer once), so all see the same machine; the table
gives medians with min–max and ratios. The brokers are Debian's packages (installed with apt-get
when missing, as are the Python clients from the `bench` extra, unless --no-install), each on
free loopback ports with its state in a temporary directory, and stopped by PID on the way out,
Ctrl-C and SIGTERM included.

Usage: nice -n 19 scripts/bench_peers.py [--messages N] [--rounds N] [--size B] [--quick]
"""

from __future__ import annotations

import argparse
import configparser
import importlib.util
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import bench_clients as clients
import msgspec
from bench_brokers import Broker, BrokerError, Mosquitto, Nats, RabbitMQ, install_debs, missing_debs
from bench_e2e import raw_ceiling
from loguru import logger

ROOT = Path(__file__).resolve().parent.parent
MODULES = {"paho": "paho-mqtt", "nats": "nats-py", "pika": "pika"}


@dataclass
class Peer:
    name: str
    acked_means: str  # what the peer has done with a message when the publisher hears back
    run: Callable[[Path, int, int], float] | None = None  # (round dir, round, n) → msg/s
    rates: list[float] = field(default_factory=list)
    error: str = ""


def missing_modules() -> list[str]:
    return [pkg for mod, pkg in MODULES.items() if importlib.util.find_spec(mod) is None]


def install_clients() -> None:
    """pip install the `bench` extra's requirements (setup.cfg is their one list)."""
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    reqs = [r for r in cfg["options.extras_require"]["bench"].splitlines() if r.strip()]
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *reqs], check=True)


def stop_on_signal(signum: int, _frame: FrameType | None) -> None:
    # Unwinds through every `finally`/`with`: the brokers and children are stopped by PID.
    raise SystemExit(128 + signum)


def broker_peer(
    stack: ExitStack, broker: Broker, name: str, acked_means: str,
    publish: Callable[[int, int, int], float],
) -> Peer:  # fmt: skip
    """A Peer whose broker is started now (kept for the whole run, stopped by `stack`)."""
    peer = Peer(name, acked_means)
    try:
        port = stack.enter_context(broker)
    except BrokerError as e:
        peer.error = str(e)
        return peer
    peer.run = lambda _dir, rnd, n: publish(port, rnd, n)
    return peer


def peers(stack: ExitStack, tmp: Path, size: int) -> list[Peer]:
    payload = msgspec.json.encode(clients.jobrelay_body(size))
    return [
        Peer(
            "jobrelay durable e2e (publish_many)",
            "fsync'd by the worker, then by the facilitator",
            lambda rdir, _rnd, n: clients.jobrelay(rdir, n, size),
        ),
        broker_peer(
            stack, Mosquitto(tmp), "paho-mqtt QoS 1 → mosquitto",
            "PUBACK: in broker memory (persistence only on autosave/exit), no subscriber",
            lambda port, _rnd, n: clients.mqtt(port, n, payload),
        ),
        broker_peer(
            stack, Nats(tmp), "nats-py JetStream publish + ack, file storage",
            "PubAck: written to the stream file, fsync'd by the server every 2 min (default)",
            lambda port, rnd, n: clients.nats(port, n, payload, f"BENCH{rnd}"),
        ),
        broker_peer(
            stack, RabbitMQ(tmp), "pika publisher confirms → RabbitMQ durable queue",
            "confirm: persistent message fsync'd by the broker (batched)",
            lambda port, rnd, n: clients.rabbitmq(port, n, payload, f"bench{rnd}"),
        ),
        Peer(
            "raw websocket-client → websockets server",
            "nothing: no storage, no acks (the ceiling)",
            lambda _dir, _rnd, n: raw_ceiling(n, payload),
        ),
    ]  # fmt: skip


def run_rounds(all_peers: list[Peer], tmp: Path, rounds: int, n: int) -> None:
    for rnd in range(rounds):  # interleaved: every peer once per round
        for peer in all_peers:
            if peer.run is None or peer.error:
                continue
            with tempfile.TemporaryDirectory(dir=tmp) as rdir:
                t0 = time.monotonic()
                try:
                    peer.rates.append(peer.run(Path(rdir), rnd, n))
                except Exception as e:  # one failed peer must not hide the others' numbers
                    peer.error = f"{type(e).__name__}: {e}"
                print(
                    f"round {rnd + 1}/{rounds} {peer.name}: "
                    + (peer.error or f"{peer.rates[-1]:,.0f} msg/s ({time.monotonic() - t0:.1f} s)"),
                    file=sys.stderr, flush=True,
                )  # fmt: skip


def print_table(all_peers: list[Peer], n: int, size: int, rounds: int, load: list[float]) -> None:
    medians = {p.name: statistics.median(p.rates) for p in all_peers if p.rates and not p.error}
    ours = medians.get(all_peers[0].name)
    raw = medians.get(all_peers[-1].name)
    print(
        f"\njobrelay beside the brokers: {n:,} messages of {size} B per round, "
        f"{clients.WINDOW:,} in flight, {rounds} interleaved rounds, medians (min–max), loopback; "
        f"load average {load[0]:.1f} at the start, {load[1]:.1f} at the end, {os.cpu_count()} CPUs\n"
    )
    header = ("peer", "acknowledged when", "msg/s", "min–max", "÷ raw ws", "jobrelay ÷ peer")
    rows = []
    for p in all_peers:
        if p.name not in medians:
            rows.append((p.name, p.acked_means, "not measured", p.error or "no rounds", "", ""))
            continue
        m = medians[p.name]
        rows.append((
            p.name, p.acked_means, f"{m:,.0f}", f"{min(p.rates):,.0f}–{max(p.rates):,.0f}",
            f"{m / raw:.2f}" if raw else "",
            f"{ours / m:.2f}" if ours else "",
        ))  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000, help="per peer and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--size", type=int, default=200, help="payload bytes")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2,000 messages, 1 round")
    parser.add_argument("--no-install", action="store_true", help="fail instead of installing")
    args = parser.parse_args()
    n, rounds = (2_000, 1) if args.quick else (args.messages, args.rounds)
    # Ctrl-C raises KeyboardInterrupt even when started with SIGINT ignored (a background job).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop_on_signal)
    signal.signal(signal.SIGHUP, stop_on_signal)
    if (debs := missing_debs()) or missing_modules():
        if args.no_install:
            print(f"missing: {debs + missing_modules()} (run without --no-install)", file=sys.stderr)
            return 2
        if debs:
            install_debs(debs)
        if missing_modules():
            install_clients()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    load = [os.getloadavg()[0]]  # other work on the machine shows in every row: say how much
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        all_peers = peers(stack, Path(tmp), args.size)
        print("brokers started", file=sys.stderr, flush=True)
        run_rounds(all_peers, Path(tmp), rounds, n)
    load.append(os.getloadavg()[0])
    print_table(all_peers, n, args.size, rounds, load)
    return 1 if any(p.error for p in all_peers) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # every `with` has stopped what it started by now
        print("interrupted: the brokers and children this run started are stopped", file=sys.stderr)
        sys.exit(130)
