# One worker connection on the reference facilitator: runs a FacilitatorSession over a
# `websockets` sync server connection, in the server's handler thread for that connection.
# Invariants:
# - The session and the socket's send side are used only under ``self.lock``; frames leave in the
#   order the session queued them (taking and sending happen under the same lock).
# - Durable before acknowledged: acknowledge(upto) is called only after the store committed the
#   batch holding ``upto``. Refused status updates are still acknowledged (the stream moves on).
# - The handler thread wakes at least every ``tick_interval`` to run session deadlines and
#   heartbeats; nothing here blocks without a timeout except the store's bounded calls.
# - After the session closes with an error code, its error frame is sent, then the WebSocket is
#   closed with the mapped close code (close_code_for()).
from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from loguru import logger
from websockets.exceptions import ConnectionClosed
from websockets.sync.server import ServerConnection

from jobrelay.actors.facilitator_config import FacilitatorConfig
from jobrelay.actors.facilitator_store import FacilitatorStore
from jobrelay.protocol import events as ev
from jobrelay.protocol.auth import NonceRegistry
from jobrelay.protocol.close_codes import AUTH_CODES, GOING_AWAY, close_code_for
from jobrelay.protocol.errors import ErrorCode, JobrelayError
from jobrelay.protocol.messages import Response, WorkerBody
from jobrelay.protocol.session import FacilitatorSession, SessionConfig, SessionState
from jobrelay.protocol.streams import StreamMarks

__all__ = [
    "Counters",
    "Hub",
    "LockedNonceRegistry",
    "WorkerConnection",
]


class LockedNonceRegistry(NonceRegistry):
    """A NonceRegistry shared by all connection threads."""

    def __init__(self, ttl: float = 600.0, max_entries: int = 100_000) -> None:
        super().__init__(ttl, max_entries)
        self._lock = threading.Lock()

    def use(self, nonce: str, now: float) -> bool:
        with self._lock:
            return super().use(nonce, now)


class Counters:
    """Thread-safe named counters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] = self._values.get(name, 0) + n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._values)


class Hub(Protocol):
    """What a connection needs from the facilitator that owns it."""

    config: FacilitatorConfig
    session_config: SessionConfig
    store: FacilitatorStore
    authorized: Mapping[str, str]
    nonces: NonceRegistry
    counters: Counters
    stopping: threading.Event

    def attach(self, conn: WorkerConnection) -> None:
        """Register an authenticated connection (replacing an older one of the same worker)."""

    def detach(self, conn: WorkerConnection) -> None:
        """Forget a connection that ended."""

    def worker_ready(self, worker_id: str) -> None:
        """The worker can take jobs now (connected, or stopped draining)."""


class WorkerConnection:
    """Drives one FacilitatorSession over one WebSocket connection (see module invariants).

    Attributes:
        worker_id: The authenticated worker ("" before authentication).
        draining: The worker said in its last heartbeat that it is draining.
        last_contact: When the last frame arrived (seconds since the epoch).
        done: Set when the handler returned.
    """

    def __init__(self, ws: ServerConnection, hub: Hub) -> None:
        now = time.time()
        self.ws = ws
        self.hub = hub
        self.lock = threading.RLock()
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
        self.done = threading.Event()
        self._marks: StreamMarks | None = None
        self._opened = False
        self._log = logger.bind(session=self.session.session_id, peer=str(ws.remote_address))

    @property
    def is_open(self) -> bool:
        return self.session.is_open

    # ------------------------------------------------------------------ handler thread

    def run(self) -> None:
        """Serve the connection until it closes (the server's handler for this socket)."""
        try:
            self._loop()
        except Exception:
            self._log.exception("facilitator: connection handler failed worker={}", self.worker_id or "?")
            with self.lock:
                self.session.close(ErrorCode.INTERNAL, "facilitator error")
                self._flush()
            self._close_transport()
        finally:
            self._finish()

    def _loop(self) -> None:
        tick = self.hub.config.tick_interval
        while True:
            if self.hub.stopping.is_set():
                self.close(GOING_AWAY, "facilitator shutting down")
                return
            try:
                data: bytes | None = self.ws.recv(timeout=tick, decode=False)
            except TimeoutError:
                data = None
            except ConnectionClosed as exc:
                with self.lock:
                    self.session.connection_lost(f"connection closed ({exc})")
                    events = self.session.events_received()
                self._handle(events)
                return
            now = time.time()
            with self.lock:
                if data is not None:
                    self.hub.counters.add("frames_in")
                    self.last_contact = now
                    self.session.receive_data(data, now)
                self.session.tick(now)
                events = self.session.events_received()
            self._handle(events)
            with self.lock:
                if self.session.heartbeat_due(now):
                    self.session.send_heartbeat(now, draining=False)
                self._flush()
                closed = self.session.state is SessionState.CLOSED
            if closed:
                self._close_transport()
                return

    def _handle(self, events: list[ev.Event]) -> None:
        """Act on session events, in order; acting may produce more events (accept())."""
        while events:
            batch: list[tuple[int, WorkerBody]] = []
            for event in events:
                if isinstance(event, ev.DataReceived):
                    batch.append((event.seq, event.body))
                    continue
                if batch:
                    self._persist(batch)
                    batch = []
                self._on_event(event)
            if batch:
                self._persist(batch)
            with self.lock:
                events = self.session.events_received()
                self._flush()

    def _on_event(self, event: ev.Event) -> None:
        match event:
            case ev.AuthVerified():
                self._on_auth(event)
            case ev.Opened():
                self._on_opened(event)
            case ev.Acked():
                self.hub.store.ack(self.worker_id, event.upto)
                self.fill()
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
                with self.lock:
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
        marks = self.hub.store.marks(event.worker_id)
        self._marks = marks
        with self.lock:
            self.session.accept(marks)

    def _on_opened(self, event: ev.Opened) -> None:
        counters = self.hub.counters
        counters.add("sessions_opened")
        self._opened = True
        marks = self._marks
        if event.new_in_stream:
            self.hub.store.open_stream(self.worker_id, event.in_epoch, event.in_hwm, True)
            counters.add("new_streams")
            previous = marks.in_epoch if marks else ""
            # A first stream is routine; a replaced one means the worker's store was lost.
            self._log.log(
                "WARNING" if previous else "INFO",
                "facilitator: new worker stream worker={} epoch={} previous_epoch={} resume_after={}",
                self.worker_id,
                event.in_epoch,
                previous or "-",
                event.in_hwm,
            )
        elif marks is not None and event.in_hwm > marks.in_hwm:
            self.hub.store.open_stream(self.worker_id, event.in_epoch, event.in_hwm, False)
        if event.new_out_stream and marks is not None and marks.out_last_seq:
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
        self.fill()
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
        if event.code is ErrorCode.ACK_OUT_OF_RANGE and not event.by_peer and not self._opened:
            # The worker holds more of our stream than our store does (restored from an older
            # copy): what we still have goes out again as a new stream; the worker's ledger
            # recognises job ids it already has.
            epoch = self.hub.store.restart_stream(self.session.peer_id)
            counters.add("epoch_restarts")
            self._log.warning(
                "facilitator: our stream to worker={} restarts as epoch {} ({})",
                self.session.peer_id,
                epoch,
                event.detail,
            )
        self._log.info(
            "facilitator: session closed worker={} code={} by_peer={} detail={}",
            self.worker_id or self.session.peer_id or "?",
            event.code.value if event.code else "normal",
            event.by_peer,
            event.detail,
        )

    def _persist(self, batch: Sequence[tuple[int, WorkerBody]]) -> None:
        outcome = self.hub.store.accept(self.worker_id, batch)
        counters = self.hub.counters
        counters.add("data_accepted", outcome.accepted)
        if outcome.duplicates:
            counters.add("duplicates_dropped", outcome.duplicates)
        with self.lock:
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
            self._flush()

    # ------------------------------------------------------------------ any thread

    def fill(self) -> None:
        """Send stored job requests/cancels to the worker while the window has room."""
        if not self.worker_id:
            return
        limit = self.hub.config.max_batch
        while True:
            with self.lock:
                if not self.session.is_open:
                    return
                capacity = self.session.sender.capacity
                after = self.session.sender.sent
            if capacity <= 0:
                return
            rows = self.hub.store.pending(self.worker_id, after, min(capacity, limit))
            if not rows:
                return
            with self.lock:
                if not self._still_open():  # another thread may have closed it meanwhile
                    return
                sender = self.session.sender
                rows = [r for r in rows if r[0] > sender.sent][: sender.capacity]
                if not rows or rows[0][0] != sender.sent + 1:
                    return  # another thread sent them meanwhile
                self.session.note_appended(rows[-1][0])
                self.session.send_data(rows)
                self._flush()
            if len(rows) < min(capacity, limit):
                return

    def close(self, code: int = GOING_AWAY, reason: str = "") -> None:
        """Close the WebSocket (e.g. 1001 on shutdown or when replaced); the handler then ends."""
        try:
            self.ws.close(code, reason[:120])
        except Exception as exc:  # the socket may already be gone
            self._log.debug("facilitator: close failed: {}", exc)

    # ------------------------------------------------------------------ internals

    def _still_open(self) -> bool:
        return self.session.is_open

    def _flush(self) -> None:
        """Send what the session queued (caller holds the lock)."""
        frames = self.session.data_to_send()
        if not frames:
            return
        try:
            for frame in frames:
                self.ws.send(frame.data, text=not frame.binary)
        except ConnectionClosed:
            return  # the reader sees the close and ends the session
        self.hub.counters.add("frames_out", len(frames))

    def _close_transport(self) -> None:
        code = self.session.close_code
        self.close(close_code_for(code), code.value if code else "")

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
