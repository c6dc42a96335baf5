# Connection actor: owns the transport and the protocol session of the current connection.
# Invariants: the session is touched only in this actor's thread; connecting and reading happen
# in a per-attempt I/O thread that only `tell`s this actor, so the mailbox never waits on the
# network; messages from an older attempt or session are dropped by their attempt/session id.
# Connection retry (backoff) lives here; message retry does not exist: replay is the Outbox's,
# driven by the session's resume point.
from __future__ import annotations

import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any, cast

import pykka
from loguru import logger
from pykka.typing import ActorMemberMixin, proxy_method

from jobrelay.actors.config import WorkerConfig, load_key
from jobrelay.actors.messages import (
    Beat,
    ConnectionState,
    Count,
    DropSession,
    Incoming,
    IoClosed,
    IoConnected,
    IoFailed,
    IoReceived,
    NewInStream,
    PeerAcked,
    Persisted,
    Reconnect,
    RestartEpoch,
    SendData,
    SessionClosed,
    SessionOpened,
    StateChanged,
    send,
)
from jobrelay.actors.transport import BackgroundSender, Transport, TransportError, WebSocketTransport
from jobrelay.protocol import events as ev
from jobrelay.protocol.backoff import full_jitter
from jobrelay.protocol.close_codes import AUTH_CODES, GOING_AWAY, NORMAL, close_code_for
from jobrelay.protocol.errors import ErrorCode, LocalProtocolError
from jobrelay.protocol.session import WorkerSession
from jobrelay.protocol.streams import StreamMarks

__all__ = ["ConnectionActor", "ConnectionProxy"]


# A session open this long counts as a success: the next failure starts backing off afresh.
STABLE_SESSION = 10.0


class ConnectionActor(pykka.ThreadingActor):
    """Keeps one authenticated session to the facilitator up, reconnecting with backoff.

    Args:
        config: the worker configuration (checked).
        marks: called from the I/O thread before each connection attempt to read the durable
            stream marks (outbox and inbox state).
        outbox / router / metrics: actor refs this actor `tell`s.
        transport_factory: makes a Transport per attempt (tests pass an in-memory one).
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        marks: Callable[[], StreamMarks],
        outbox: pykka.ActorRef[Any],
        router: pykka.ActorRef[Any],
        metrics: pykka.ActorRef[Any],
        transport_factory: Callable[[], Transport] | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
    ) -> None:
        super().__init__()
        self.config = config
        self._key = load_key(config)
        self._log = logger.bind(worker_id=config.worker_id)
        self._marks = marks
        self._outbox = outbox
        self._router = router
        self._metrics = metrics
        self._factory = transport_factory or (lambda: WebSocketTransport(config.ca_file))
        self._clock = clock
        self._rand = rand
        self._state = ConnectionState.DISCONNECTED
        self._attempt = 0
        self._failures = 0
        self._transport: Transport | None = None
        self._writer: BackgroundSender | None = None
        # Hot-path counters are kept here and reported on each beat: no tell per frame.
        self._counts: Counter[str] = Counter()
        self._session: WorkerSession | None = None
        self._timer: threading.Timer | None = None
        self._subscribers: list[pykka.ActorRef[Any]] = []
        self._connected = threading.Event()
        self._last_contact = 0.0
        self._draining = False
        self._stopping = False
        self._unsent: deque[tuple[int, Any]] = deque()
        self._opened = False
        self._opened_at = 0.0

    # ------------------------------------------------------------ lifecycle

    def on_start(self) -> None:
        self._connect()

    def on_stop(self) -> None:
        self._stopping = True
        self._shutdown("worker stopping", GOING_AWAY)
        self._set_state(ConnectionState.CLOSED, "stopped")

    def on_failure(self, *args: object) -> None:
        self._stopping = True
        self._shutdown("worker crashed", GOING_AWAY)

    # ------------------------------------------------------------ public (proxy) API

    def subscribe(self, ref: pykka.ActorRef[Any]) -> None:
        """``ref`` gets a StateChanged message on every state change."""
        self._subscribers.append(ref)

    def state(self) -> ConnectionState:
        return self._state

    def last_contact(self) -> float:
        """When a frame last arrived from the facilitator (0 if never)."""
        return self._last_contact

    def connected_event(self) -> threading.Event:
        """Set while the session is open (for ``Worker.wait_connected``)."""
        return self._connected

    def drain(self) -> None:
        """Tell the facilitator we are draining (no new jobs), now and in every heartbeat."""
        self._draining = True
        session = self._session
        if session is not None and session.is_open:
            session.send_heartbeat(self._clock(), draining=True)
            self._flush()

    def drop(self, reason: str = "dropped on request") -> None:
        """Close the current connection and reconnect (used by tests and chaos tools)."""
        if self._session is not None:
            self._session.connection_lost(reason)
            self._handle_events()

    # ------------------------------------------------------------ messages

    def on_receive(self, message: Any) -> None:
        match message:
            case IoReceived(attempt=a, data=data) if a == self._attempt:
                self._on_data(data)
            case IoConnected(attempt=a, marks=marks) if a == self._attempt:
                self._on_connected(marks)
            case IoFailed(attempt=a, error=error) if a == self._attempt:
                self._log.warning("connection attempt {} to {} failed: {}", a, self.config.url, error)
                self._backoff(error)
            case IoClosed(attempt=a, detail=detail) if a == self._attempt:
                if self._session is not None:
                    self._session.connection_lost(detail)
                    self._handle_events()
                else:
                    self._backoff(detail)
            case SendData(session_id=sid, items=items):
                self._on_send(sid, items)
            case Persisted(session_id=sid, upto=upto):
                session = self._session
                if session is not None and session.is_open and session.session_id == sid:
                    session.acknowledge(upto)
                    self._flush()
            case Beat(at=now):
                self._on_beat(now)
            case DropSession(session_id=sid, reason=reason):
                if self._session is not None and self._session.session_id == sid:
                    self.drop(reason)
            case Reconnect(attempt=a) if a == self._attempt and self._session is None:
                self._connect()
            case IoReceived() | IoConnected() | IoFailed() | IoClosed() | Reconnect():
                pass  # from an attempt that was already given up
            case _:
                self._log.error("Connection got an unknown message {!r}", message)

    # ------------------------------------------------------------ internals

    def _connect(self) -> None:
        if self._stopping:
            return
        self._attempt += 1
        attempt = self._attempt
        self._set_state(ConnectionState.CONNECTING)
        transport = self._factory()
        self._transport = transport
        ref = self.actor_ref
        thread = threading.Thread(
            target=_io_loop,
            args=(ref, attempt, transport, self.config.url, self.config.connect_timeout, self._marks),
            name=f"jobrelay-io-{attempt}",
            daemon=True,
        )
        thread.start()

    def _on_connected(self, marks: StreamMarks) -> None:
        assert self._transport is not None
        attempt, ref = self._attempt, self.actor_ref
        self._writer = BackgroundSender(
            self._transport,
            lambda detail: send(ref, IoClosed(attempt, f"send failed: {detail}")),
            name=f"jobrelay-writer-{attempt}",
        )
        self._set_state(ConnectionState.AUTHENTICATING)
        self._session = WorkerSession(
            worker_id=self.config.worker_id,
            key=self._key,
            marks=marks,
            now=self._clock(),
            config=self.config.session_config(),
        )
        self._flush()

    def _on_data(self, data: bytes | str) -> None:
        session = self._session
        if session is None:
            return
        now = self._clock()
        self._last_contact = now
        self._counts["frames_received"] += 1
        session.receive_data(data, now)
        self._handle_events()

    def _on_send(self, session_id: str, items: list[tuple[int, Any]]) -> None:
        session = self._session
        if session is None or not session.is_open or session.session_id != session_id:
            return  # the Outbox replays these on the next session
        self._unsent.extend(items)
        self._send_unsent()

    def _send_unsent(self) -> None:
        """Put buffered data on the wire as far as the window allows.

        The Outbox hands over more than one window (see OutboxActor._fill), so when an ack
        opens the window the next data goes out from here at once instead of waiting behind
        the publishes queued in the Outbox's mailbox.
        """
        session = self._session
        unsent = self._unsent
        if session is None or not session.is_open or not unsent:
            return
        count = min(session.sender.capacity, len(unsent))
        if count <= 0:
            return
        items = [unsent.popleft() for _ in range(count)]
        try:
            session.send_data(items)
        except LocalProtocolError as exc:
            # A bug on our side (window/order); drop the session so a clean replay follows.
            self._log.error("refusing to send data: {}", exc)
            session.close(ErrorCode.INTERNAL, str(exc))
            self._handle_events()
            return
        self._counts["data_sent"] += count
        self._flush()

    def _on_beat(self, now: float) -> None:
        for name, n in self._counts.items():
            if n:
                self._tell_metrics(Count(name, n))
        self._counts.clear()
        session = self._session
        if session is None:
            return
        session.tick(now)
        if session.heartbeat_due(now):
            session.send_heartbeat(now, draining=self._draining)
        self._handle_events()

    def _handle_events(self) -> None:
        session = self._session
        if session is None:
            return
        incoming: list[tuple[int, Any]] = []
        opened = False
        for event in session.events_received():
            match event:
                case ev.DataReceived(seq=seq, body=body):
                    incoming.append((seq, body))
                case ev.Acked(upto=upto):
                    send(self._outbox, PeerAcked(session.session_id, upto))
                    opened = True
                case ev.DuplicateDropped():
                    self._counts["duplicates_dropped"] += 1
                case ev.Opened():
                    self._on_opened(event)
                case ev.PeerWarning(code=code, detail=detail):
                    self._log.warning("facilitator refused a message: {} {}", code, detail)
                    self._tell_metrics(Count("refused_by_peer"))
                case ev.Closed():
                    if incoming:
                        send(self._router, Incoming(session.session_id, incoming))
                        incoming = []
                    self._on_closed(event)
                    return
                case _:
                    pass
        if incoming:
            send(self._router, Incoming(session.session_id, incoming))
            self._counts["data_received"] += len(incoming)
        if opened:
            self._send_unsent()
        self._flush()

    def _on_opened(self, event: ev.Opened) -> None:
        session = self._session
        assert session is not None
        self._opened = True
        self._opened_at = self._clock()
        self._log = logger.bind(worker_id=self.config.worker_id, session=event.session_id)
        if event.new_in_stream:
            self._log.warning(
                "facilitator stream has a new epoch {} (its store is new); resuming after {}",
                event.in_epoch,
                event.in_hwm,
            )
            self._tell_metrics(Count("new_streams"))
        send(self._router, NewInStream(event.in_epoch, event.in_hwm))
        send(self._outbox, SessionOpened(session.session_id, event.resume_after, session.sender.window))
        self._connected.set()
        self._set_state(ConnectionState.CONNECTED, f"session {event.session_id}")
        if self._draining:
            session.send_heartbeat(self._clock(), draining=True)

    def _on_closed(self, event: ev.Closed) -> None:
        session = self._session
        self._session = None
        self._unsent.clear()  # the Outbox replays from the next session's resume point
        if event.code is ErrorCode.ACK_OUT_OF_RANGE and not event.by_peer and not self._opened:
            # Refused in the welcome: the facilitator acknowledged seqs our store never had.
            send(self._outbox, RestartEpoch(event.detail))
        if self._opened and self._clock() - self._opened_at >= STABLE_SESSION:
            # Only a session that held for a while resets the backoff: one that opens and then
            # fails at once (a poisoned stream, a peer that keeps refusing) must back off more.
            self._failures = 0
        self._opened = False
        self._connected.clear()
        code = close_code_for(event.code)
        self._flush_to_transport(session)
        self._shutdown(event.detail, code)
        if session is not None:
            send(self._outbox, SessionClosed(session.session_id))
        who = "facilitator" if event.by_peer else "we"
        log = self._log.warning if event.code is not None else self._log.info
        log("connection closed ({} ended it): {} {}", who, event.code or "", event.detail)
        if event.code in AUTH_CODES:
            self._log.error("authentication refused ({}): check worker_id and key", event.code)
        self._backoff(event.detail)

    def _backoff(self, why: str) -> None:
        self._connected.clear()
        # A new attempt number: the old reader's IoClosed (it sees the socket we are closing
        # now) must not count as a second failure.
        self._attempt += 1
        self._shutdown(why, NORMAL)
        if self._stopping:
            return
        self._failures += 1
        limit = self.config.max_attempts
        if limit is not None and self._failures >= limit:
            self._log.error("giving up after {} failed connection attempts", self._failures)
            self._set_state(ConnectionState.CLOSED, f"gave up after {self._failures} attempts")
            return
        delay = full_jitter(
            self._failures - 1, base=self.config.backoff_base, cap=self.config.backoff_cap, rand=self._rand()
        )
        self._tell_metrics(Count("reconnects"))
        self._set_state(ConnectionState.BACKOFF, f"retry in {delay:.2f}s: {why}")
        self._timer = threading.Timer(delay, send, (self.actor_ref, Reconnect(self._attempt)))
        self._timer.daemon = True
        self._timer.start()

    def _flush(self) -> None:
        self._flush_to_transport(self._session)

    def _flush_to_transport(self, session: WorkerSession | None) -> None:
        writer = self._writer
        if session is None or writer is None:
            return
        frames = session.data_to_send()
        for frame in frames:
            writer.put(frame.data, frame.binary)
        self._counts["frames_sent"] += len(frames)

    def _shutdown(self, reason: str, code: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport, self._transport = self._transport, None
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.finish(code, reason)  # after the frames already queued (e.g. an error frame)
        elif transport is not None:
            transport.close(code, reason)

    def _set_state(self, state: ConnectionState, detail: str = "") -> None:
        if state is self._state and state is not ConnectionState.BACKOFF:
            return
        self._state = state
        self._log.bind(state=state.value).info(
            "connection {}{}", state.value, f": {detail}" if detail else ""
        )
        message = StateChanged(state, self._clock(), detail)
        for ref in self._subscribers:
            send(ref, message)

    def _tell_metrics(self, message: Any) -> None:
        send(self._metrics, message)


def _io_loop(
    ref: pykka.ActorRef[Any],
    attempt: int,
    transport: Transport,
    url: str,
    timeout: float,
    marks: Callable[[], StreamMarks],
) -> None:
    """One connection attempt: read marks, connect, then read until the connection ends."""
    try:
        stream_marks = marks()
        transport.connect(url, timeout)
    except Exception as exc:
        send(ref, IoFailed(attempt, str(exc)))
        return
    if not send(ref, IoConnected(attempt, stream_marks)):  # the worker stopped meanwhile
        transport.close(GOING_AWAY, "worker stopped")
        return
    while True:
        try:
            data = transport.recv()
        except TransportError as exc:
            send(ref, IoClosed(attempt, str(exc)))
            return
        if not send(ref, IoReceived(attempt, data)):
            transport.close(GOING_AWAY, "worker stopped")
            return


class ConnectionProxy(ActorMemberMixin, pykka.ActorProxy[ConnectionActor]):
    """Typed proxy of ConnectionActor (every call returns a pykka Future)."""

    subscribe = proxy_method(ConnectionActor.subscribe)
    state = proxy_method(ConnectionActor.state)
    last_contact = proxy_method(ConnectionActor.last_contact)
    connected_event = proxy_method(ConnectionActor.connected_event)
    drain = proxy_method(ConnectionActor.drain)
    drop = proxy_method(ConnectionActor.drop)


def connection_proxy(ref: pykka.ActorRef[ConnectionActor]) -> ConnectionProxy:
    return cast(ConnectionProxy, ref.proxy())
