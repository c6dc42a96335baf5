# Following one job (`jobrelay jobs JOB --follow`, `jobrelay submit --wait`): its history so far,
# then each status as the facilitator records it, read from GET /events, until it ends. Invariants:
# the stream is opened before the history is read, so no status falls between the two (one shown in
# both is printed once); a stream that breaks or is dropped falls back to the job's record; a
# facilitator without /events is polled; on a terminal statuses are coloured, piped they are plain.
from __future__ import annotations

import json
import queue
import threading
import time
from collections import Counter
from typing import Any, Final

from rich.console import Console
from rich.text import Text

from jobrelay.cli.api_client import TERMINAL, ApiError, FacilitatorClient

__all__ = ["STATUS_STYLE", "clock", "follow"]

STATUS_STYLE: Final = {
    "queued": "dim",
    "accepted": "cyan",
    "running": "blue",
    "completed": "green",
    "failed": "bold red",
    "rejected": "red",
    "cancelled": "yellow",
    "retrying": "magenta",
    "released": "magenta",
}
_NO_EVENTS: Final = 404  # a facilitator from before GET /events: polled instead


def clock(at: float) -> str:
    """``HH:MM:SS.mmm`` in local time."""
    return time.strftime("%H:%M:%S", time.localtime(at)) + f".{int(at % 1 * 1000):03d}"


def follow(client: FacilitatorClient, job_id: str, timeout: float | None, *, as_json: bool) -> dict[str, Any]:
    """Print the job's statuses as they arrive (its history so far first) until it ends or
    ``timeout`` seconds pass; returns its last view.

    Raises:
        ApiError: the job is unknown, or the facilitator unreachable.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    console = Console(highlight=False, soft_wrap=True)
    reader = _Reader(client, job_id)
    first = reader.next(deadline)
    if isinstance(first, ApiError) and first.status != _NO_EVENTS:
        raise first
    view = client.job(job_id)  # after the stream opened: nothing recorded since is missed
    shown = Counter(_key(e) for e in view["history"])
    rows = len(view["history"])
    if not as_json:
        console.print(f"job {view['job_id']}  kind {view['kind']}  (statuses as they arrive)")
        for n, entry in enumerate(view["history"], 1):
            _row(console, n, entry)
    else:
        for entry in view["history"]:
            console.out(json.dumps({"type": "job.status", "job_id": job_id, **entry}), highlight=False)
    while view.get("status") not in TERMINAL and not isinstance(first, ApiError):
        event = reader.next(deadline)
        if event is None:  # the time is up
            break
        if isinstance(event, ApiError) or event["type"] in ("stream.dropped", "stream.closed"):
            # The stream is gone: what is left comes from the job's record.
            view = client.wait(job_id, 0 if deadline is None else max(0.0, deadline - time.monotonic()))
            break
        if event["type"] == "job.status":
            key = _key(event)
            if shown[key]:
                shown[key] -= 1  # in the history printed above already
                continue
            rows += 1
            if as_json:
                console.out(json.dumps(event), highlight=False)
            else:
                _row(console, rows, event)
        elif event["type"] == "job.ended":
            break
    else:
        if isinstance(first, ApiError):  # no /events here: poll as before
            view = client.wait(job_id, 1e9 if deadline is None else max(0.0, deadline - time.monotonic()))
    reader.stop()
    view = client.job(job_id) if view.get("status") not in TERMINAL else view
    if not as_json:
        for n, entry in enumerate(view["history"][rows:], rows + 1):
            _row(console, n, entry)  # recorded after the stream ended
        console.print(
            f"job {view['job_id']}  kind {view['kind']}  worker {view['peer'] or '-'}  "
            f"status {view['status'] or 'queued'}"
        )
    return view


def _key(entry: dict[str, Any]) -> tuple[Any, ...]:
    return entry["status"], entry.get("progress"), entry.get("detail") or ""


def _row(console: Console, n: int, entry: dict[str, Any]) -> None:
    progress = entry.get("progress")
    status = str(entry["status"])
    line = Text(f"{n:<3} {clock(entry['at'])}  ")
    line.append(f"{status:<10}", style=STATUS_STYLE.get(status, ""))
    line.append(f" {'-' if progress is None else f'{progress * 100:.0f}%':<5} {entry.get('detail') or ''}")
    console.print(line)


class _Reader(threading.Thread):
    """Reads the job's event stream into a queue (a blocked read cannot miss the deadline)."""

    def __init__(self, client: FacilitatorClient, job_id: str) -> None:
        super().__init__(name="jobrelay-events", daemon=True)
        self._client = client
        self._job_id = job_id
        self._queue: queue.SimpleQueue[dict[str, Any] | ApiError] = queue.SimpleQueue()
        self._stopped = threading.Event()
        self.start()

    def run(self) -> None:
        try:
            for event in self._client.events(job=self._job_id):
                if self._stopped.is_set():
                    return
                self._queue.put(event)
        except ApiError as exc:
            self._queue.put(exc)
            return
        self._queue.put(ApiError(0, "the event stream ended"))

    def next(self, deadline: float | None) -> dict[str, Any] | ApiError | None:
        """The next event (or the error that ended the stream); None once ``deadline`` passed."""
        try:
            return self._queue.get(
                timeout=None if deadline is None else max(0.0, deadline - time.monotonic())
            )
        except queue.Empty:
            return None

    def stop(self) -> None:
        self._stopped.set()  # a daemon thread: a read blocked on a quiet stream ends with the process
