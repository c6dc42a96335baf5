# One worker connection on the reference facilitator: runs a FacilitatorSession over a
# `websockets` sync server connection. Three threads per connection:
#   - the server's handler thread (``run``) is the only one that touches the session, reads the
#     worker's outbox rows and decides what to send;
#   - a reader thread moves received frames into the handler's queue (bounded: a slow handler
#     stops reading, TCP pushes back on the worker);
#   - a writer thread (``BackgroundSender``) writes frames to the socket, so no thread of ours
#     ever waits on a stalled peer.
# Invariants:
# - Other threads never touch the session or the socket: they call ``wake()`` (send stored job
#   requests now) or ``request_close()``; both only set a flag and enqueue a wake-up.
# - Frames leave in the order the session queued them (one writer, one queue).
# - Durable before acknowledged: acknowledge(upto) is called only after the store committed the
#   batch holding ``upto``. Refused status updates are still acknowledged (the stream moves on).
# - The handler thread wakes at least every ``tick_interval`` to run session deadlines and
#   heartbeats; nothing here blocks without a timeout except the store's bounded calls.
# - A worker that is silent past heartbeat_timeout, or that stops reading so a send is stuck
#   that long, is closed with 4002; a send still stuck after the close grace aborts the socket.
# - After the session closes with an error code, its error frame is sent, then the WebSocket is
#   closed with the mapped close code (close_code_for()).
from __future__ import annotations

import contextlib
import queue
import secrets
import threading
import time
from typing import Any, Final

from loguru import logger
from websockets.sync.server import ServerConnection

from jobrelay.common.transport import BackgroundSender
from jobrelay.facilitator.hub import Hub
from jobrelay.facilitator.server_transport import CLOSE_TIMEOUT, Lost, ServerTransport, read_frames
from jobrelay.protocol import events as ev
from jobrelay.protocol.close_codes import AUTH_CODES, GOING_AWAY, close_code_for
from jobrelay.protocol.driver import SessionDriver
from jobrelay.protocol.errors import ErrorCode, JobrelayError
from jobrelay.protocol.messages import Response
from jobrelay.protocol.session import FacilitatorSession, OutFrame, SessionState

__all__ = ["WorkerConnection"]

_CLOSE_GRACE: Final = 1.0  # a writer still stuck this long after the close is aborted
_INBOX_FRAMES: Final = 64  # received frames buffered for the handler thread
_DRAIN: Final = 32  # received frames handled per round (their data persisted in one operation)


class WorkerConnection:
    """Drives one FacilitatorSession over one WebSocket connection (see module invariants).

    Attributes:
        worker_id: The authenticated worker ("" before authentication).
        draining: The worker said in its last heartbeat that it is draining.
        last_contact: When the last frame arrived (seconds since the epoch).
        released: Set when the handler stopped using the session and the store for this
            connection (the socket may still be closing).
        done: Set when the handler returned.
    """

    def __init__(self, ws: ServerConnection, hub: Hub) -> None:
        now = time.time()
        self.ws = ws
        self.hub = hub
        self.session = FacilitatorSession(
            nonce=secrets.token_hex(32),
            session_id=secrets.token_hex(8),
            authorized=hub.authorized,
            nonces=hub.nonces,
            now=now,
            config=hub.session_config,
        )
        self.worker_id = ""
        self.draining = False
        self.connected_at = now
        self.last_contact = now
        self.released = threading.Event()
        self.done = threading.Event()
        self._opened = False
        self._stored_out_last_seq = 0  # our stream to this worker as stored when it authenticated
        self._in_epoch = ""  # epoch of the worker's stream this session accepts (from Opened)
        self._log = logger.bind(session=self.session.session_id, peer=str(ws.remote_address))
        self._inbox: queue.Queue[bytes | Lost | None] = queue.Queue(_INBOX_FRAMES)  # None: wake up
        self._flag_lock = threading.Lock()
        self._wanted = False
        self._close_request: tuple[int, str] | None = None
        self._transport = ServerTransport(ws, hub.counters)
        self._writer: BackgroundSender | None = None
        self.driver = SessionDriver(self.session, self._write, self)

    @property
    def is_open(self) -> bool:
        return self.session.is_open

    # ------------------------------------------------------------------ any thread

    def wake(self) -> None:
        """Stored job requests/cancels may be waiting: the handler thread sends what the window
        allows. Never blocks."""
        with self._flag_lock:
            if self._wanted:
                return
            self._wanted = True
        self._poke()

    def request_close(self, code: int = GOING_AWAY, reason: str = "") -> None:
        """Close the connection with ``code`` (e.g. 1001 on shutdown or when replaced); the
        handler thread closes the session and the socket. Never blocks."""
        with self._flag_lock:
            if self._close_request is None:
                self._close_request = (code, reason)
        self._poke()

    def _poke(self) -> None:
        with contextlib.suppress(queue.Full):  # a full queue wakes the handler anyway
            self._inbox.put_nowait(None)

    # ------------------------------------------------------------------ reader thread

    # ------------------------------------------------------------------ handler thread

    def run(self) -> None:
        """Serve the connection until it closes (the server's handler for this socket)."""
        self._writer = BackgroundSender(
            self._transport,
            self._on_send_failed,
            name=f"facilitator-writer-{self.session.session_id}",
        )
        threading.Thread(
            target=read_frames,
            args=(self.ws, self._inbox, self.released),
            name=f"facilitator-reader-{self.session.session_id}",
            daemon=True,
        ).start()
        try:
            self._loop()
        except Exception:
            self._log.exception("facilitator: connection handler failed worker={}", self.worker_id or "?")
            self.session.close(ErrorCode.INTERNAL, "facilitator error")
            self.driver.flush()
        finally:
            self.released.set()
            self._close_transport()
            self._finish()

    def _on_send_failed(self, detail: str) -> None:  # writer thread
        self._log.debug("facilitator: {}", detail)
        self._transport.abort()  # the reader then sees the end of the connection

    def _loop(self) -> None:
        tick = self.hub.config.tick_interval
        timeout = self.hub.config.heartbeat_timeout
        while True:
            if self.hub.stopping.is_set():
                self.request_close(GOING_AWAY, "facilitator shutting down")
            try:
                items = [self._inbox.get(timeout=tick)]
            except queue.Empty:
                items = []
            while items and len(items) < _DRAIN:
                try:
                    items.append(self._inbox.get_nowait())
                except queue.Empty:
                    break
            now = time.time()
            driver = self.driver
            for item in items:
                if item is None:
                    continue
                if isinstance(item, Lost):
                    self.session.connection_lost(item.detail)
                    continue
                self.hub.counters.add("frames_in")
                self.last_contact = now
                driver.feed(item, now)  # a burst's data is persisted in one store operation
            stuck = self._transport.stuck_for(time.monotonic())
            if self.session.is_open and stuck > timeout:
                self.session.close(
                    ErrorCode.HEARTBEAT_TIMEOUT, f"worker not reading: a send waited {stuck:.1f}s"
                )
            if self._close_request is not None and self.session.state is not SessionState.CLOSED:
                self.session.close(None, self._close_request[1])
            driver.pump()
            with self._flag_lock:
                wanted, self._wanted = self._wanted, False
            if wanted:
                self._fill()
            driver.tick(now)  # deadlines, and a heartbeat when one is due
            if self.session.state is SessionState.CLOSED:
                return

    # ------------------------------------------------------------------ SessionHandler (driver)

    def _write(self, frame: OutFrame) -> None:
        writer = self._writer
        if writer is not None:
            writer.put(frame.data, frame.binary)

    def on_event(self, event: ev.Event) -> None:
        match event:
            case ev.AuthVerified():
                self._on_auth(event)
            case ev.Opened():
                self._on_opened(event)
            case ev.PeerStreamStarted() | ev.PeerStreamAdvanced():
                self._on_peer_stream(event)
            case ev.RestartOwnStream():
                # The worker holds more of our stream than our store does (restored from an older
                # copy): what we still have goes out again as a new stream; the worker's ledger
                # recognises job ids it already has.
                epoch = self.hub.store.restart_stream(self.session.peer_id)
                self.hub.counters.add("epoch_restarts")
                self._log.warning(
                    "facilitator: our stream to worker={} restarts as epoch {} ({})",
                    self.session.peer_id,
                    epoch,
                    event.detail,
                )
            case ev.Acked():
                self.hub.store.ack(self.worker_id, event.upto)
                self._fill()
            case ev.DuplicateDropped():
                self.hub.counters.add("duplicates_dropped")
            case ev.HeartbeatReceived():
                if event.draining != self.draining:
                    self.draining = event.draining
                    self._log.info(
                        "facilitator: worker draining changed worker={} draining={}",
                        self.worker_id,
                        event.draining,
                    )
                    if not event.draining:
                        self.hub.worker_ready(self.worker_id)
            case ev.RequestReceived():
                if self.session.is_open:
                    self.session.send_response(
                        Response(id=event.request.id, ok=False, error="unknown method")
                    )
            case ev.PeerWarning():
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

    def _on_auth(self, event: ev.AuthVerified) -> None:
        self.worker_id = event.worker_id
        self._log = self._log.bind(worker=event.worker_id)
        self.hub.attach(self)
        self._stored_out_last_seq = (marks := self.hub.store.marks(event.worker_id)).out_last_seq
        self.session.accept(marks)

    def _on_peer_stream(self, event: ev.PeerStreamStarted | ev.PeerStreamAdvanced) -> None:
        if isinstance(event, ev.PeerStreamAdvanced):
            self.hub.store.open_stream(self.worker_id, event.epoch, event.hwm, False)
            return
        self.hub.store.open_stream(self.worker_id, event.epoch, event.after, True)
        self.hub.counters.add("new_streams")
        # A first stream is routine; a replaced one means the worker's store was lost.
        self._log.log(
            "WARNING" if event.previous_epoch else "INFO",
            "facilitator: new worker stream worker={} epoch={} previous_epoch={} resume_after={}",
            self.worker_id,
            event.epoch,
            event.previous_epoch or "-",
            event.after,
        )

    def _on_opened(self, event: ev.Opened) -> None:
        self.hub.counters.add("sessions_opened")
        self._opened = True
        self._in_epoch = event.in_epoch
        if event.new_out_stream and self._stored_out_last_seq:
            self._log.warning(
                "facilitator: worker does not know our stream (its store is new) worker={} resume_after={}",
                self.worker_id,
                event.resume_after,
            )
        self._log.info(
            "facilitator: worker connected worker={} session={} resume_after={} in_hwm={}",
            self.worker_id,
            event.session_id,
            event.resume_after,
            event.in_hwm,
        )
        self._fill()
        self.hub.worker_ready(self.worker_id)

    def _on_closed(self, event: ev.Closed) -> None:
        counters = self.hub.counters
        if event.code in AUTH_CODES:
            counters.add("auth_failures")
            self._log.warning(
                "facilitator: authentication failed worker={} code={} detail={}",
                self.session.peer_id or "?",
                event.code.value if event.code else "",
                event.detail,
            )
            return
        if event.code is ErrorCode.HEARTBEAT_TIMEOUT:
            counters.add("heartbeat_timeouts")
        self._log.info(
            "facilitator: session closed worker={} code={} by_peer={} detail={}",
            self.worker_id or self.session.peer_id or "?",
            event.code.value if event.code else "normal",
            event.by_peer,
            event.detail,
        )

    def on_data(self, batch: list[tuple[int, Any]]) -> None:
        outcome = self.hub.store.accept(self.worker_id, self._in_epoch, batch)
        counters = self.hub.counters
        counters.add("data_accepted", outcome.accepted)
        if outcome.duplicates:
            counters.add("duplicates_dropped", outcome.duplicates)
        for refusal in outcome.refused:
            counters.add("refused_updates")
            self._log.warning(
                "facilitator: refused status update worker={} job={} reason={}",
                self.worker_id,
                refusal.job_id,
                refusal.detail,
            )
            if refusal.code is not None and self.session.is_open:
                self.session.send_warning(refusal.code, f"job {refusal.job_id}: {refusal.detail}")
        if outcome.gap:
            self.session.close(ErrorCode.SEQ_GAP, "stored stream position disagrees with the session")
            return
        if outcome.upto and self.session.is_open:
            self.session.acknowledge(min(outcome.upto, self.session.receiver.seen))

    def _fill(self) -> None:
        """Send stored job requests/cancels to the worker while the window has room."""
        if not self.worker_id:
            return
        limit = self.hub.config.max_batch
        while self.session.is_open and self.session.sender.capacity > 0:
            after = self.session.sender.sent
            want = min(self.session.sender.capacity, limit)
            rows = self.hub.store.pending(self.worker_id, after, want)
            if not rows or rows[0][0] != after + 1:
                return
            self.session.note_appended(rows[-1][0])
            self.session.send_data(rows)
            self.driver.flush()
            if len(rows) < want:
                return

    # ------------------------------------------------------------------ internals

    def _close_transport(self) -> None:
        """Close the WebSocket after the frames already queued; bounded (a stuck writer is
        aborted after the grace)."""
        request = self._close_request
        if request is not None and self.session.close_code is None:
            code, reason = request
        else:
            error = self.session.close_code
            code, reason = close_code_for(error), error.value if error else ""
        writer = self._writer
        if writer is None:  # pragma: no cover - run() makes it first
            self._transport.close(code, reason)
            return
        writer.finish(code, reason, grace=_CLOSE_GRACE)
        if not self._transport.closed.wait(_CLOSE_GRACE + CLOSE_TIMEOUT + 0.5):
            self._transport.abort()

    def _finish(self) -> None:
        if self.worker_id:
            self.hub.detach(self)
            try:
                self.hub.store.touch(self.worker_id, self.last_contact)
            except (JobrelayError, TimeoutError) as exc:
                self._log.warning("facilitator: could not record last contact: {}", exc)
        if self._opened:
            self.hub.counters.add("sessions_closed")
        self.done.set()
