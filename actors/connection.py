# Connection actor: owns the transport and the protocol session of the current connection, and
# drives the session through the shared SessionDriver (protocol/driver.py).
# Invariants: the session is touched only in this actor's thread; connecting, reading and writing
# happen in the threads of the current attempt (dialer.py), which only `tell` this actor, so the
# mailbox never waits on the network; messages from an older attempt or session are dropped by
# their attempt/session id. Connection retry (backoff) is decided here; message retry does not
# exist: replay is the Outbox's, from the session's resume point.
from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pykka
from loguru import logger

from jobrelay.actors.actor_messages import (
    Beat,
    BreakerChanged,
    ConnectionState,
    Count,
    DropSession,
    Incoming,
    IoClosed,
    IoConnected,
    IoFailed,
    IoReceived,
    IoTooLarge,
    PeerAcked,
    Persisted,
    Reconnect,
    ReleaseData,
    SendData,
    SessionClosed,
    SessionOpened,
    StateChanged,
    Tellable,
    send,
)
from jobrelay.actors.call_server import SendResponse
from jobrelay.actors.calls import StartCall
from jobrelay.actors.config import WorkerConfig, load_key
from jobrelay.actors.connect_pacer import BreakerStatus, ConnectPacer
from jobrelay.actors.connection_log import (
    GAVE_UP_ATTEMPTS,
    GAVE_UP_AUTH,
    auth_refused,
    log_attempt_failed,
    log_closed,
    log_new_epoch,
    log_state,
)
from jobrelay.actors.dialer import Dialer
from jobrelay.actors.local_mode import LocalModeStatus
from jobrelay.actors.session_services import SessionServices, new_session
from jobrelay.common.calls import MethodRegistry
from jobrelay.common.logs import Repeats
from jobrelay.common.transport import Transport
from jobrelay.protocol import events as ev
from jobrelay.protocol.breaker import BreakerState, Transition
from jobrelay.protocol.close_codes import GOING_AWAY, NORMAL, close_code_for
from jobrelay.protocol.driver import SessionDriver
from jobrelay.protocol.errors import ErrorCode
from jobrelay.protocol.session import WorkerSession
from jobrelay.protocol.streams import StreamMarks

__all__ = ["GAVE_UP_ATTEMPTS", "GAVE_UP_AUTH", "HANDOVER_WINDOWS", "ConnectionActor"]

# The Outbox hands over up to this many windows of data: the session sends the surplus the moment
# an ack opens the window, instead of waiting behind the publishes queued in the Outbox's mailbox.
HANDOVER_WINDOWS = 4


class ConnectionActor(pykka.ThreadingActor):
    """Keeps one authenticated session to the facilitator up, reconnecting with backoff.

    Args:
        config: the worker configuration (checked).
        marks: read by the I/O thread before each attempt: the durable stream marks.
        outbox / router: actor refs; metrics: takes Count/Gauge; subscribers: take StateChanged.
        transport_factory: makes a Transport per attempt (tests pass an in-memory one).
        kinds: the job kinds this worker runs, announced in every hello (None: any kind), with
            credit for ``max_concurrent_jobs + prefetch`` unfinished jobs.
        kind_credit: per kind with its own concurrency limit, the credit of that kind (its
            concurrency + prefetch), announced with ``kinds``.
        served: the methods the worker answers the facilitator's calls with (default: built-ins).
    """

    def __init__(
        self,
        config: WorkerConfig,
        *,
        marks: Callable[[], StreamMarks],
        outbox: Tellable,
        router: pykka.ActorRef[Any],
        metrics: Tellable,
        subscribers: Sequence[Tellable] = (),
        transport_factory: Callable[[], Transport] | None = None,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        kinds: Sequence[str] | None = None,
        kind_credit: Mapping[str, int] | None = None,
        served: MethodRegistry | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self._key = load_key(config)
        self._log = logger.bind(worker_id=config.worker_id)
        self._repeats = Repeats()  # per-frame lines of this session beyond the first: counted
        self._outbox = outbox
        self._router = router
        self._metrics = metrics
        self._subscribers = list(subscribers)
        self._dialer = Dialer(config, marks, transport_factory)
        self._clock = clock
        self._rand = rand
        self._kinds = None if kinds is None else tuple(kinds)
        self._kind_credit = dict(kind_credit or {})
        self._state = ConnectionState.DISCONNECTED
        self._pacer = ConnectPacer.for_config(config, self._log, self._breaker_changed, clock())
        self._opened = False  # the current attempt opened a session (else its end is a failure)
        self._services = SessionServices(config, self._log, metrics, clock(), served)
        # Hot-path counters are kept here and reported on each beat: no tell per frame.
        self._counts: Counter[str] = Counter()
        self._driver: SessionDriver[WorkerSession] | None = None
        self._connected = threading.Event()
        self._last_contact = 0.0
        self._draining = False
        self._stopping = False
        self._gave_up = ""

    # ------------------------------------------------------------ lifecycle

    def on_start(self) -> None:
        self._services.open(self.actor_ref, self._clock())
        self._connect()

    def on_stop(self) -> None:
        self._stopping = True
        self._shutdown("worker stopping", GOING_AWAY)
        self._set_state(ConnectionState.CLOSED, "stopped")
        self._services.close()

    def on_failure(self, *args: object) -> None:
        self._stopping = True
        self._shutdown("worker crashed", GOING_AWAY)
        self._services.close()

    # ------------------------------------------------------------ public (proxy) API

    def state(self) -> ConnectionState:
        return self._state

    def gave_up(self) -> str:
        """Why it stopped reconnecting: GAVE_UP_ATTEMPTS, GAVE_UP_AUTH, or "" while it has not."""
        return self._gave_up

    def last_contact(self) -> float:
        """When a frame last arrived from the facilitator (0 if never)."""
        return self._last_contact

    def breaker(self) -> BreakerStatus:
        """The connection's circuit breaker now."""
        return self._pacer.status(self._clock())

    def local_mode(self) -> LocalModeStatus:
        """Whether the worker runs without its facilitator, since when, and how often it did."""
        return self._services.local.status()

    def connected_event(self) -> threading.Event:
        """Set while the session is open (for ``Worker.wait_connected``)."""
        return self._connected

    def drain(self) -> None:
        """Tell the facilitator we are draining (no new jobs), now and in every heartbeat."""
        self._draining = True
        if self._driver is not None:
            self._driver.draining = True
            self._driver.heartbeat_now(self._clock())

    def drop(self, reason: str = "dropped on request") -> None:
        """Close the current connection and reconnect (used by tests and chaos tools)."""
        if self._driver is not None:
            self._driver.lost(reason)

    # ------------------------------------------------------------ messages

    def on_receive(self, message: Any) -> None:
        driver = self._driver
        match message:
            case IoReceived(attempt=a, data=data) if a == self._dialer.attempt and driver is not None:
                self._last_contact = self._clock()
                driver.receive(data, self._last_contact, binary=not isinstance(data, str))
            case IoTooLarge(attempt=a, detail=detail) if a == self._dialer.attempt and driver is not None:
                driver.close(ErrorCode.FRAME_TOO_LARGE, detail)
            case IoConnected(attempt=a, marks=marks) if a == self._dialer.attempt:
                self._on_connected(marks)
            case IoFailed(attempt=a, error=error, retry_after=hint) if a == self._dialer.attempt:
                log_attempt_failed(self._log, self._dialer.tries, self.config.url, error, hint)
                self._backoff(error, cause_logged=True, failed_attempt=hint is None, hint=hint)
            case IoClosed(attempt=a, detail=detail) if a == self._dialer.attempt:
                if driver is not None:
                    driver.lost(detail)
                else:
                    self._backoff(detail, failed_attempt=True)
            case SendData(session_id=sid, items=items) if self._is_current(sid):
                assert driver is not None
                self._send_data(driver, sid, self._services.throttle.offer(items, self._clock()))
            case ReleaseData(session_id=sid) if self._is_current(sid):
                assert driver is not None
                self._send_data(driver, sid, self._services.throttle.release(self._clock()))
            case Persisted(session_id=sid, upto=upto) if self._is_current(sid):
                assert driver is not None
                driver.session.acknowledge(upto)
                driver.pump()
            case Beat(at=now):
                self._on_beat(now)
            case StartCall() as call:
                now = self._clock()
                session = driver.session if driver is not None else None
                self._services.start_call(call, session, now, self._pacer.breaker.state(now))
                if driver is not None:
                    driver.pump()
            case SendResponse(session_id=sid, response=response) if self._is_current(sid):
                assert driver is not None
                driver.session.send_response(response)
                driver.pump()
            case DropSession(session_id=sid, reason=reason) if self._is_current(sid, opened=False):
                self.drop(reason)
            case Reconnect(attempt=a) if a == self._dialer.attempt and driver is None:
                self._connect()
            case IoReceived() | IoConnected() | IoFailed() | IoClosed() | Reconnect():
                pass  # from an attempt that was already given up
            case SendData() | Persisted() | DropSession() | ReleaseData() | SendResponse():
                pass  # for a session that ended: the Outbox replays from the next one's resume point
            case _:
                self._log.error("Connection got an unknown message {!r}", message)

    # ------------------------------------------------------------ SessionHandler (driver callbacks)

    def on_data(self, items: list[tuple[int, Any]]) -> None:
        driver = self._driver
        assert driver is not None
        send(self._router, Incoming(driver.session.session_id, items, self.actor_ref))
        self._counts["data_received"] += len(items)

    def on_event(self, event: ev.Event) -> None:
        driver = self._driver
        assert driver is not None
        session = driver.session
        match event:
            case ev.Acked(upto=upto):
                limit = session.sender.handover_limit(HANDOVER_WINDOWS)
                send(self._outbox, PeerAcked(session.session_id, upto, limit))
            case ev.DuplicateDropped():
                self._counts["duplicates_dropped"] += 1
            case ev.PeerStreamStarted() | ev.PeerStreamAdvanced():
                self._on_peer_stream(event)
            case ev.RestartOwnStream():
                send(self._outbox, event)
            case ev.Opened():
                self._on_opened(event, session)
            case ev.RequestReceived() | ev.ResponseReceived() | ev.RequestTimedOut():
                self._services.on_event(event, session, self._clock())
            case ev.PeerWarning(code=code, detail=detail):
                if self._repeats.first("refusals"):
                    self._log.warning("facilitator refused a message: {} {} (more are counted)", code, detail)
                self._counts["refused_by_peer"] += 1
            case ev.Closed():
                self._on_closed(event, session)
            case _:
                pass

    # ------------------------------------------------------------ internals

    def _is_current(self, session_id: str, *, opened: bool = True) -> bool:
        driver = self._driver
        if driver is None or driver.session.session_id != session_id:
            return False
        return driver.session.is_open or not opened

    def _send_data(
        self, driver: SessionDriver[WorkerSession], sid: str, items: list[tuple[int, Any]]
    ) -> None:
        if items:
            driver.session.queue_data(items)
            driver.pump()
        self._services.arm_release(self.actor_ref, sid, self._clock())

    def _connect(self) -> None:
        if self._stopping:
            return
        wait = self._pacer.wait_before_try(self._clock())
        if wait > 0:  # the breaker is open: no attempt until its probe
            self._set_state(
                ConnectionState.BACKOFF, f"circuit breaker open, next probe in {wait:.2f}s", quiet=True
            )
            self._dialer.retry_in(wait, self.actor_ref)
            return
        self._opened = False
        self._set_state(ConnectionState.CONNECTING)
        self._dialer.dial(self.actor_ref)

    def _on_connected(self, marks: StreamMarks) -> None:
        write = self._dialer.writer(self.actor_ref)
        self._set_state(ConnectionState.AUTHENTICATING)
        session = new_session(self.config, self._key, marks, self._clock(), self._kinds, self._kind_credit)
        self._driver = SessionDriver(session, write, self)
        self._driver.draining = self._draining
        self._driver.pump()

    def _on_beat(self, now: float) -> None:
        driver = self._driver
        if driver is not None:
            driver.tick(now)
        self._services.beat(now, self._pacer.breaker.state(now))
        self._services.report(self._counts, driver)

    def _on_peer_stream(self, event: ev.PeerStreamStarted | ev.PeerStreamAdvanced) -> None:
        if isinstance(event, ev.PeerStreamStarted) and event.previous_epoch:
            log_new_epoch(self._log, event)
            self._counts["new_streams"] += 1
        send(self._router, event)  # the JobRouter owns the inbox: it records where the stream resumes

    def _on_opened(self, event: ev.Opened, session: WorkerSession) -> None:
        self._pacer.opened(self._clock())
        self._services.opened(session, self._clock())
        self._opened = True
        self._dialer.tries = 0
        self._log = logger.bind(worker_id=self.config.worker_id, session=event.session_id)
        self._repeats = Repeats()
        limit, raw = session.sender.handover_limit(HANDOVER_WINDOWS), session.sends_json
        send(self._outbox, SessionOpened(session.session_id, event.resume_after, limit, self.actor_ref, raw))
        send(self._router, event)  # the JobRouter hands back queued jobs only if the facilitator takes them
        self._connected.set()
        self._set_state(ConnectionState.CONNECTED, f"session {event.session_id}")

    def _on_closed(self, event: ev.Closed, session: WorkerSession) -> None:
        self._pacer.closed(self._clock())
        self._services.closed(self._clock(), self._last_contact)
        self._connected.clear()
        self._services.report(self._counts, self._driver)
        self._driver = None
        self._shutdown(event.detail, close_code_for(event.code))
        send(self._outbox, SessionClosed(session.session_id))
        left_out, self._repeats = self._repeats.left_out(), Repeats()
        log_closed(self._log, event, left_out)
        self._log = logger.bind(worker_id=self.config.worker_id)  # the session is over
        if auth_refused(event) and not self.config.retry_auth_failures:
            # A refused identity is a configuration to fix, not a network fault to wait out.
            self._give_up(GAVE_UP_AUTH, "authentication refused; not retrying (see retry_auth_failures)")
            return
        self._backoff(event.detail, cause_logged=True, failed_attempt=not self._opened)

    def _breaker_changed(self, step: Transition) -> None:
        send(self._metrics, BreakerChanged(step.before.value, step.after.value, step.at, step.reason))
        if step.after is BreakerState.OPEN:
            self._services.local.check(step.at, breaker_open=True)

    def _backoff(
        self, why: str, *, cause_logged: bool = False, failed_attempt: bool = False, hint: float | None = None
    ) -> None:
        self._connected.clear()
        # A new attempt number: the old reader's IoClosed (it sees the socket we are closing
        # now) must not count as a second failure.
        self._dialer.abandon()
        self._shutdown(why, NORMAL)
        if self._stopping:
            return
        delay = self._pacer.retry_delay(self._clock(), self._rand(), failed_attempt=failed_attempt, hint=hint)
        if delay is None:
            failures = self._pacer.backoff.failures
            self._log.error("giving up after {} failed connection attempts", failures)
            self._give_up(GAVE_UP_ATTEMPTS, f"gave up after {failures} attempts")
            return
        send(self._metrics, Count("reconnects"))
        self._set_state(ConnectionState.BACKOFF, f"retry in {delay:.2f}s: {why}", quiet=cause_logged)
        self._dialer.retry_in(delay, self.actor_ref)

    def _give_up(self, why: str, detail: str) -> None:
        self._dialer.abandon()  # what the closing reader still reports is for an attempt given up
        self._shutdown(detail, NORMAL)
        self._gave_up = why
        self._set_state(ConnectionState.CLOSED, detail)

    def _shutdown(self, reason: str, code: int) -> None:
        self._dialer.hang_up(reason, code)
        self._services.drop_held()

    def _set_state(self, state: ConnectionState, detail: str = "", quiet: bool = False) -> None:
        if state is self._state and state is not ConnectionState.BACKOFF:
            return
        self._state = state
        log_state(self._log, state, detail, quiet)
        message = StateChanged(state, self._clock(), detail)
        for ref in self._subscribers:
            send(ref, message)
