"""The chaos checker: every job's history at the facilitator, held against what the workers
accepted (the ``chaos`` handler's records), and the result table.

A ``chaos`` job with n steps must show, in this order and each once: ``accepted``, ``running``
(the handler started), ``running step 1/n`` … ``step m/n`` (m ≤ n; m = n for ``completed``),
then exactly one terminal status, last. Every step a worker recorded as accepted must be there.

Violations counted: lost (a recorded step missing, or a gap before a later entry), duplicated
(an entry or an ending more than once), reordered (entries out of order, or after the ending),
unfinished (no ending), unexpected (an entry no chaos job publishes). Pure functions: no I/O.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TERMINAL", "JobCheck", "Totals", "check_job", "format_table", "parse_records"]

TERMINAL: frozenset[str] = frozenset({"completed", "failed", "rejected", "cancelled"})
_STEP = re.compile(r"step (\d+)/(\d+)")
VIOLATIONS = ("lost", "duplicated", "reordered", "unfinished", "unexpected")


@dataclass
class JobCheck:
    job_id: str
    entries: int = 0
    ending: str = ""  # the terminal status ("" if none)
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    unfinished: int = 0
    unexpected: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(getattr(self, name) for name in VIOLATIONS)


def _key(entry: Mapping[str, Any]) -> int | None:
    """An entry's place in a chaos job's history: accepted 0, running 1, step i → 1 + i."""
    status, detail = entry.get("status"), entry.get("detail") or ""
    if status == "accepted" and not detail:
        return 0
    if status == "running":
        if not detail:
            return 1
        if found := _STEP.fullmatch(detail):
            return 1 + int(found.group(1))
    return None


def check_job(
    job_id: str, steps: int, history: Sequence[Mapping[str, Any]], recorded: Iterable[int]
) -> JobCheck:
    """Check one job's facilitator history against the steps its worker recorded as accepted."""
    result = JobCheck(job_id, entries=len(history))
    # A draining worker hands back jobs it never started (`released`) and another takes them: what
    # is checked is the last hand-out; before it, only acceptances and hand-backs may appear.
    last_release = max((i for i, e in enumerate(history) if e.get("status") == "released"), default=-1)
    for entry in history[: max(last_release, 0)]:
        if entry.get("status") not in ("accepted", "released"):
            result.unexpected += 1
            result.notes.append(f"{entry.get('status')} before the job was released")
    history = history[last_release + 1 :]
    endings = [i for i, e in enumerate(history) if e.get("status") in TERMINAL]
    if not endings:
        result.unfinished = 1
    else:
        result.ending = str(history[endings[0]]["status"])
        result.duplicated += len(endings) - 1
        if endings[-1] != len(history) - 1:
            result.reordered += 1
            result.notes.append("an entry after the ending")
    keys: list[int] = []
    for entry in history:
        if entry.get("status") in TERMINAL:
            continue
        key = _key(entry)
        if key is None or key > 1 + steps:
            result.unexpected += 1
            result.notes.append(f"unexpected {entry.get('status')} {entry.get('detail')!r}")
        else:
            keys.append(key)
    counts = Counter(keys)
    result.duplicated += sum(n - 1 for n in counts.values())
    unique = list(dict.fromkeys(keys))
    result.reordered += sum(1 for a, b in itertools.pairwise(unique) if b < a)
    present = set(keys)
    highest = max(present, default=-1)
    if result.ending == "completed":
        highest = max(highest, 1 + steps)  # a handler that returned published every step
    missing = {k for k in range(highest + 1) if k not in present}
    missing |= {1 + s for s in recorded if 1 + s not in present}
    result.lost += len(missing)
    if missing:
        result.notes.append(f"missing {sorted(missing)} (0 accepted, 1 running, 1+i step i)")
    if result.duplicated or result.reordered:
        result.notes.append(f"history {[(e.get('status'), e.get('detail')) for e in history]}")
    return result


def parse_records(lines: Iterable[str]) -> tuple[dict[str, list[int]], int]:
    """The handler's records by job, and the number of unreadable lines (torn writes: should be 0)."""
    by_job: dict[str, list[int]] = {}
    torn = 0
    for line in lines:
        try:
            doc = json.loads(line)
            by_job.setdefault(str(doc["job"]), []).append(int(doc["step"]))
        except (ValueError, KeyError, TypeError):
            torn += 1
    return by_job, torn


@dataclass
class Totals:
    """Everything the table shows; ``problems`` lists what made the run fail."""

    seed: int
    faults: Counter[str] = field(default_factory=Counter)
    jobs: int = 0
    endings: Counter[str] = field(default_factory=Counter)
    messages: int = 0
    recorded: int = 0
    violations: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    extra: list[tuple[str, str]] = field(default_factory=list)

    def add(self, check: JobCheck) -> None:
        self.jobs += 1
        self.messages += check.entries
        if check.ending:
            self.endings[check.ending] += 1
        for name in VIOLATIONS:
            self.violations[name] += getattr(check, name)
        if not check.ok:
            self.problems.append(f"{check.job_id}: {'; '.join(check.notes) or 'unfinished'}")

    @property
    def ok(self) -> bool:
        return not self.problems


def format_table(totals: Totals) -> str:
    rows: list[tuple[str, str]] = [(f"faults: {kind}", str(n)) for kind, n in sorted(totals.faults.items())]
    rows.append(("faults (total)", str(sum(totals.faults.values()))))
    rows.append(("jobs submitted", str(totals.jobs)))
    rows += [(f"jobs ended {status}", str(n)) for status, n in sorted(totals.endings.items())]
    rows.append(("messages (status entries at the facilitator)", str(totals.messages)))
    rows.append(("updates accepted by worker handlers", str(totals.recorded)))
    rows += [(name, str(totals.violations[name])) for name in ("lost", "duplicated", "reordered")]
    rows.append(("jobs unfinished", str(totals.violations["unfinished"])))
    rows.append(("unexpected entries", str(totals.violations["unexpected"])))
    rows += totals.extra
    width = max(len(name) for name, _ in rows)
    lines = [f"{'':-<{width}}  {'':-<10}"]
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    lines.append(lines[0])
    return "\n".join(lines)
