"""The results of bench_scale.py: one Row per N, the per-worker costs derived across rows, the
markdown table and the notes line under it. Pure data and formatting: no processes, no I/O."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass, field

from scale_procs import ProcStats
from simchild import Report

__all__ = ["Row", "Storm", "derive", "merge", "notes", "percentile", "table", "take_gaps"]


@dataclass
class Storm:
    cut: int = 0  # open sockets the workers aborted
    reconnect_s: float | None = None  # cut → all N open again (workers' view)
    facilitator_reconnect_s: float | None = None  # cut → /stats says N connected (polled, 0.1 s)
    reconnected: int = 0
    attempt_failures: dict[str, int] = field(default_factory=dict)
    closes: dict[str, int] = field(default_factory=dict)
    facilitator: dict[str, int] = field(default_factory=dict)  # /stats deltas over the storm


@dataclass
class Row:
    n: int
    error: str = ""
    connected: int = 0
    facilitator_connected: int = 0
    connect_s: float | None = None  # all N open, as the workers see it
    facilitator_connect_s: float | None = None  # /stats says N connected (polled every 0.1 s)
    connect_failures: dict[str, int] = field(default_factory=dict)  # failed attempts, ended sessions
    empty: ProcStats | None = None  # the facilitator before any worker connected
    full: ProcStats | None = None  # once all were connected
    after_storm: ProcStats | None = None
    idle_cpu: float | None = None  # fraction of one core
    sim_idle_cpu: float | None = None  # the simulated workers' processes together, same window
    # phase → wall s, CPU s of the facilitator and the simulator, TCP counters (tcp_counters())
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    gap_max_s: dict[str, float] = field(default_factory=dict)  # phase → max over connections
    gap_p99_s: dict[str, float] = field(default_factory=dict)  # phase → p99 of per-connection max
    heartbeat_s: tuple[float, float] = (0.0, 0.0)  # interval, timeout (the facilitator's welcome)
    heartbeat_timeouts_facilitator: int = 0
    heartbeat_timeouts_workers: int = 0
    jobs: int = 0
    jobs_completed_once: int = 0
    job_problems: list[str] = field(default_factory=list)
    jobs_per_s: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)  # p50, p99, max
    storms: list[Storm] = field(default_factory=list)
    sim_loop_lag_max_s: float = 0.0
    sim_errors: int = 0
    sim_error_texts: list[str] = field(default_factory=list)
    per_worker: dict[str, float] = field(default_factory=dict)  # derived across rows


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def merge(counts: Iterable[dict[str, int]]) -> dict[str, int]:
    """Counters added up by key."""
    total: dict[str, int] = {}
    for c in counts:
        for name, count in c.items():
            total[name] = total.get(name, 0) + count
    return total


def take_gaps(row: Row, phase: str, reports: list[Report]) -> None:
    gaps = sorted(g for r in reports for g in r.gaps)
    if gaps:
        row.gap_max_s[phase] = gaps[-1]
        row.gap_p99_s[phase] = percentile(gaps, 0.99)
    row.heartbeat_timeouts_workers = sum(r.heartbeat_timeouts for r in reports)
    row.heartbeat_s = max([row.heartbeat_s, *(r.heartbeat for r in reports)])
    row.sim_loop_lag_max_s = max([row.sim_loop_lag_max_s, *(r.loop_lag_max for r in reports)])
    row.sim_errors = sum(r.errors for r in reports)
    row.sim_error_texts = [t for r in reports for t in r.error_texts][:20]


def derive(rows: list[Row]) -> None:
    """Per-worker cost: (value at N - value at the smallest N) / ΔN, and against the empty facilitator."""
    ok = [r for r in rows if r.full is not None and not r.error]
    if not ok:
        return
    base = min(ok, key=lambda r: r.n)
    assert base.full is not None
    for r in ok:
        assert r.full is not None and r.empty is not None
        r.per_worker["kib_vs_empty"] = (r.full.rss_kib - r.empty.rss_kib) / r.n
        r.per_worker["fds_vs_empty"] = (r.full.fds - r.empty.fds) / r.n
        r.per_worker["threads_vs_empty"] = (r.full.threads - r.empty.threads) / r.n
        if r.n > base.n:
            dn = r.n - base.n
            r.per_worker["kib"] = (r.full.rss_kib - base.full.rss_kib) / dn
            r.per_worker["fds"] = (r.full.fds - base.full.fds) / dn
            r.per_worker["threads"] = (r.full.threads - base.full.threads) / dn


def fmt(value: float | None, spec: str, unit: str = "") -> str:
    return "–" if value is None else f"{value:{spec}}{unit}"


def storm_cells(row: Row) -> tuple[str, str]:
    """The storm's columns: the slowest reconnect of all, and what failed or ended otherwise."""
    if not row.storms:
        return "–", "–"
    worst = [s.reconnect_s for s in row.storms]
    back = "not all" if None in worst else f"{max(w for w in worst if w is not None):.2f} s"
    failures = merge([*(s.attempt_failures for s in row.storms), *(s.closes for s in row.storms)])
    failures.pop("cut", None)
    return back, ", ".join(f"{c} {k}" for k, c in sorted(failures.items())) or "0"


def connect_cell(row: Row) -> str:
    """Time to connect all (or how many did), with the failed attempts on the way."""
    failed = sum(row.connect_failures.values())
    cell = f"{row.connect_s:.2f} s" if row.connect_s is not None else f"{row.connected:,} only"
    return "–" if not row.connected else cell + (f", {failed:,} failed" if failed else "")


def table(rows: list[Row]) -> list[str]:
    header = (
        "workers",
        "connect all",
        "RSS",
        "fds",
        "threads",
        "idle CPU",
        "max gap",
        "HB timeouts",
        "jobs/s",
        "p50",
        "p99",
        "storm: all back",
        "storm: failed/closed",
        "KiB/worker",
        "fds/worker",
    )
    lines = []
    for r in rows:
        full = r.full
        back, failures = storm_cells(r)
        gap = max(r.gap_max_s.values()) if r.gap_max_s else None
        lines.append(
            (
                f"{r.n:,}" + (" (failed)" if r.error else ""),
                connect_cell(r),
                fmt(full.rss_kib / 1024 if full else None, ".1f", " MiB"),
                fmt(full.fds if full else None, ","),
                fmt(full.threads if full else None, ","),
                fmt(r.idle_cpu * 100 if r.idle_cpu is not None else None, ".1f", " %"),
                fmt(gap, ".2f", " s"),
                f"{r.heartbeat_timeouts_facilitator} / {r.heartbeat_timeouts_workers}",
                fmt(r.jobs_per_s, ",.0f"),
                fmt(r.latency_ms.get("p50"), ".1f", " ms"),
                fmt(r.latency_ms.get("p99"), ".1f", " ms"),
                back,
                failures,
                fmt(r.per_worker.get("kib"), ".1f"),
                fmt(r.per_worker.get("fds"), ".2f"),
            )
        )
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(len(header))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(x, widths, strict=True)) + " |" for x in lines]
    return out


def notes(rows: list[Row], args: argparse.Namespace, submitters: int, wall: float) -> str:
    """The line under the table: totals, per-worker costs against the empty facilitator, setup."""
    jobs = sum(r.jobs for r in rows)
    once = sum(r.jobs_completed_once for r in rows)
    hb = sum(r.heartbeat_timeouts_facilitator + r.heartbeat_timeouts_workers for r in rows)
    refused = sum(sum(s.attempt_failures.values()) for r in rows for s in r.storms)
    other = sum(c for r in rows for s in r.storms for k, c in s.closes.items() if k != "cut")
    vs_empty = ", ".join(
        f"{r.n:,}: {r.per_worker['kib_vs_empty']:.1f} KiB, {r.per_worker['fds_vs_empty']:.2f} fds, "
        f"{r.per_worker['threads_vs_empty']:.2f} threads"
        for r in rows
        if r.per_worker
    )
    lag = max((r.sim_loop_lag_max_s for r in rows), default=0.0)
    sim_cpu = max((r.sim_idle_cpu or 0.0 for r in rows), default=0.0)
    interval, timeout = max((r.heartbeat_s for r in rows), default=(0.0, 0.0))
    overflows = ", ".join(
        f"{r.n:,}: {r.phases.get('connect', {}).get('ListenOverflows', 0):,.0f} / "
        f"{sum(v.get('ListenOverflows', 0) for k, v in r.phases.items() if k.startswith('storm')):,.0f}"
        for r in rows
    )
    start = f"{args.connect_rate:g} per s" if args.connect_rate else "all at once"
    fac_cpus, sim_cpus = args.cpu_split
    pinned = f"; CPUs: facilitator {fac_cpus}, simulator {sim_cpus}" if fac_cpus else "; no CPU pinning"
    return (
        f"Totals: {once:,}/{jobs:,} jobs completed exactly once; heartbeat timeouts {hb}; failed "
        f"connection attempts in storms {refused}, sessions ended otherwise than by the cut {other}; "
        f"simulator errors {sum(r.sim_errors for r in rows)}; wall {wall:.0f} s. "
        f"Per worker vs the empty facilitator: {vs_empty or '–'}. "
        f"Listen-queue overflows (whole namespace; connect / storms): {overflows}.\n"
        f"Notes: facilitator `{args.facilitator_cmd}`, heartbeat {interval:g} s / timeout {timeout:g} s "
        f"(its welcome); workers start connecting {start}; a job is done when the worker gets "
        f"the facilitator's ack of its `completed` "
        f"update (sent after the commit), then GET /jobs/{{id}} must show accepted, running, completed "
        f"on the named worker; {submitters} submitters; idle CPU over {args.idle_seconds:g} s, of one "
        f"core; max gap = the longest silence of the facilitator on any connection; HB timeouts = "
        f"facilitator's /stats / workers' closes; {args.procs} simulator processes (loop lag up to "
        f"{lag:.3f} s, idle CPU up to {sim_cpu * 100:.1f} % of a core); {args.storms} storm(s) per N{pinned}."
    )
