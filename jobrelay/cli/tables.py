# Text output of the API commands (`submit`, `jobs`, `cancel`): aligned tables, one job's status
# history, relative times. Invariant: plain columns, no colour, `(none)` under an empty table, so
# the output reads the same in a terminal, a pipe and a log.
from __future__ import annotations

import json
import sys
import time
from typing import Any

__all__ = ["ago", "clock", "pct", "print_job", "stderr_line", "table"]


def stderr_line(text: str) -> None:
    """One line on stderr, at once (a note beside the output, never mixed into it)."""
    print(text, file=sys.stderr, flush=True)


def print_job(view: dict[str, Any], *, as_json: bool) -> None:
    """One job: a header line, its payload and its status history (or the JSON document)."""
    if as_json:
        print(json.dumps(view, indent=2))
        return
    print(
        f"job {view['job_id']}  kind {view['kind']}  worker {view['peer'] or '-'}  "
        f"status {view['status'] or 'queued'}"
    )
    print(f"payload {json.dumps(view.get('payload'))}")
    table(
        ["#", "AT", "STATUS", "PROGRESS", "DETAIL"],
        [
            [
                n,
                clock(e["at"]),
                e["status"],
                pct(e["progress"]),
                e["detail"],
            ]
            for n, e in enumerate(view["history"], 1)
        ],
    )


def clock(at: float) -> str:
    """A time of day with milliseconds, local time."""
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"


def pct(progress: float | None) -> str:
    return "-" if progress is None else f"{progress * 100:.0f}%"


def ago(at: float | None) -> str:
    if not at:
        return "-"
    return f"{max(0.0, time.time() - at):.1f}s ago"


def table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print("(none)")
