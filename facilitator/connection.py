# One worker connection on the reference facilitator: a FacilitatorSession over a `websockets`
# asyncio server connection, driven by the shared SessionDriver. Everything runs on the
# facilitator's event loop: one coroutine per connection (``run``: reads and acts), one writer
# task (frame_writer.py: a stalled peer blocks only its own writer), one loop timer for the next
# deadline (heartbeat due, peer silence, handshake, stuck send). No thread of its own.
# Invariants:
# - Only the loop thread touches the session. Other threads reach a connection through
#   ``loop.call_soon_threadsafe`` (``wake``, ``request_close``).
# - Events are acted on in the order the session emitted them, one at a time, awaiting the store
#   where needed (``_act``): data is acknowledged only after the store committed it (durable
#   before acknowledged); refused status updates are still acknowledged (the stream moves on).
# - Frames leave in the order the session queued them (one writer task, one queue); after the
#   session closes, its error frame is sent, then the WebSocket is closed with the mapped code
#   (close_code_for()); a writer still stuck after the grace aborts the TCP connection.
# - Stored job requests are sent by one fill at a time (``_fill``), so seqs never go out twice.
from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from loguru import logger
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from jobrelay.common.logs import Repeats
from jobrelay.facilitator.admission import GatedConnection
from jobrelay.facilitator.connection_log import log_closed, log_opened
from jobrelay.facilitator.frame_writer import FrameWriter
from jobrelay.facilitator.fresh_rows import FreshRows
from jobrelay.facilitator.stream_io import fill, note_peer_stream, persist, read_ahead, restart_own_stream
from jobrelay.facilitator.ws_connection import FrameConnection, recv_message
from jobrelay.protocol import events as ev
from jobrelay.protocol.close_codes import AUTH_CODES, GOING_AWAY, close_code_for
from jobrelay.protocol.driver import SessionDriver
from jobrelay.protocol.errors import ErrorCode, JobrelayError
from jobrelay.protocol.messages import FacilitatorBody, Request
from jobrelay.protocol.session import FacilitatorSession, SessionState

if TYPE_CHECKING:
    from jobrelay.facilitator.hub import ConnectionHub

__all__ = ["CLOSE_TIMEOUT", "WorkerConnection"]

CLOSE_TIMEOUT: Final = 1.0
"""The websockets closing-handshake timeout (``serve(close_timeout=...)``)."""
_CLOSE_GRACE: Final = 1.0  # a writer still stuck this long after the close is aborted


class WorkerConnection:
    """Drives one FacilitatorSession over one WebSocket connection (see module invariants).

    Attributes:
        worker_id: The authenticated worker ("" before authentication).
        draining: The worker said in its last heartbeat that it is draining.
        last_contact: When the last frame arrived (seconds since the epoch).
        released: Set once the session is closed and no store operation of this connection is in
            flight (the socket may still be closing): a connection replacing it may start.
        done: Set when the connection's coroutine has finished (socket closed, store told).
    """

    def __init__(self, ws: ServerConnection, hub: ConnectionHub) -> None:
        now = time.time()
        self.ws = ws
        self.hub = hub
        self.session = FacilitatorSession(
            nonce=secrets.token_hex(32),
            session_id=secrets.token_hex(8),
            key=hub.key,
            authorized=hub.authorized,
            nonces=hub.nonces,
            now=now,
            config=hub.new_session_config(),
        )
        self.worker_id = ""
        self.draining = False
        self.last_contact = now
        self.released = asyncio.Event()
        self.done = asyncio.Event()
        self._writer = FrameWriter(ws, hub.counters, self._close_code)
        if isinstance(ws, FrameConnection):
            ws.on_too_big = self._too_big
        self.driver = SessionDriver(self.session, self._writer.put, self)
        self._loop = asyncio.get_running_loop()
        self._todo: deque[ev.Event | list[tuple[int, Any]]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self.ack_timer: asyncio.TimerHandle | None = None  # a held ack's (stream_io.acknowledge)
        self._close_request: tuple[int, str] | None = None
        self.fill_wanted = False
        self.filling = False
        self._acting = False
        self._finished = False
        self._opened = False
        self._closed_counted = False
        self._slot_held = False  # one of the hub's max_handshakes slots, from auth to open/close
        self._stored_out_last_seq = 0  # our stream to this worker as stored when it authenticated
        self._stored_upto = 0  # the highest seq of our stream to this worker known to be stored
        self.in_epoch = ""  # epoch of the worker's stream this session accepts (from Opened)
        self.fresh = FreshRows()  # rows of our stream just committed (sent without a store read)
        self._bound: Any = None  # the logger with this connection's context, made when first used
        self.repeats = Repeats()  # per-frame lines beyond the first of their kind: counted only

    @property
    def is_open(self) -> bool:
        return self.session.is_open

    @property
    def _log(self) -> Any:
        # Bound only when a line is logged: binding costs more than most connections ever log.
        if self._bound is None:
            peer = str(self.ws.remote_address)
            self._bound = logger.bind(
                session=self.session.session_id, peer=peer, worker=self.worker_id or "?"
            )
        return self._bound

    # ------------------------------------------------------------------ from the loop's callbacks

    def wake(self, stored_upto: int = 0, fresh: Sequence[tuple[int, FacilitatorBody]] = ()) -> None:
        """Our stream to this worker holds rows up to ``stored_upto`` (0: no news): send what the
        window allows of what is stored and not yet sent. ``fresh``: rows just committed, as
        stored, so the send needs no store read (kept while few: FreshRows)."""
        self._stored_upto = max(self._stored_upto, stored_upto)
        if fresh and self.session.is_open:
            self.fresh.add(fresh, self.session.sender.sent)
        if self.session.sender.sent >= self._stored_upto:
            return  # nothing new: no store read
        self.fill_wanted = True
        if not self.filling and self.worker_id:
            self.filling = True
            self._loop.create_task(fill(self))

    def _too_big(self, reason: str) -> None:
        """websockets is refusing a message over max_frame_bytes: our error frame goes first."""
        if self.session.state is not SessionState.CLOSED:
            self.driver.close(ErrorCode.FRAME_TOO_LARGE, reason)

    def request_close(self, code: int = GOING_AWAY, reason: str = "") -> None:
        """Close the connection with ``code`` (1001 on shutdown or when replaced)."""
        if self._close_request is None:
            self._close_request = (code, reason)
        if self.session.state is not SessionState.CLOSED:
            self.driver.close(None, reason)  # → Closed: _on_closed closes the socket

    def send_request(self, request: Request) -> None:
        """Send a call to the worker (on the loop; the session times it out: the timer is re-armed)."""
        self.session.send_request(request, time.time())
        self.driver.flush()
        self._arm_timer()

    # ------------------------------------------------------------------ the connection's coroutine

    def release_handshake(self) -> None:
        """Authentication ended (opened or refused): give back the handshake slot, once."""
        if self._slot_held:
            self._slot_held = False
            self.hub.release_slot()

    async def run(self) -> None:
        """Serve the connection until it closes (the server's handler for this socket)."""
        writer = self._loop.create_task(self._writer.run())
        self._arm_timer()
        try:
            await self._serve()
        except Exception:
            self._log.exception("facilitator: connection handler failed worker={}", self.worker_id or "?")
            self.driver.close(ErrorCode.INTERNAL, "facilitator error")
            for item in self._todo:  # nothing more is acted on, but the ending is accounted for
                if isinstance(item, ev.Closed):
                    self._on_closed(item)
            self._todo.clear()
        finally:
            self.release_handshake()
            if self._timer is not None:
                self._timer.cancel()
            self.released.set()
            self._writer.finish()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(writer), _CLOSE_GRACE + CLOSE_TIMEOUT)
            if not writer.done():
                writer.cancel()
                self.ws.transport.abort()
            await self._finish()
            self._finished = True
            self.done.set()

    def take_frame(self, message: bytes | str, binary: bool | None) -> None:
        """Hand a frame received now to the session (which may queue data and events)."""
        self.last_contact = time.time()
        self.hub.counters.add("frames_in")
        self.driver.receive(message, self.last_contact, binary)

    async def _serve(self) -> None:
        ws = self.ws
        try:
            while True:
                message, binary = await recv_message(ws)
                if not self._slot_held and self.session.state is SessionState.AWAIT_AUTH:
                    # The auth frame: verifying it and reading the store wait for a slot.
                    await self.hub.handshake_slot()
                    self._slot_held = True
                    if self._closed() or ws.state is not State.OPEN:
                        # The deadline passed, or the worker gave up, while this waited: in a
                        # reconnect storm verifying for a worker that is gone only feeds the storm.
                        self.hub.counters.add("handshakes_abandoned")
                        self.release_handshake()
                        return
                self.take_frame(message, binary)
                await read_ahead(self, ws)
                await self._act()
                if self.session.state is SessionState.CLOSED:
                    return
        except ConnectionClosed as exc:
            detail = f"connection closed ({exc})"
        self.driver.lost(detail)
        await self._act()

    async def _act(self) -> None:
        """Act on what the session emitted, in order; acting may emit more (accept(), acks)."""
        self._acting = True
        try:
            while self._todo:
                item = self._todo.popleft()
                if isinstance(item, list):
                    await persist(self, item)
                else:
                    await self._on_event(item)
                self.driver.pump()
        finally:
            self._acting = False
        if self._closed():
            self.released.set()

    # ------------------------------------------------------------------ SessionHandler (driver)

    def on_data(self, items: list[tuple[int, Any]]) -> None:
        self._todo.append(items)

    def on_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.Closed) and not self._todo and not self._acting:
            # Closed by a timer or a close request while run() waits for a frame: account for it
            # now, before the socket closes (nothing else is pending to keep it in order with).
            self._on_closed(event)
            return
        self._todo.append(event)

    async def _on_event(self, event: ev.Event) -> None:
        match event:
            case ev.AuthVerified():
                await self._on_auth(event)
            case ev.Opened():
                self._on_opened(event)
            case ev.PeerStreamStarted() | ev.PeerStreamAdvanced():
                await note_peer_stream(self, event)
            case ev.RestartOwnStream():
                self.fresh.clear()  # the stored rows are renumbered
                await restart_own_stream(self, event)
            case ev.Acked():
                await self.hub.wait(self.hub.store.ack(self.worker_id, event.upto))
                self.wake()
            case ev.DuplicateDropped():
                self.hub.counters.add("duplicates_dropped")
            case ev.HeartbeatReceived() if event.draining != self.draining:
                self.draining = event.draining
                if self.repeats.first("draining changes"):
                    self._log.info(
                        "facilitator: worker draining changed worker={} draining={}",
                        self.worker_id,
                        self.draining,
                    )
                self.hub.worker_ready(self, not self.draining)
                self.hub.events.publish("worker.draining", worker=self.worker_id, draining=self.draining)
            case ev.RequestReceived() if self.session.is_open:
                self.hub.calls.request(self, event.request)
            case ev.ResponseReceived():
                self.hub.calls.response(event.response)
            case ev.RequestTimedOut():
                self.hub.calls.timed_out(event.id)
            case ev.PeerWarning() if self.repeats.first("worker warnings"):
                self._log.warning(
                    "facilitator: worker warning worker={} code={} detail={}",
                    self.worker_id,
                    event.code,
                    event.detail,
                )
            case ev.Closed():
                self._on_closed(event)
            case _:
                pass

    async def _on_auth(self, event: ev.AuthVerified) -> None:
        self.worker_id = event.worker_id
        if isinstance(self.ws, GatedConnection):
            self.ws.mark_authenticated()  # its room among the unauthenticated is free again
        self._bound = None  # re-bound with the worker's id
        await self.hub.attach(self)
        if self.session.state is SessionState.CLOSED:
            return  # closed while the replaced connection let go
        marks = await self.hub.wait(self.hub.store.marks(event.worker_id))
        self._stored_out_last_seq = marks.out_last_seq
        self._stored_upto = max(self._stored_upto, marks.out_last_seq)
        if self.session.state is SessionState.VERIFYING:
            self.session.accept(marks)

    def _on_opened(self, event: ev.Opened) -> None:
        self.release_handshake()
        if not self.session.is_open:
            return  # already closed again (its Closed is next in line)
        self.hub.counters.add("sessions_opened")
        self._arm_timer()  # from the handshake deadline to heartbeats and silence
        self._opened = True
        self.hub.open_sessions += 1
        self.in_epoch = event.in_epoch
        log_opened(self, event, self._stored_out_last_seq)
        self.hub.calls.opened(self)
        self.wake()
        self.hub.worker_ready(self, True)

    def _on_closed(self, event: ev.Closed) -> None:
        counters = self.hub.counters
        if self._opened and not self._closed_counted:
            self._closed_counted = True
            self.hub.open_sessions -= 1
        self.release_handshake()
        self.hub.worker_ready(self, False)
        self.hub.calls.closed(self)
        # The one place a closed session's socket is closed: after the frames queued before the
        # close (its error frame), and aborted if the writer is still stuck after the grace, so
        # run(), waiting for the next frame, always ends.
        self._writer.finish()
        self._loop.call_later(_CLOSE_GRACE + CLOSE_TIMEOUT, self._abort_if_open)
        if not self._acting:
            self.released.set()  # no store operation of ours is in flight: a successor may start
        if event.code in AUTH_CODES:
            counters.add("auth_failures")
        if self.worker_id and event.code is ErrorCode.HEARTBEAT_TIMEOUT:
            counters.add("heartbeat_timeouts")
        log_closed(self, event, opened=self._opened)

    def _close_code(self) -> tuple[int, str]:
        request = self._close_request
        if request is not None and self.session.close_code is None:
            return request
        error = self.session.close_code
        return close_code_for(error), error.value if error else ""

    # ------------------------------------------------------------------ deadlines (one loop timer)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        session, now = self.session, time.time()
        due = session.next_deadline()
        if due == math.inf:
            return  # closed: nothing more to time
        if self._writer.sending:  # a stuck send is checked at the silence deadline
            due = min(due, now + session.heartbeat_timeout)
        self._timer = self._loop.call_later(max(0.01, due - now + 0.001), self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        session = self.session
        if self._closed():
            return
        stuck = self._writer.stuck_for()
        if session.is_open and stuck > session.heartbeat_timeout:
            self.driver.close(ErrorCode.HEARTBEAT_TIMEOUT, f"worker not reading: a send waited {stuck:.1f}s")
        else:
            now, target = time.time(), self.hub.new_session_config(starting=0)
            if session.is_open and target.heartbeat_interval > session.heartbeat_interval:
                # The fleet grew since this session's welcome: keep to its budget (§6.1).
                session.lengthen_heartbeat(now, target.heartbeat_interval, target.heartbeat_timeout)
            self.driver.tick(now)  # deadlines, and a heartbeat when one is due
        if not self._closed():  # closed: _on_closed closes the socket, which ends run()'s wait
            self._arm_timer()

    def _closed(self) -> bool:
        return self.session.state is SessionState.CLOSED

    def _abort_if_open(self) -> None:
        if not self._finished:
            self.ws.transport.abort()  # the writer is stuck: run() then sees the end at once

    async def _finish(self) -> None:
        if self.worker_id:
            self.hub.detach(self)
            try:
                await self.hub.wait(self.hub.store.touch(self.worker_id, self.last_contact))
            except (JobrelayError, TimeoutError) as exc:
                self._log.warning("facilitator: could not record last contact: {}", exc)
        if self._opened:
            self.hub.counters.add("sessions_closed")
