# What the Connection layers on its sessions besides the data streams: local mode and calls in
# both directions. One plain object, so the actor stays a thin shell that routes messages and
# events here; everything runs in the Connection's thread except the call server's pool.
# Invariants: see actors/local_mode.py, actors/calls.py and actors/call_server.py.
from __future__ import annotations

from typing import Any

import pykka

from jobrelay.actors.call_server import CallServer, worker_methods
from jobrelay.actors.calls import CallTable, StartCall
from jobrelay.actors.config import WorkerConfig
from jobrelay.actors.local_mode import LocalMode
from jobrelay.common.calls import MethodRegistry
from jobrelay.protocol import events as ev
from jobrelay.protocol.breaker import BreakerState, CircuitBreaker
from jobrelay.protocol.calls import ConnectionLost
from jobrelay.protocol.session import WorkerSession

__all__ = ["SessionServices"]


class SessionServices:
    """Local mode, the worker's calls and its answers to the facilitator's calls."""

    def __init__(
        self,
        config: WorkerConfig,
        log: Any,
        metrics: pykka.ActorRef[Any],
        now: float,
        served: MethodRegistry | None = None,
    ) -> None:
        self.config = config
        self.served = served or worker_methods(config.db_path)
        self.local = LocalMode(config.local_mode_after, log, metrics)
        self.calls = CallTable(CircuitBreaker(config.breaker_config(), now=now), log)
        self.server: CallServer | None = None

    def open(self, connection: pykka.ActorRef[Any], now: float) -> None:
        """In the Connection's thread, at its start."""
        self.local.open(self.config.db_path, self.config.durability, now)
        self.server = CallServer(self.served, connection)

    def close(self) -> None:
        self.calls.fail_all(ConnectionLost("the worker stopped"))
        if self.server is not None:
            self.server.close()
        self.local.close()

    def opened(self, session: WorkerSession, now: float) -> None:
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

    def take_counts(self) -> dict[str, int]:
        counts, self.calls.counts = self.calls.counts, {}
        return counts
