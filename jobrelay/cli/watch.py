# `jobrelay jobs --watch`: a live table of the facilitator's jobs and workers, redrawn in place with
# rich's Live display on a terminal (status in colour, a progress bar, the worker, the age, the
# detail cut to fit the terminal's width); piped, the same table in plain text, printed again only
# when something other than the ages changed. Invariants: it only reads the API (GET /jobs and GET
# /workers every --interval); an unreachable facilitator is shown and retried, not fatal (a refused
# token is); --until-done and --wait bound it, Ctrl-C ends it with exit 0.
from __future__ import annotations

import argparse
import time
from collections import Counter
from typing import Any, Final, NamedTuple

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from jobrelay.cli.api_client import TERMINAL, ApiError, FacilitatorClient
from jobrelay.cli.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE
from jobrelay.cli.follow import STATUS_STYLE

__all__ = ["Snapshot", "render", "watch"]

_PLAIN_WIDTH: Final = 250  # piped: lines are cut only beyond this (a log has no width to fit)
_BAR: Final = 10
_MIN_INTERVAL: Final = 0.05  # --interval 0 redraws 20 times a second, not in a busy loop


class Snapshot(NamedTuple):
    """What one redraw shows."""

    jobs: list[dict[str, Any]]
    workers: list[dict[str, Any]]
    at: float
    error: str = ""


def watch(client: FacilitatorClient, args: argparse.Namespace) -> int:
    """Redraw the table every ``args.interval`` until Ctrl-C, ``--until-done`` or ``--wait``.

    Returns:
        The exit code: 0 (stopped, or with --until-done every job completed), 1 (--until-done
        and a job ended otherwise, or --wait passed first), 2 (the token was refused).
    """
    console = Console(highlight=False)
    styled = console.is_terminal
    if not styled:
        console = Console(highlight=False, width=_PLAIN_WIDTH)
    deadline = None if args.wait is None else time.monotonic() + args.wait
    shown: tuple[Any, ...] | None = None
    try:
        with Live(console=console, auto_refresh=False, transient=False) if styled else _NoLive() as live:
            while True:
                snap = _fetch(client, args.status, args.limit)
                if snap.error.startswith("HTTP 4"):
                    print(f"jobrelay: error: {snap.error}", flush=True)
                    return EXIT_USAGE
                view = render(snap, styled=styled, interval=args.interval)
                if styled:
                    live.update(view, refresh=True)
                elif (key := _content(snap)) != shown:
                    shown = key
                    console.print(view)
                    console.file.flush()
                ended = bool(snap.jobs) and all(j["status"] in TERMINAL for j in snap.jobs)
                if args.until_done and (ended or (not snap.jobs and not snap.error)):
                    return EXIT_OK if all(j["status"] == "completed" for j in snap.jobs) else EXIT_RUNTIME
                if deadline is not None and time.monotonic() >= deadline:
                    return EXIT_RUNTIME if args.until_done else EXIT_OK
                time.sleep(max(args.interval, _MIN_INTERVAL))  # a redraw interval, not a wait for a condition
    except KeyboardInterrupt:
        return EXIT_OK


class _NoLive:
    def __enter__(self) -> _NoLive:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, renderable: RenderableType, *, refresh: bool = False) -> None:
        raise AssertionError("plain output prints instead")


def _fetch(client: FacilitatorClient, status: str | None, limit: int) -> Snapshot:
    try:
        return Snapshot(client.jobs(status, limit), client.workers(), time.time())
    except ApiError as exc:
        why = f"HTTP {exc.status}: {exc}" if exc.status in (400, 401, 403) else str(exc)
        return Snapshot([], [], time.time(), why)


def _content(snap: Snapshot) -> tuple[Any, ...]:
    """What changed since the last plain print (the ages always do: they do not count)."""
    jobs = tuple((j["job_id"], j["status"], j["progress"], j["peer"], j["detail"]) for j in snap.jobs)
    workers = tuple(
        (w["worker_id"], w["connected"], w["draining"], w["outstanding_jobs"]) for w in snap.workers
    )
    return jobs, workers, snap.error


def render(snap: Snapshot, *, styled: bool, interval: float = 0.5) -> RenderableType:
    """The table of ``snap``: rich styles and a bar when ``styled``, else plain text."""
    table = Table(
        box=box.SIMPLE_HEAD if styled else None,
        expand=styled,
        pad_edge=False,
        header_style="bold" if styled else "",
        show_edge=False,
    )
    table.add_column("JOB", no_wrap=True, overflow="ellipsis", max_width=24)
    table.add_column("KIND", no_wrap=True, overflow="ellipsis", max_width=16)
    table.add_column("STATUS", no_wrap=True)
    table.add_column("PROGRESS", no_wrap=True, min_width=_BAR + 5)
    table.add_column("WORKER", no_wrap=True, overflow="ellipsis", max_width=16)
    table.add_column("AGE", no_wrap=True, justify="right")
    table.add_column("DETAIL", no_wrap=True, overflow="ellipsis", ratio=1 if styled else None)
    for job in snap.jobs:
        status = job["status"] or "queued"
        table.add_row(
            job["job_id"],
            job["kind"],
            Text(status, style=STATUS_STYLE.get(status, "") if styled else ""),
            _progress(job["progress"], styled),
            job["peer"] or "-",
            _age(snap.at - job["created_at"]),
            job["detail"] or "",
        )
    if not snap.jobs:
        table.add_row("(no jobs)", "", "", "", "", "", "")
    return Group(table, _footer(snap, styled, interval))


def _progress(progress: float | None, styled: bool) -> RenderableType:
    if progress is None:
        return Text("-")
    pct = Text(f" {progress * 100:3.0f}%")
    if not styled:
        filled = round(progress * _BAR)
        return Text(f"[{'#' * filled}{'.' * (_BAR - filled)}]") + pct
    grid = Table.grid()
    grid.add_row(ProgressBar(total=1.0, completed=progress, width=_BAR), pct)
    return grid


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


def _footer(snap: Snapshot, styled: bool, interval: float) -> Text:
    counts = Counter(j["status"] or "queued" for j in snap.jobs)
    line = Text()
    for n, (status, number) in enumerate(sorted(counts.items())):
        line.append(", " if n else "jobs: ")
        line.append(f"{number} {status}", style=STATUS_STYLE.get(status, "") if styled else "")
    line.append("\n" if counts else "")
    line.append("workers: ")
    if not snap.workers:
        line.append("(none)")
    for n, w in enumerate(snap.workers):
        state = "draining" if w["draining"] else "connected" if w["connected"] else "gone"
        style = {"connected": "green", "draining": "yellow", "gone": "dim"}[state] if styled else ""
        line.append(", " if n else "")
        line.append(f"{w['worker_id']} {state}", style=style)
        if w["outstanding_jobs"]:
            line.append(f" ({w['outstanding_jobs']} unfinished)")
    line.append("\n" + time.strftime("%H:%M:%S", time.localtime(snap.at)))
    if styled:
        line.append(f"  every {interval:g}s, Ctrl-C stops", style="dim")
    if snap.error:
        line.append(f"\n{snap.error} (retrying)", style="bold red" if styled else "")
    return line
