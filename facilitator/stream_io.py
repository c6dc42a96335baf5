# What a facilitator connection does with the store for its two streams: persist a received batch
# (and only then acknowledge it), record where the worker's stream resumes, and send stored job
# requests while the window has room. Runs on the event loop, awaiting the store thread.
# Invariants: nothing is acknowledged before the store committed it; one fill at a time per
# connection (``conn.filling``), so no seq goes out twice.
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Final

from websockets.asyncio.server import ServerConnection

from jobrelay.facilitator.store_ops import AcceptOutcome
from jobrelay.facilitator.ws_connection import message_waiting, recv_message
from jobrelay.protocol import events as ev
from jobrelay.protocol.errors import ErrorCode
from jobrelay.protocol.messages import JobStatus, JobStatusUpdate

if TYPE_CHECKING:
    from jobrelay.facilitator.connection import WorkerConnection

__all__ = ["fill", "note_peer_stream", "persist", "read_ahead", "restart_own_stream"]

# Bounds of one read-ahead: data messages joined into one store operation, and the frames and
# bytes taken in one go. A buffered frame is taken without yielding to the loop, so these also
# bound how long one connection holds the loop (and the window bounds the messages as well).
_JOIN_MOST: Final = 10_000
_AHEAD_FRAMES: Final = 64
_AHEAD_BYTES: Final = 4 << 20


async def read_ahead(conn: WorkerConnection, ws: ServerConnection) -> None:
    """Take the whole frames already buffered behind data waiting to be persisted, so they
    share its commit and its ack (``persist`` joins them).

    One commit per frame capped a connection at about one frame per fsync: four workers each
    sending their status updates a few to a frame queued frames in their sockets, and a job's
    terminal status took 0.7 s to be committed (its credit with it). Stops at anything but data
    (events keep their order), at the bounds above, or when the next read would wait.
    """
    todo = conn._todo
    messages = sum(len(item) for item in todo if isinstance(item, list))
    frames = size = 0
    while todo and isinstance(todo[-1], list) and message_waiting(ws) and conn.session.is_open:
        if messages >= _JOIN_MOST or frames >= _AHEAD_FRAMES or size >= _AHEAD_BYTES:
            return
        queued = len(todo)
        message, binary = await recv_message(ws)
        frames, size = frames + 1, size + len(message)
        conn.take_frame(message, binary)
        if len(todo) > queued and isinstance(todo[-1], list):
            messages += len(todo[-1])


async def restart_own_stream(conn: WorkerConnection, event: ev.RestartOwnStream) -> None:
    """The worker holds more of our stream than our store does (restored from an older copy):
    what we still have goes out again as a new stream; the worker's ledger recognises job ids it
    already has."""
    epoch = await conn.hub.wait(conn.hub.store.restart_stream(conn.session.peer_id))
    conn.hub.counters.add("epoch_restarts")
    conn._log.warning(
        "facilitator: our stream to worker={} restarts as epoch {} ({})",
        conn.session.peer_id,
        epoch,
        event.detail,
    )


async def note_peer_stream(
    conn: WorkerConnection, event: ev.PeerStreamStarted | ev.PeerStreamAdvanced
) -> None:
    store = conn.hub.store
    if isinstance(event, ev.PeerStreamAdvanced):
        await conn.hub.wait(store.open_stream(conn.worker_id, event.epoch, event.hwm, False))
        return
    await conn.hub.wait(store.open_stream(conn.worker_id, event.epoch, event.after, True))
    conn.hub.counters.add("new_streams")
    # A first stream is routine; a replaced one means the worker's store was lost.
    conn._log.log(
        "WARNING" if event.previous_epoch else "DEBUG",
        "facilitator: new worker stream worker={} epoch={} previous_epoch={} resume_after={}",
        conn.worker_id,
        event.epoch,
        event.previous_epoch or "-",
        event.after,
    )


async def persist(conn: WorkerConnection, batch: list[tuple[int, Any]]) -> None:
    """Commit ``batch`` and the data lists right behind it in the connection's queue (frames
    read ahead, in seq order) as one store operation; then acknowledge what was committed."""
    todo = conn._todo
    if todo and isinstance(todo[0], list):
        batch = list(batch)
        while todo and isinstance(head := todo[0], list):
            batch += head
            todo.popleft()
    outcome = await conn.hub.wait(conn.hub.store.accept(conn.worker_id, conn.in_epoch, batch))
    counters = conn.hub.counters
    counters.add("data_accepted", outcome.accepted)
    if outcome.accepted and any(isinstance(b, JobStatusUpdate) and b.status.terminal for _, b in batch):
        conn.hub.credit_freed(conn)  # a finished job gives its credit back: queued jobs may go
    if outcome.duplicates:
        counters.add("duplicates_dropped", outcome.duplicates)
    for refusal in outcome.refused:
        counters.add("refused_updates")
        if conn.repeats.first("refused status updates"):
            conn._log.warning(
                "facilitator: refused status update worker={} job={} reason={} "
                "(more this session are counted, not logged)",
                conn.worker_id,
                refusal.job_id,
                refusal.detail,
            )
        if refusal.code is not None and conn.session.is_open:
            conn.session.send_warning(refusal.code, f"job {refusal.job_id}: {refusal.detail}")
    if outcome.recorded:
        _publish_statuses(conn, outcome)
    if outcome.retries:
        conn.hub.retries.schedule(outcome.retries)
    if outcome.released:
        # Handed back by a draining worker: queued again, for another worker to take.
        counters.add("jobs_released", outcome.released)
        conn.hub.request_dispatch()
    if outcome.gap:
        conn.session.close(ErrorCode.SEQ_GAP, "stored stream position disagrees with the session")
    elif outcome.upto and conn.session.is_open:
        acknowledge(conn, min(outcome.upto, conn.session.receiver.seen))


def acknowledge(conn: WorkerConnection, upto: int) -> None:
    """Acknowledge ``upto``, or hold the ack for ``ack_delay`` to cover the commits after it
    (``SessionConfig.ack_delay``); a loop timer sends a held one when it is due."""
    session = conn.session
    session.acknowledge(upto, time.time())
    due = session.receiver.due_at
    if due is not None and conn.ack_timer is None:
        conn.ack_timer = conn.hub.loop.call_later(max(0.0, due - time.time()), _send_held_ack, conn)


def _send_held_ack(conn: WorkerConnection) -> None:
    conn.ack_timer = None
    conn.session.send_held_ack(time.time())
    conn.driver.pump()


def _publish_statuses(conn: WorkerConnection, outcome: AcceptOutcome) -> None:
    """Publish the status updates this batch recorded, as recorded (a failure the facilitator
    retries as ``retrying``). Matched by update, not by job id: one batch often holds several
    updates of a job (frames read ahead are one batch), and one refused or retried update must
    not relabel or hide its job's others."""
    events = conn.hub.events
    if not events.subscribers:
        return
    for update in outcome.recorded:
        if update.status is JobStatus.RELEASED:
            events.publish("job.released", job_id=update.job_id, worker=conn.worker_id)
            continue
        progress = None if update.status is JobStatus.RETRYING else update.progress
        status = update.status.value
        events.job_status(update.job_id, conn.worker_id, status, update.detail, progress, update.attempt)


async def fill(conn: WorkerConnection) -> None:
    """Send stored job requests/cancels while the window has room (one fill at a time)."""
    try:
        while conn.fill_wanted and conn.session.is_open:
            conn.fill_wanted = False
            sender = conn.session.sender
            while conn.session.is_open and sender.capacity > 0:
                after, want = sender.sent, min(sender.capacity, conn.hub.config.max_batch)
                rows = conn.fresh.take(after, want) or await conn.hub.wait(
                    conn.hub.store.pending(conn.worker_id, after, want)
                )
                if not rows or rows[0][0] != after + 1 or not conn.session.is_open:
                    break
                conn.session.note_appended(rows[-1][0])
                conn.session.send_data(rows)
                conn.driver.flush()
                if len(rows) < want:
                    break
    except Exception as exc:
        # A stream that cannot go on (a row too large for the frame limit, a store failure or
        # a store too slow): end the session; the next one replays from the worker's marks.
        conn._log.warning("facilitator: could not send stored jobs to worker={}: {}", conn.worker_id, exc)
        if conn.session.is_open:
            conn.driver.close(ErrorCode.INTERNAL, "could not send stored jobs")
    finally:
        conn.filling = False
