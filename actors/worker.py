# The worker's start and stop, as plain functions (Mopidy style): actors start in dependency
# order — Metrics, Outbox, JobRouter, Connection, Heartbeat — each given the refs it needs, and
# stop in reverse. A crashed actor is logged with its traceback and stops the whole worker.
from __future__ import annotations

import concurrent.futures
import contextlib
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, cast

import pykka
from loguru import logger
from pykka.typing import ActorMemberMixin, proxy_method

from jobrelay.actors.ack_slot import AckSlot, OutboxDoor
from jobrelay.actors.actor_messages import ConnectionState
from jobrelay.actors.call_server import worker_methods
from jobrelay.actors.caller import Caller
from jobrelay.actors.config import WorkerConfig
from jobrelay.actors.connection import ConnectionActor
from jobrelay.actors.errors import NotConnected
from jobrelay.actors.handlers import Handler
from jobrelay.actors.heartbeat import HeartbeatActor, HeartbeatProxy, heartbeat_proxy
from jobrelay.actors.leases import LeaseKeeper
from jobrelay.actors.metrics import (
    MetricsActor,
    MetricsBook,
    MetricsProxy,
    MetricsSink,
    MetricsSnapshot,
    metrics_proxy,
)
from jobrelay.actors.outbox_actor import OutboxActor, OutboxHandle, PublishBacklog
from jobrelay.actors.router import JobRouter
from jobrelay.actors.router_proxy import JobRouterProxy
from jobrelay.common.logs import route_stdlib_logging
from jobrelay.common.transport import Transport
from jobrelay.protocol.streams import StreamMarks
from jobrelay.storage import DatabaseLock, lock_database, open_database

__all__ = ["Worker", "start_worker"]

_START_TIMEOUT = 10.0
# Publishes queued in the Outbox's mailbox before publishers wait (about 100 group commits).
_PUBLISH_BACKLOG = 50_000


class ConnectionProxy(ActorMemberMixin, pykka.ActorProxy[ConnectionActor]):
    """Typed proxy of ConnectionActor (every call returns a pykka Future); the Worker holds it."""

    state = proxy_method(ConnectionActor.state)
    gave_up = proxy_method(ConnectionActor.gave_up)
    last_contact = proxy_method(ConnectionActor.last_contact)
    breaker = proxy_method(ConnectionActor.breaker)
    local_mode = proxy_method(ConnectionActor.local_mode)
    connected_event = proxy_method(ConnectionActor.connected_event)
    drain = proxy_method(ConnectionActor.drain)
    drop = proxy_method(ConnectionActor.drop)


def connection_proxy(ref: pykka.ActorRef[ConnectionActor]) -> ConnectionProxy:
    return cast(ConnectionProxy, ref.proxy())


class Worker:
    """A running worker: the actor proxies plus start/stop helpers. Use as a context manager."""

    def __init__(
        self,
        config: WorkerConfig,
        *,
        metrics: MetricsProxy,
        outbox: OutboxHandle,
        router: JobRouterProxy,
        connection: ConnectionProxy,
        heartbeat: HeartbeatProxy,
        refs: list[pykka.ActorRef[Any]],
        caller: Caller,
        lock: DatabaseLock | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.outbox = outbox
        self.router = router
        self.connection = connection
        self.heartbeat = heartbeat
        self.caller = caller
        self.leases = LeaseKeeper(caller, connection)
        self._refs = refs  # in start order
        self._lock = lock  # the database's, held until the actors that write it have stopped
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    def __enter__(self) -> Worker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def stopped(self) -> bool:
        return self._stopped.is_set()

    def wait_connected(self, timeout: float = 10.0) -> None:
        """Block until a session with the facilitator is open.

        Raises:
            NotConnected: not connected within ``timeout`` seconds (or the worker stopped).
        """
        event = self.connection.connected_event().get(timeout=timeout)
        if not event.wait(timeout):
            state = self.connection.state().get(timeout=1.0)
            raise NotConnected(f"not connected to {self.config.url} after {timeout}s (state: {state})")

    def call(
        self,
        method: str,
        params: Any = None,
        timeout: float = 10.0,
        *,
        allow_stale: bool = False,
        wait: bool = True,
    ) -> concurrent.futures.Future[Any]:
        """Call ``method`` on the facilitator (docs/PROTOCOL.md §6.2); see :meth:`Caller.call`.

        The future resolves with the result, checked against the method's declared result type
        (a ``CallResult(value, stale, received_at)`` when ``allow_stale``), or fails with
        CallTimeout, CallRejected(code, message), ConnectionLost, CircuitOpen or — when the
        call limits are reached and ``wait`` is false — CallThrottled.
        """
        return self.caller.call(method, params, timeout, allow_stale=allow_stale, wait=wait)

    def snapshot(self) -> MetricsSnapshot:
        return self.metrics.snapshot().get(timeout=5.0)

    def state(self) -> ConnectionState:
        return self.connection.state().get(timeout=5.0)

    def gave_up(self) -> str:
        """Why the connection stopped trying: ``"max_attempts"``, ``"auth_refused"`` (an identity
        was refused and ``retry_auth_failures`` is off), or "" while it goes on."""
        return self.connection.gave_up().get(timeout=5.0)

    def stop(self, timeout: float | None = None) -> None:
        """Drain and stop within ``config.drain_timeout`` + ``timeout`` seconds (default:
        config.stop_timeout).

        Order: tell the facilitator we are draining; hand queued jobs back to it (when it takes
        them: else they stay for the next start); let running jobs finish for up to
        ``drain_timeout``; ask those left to stop (they end as cancelled) and give them most of
        ``timeout`` to report; then stop actors in reverse start order. Everything that was
        accepted is already durable, so a stop at any point loses nothing.
        """
        with self._stop_lock:
            if self._stopped.is_set():
                return
            budget = self.config.stop_timeout if timeout is None else timeout
            self.leases.release_all(timeout=max(0.1, budget * 0.1))  # a clean stop gives them back
            try:
                self.connection.drain().get(timeout=max(0.1, budget * 0.1))
                self._finish_running(self.config.drain_timeout)
            except (pykka.ActorDeadError, pykka.Timeout) as exc:
                logger.warning("drain step skipped: {}", exc)
            deadline = time.monotonic() + budget
            try:
                self.router.drain("worker stopping").get(timeout=max(0.1, budget * 0.1))
                # Running handlers report their terminal status while heartbeats go on.
                while time.monotonic() < deadline - budget * 0.3 and not self._settled():
                    time.sleep(0.05)  # polling the actors with a deadline (they own the state)
            except (pykka.ActorDeadError, pykka.Timeout) as exc:
                logger.warning("drain step skipped: {}", exc)
            for ref in reversed(self._refs):
                remaining = max(0.1, deadline - time.monotonic())
                try:
                    ref.stop(timeout=remaining)
                except pykka.Timeout:
                    logger.error("actor {} did not stop in time", ref)
                except pykka.ActorDeadError:
                    pass
            self._stop_leftovers()
            if self._lock is not None:
                self._lock.release()
            self._stopped.set()
            logger.info("worker {} stopped", self.config.worker_id)

    def _finish_running(self, drain_timeout: float) -> None:
        """Hand queued jobs back, then wait up to ``drain_timeout`` for running jobs to end and
        for what we published (the hand-backs, the endings) to be acknowledged."""
        running = self.router.drain("worker stopping", cancel_running=False).get(timeout=5.0)
        if running:
            logger.info("draining: waiting up to {:g}s for {} running job(s)", drain_timeout, running)
        deadline = time.monotonic() + drain_timeout
        while time.monotonic() < deadline and not self._settled():
            time.sleep(0.05)  # polling the actors with a deadline (they own the state)

    def _settled(self) -> bool:
        """No job runs, and the facilitator has everything we published (the hand-backs, the
        endings) or cannot get it now (disconnected: it is sent after the next start)."""
        if self.router.running().get(timeout=1.0):
            return False
        if not self.connection.connected_event().get(timeout=1.0).is_set():
            return True
        _, acked, last = self.outbox.out_marks().get(timeout=1.0)
        return acked >= last

    def _stop_leftovers(self) -> None:
        """The safety net (Mopidy's stop_all, scoped to this worker): an actor of ours still alive
        after the ordered stop is a bug; log it and stop it without waiting."""
        for ref in self._refs:
            if ref.is_alive():
                logger.error("actor {} still alive after the worker stopped; stopping it", ref)
                with contextlib.suppress(pykka.ActorDeadError):
                    ref.stop(block=False)


def kind_credit(config: WorkerConfig, handlers: Mapping[str, Handler]) -> dict[str, int]:
    """The credit of each kind whose handler limits its concurrency (``encode=2``): its
    concurrency plus the prefetch, so the facilitator sends no more of that kind than can start
    soon, however much total credit is left."""
    total = config.max_concurrent_jobs + config.prefetch
    out: dict[str, int] = {}
    for kind, handler in handlers.items():
        limit = getattr(handler, "concurrency", None)
        if isinstance(limit, int) and limit >= 1:
            out[kind] = min(total, limit + config.prefetch)
    return out


def start_worker(
    config: WorkerConfig,
    handlers: Mapping[str, Handler] | None = None,
    *,
    transport_factory: Callable[[], Transport] | None = None,
    clock: Callable[[], float] = time.time,
) -> Worker:
    """Start a worker's actors and begin connecting to the facilitator.

    Args:
        config: the worker configuration; checked first.
        handlers: job kind → handler (``handler(job, ctx)``; see CommandHandler for commands).
        transport_factory: a Transport per connection attempt (default: WebSocket).

    Raises:
        ConfigError: a configuration value is invalid (the message names it).
        StorageError: the database cannot be opened (the message says what to do).
    """
    config.check()
    route_stdlib_logging()
    # Create or migrate (and integrity-check) the file once, here, so a bad database is the
    # caller's StorageError and the actors can open it concurrently without a schema race.
    # One worker per database, for the process's life (released at the end of stop()).
    lock = lock_database(config.db_path)
    try:
        open_database(config.db_path, durability=config.durability).close()
    except BaseException:
        lock.release()
        raise
    refs: list[pykka.ActorRef[Any]] = []
    worker: Worker | None = None
    served = worker_methods(config.db_path)

    def crashed(name: str) -> None:
        logger.error("actor {} crashed; stopping the worker", name)
        if worker is not None:
            threading.Thread(target=worker.stop, name="jobrelay-crash-stop", daemon=True).start()

    try:
        book = MetricsBook()
        metrics_ref = _Supervised.wrap(MetricsActor, crashed).start(book, config)
        refs.append(metrics_ref)
        metrics = MetricsSink(book, metrics_ref)  # what the others report to: counted in place
        acks = AckSlot()  # the Connection's newest ack, which the Outbox reads between commits
        outbox_ref = _Supervised.wrap(OutboxActor, crashed).start(
            config, metrics=metrics, clock=clock, acks=acks
        )
        refs.append(outbox_ref)
        backlog = PublishBacklog(limit=_PUBLISH_BACKLOG, timeout=config.publish_timeout)
        outbox = OutboxHandle(outbox_ref, backlog)
        router_ref = _Supervised.wrap(JobRouter, crashed).start(
            config, dict(handlers or {}), outbox=outbox, metrics=metrics, clock=clock
        )
        refs.append(router_ref)
        router = JobRouterProxy(router_ref)
        # Wait for both stores to be open before anything connects.
        outbox.out_marks().get(timeout=_START_TIMEOUT)
        router.in_marks().get(timeout=_START_TIMEOUT)

        def marks() -> StreamMarks:
            epoch, acked, last = outbox.out_marks().get(timeout=_START_TIMEOUT)
            in_epoch, in_hwm = router.in_marks().get(timeout=_START_TIMEOUT)
            return StreamMarks(epoch, acked, last, in_epoch, in_hwm)

        # The Outbox and the JobRouter answer the Connection through the refs its messages carry
        # (SessionOpened, Incoming): every actor gets what it needs here, at start.
        connection_ref = _Supervised.wrap(ConnectionActor, crashed).start(
            config,
            marks=marks,
            outbox=OutboxDoor(outbox_ref, acks),
            router=router_ref,
            metrics=metrics,
            subscribers=[metrics],
            transport_factory=transport_factory,
            kinds=sorted(handlers or {}),
            kind_credit=kind_credit(config, handlers or {}),
            clock=clock,
            served=served,
        )
        refs.append(connection_ref)
        connection = connection_proxy(connection_ref)
        heartbeat_ref = _Supervised.wrap(HeartbeatActor, crashed).start(
            [connection_ref, outbox_ref], clock=clock
        )
        refs.append(heartbeat_ref)
    except BaseException:
        for ref in reversed(refs):
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(timeout=_START_TIMEOUT)
        lock.release()
        raise
    worker = Worker(
        config,
        metrics=metrics_proxy(metrics_ref),
        outbox=outbox,
        router=router,
        connection=connection,
        heartbeat=heartbeat_proxy(heartbeat_ref),
        refs=refs,
        caller=Caller(config, connection=connection_ref, metrics=metrics, served=served, clock=clock),
        lock=lock,
    )
    kinds = ", ".join(sorted(handlers or {})) or "none"
    logger.info("worker {} started: kinds {}; connecting to {}", config.worker_id, kinds, config.url)
    return worker


class _Supervised:
    """Adds crash reporting to an actor class: on_failure logs and tells the supervisor."""

    @staticmethod
    def wrap(actor_class: type[pykka.ThreadingActor], crashed: Callable[[str], None]) -> Any:
        def on_failure(
            self: pykka.ThreadingActor,
            exc_type: type[BaseException] | None,
            exc: BaseException | None,
            tb: TracebackType | None,
        ) -> None:
            logger.opt(exception=(exc_type, exc, tb)).error("{} failed", actor_class.__name__)
            try:
                actor_class.on_failure(self, exc_type, exc, tb)
            finally:
                crashed(actor_class.__name__)

        return type(actor_class.__name__, (actor_class,), {"on_failure": on_failure})
