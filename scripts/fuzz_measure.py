"""What a fuzz run measures of its target process and how it reports it: /proc numbers before and
after (RSS, open descriptors, threads), the target's log lines during the attack (per hostile
session, grouped by message so a line logged per frame stands out), and the result table.
Every wait here has a deadline.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scale_procs import ProcStats, proc_stats

__all__ = ["FuzzResult", "LogWindow", "settle", "table"]

_NUMBERS = re.compile(r"[0-9a-f]{6,}|\d+(\.\d+)?")


@dataclass
class FuzzResult:
    """One run, one direction: what was sent, what the target did, what was checked."""

    mode: str
    seed: int
    frames: int = 0
    sessions: int = 0
    seconds: float = 0.0
    by_class: dict[str, int] = field(default_factory=dict)
    before: ProcStats | None = None
    after: ProcStats | None = None
    log_lines: int = 0
    log_top: list[tuple[str, int]] = field(default_factory=list)
    peer_ok: bool = False
    peer_detail: str = ""
    target_alive: bool = False
    exit_code: int | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def lines_per_session(self) -> float:
        return self.log_lines / max(1, self.sessions)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["lines_per_session"] = round(self.lines_per_session, 3)
        return doc


class LogWindow:
    """The lines a target writes to its log file from now until ``close`` (JSON or text lines)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = path.stat().st_size if path.exists() else 0

    def lines(self) -> list[str]:
        with self.path.open("rb") as f:
            f.seek(self.start)
            return [line.decode(errors="replace") for line in f.read().splitlines() if line.strip()]

    def summary(self, ignore: tuple[str, ...] = (), top: int = 8) -> tuple[int, list[tuple[str, int]]]:
        """(line count, the most frequent messages with numbers and ids blanked out), leaving out
        lines that contain any of ``ignore`` (the well-behaved peer's own traffic)."""
        counts: Counter[str] = Counter()
        lines = [line for line in self.lines() if not any(mark in line for mark in ignore)]
        for line in lines:
            text = line
            try:
                record = json.loads(line)  # a flat --log-json line (jobrelay/cli/logs.py)
                text = f"{record['level']} {record['message']}"
            except (ValueError, KeyError, TypeError):
                pass
            counts[_NUMBERS.sub("#", text)[:110]] += 1
        return len(lines), counts.most_common(top)


def settle(pid: int, baseline: ProcStats, deadline: float, fd_slack: int = 2) -> ProcStats:
    """Poll the target until its descriptors and threads are back to ``baseline`` (descriptors
    within ``fd_slack``: a reconnecting peer's socket) or the deadline passes; the last reading."""
    while True:
        now = proc_stats(pid)
        if (
            now.fds <= baseline.fds + fd_slack and now.threads <= baseline.threads
        ) or time.monotonic() >= deadline:
            return now
        time.sleep(0.2)


def table(results: list[FuzzResult]) -> str:
    """The report: one row per direction, then the most frequent log messages of each."""
    rows = [
        "| target | seed | frames | sessions | s | RSS KiB before→after | fds before→after "
        "| threads before→after | log lines/session | peer served | alive, exit |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        b, a = r.before, r.after
        rss = f"{b.rss_kib}→{a.rss_kib}" if b and a else "?"
        fds = f"{b.fds}→{a.fds}" if b and a else "?"
        threads = f"{b.threads}→{a.threads}" if b and a else "?"
        rows.append(
            f"| {r.mode} | {r.seed} | {r.frames} | {r.sessions} | {r.seconds:.0f} | {rss} | {fds} "
            f"| {threads} | {r.lines_per_session:.2f} ({r.log_lines}) | {'yes' if r.peer_ok else 'NO'} | "
            f"{'yes' if r.target_alive else 'NO'}, {r.exit_code} |"
        )
    for r in results:
        rows.append(f"\n{r.mode}: frames by class: {dict(sorted(r.by_class.items()))}")
        rows.append(f"{r.mode}: peer: {r.peer_detail}")
        for text, n in r.log_top:
            rows.append(f"  {n:>7}  {text}")
        rows.extend(f"{r.mode}: PROBLEM: {p}" for p in r.problems)
    return "\n".join(rows)
