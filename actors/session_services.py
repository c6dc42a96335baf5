# What the Connection layers on its sessions besides the data streams: local mode, calls in both
# directions, the send throttle and the counts it reports. One plain object, so the actor stays a
# thin shell that routes messages and events here; everything runs in the Connection's thread
# except the call server's pool and the throttle's timer.
# Invariants: see actors/local_mode.py, actors/calls.py, actors/call_server.py and
# actors/send_throttle.py.
from __future__ import annotations

import secrets
from collections import Counter
from collections.abc import Mapping
from typing import Any

import pykka
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.actors.actor_messages import Count, Gauge, ReleaseData, Tellable, send
from jobrelay.actors.call_server import CallServer, worker_methods
from jobrelay.actors.calls import CallTable, StartCall
from jobrelay.actors.config import WorkerConfig
from jobrelay.actors.local_mode import LocalMode
from jobrelay.actors.one_shot import OneShot
from jobrelay.actors.send_throttle import SendThrottle
from jobrelay.common.calls import MethodRegistry
from jobrelay.protocol import events as ev
from jobrelay.protocol.breaker import BreakerState, CircuitBreaker
from jobrelay.protocol.calls import ConnectionLost
from jobrelay.protocol.driver import SessionDriver
from jobrelay.protocol.session import WorkerSession
from jobrelay.protocol.streams import StreamMarks

__all__ = ["SessionServices", "new_session"]


def new_session(
    config: WorkerConfig,
    key: Ed25519PrivateKey,
    marks: StreamMarks,
    now: float,
    kinds: tuple[str, ...] | None,
    kind_credit: Mapping[str, int] | None = None,
) -> WorkerSession:
    """The session of a new connection: it sends hello at once, with our kinds and credit."""
    return WorkerSession(
        worker_id=config.worker_id,
        key=key,
        facilitator_key=config.facilitator_key,
        nonce=secrets.token_hex(32),
        marks=marks,
        now=now,
        config=config.session_config(),
        kinds=kinds,
        credit=config.max_concurrent_jobs + config.prefetch,
        kind_credit=kind_credit,
    )


class SessionServices:
    """Local mode, the worker's calls and its answers to the facilitator's calls."""

    def __init__(
        self,
        config: WorkerConfig,
        log: Any,
        metrics: Tellable,
        now: float,
        served: MethodRegistry | None = None,
    ) -> None:
        self.config = config
        self.served = served or worker_methods(config.db_path)
        self.local = LocalMode(config.local_mode_after, log, metrics)
        self.calls = CallTable(CircuitBreaker(config.breaker_config(), now=now), log)
        self.server: CallServer | None = None
        self.throttle = SendThrottle(config.send_rate, config.send_burst, now=now)
        self._release = OneShot("jobrelay-send-throttle")
        self._metrics = metrics
        self._sent_mark = 0  # data_sent counted up to this seq of the current session

    def open(self, connection: pykka.ActorRef[Any], now: float) -> None:
        """In the Connection's thread, at its start."""
        self.local.open(self.config.db_path, self.config.durability, now)
        self.server = CallServer(self.served, connection)

    def close(self) -> None:
        self.drop_held()
        self.calls.fail_all(ConnectionLost("the worker stopped"))
        if self.server is not None:
            self.server.close()
        self.local.close()

    def opened(self, session: WorkerSession, now: float) -> None:
        self._sent_mark = session.sender.sent
        self.local.session_opened(now)
        self.calls.session_opened(session, now)

    def closed(self, now: float, last_contact: float) -> None:
        self.local.session_closed(now, last_contact)
        self.calls.session_closed(now)

    def beat(self, now: float, connection_breaker: BreakerState) -> None:
        self.local.check(now, breaker_open=connection_breaker is BreakerState.OPEN)
        self.calls.tick(now)

    def start_call(
        self, call: StartCall, session: WorkerSession | None, now: float, connection_breaker: BreakerState
    ) -> None:
        reachable = connection_breaker is not BreakerState.OPEN
        self.calls.start(call, session, now, reachable=reachable, local=self.local.active)

    def on_event(self, event: ev.Event, session: WorkerSession, now: float) -> None:
        """A request, response or request timeout of ``session``."""
        match event:
            case ev.RequestReceived(request=request) if session.is_open and self.server is not None:
                self.server.serve(session.session_id, request)
            case ev.ResponseReceived(response=response):
                self.calls.on_response(response, now)
            case ev.RequestTimedOut(id=call_id):
                self.calls.on_timeout(call_id, now)
            case _:
                pass

    def arm_release(self, connection: pykka.ActorRef[Any], session_id: str, now: float) -> None:
        """Wake the Connection when the throttle's next held message may go."""
        wait = self.throttle.next_release(now)
        if wait is not None:
            self._release.arm(wait, connection, ReleaseData(session_id))

    def drop_held(self) -> None:
        """The session ended: what the throttle holds is replayed by the Outbox later."""
        self._release.cancel()
        self.throttle.clear()

    def report(self, counts: Counter[str], driver: SessionDriver[WorkerSession] | None) -> None:
        """Tell Metrics the counts of this beat (kept here: no tell per frame) and the gauges."""
        if driver is not None:
            counts["frames_received"] += driver.frames_in
            counts["frames_sent"] += driver.frames_out
            driver.frames_in = driver.frames_out = 0
            sent = driver.session.sender.sent
            if driver.session.is_open and sent > self._sent_mark:
                counts["data_sent"] += sent - self._sent_mark
                self._sent_mark = sent
        counts["data_throttled"] += self.throttle.throttled
        self.throttle.throttled = 0
        counts.update(self.calls.counts)
        self.calls.counts = {}
        send(self._metrics, Gauge("data_throttle_held", float(self.throttle.held)))
        for name, n in counts.items():
            if n:
                send(self._metrics, Count(name, n))
        counts.clear()
