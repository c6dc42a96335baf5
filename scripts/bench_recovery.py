#!/usr/bin/env python3
"""Prompt recovery benchmark (issue 13 point 5): how soon workers are back after an outage.

N workers (default 50) connect to a reference facilitator; it is stopped for --outage seconds
(default 25), then started again on the same port with the same database. For each worker the
time from the facilitator's return to its session reopening is measured, and the connection
attempts the returning facilitator sees (summed from every worker's metrics, sampled every
0.1 s) from its return until the last worker is back.

Two runs in one process, one after the other:
- baseline: the old behaviour, reconnect backoff alone (full jitter, cap 30 s); the breaker
  is configured never to open (failure threshold 1,000,000);
- breaker: the defaults (the breaker opens after 5 failed attempts; a half-open probe every
  recovery timeout (2 s) plus full jitter over one more).

Prints one table with p50/p99/max return→reconnect, attempts/s (mean, and peak over 1 s) and
the ratios breaker/baseline. Every process and thread it starts is stopped before it exits.

Usage: nice -n 19 scripts/bench_recovery.py [--workers 50] [--outage 25]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from jobrelay.actors import Worker, WorkerConfig, start_worker
from jobrelay.facilitator import Facilitator, FacilitatorConfig, start_facilitator
from jobrelay.protocol.auth import public_key_hex

NEVER_OPENS = 1_000_000


class Result(NamedTuple):
    name: str
    returns: list[float]  # seconds from the facilitator's return to each worker's session
    attempts_per_s: float  # mean over the return window
    peak_per_s: float  # most attempts in any 1 s of the return window
    missing: int  # workers not back within the wait


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def attempts(workers: list[Worker]) -> int:
    """Connection attempts so far, over every worker (each enters `connecting` once per attempt)."""
    return sum(w.snapshot().counter("state_connecting") for w in workers)


def run(name: str, n: int, outage: float, folder: Path, *, threshold: int | None) -> Result:
    fkey = Ed25519PrivateKey.generate()
    keys = {f"w{i}": Ed25519PrivateKey.generate() for i in range(n)}
    fac_config = FacilitatorConfig(
        key=fkey.private_bytes_raw().hex(),
        db_path=str(folder / f"{name}-fac.db"),
        port=0,
        authorized_keys={wid: public_key_hex(k) for wid, k in keys.items()},
        durability="normal",
        stop_timeout=3.0,
    )
    fac: Facilitator | None = start_facilitator(fac_config)
    assert fac is not None
    port = fac.port
    workers: list[Worker] = []
    try:
        for wid, key in keys.items():
            extra: dict[str, Any] = {} if threshold is None else {"breaker_failure_threshold": threshold}
            config = WorkerConfig(
                url=f"ws://127.0.0.1:{port}",
                worker_id=wid,
                key=key.private_bytes_raw().hex(),
                facilitator_key=public_key_hex(fkey),
                db_path=str(folder / f"{name}-{wid}.db"),
                durability="normal",
                stop_timeout=2.0,
                **extra,
            )
            workers.append(start_worker(config, {}))
        for w in workers:
            w.wait_connected(30)
        events = [w.connection.connected_event().get(timeout=5) for w in workers]
        fac.stop()
        fac = None
        down_until = time.monotonic() + outage
        while time.monotonic() < down_until:
            time.sleep(0.1)  # the outage itself
        fac = start_facilitator(msgspec_replace(fac_config, port=port))
        back = time.monotonic()
        first = attempts(workers)
        samples = [(0.0, 0)]
        returned: dict[int, float] = {}
        deadline = back + max(60.0, 2 * outage)
        while len(returned) < n and time.monotonic() < deadline:
            now = time.monotonic()
            for i, event in enumerate(events):
                if i not in returned and event.is_set():
                    returned[i] = now - back
            if len(samples) == 1 or now - back - samples[-1][0] >= 0.1:
                samples.append((now - back, attempts(workers) - first))
            time.sleep(0.02)  # polling with a deadline
        span = max(samples[-1][0], 0.1)
        total = samples[-1][1]
        peak = 0
        for t0, c0 in samples:
            later = [c for t, c in samples if t <= t0 + 1.0]
            peak = max(peak, later[-1] - c0)
        return Result(name, sorted(returned.values()), total / span, float(peak), n - len(returned))
    finally:
        for w in workers:
            w.stop(timeout=2.0)
        if fac is not None:
            fac.stop()


def msgspec_replace(config: FacilitatorConfig, **changes: Any) -> FacilitatorConfig:
    return msgspec.structs.replace(config, **changes)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workers", type=int, default=50)
    parser.add_argument("--outage", type=float, default=25.0)
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="ERROR")
    results = []
    with tempfile.TemporaryDirectory(prefix="jobrelay-recovery-") as tmp:
        for name, threshold in (("baseline (backoff only)", NEVER_OPENS), ("breaker (defaults)", None)):
            print(f"running {name}: {args.workers} workers, {args.outage:g} s outage…", flush=True)
            results.append(run(name.split()[0], args.workers, args.outage, Path(tmp), threshold=threshold))
    base, new = results
    rows = [
        ("return → reconnect p50 (s)", lambda r: statistics.median(r.returns) if r.returns else float("nan")),
        ("return → reconnect p99 (s)", lambda r: quantile(r.returns, 0.99)),
        ("return → reconnect max (s)", lambda r: max(r.returns, default=float("nan"))),
        ("attempts/s seen on return (mean)", lambda r: r.attempts_per_s),
        ("attempts in the busiest 1 s", lambda r: r.peak_per_s),
        ("workers not back", lambda r: float(r.missing)),
    ]
    print(f"\n{args.workers} workers, facilitator away {args.outage:g} s")
    print(f"| {'measure':34} | {'baseline':>9} | {'breaker':>9} | {'ratio':>6} |")
    print(f"|{'-' * 36}|{'-' * 11}|{'-' * 11}|{'-' * 8}|")
    for label, get in rows:
        b, k = get(base), get(new)
        ratio = f"{k / b:.2f}" if b else "-"
        print(f"| {label:34} | {b:9.2f} | {k:9.2f} | {ratio:>6} |")
    return 0 if new.missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
