# GET /events: the facilitator's live events (events.py) streamed to one HTTP client, as JSON lines
# (chunked, application/x-ndjson) or, when the client asks for text/event-stream, as server-sent
# events. Invariants: the first line is a ``stream.open`` event (the subscription is live from then
# on: a client may read the state it needs after it and miss nothing); a quiet stream carries a
# keepalive every KEEPALIVE seconds (so both ends notice a dead peer); a client that stops reading
# is cut off after WRITE_TIMEOUT and its subscription dropped, never waited for; the stream ends
# after a ``stream.dropped`` marker, or with a ``stream.closed`` event when the facilitator stops.
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web

from jobrelay.common.http import Refusal
from jobrelay.facilitator.events import DROPPED, EventBus, Subscription, encoded

__all__ = ["KEEPALIVE", "WRITE_TIMEOUT", "stream_events"]

KEEPALIVE: Final = 15.0
WRITE_TIMEOUT: Final = 10.0
COALESCE: Final = 0.02  # seconds a stream waits after a write, so a burst goes out in few writes
_FILTERS: Final = ("job", "worker", "type")


def _matcher(request: web.Request) -> Callable[[dict[str, Any]], bool]:
    """The query's filters: ``job=ID``, ``worker=ID``, ``type=PREFIX`` (e.g. ``job.``), all must hold.

    Raises:
        Refusal: an unknown query parameter (400).
    """
    unknown = set(request.query) - set(_FILTERS)
    if unknown:
        raise Refusal(
            400, f"unknown query parameters: {', '.join(sorted(unknown))} (known: job, worker, type)"
        )
    job, worker, prefix = (request.query.get(name) or None for name in _FILTERS)

    def match(event: dict[str, Any]) -> bool:
        if job is not None and event.get("job_id") != job:
            return False
        if worker is not None and event.get("worker") != worker:
            return False
        return prefix is None or str(event["type"]).startswith(prefix)

    return match


def _frame(event: dict[str, Any], sse: bool) -> bytes:
    line = encoded(event)
    if sse:
        return b"event: " + str(event["type"]).encode() + b"\ndata: " + line + b"\n"
    return line


async def stream_events(
    request: web.Request,
    bus: EventBus,
    stopping: Callable[[], bool],
    streams: set[Subscription],
    keepalive: float = KEEPALIVE,
) -> web.StreamResponse:
    """Serve one subscriber until it goes away, is dropped, or ``stopping()`` (its subscription
    is in ``streams`` meanwhile: the server interrupts those when it shuts down)."""
    match = _matcher(request)
    sse = "text/event-stream" in request.headers.get("Accept", "")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream" if sse else "application/x-ndjson",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a reverse proxy must not hold lines back
        }
    )
    sub = bus.subscribe()
    streams.add(sub)
    try:
        await response.prepare(request)
        await _write(request, response, _frame({"seq": 0, "at": time.time(), "type": "stream.open"}, sse))
        while not stopping():
            events = await sub.get(keepalive)
            if not events:
                alive = b": keepalive\n\n" if sse else _frame({"type": "keepalive", "at": time.time()}, sse)
                await _write(request, response, alive)
                continue
            chunk = b"".join(_frame(e, sse) for e in events if e["type"] == DROPPED or match(e))
            if chunk:
                await _write(request, response, chunk)
            if events[-1]["type"] == DROPPED:  # the marker is always its last item
                return response
            # A reader costs the loop at most ~50 wake-ups and writes a second, however many
            # events are published (they wait in its buffer meanwhile); 20 ms is not seen by a human.
            await asyncio.sleep(COALESCE)
        await _write(request, response, _frame({"type": "stream.closed", "at": time.time()}, sse))
    except (ConnectionError, TimeoutError):
        pass  # the client went away or stopped reading: its subscription ends below
    finally:
        streams.discard(sub)
        sub.close()
    return response


async def _write(request: web.Request, response: web.StreamResponse, data: bytes) -> None:
    try:
        async with asyncio.timeout(WRITE_TIMEOUT):
            await response.write(data)
    except TimeoutError:
        if request.transport is not None:
            request.transport.abort()  # a reader that stopped reading: its buffers are freed now
        raise
