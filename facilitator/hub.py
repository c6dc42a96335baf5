# The facilitator's connections on its event loop: the `websockets` asyncio server's handler, the
# registry of connections by worker, who can take jobs, routing wake-ups, and the limits that make
# the server degrade instead of collapse (a cap on connections, paced handshakes).
# Invariants:
# - Everything here runs on the loop thread, except the methods documented as thread-safe
#   (``eligible``, ``notify``, ``request_dispatch``, ``live``, ``connected``, ``saturation``),
#   which only take ``_lock`` briefly or hand work to the loop with call_soon_threadsafe.
# - At most one authenticated connection per worker id; a newer one replaces the older (closed
#   with 1001) after waiting a bounded time for it to let go of its session and the store.
# - A connection over ``max_workers`` is refused at once with close code 1013 (try again later),
#   counted, and logged once per remote address per minute; at most ``max_handshakes`` auth frames
#   are verified and opened at a time, the rest wait (a reconnect storm is absorbed, not a freeze);
#   a silent connection never holds a slot.
from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger
from websockets.asyncio.server import ServerConnection

from jobrelay.common.admission import ConnectionGate, RefusalLog
from jobrelay.facilitator.calls import FacilitatorCalls
from jobrelay.facilitator.config import FacilitatorConfig
from jobrelay.facilitator.connection import WorkerConnection
from jobrelay.facilitator.counters import Counters
from jobrelay.facilitator.deadlines import StartDeadlines
from jobrelay.facilitator.events import EventBus
from jobrelay.facilitator.pacing import Chatter, NewestFirst, RecentPeak
from jobrelay.facilitator.placement import Candidates
from jobrelay.facilitator.ready import ReadyWorkers
from jobrelay.facilitator.retry_timers import RetryTimers
from jobrelay.facilitator.store import FacilitatorStore
from jobrelay.facilitator.store_ops import Assignment
from jobrelay.facilitator.views import Live
from jobrelay.protocol.auth import NonceRegistry
from jobrelay.protocol.close_codes import GOING_AWAY, TRY_AGAIN_LATER
from jobrelay.protocol.come_back import ComeBackSchedule
from jobrelay.protocol.messages import FacilitatorBody, JobRequest
from jobrelay.protocol.session import SessionConfig, SessionState

__all__ = ["Chatter", "ConnectionHub", "NewestFirst"]

T = TypeVar("T")

_REPLACE_WAIT: Final = 2.0  # longest a new connection waits for the one it replaces to let go
_STORE_WAIT: Final = 30.0  # longest a connection waits for one store operation
_ACCEPT_TROUBLE: Final = 10.0  # /healthz reports a failed accept() this long
_DISPATCH_DELAY: Final = 0.005  # ready workers within this window share one routing pass


class ConnectionHub:
    """What the connections share with the server that owns them (see module invariants)."""

    def __init__(
        self,
        config: FacilitatorConfig,
        store: FacilitatorStore,
        authorized: Mapping[str, str],
        loop: asyncio.AbstractEventLoop,
        key: Ed25519PrivateKey,
    ) -> None:
        self.config = config
        self.key = key  # signs every challenge (mutual authentication)
        self.session_config = config.session_config()
        self._session_configs = {1.0: self.session_config}  # by heartbeat scale (few: quarters)
        self.store = store
        self.authorized: Mapping[str, str] = dict(authorized)
        self.nonces = NonceRegistry(ttl=max(600.0, 2 * config.max_clock_skew))
        self.counters = Counters()
        self.events = EventBus()  # live events for GET /events (events.py)
        self.loop = loop
        self.chatter = Chatter(loop)
        self.retries = RetryTimers(store, loop, self.request_dispatch)
        # Request–response calls, both directions, and resource leases.
        self.calls = FacilitatorCalls(loop, store, heartbeat_interval=config.heartbeat_interval)
        self.max_workers = config.max_workers  # lowered at start to what the open-file limit allows
        self.stopping = False
        self._lock = threading.Lock()
        self._conns: dict[str, WorkerConnection] = {}  # authenticated, by worker id
        self._ready = ReadyWorkers()  # open and not draining: may take jobs (by worker, by kind)
        self._all: set[WorkerConnection] = set()  # every connection, authenticating ones too
        self.open_sessions = 0  # changed on the loop thread only (WorkerConnection opened/closed)
        self._handshakes = NewestFirst(config.max_handshakes)
        self._fleet = RecentPeak()  # heartbeats budgeted for the recent peak, not a storm's trough
        self._refusals = RefusalLog()
        # Sized to the open-file limit at start (descriptors.fit_to_descriptors).
        self.gate = ConnectionGate(
            config.max_workers + config.max_unauthenticated,
            config.max_unauthenticated,
            config.max_unauthenticated_per_address,
            self.counters.add,
        )
        self.come_back = ComeBackSchedule()  # Retry-After for refusals over max_unauthenticated
        self._accept_failed_at = -_ACCEPT_TROUBLE
        self._accept_error = ""
        self._dispatch_handle: asyncio.TimerHandle | None = None
        # Whether jobs may wait for a worker (at start: maybe, from an earlier run); cleared when
        # a routing pass left none queued and no submit queued one meanwhile.
        self._maybe_queued = True
        self._queued_news = 0
        # The next routing pass: over every ready worker (jobs were queued), or only over those
        # that became ready or got credit back since the last pass.
        self._dispatch_all = True
        self._dispatch_for: set[str] = set()
        self._deadlines = StartDeadlines(
            loop,
            store,
            config.schedule_to_start_timeout,
            self.counters,
            self.wait,
            self._may_wait,
            self.events,
        )
        loop.call_soon_threadsafe(self._deadlines.arm)  # jobs may wait from an earlier run

    # ------------------------------------------------------------------ the server's handler

    async def handle(self, ws: ServerConnection) -> None:
        """Serve one worker connection (the `websockets` server's handler)."""
        if self.stopping:
            await ws.close(GOING_AWAY, "facilitator shutting down")
            return
        if len(self._all) >= self.max_workers:
            self._refuse(ws)
            await ws.close(TRY_AGAIN_LATER, f"facilitator at capacity ({self.max_workers} workers)")
            return
        conn = WorkerConnection(ws, self)
        self._all.add(conn)
        try:
            await conn.run()
        finally:
            self._all.discard(conn)

    async def handshake_slot(self) -> None:
        """Wait for one of ``max_handshakes`` slots (a connection takes one when its auth frame
        arrives, for the signature check and the store reads, and gives it back with
        ``release_slot`` once its session opened or closed). Waiting costs no CPU; the
        connection's handshake deadline keeps running meanwhile."""
        await self._handshakes.acquire()

    def release_slot(self) -> None:
        self._handshakes.release()

    def _refuse(self, ws: ServerConnection) -> None:
        self.counters.add("refused_capacity")
        source = str(ws.remote_address[0]) if ws.remote_address else "?"
        if self._refusals.should_log(source, "capacity"):
            logger.warning(
                "facilitator: refusing connections from {}: at capacity ({} workers, max_workers)",
                source,
                self.max_workers,
            )

    def accept_failed(self, exc: object) -> None:
        """The listener's accept() failed (asyncio pauses it for a second and accepts again)."""
        self.counters.add("accept_errors")
        self._accept_failed_at = time.monotonic()
        self._accept_error = str(exc) or type(exc).__name__
        if self._refusals.should_log("listener", "accept"):
            logger.error(
                "facilitator: cannot accept connections ({}); retrying every second. Raise the "
                "open-file limit or lower max_workers; counted in accept_errors, logged once a minute",
                self._accept_error,
            )

    # ------------------------------------------------------------------ what a connection calls

    async def wait(self, future: asyncio.Future[T]) -> T:
        """Await a store operation without blocking the loop. On a timeout the operation itself
        is not cancelled (it will still commit): the caller may attach to ``future``.

        Raises:
            TimeoutError: the store did not answer within _STORE_WAIT seconds.
        """
        async with asyncio.timeout(_STORE_WAIT):
            return await asyncio.shield(future)

    async def attach(self, conn: WorkerConnection) -> None:
        """Register an authenticated connection; an older one of the same worker is closed
        first, and waited for (bounded), so the new one reads the marks after its last commit."""
        with self._lock:
            old = self._conns.get(conn.worker_id)
            self._conns[conn.worker_id] = conn
            self._ready.remove(old)
        if old is None or old is conn:
            return
        self.counters.add("connections_replaced")
        logger.warning("facilitator: connection replaced worker={}", conn.worker_id)
        old.request_close(GOING_AWAY, "replaced by a new connection")
        try:
            await asyncio.wait_for(old.released.wait(), _REPLACE_WAIT)
        except TimeoutError:
            logger.warning(
                "facilitator: the replaced connection of worker={} did not let go in {}s",
                conn.worker_id,
                _REPLACE_WAIT,
            )

    def detach(self, conn: WorkerConnection) -> None:
        """Forget a connection that ended (unless a newer one replaced it)."""
        with self._lock:
            if self._conns.get(conn.worker_id) is conn:
                del self._conns[conn.worker_id]
            self._ready.remove(conn)

    def worker_ready(self, conn: WorkerConnection, ready: bool) -> None:
        """``conn`` can take jobs now (opened, or stopped draining), or no longer can (closed,
        draining)."""
        ready = ready and conn.is_open
        with self._lock:
            if ready and self._conns.get(conn.worker_id) is conn:
                self._ready.add(conn)
            else:
                self._ready.remove(conn)
        if ready and self._maybe_queued:
            self._dispatch_for.add(conn.worker_id)
            self._schedule_dispatch()

    def credit_freed(self, conn: WorkerConnection) -> None:
        """A job of ``conn``'s worker ended: its credit may take a queued job."""
        if self._maybe_queued and self._ready.get(conn.worker_id) is conn:
            self._dispatch_for.add(conn.worker_id)
            self._schedule_dispatch()

    def request_dispatch(self) -> None:
        """Jobs were left queued: route them soon (thread-safe)."""
        with contextlib.suppress(RuntimeError):  # the loop closed (stopping): nothing to route to
            self.loop.call_soon_threadsafe(self._queued_now)

    def _queued_now(self) -> None:
        self._maybe_queued = True
        self._queued_news += 1
        self._dispatch_all = True
        self._schedule_dispatch()
        self._deadlines.arm()

    def _may_wait(self) -> bool:
        return self._maybe_queued and not self.stopping

    def _schedule_dispatch(self) -> None:
        if self._dispatch_handle is None:
            # Many workers become ready together (a reconnect storm): one routing pass for all.
            self._dispatch_handle = self.loop.call_later(_DISPATCH_DELAY, self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_handle = None
        workers = None if self._dispatch_all else self._dispatch_for
        self._dispatch_all, self._dispatch_for = False, set()
        candidates = self.candidates(None, workers)
        if candidates:
            self.loop.create_task(self._route_queued(candidates))

    async def _route_queued(self, candidates: Candidates) -> None:
        news = self._queued_news
        future = self.store.dispatch_queued(candidates)
        try:
            assignments, left = await self.wait(future)
            if not left and news == self._queued_news:
                # Nothing is queued, and nothing was queued since: a worker becoming ready (ten
                # thousand of them in a reconnect storm) or finishing a job need not look again.
                self._maybe_queued = False
            self.notify(assignments)
            self.routed(assignments)
        except TimeoutError:
            # The store is slow, not gone: whoever gets jobs when it commits must be woken then.
            future.add_done_callback(self._notify_when_done)
            logger.warning("facilitator: routing queued jobs is taking long; will wake workers when done")
        except Exception as exc:
            logger.warning("facilitator: routing queued jobs failed: {}", exc)

    def _notify_when_done(self, future: asyncio.Future[tuple[list[Assignment], bool]]) -> None:
        if not future.cancelled() and future.exception() is None:
            self.notify(future.result()[0])
            self.routed(future.result()[0])

    def submitted(self, assignments: Sequence[Assignment], requests: Mapping[str, JobRequest]) -> None:
        """Publish ``job.submitted`` (and ``job.routed`` when it went to a worker at once)."""
        for a in assignments:
            kind = requests[a.job_id].kind if a.job_id in requests else ""
            self.events.publish("job.submitted", job_id=a.job_id, kind=kind, worker=a.worker or None)
        self.routed(assignments)

    def routed(self, assignments: Sequence[Assignment]) -> None:
        """Publish ``job.routed`` for each job newly given to a worker (thread-safe)."""
        for a in assignments:
            if a.worker and a.seq:
                self.events.publish("job.routed", job_id=a.job_id, worker=a.worker)

    # ------------------------------------------------------------------ thread-safe

    def is_stopping(self) -> bool:
        return self.stopping

    def eligible(self) -> list[str]:
        """Workers that may take jobs now: connected and not draining."""
        if self.stopping:
            return []
        with self._lock:
            return [w for w, c in self._ready.by_worker.items() if c.is_open]

    def candidates(self, kinds: Iterable[str] | None, workers: Iterable[str] | None = None) -> Candidates:
        """The ready workers that run any of ``kinds`` (None: every kind), with the credit each
        granted; only those among ``workers`` if given (thread-safe)."""
        if self.stopping:
            return Candidates()
        with self._lock:
            return self._ready.candidates(kinds, workers)

    def notify(
        self, assignments: Sequence[Assignment], bodies: Mapping[str, FacilitatorBody] | None = None
    ) -> None:
        """Wake the connections of workers that got new rows (never blocks: they send).
        ``bodies``: the rows' bodies by job id, as just committed (sent without a store read)."""
        upto: dict[str, int] = {}
        fresh: dict[str, list[tuple[int, FacilitatorBody]]] = {}
        for a in assignments:
            if a.worker and a.seq:
                upto[a.worker] = max(upto.get(a.worker, 0), a.seq)
                body = bodies.get(a.job_id) if bodies else None
                if body is not None:
                    fresh.setdefault(a.worker, []).append((a.seq, body))
        with self._lock:
            conns = [(self._conns[w], seq) for w, seq in upto.items() if w in self._conns]
        for conn, seq in conns:
            with contextlib.suppress(RuntimeError):  # the loop closed (stopping): marks cover it
                self.loop.call_soon_threadsafe(conn.wake, seq, fresh.get(conn.worker_id, ()))

    def live(self) -> dict[str, Live]:
        """What each authenticated connection knows now."""
        with self._lock:
            return {w: Live(c.is_open, c.draining, c.last_contact) for w, c in self._conns.items()}

    def new_session_config(self, starting: int = 1) -> SessionConfig:
        """The limits for a session starting now (``starting=1``: it counts; 0: the values a
        session already open should keep to now): heartbeats slower when many connections are
        held, or were within the last minutes (``FacilitatorConfig.heartbeat_rate``)."""
        scale = self.config.heartbeat_scale(self._fleet.observe(len(self._all) + starting))
        config = self._session_configs.get(scale)
        if config is None:
            config = self._session_configs[scale] = self.config.session_config(scale)
        return config

    def connected(self) -> int:
        """Sessions open now (kept by the connections: /stats reads it without a scan)."""
        return self.open_sessions

    def saturation(self) -> str:
        """Why the facilitator cannot take more workers now ("" when it can). Connections
        waiting for a handshake slot are a normal burst, not saturation (``waiting_handshakes``)."""
        if len(self._all) >= self.max_workers:
            return f"at capacity: {len(self._all)} connections, max_workers {self.max_workers}"
        if time.monotonic() - self._accept_failed_at < _ACCEPT_TROUBLE:
            return f"cannot accept connections: {self._accept_error}"
        if self.gate.open >= self.gate.max_connections:
            return f"at capacity: {self.gate.open} sockets open, the most this process holds"
        return ""

    @property
    def waiting_handshakes(self) -> int:
        """Connections whose auth frame waits for a handshake slot."""
        return self._handshakes.waiting

    @property
    def connections(self) -> int:
        """Connections held now, authenticated or not."""
        return len(self._all)

    async def close_all(self, reason: str) -> None:
        """Close every connection with 1001 and wait (bounded by the caller) until they let go."""
        self.stopping = True
        conns = list(self._all)
        for conn in conns:
            if conn.session.state is not SessionState.CLOSED or not conn.released.is_set():
                conn.request_close(GOING_AWAY, reason)
        await asyncio.gather(*(conn.done.wait() for conn in conns))
