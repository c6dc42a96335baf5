# The reference facilitator: a `websockets` asyncio server on one event loop (its own thread), one
# coroutine per worker connection (connection.py), in front of one SQLite database owned by a
# single store thread (group commit). The public API below is synchronous and thread-safe; it is
# for callers outside the loop (user threads, the HTTP API's executor).
# Invariants:
# - submit()/cancel() return only after the job (and its request in the worker's outbox) is
#   committed; a job is routed at most once: to the named worker, else to a connected
#   non-draining worker that runs its kind and has credit left (placement.py), else it stays
#   queued and is routed when such a worker is ready, or fails ``no_worker`` at its start deadline.
# - submit()/cancel() never wait on a socket: after the commit they only wake the worker's
#   connection on the loop, which sends.
# - A job whose request would not fit in one frame (max_frame_bytes) is refused, never stored.
# - The open-file limit is raised to its hard limit at start, and the connections held are capped
#   below what it allows, so the listener never fails to accept for want of descriptors.
# - stop() is bounded: connections are closed with 1001, the server stops, the store commits
#   what is queued and closes the file, all within the timeout.
from __future__ import annotations

import asyncio
import logging
import resource
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger
from websockets.asyncio.server import Server, serve

from jobrelay.common.loop import run_loop
from jobrelay.facilitator.admission import gated_connection
from jobrelay.facilitator.config import FacilitatorConfig
from jobrelay.facilitator.connection import CLOSE_TIMEOUT
from jobrelay.facilitator.counters import Counters
from jobrelay.facilitator.errors import JobTooLarge
from jobrelay.facilitator.hub import ConnectionHub
from jobrelay.facilitator.job_options import JobOptions
from jobrelay.facilitator.placement import Candidates
from jobrelay.facilitator.store import FacilitatorStore
from jobrelay.facilitator.store_ops import JOB_REQUEST, Assignment
from jobrelay.facilitator.views import FacilitatorStats, JobView, WorkerView, worker_views
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.codec import check_sendable
from jobrelay.protocol.errors import ConfigError, ErrorCode, LocalProtocolError
from jobrelay.protocol.messages import JobCancel, JobRequest
from jobrelay.storage.ledger import JobRecord

__all__ = ["Facilitator", "start_facilitator"]

# Descriptors kept for the database, logs, the listeners and the HTTP API's connections (at most
# jobrelay.common.http.MAX_CONNECTIONS).
_FD_RESERVE: Final = 512
_MIN_CONNECTIONS: Final = 16  # a facilitator with room for fewer refuses to start
_QUIET_CAPACITY: Final = 10_000  # room for this many workers is not worth a warning at start
_RECOVER_TIMEOUT = 30.0  # listing the retries left waiting at the last stop
_NO_OPTIONS: Final = JobOptions()


class Facilitator:
    """A running reference facilitator (made by ``start_facilitator``; a context manager).

    Attributes:
        config: Its configuration.
        url: ``ws://host:port`` workers connect to.
        port: The TCP port it listens on.
        loop: The event loop its connections run on (in its own thread).
        max_workers: Connections it holds at most: ``config.max_workers``, or fewer when the
            open-file limit allows fewer.
        public_key: Its own Ed25519 public key (hex): what workers pin as ``facilitator_key``.
    """

    def __init__(
        self,
        config: FacilitatorConfig,
        store: FacilitatorStore,
        authorized: Mapping[str, str],
        key: Ed25519PrivateKey,
    ) -> None:
        self.config = config
        self.store = store
        self.authorized: Mapping[str, str] = dict(authorized)
        self.port = 0
        self.url = ""
        self.max_workers = config.max_workers
        self.loop = asyncio.new_event_loop()
        self.public_key = public_key_hex(key)
        self.hub = ConnectionHub(config, store, self.authorized, self.loop, key)
        self.counters: Counters = self.hub.counters
        self._server: Server | None = None
        self._thread = threading.Thread(
            target=run_loop, args=(self.loop,), name="facilitator-loop", daemon=True
        )
        self._stopped = False

    def __repr__(self) -> str:
        return f"<Facilitator {self.url} db={self.config.db_path!r}>"

    def __enter__(self) -> Facilitator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def stopping(self) -> bool:
        return self.hub.stopping

    # ------------------------------------------------------------------ public API

    def submit(
        self,
        kind: str,
        payload: Any = None,
        *,
        job_id: str | None = None,
        worker: str | None = None,
        start_within: float | None = None,
        soft_time_limit: float | None = None,
        time_limit: float | None = None,
        retries: int = 0,
        retry_backoff: float = 0.0,
    ) -> str:
        """Durably record a job and route it (see ``submit_many``).

        Args:
            kind: The job kind (the worker's handler name).
            payload: JSON-serialisable job input.
            job_id: The job's id (default: a new random id). Submitting an id that exists
                changes nothing and returns it (idempotent retries).
            worker: Send it to this worker only (kept until it connects); default: any worker
                that runs ``kind`` and has credit left.
            start_within: Seconds the job may wait for such a worker; still queued then, it ends
                ``failed`` with detail ``no_worker``. Default: the facilitator's
                ``schedule_to_start_timeout`` (unset: it waits as long as it takes).
            soft_time_limit, time_limit, retries, retry_backoff: see ``JobOptions``. A retry is
                a new attempt, routed like a new job (its kind, credit left), possibly to
                another worker.

        Returns:
            The job id.

        Raises:
            ValueError: ``kind``/``job_id`` empty or longer than 256, ``worker`` unknown, or
                an option out of range (``JobOptions.check``, e.g. ``start_within`` not a
                positive number of seconds).
            JobTooLarge: (a ValueError) The encoded request would exceed ``max_frame_bytes``;
                nothing was stored.
            TypeError: ``payload`` is not JSON-serialisable, or an option of the wrong type.
            StorageError: The job could not be stored.
            TimeoutError: The store did not answer in time.
        """
        options = JobOptions(soft_time_limit, time_limit, retries, retry_backoff, start_within)
        return self.submit_many([(kind, payload, job_id)], worker=worker, options=options)[0]

    def submit_many(
        self,
        jobs: Sequence[tuple[str, Any, str | None]],
        *,
        worker: str | None = None,
        options: JobOptions = _NO_OPTIONS,
    ) -> list[str]:
        """Durably record several jobs ``(kind, payload, job_id or None)`` in one commit and route
        them: to ``worker`` if given, else each to the connected non-draining worker that runs
        its kind and has the most credit left, else queued until one is ready (or until
        ``options.start_within``, see ``submit``). ``options`` (start deadline, time limits,
        retry policy) apply to every job of the call.

        Returns:
            The job ids, in order.

        Raises:
            ValueError, JobTooLarge, TypeError, StorageError, TimeoutError: as for ``submit``
                (a refused job refuses the whole call: nothing is stored).
        """
        requests = self._requests(jobs, worker, options)
        start_by = options.start_by(self.config.schedule_to_start_timeout)
        self._not_on_loop("submit")
        hub = self.hub
        candidates = self._candidates(requests, worker)
        assignments = self.store.submit(requests, worker, candidates, on_late=hub.notify, start_by=start_by)
        self._routed(assignments, requests)
        return [r.job_id for r in requests]

    async def submit_async(
        self,
        jobs: Sequence[tuple[str, Any, str | None]],
        *,
        worker: str | None = None,
        options: JobOptions = _NO_OPTIONS,
    ) -> list[str]:
        """``submit_many`` for a caller on the facilitator's own loop (its HTTP API): the commit
        is awaited instead of blocking a thread, so concurrent submitters share group commits.

        Raises:
            As ``submit_many``.
        """
        requests = self._requests(jobs, worker, options)
        start_by = options.start_by(self.config.schedule_to_start_timeout)
        hub = self.hub
        future = self.store.submit_async(requests, worker, self._candidates(requests, worker), start_by)
        try:
            assignments = await hub.wait(future)
        except TimeoutError:
            future.add_done_callback(
                lambda f: hub.notify(f.result()) if not f.cancelled() and f.exception() is None else None
            )
            raise
        self._routed(assignments, requests)
        return [r.job_id for r in requests]

    def _candidates(self, requests: Sequence[JobRequest], worker: str | None) -> Candidates:
        if worker is not None:
            return Candidates()  # a pinned job needs no choice
        return self.hub.candidates({r.kind for r in requests})

    def _requests(
        self,
        jobs: Sequence[tuple[str, Any, str | None]],
        worker: str | None,
        options: JobOptions,
    ) -> list[JobRequest]:
        """The requests of ``jobs``, each checked before anything is stored.

        Raises:
            ValueError, JobTooLarge, TypeError: as for ``submit``.
        """
        if worker is not None and worker not in self.authorized:
            raise ValueError(f"worker {worker!r} is not in the authorized keys")
        options.check()
        now = time.time()
        requests: list[JobRequest] = []
        for kind, payload, given_id in jobs:
            job_id = given_id if given_id is not None else secrets.token_hex(12)
            for name, value in (("kind", kind), ("job_id", job_id)):
                if not 1 <= len(value) <= 256:
                    raise ValueError(f"{name} must be 1..256 characters, got {value!r}")
            request = options.request(job_id, kind, payload, now)
            self._check_frame(request, f"job {job_id!r}")  # before anything is stored
            requests.append(request)
        return requests

    def _routed(self, assignments: Sequence[Assignment], requests: Sequence[JobRequest]) -> None:
        hub = self.hub
        self.counters.add("jobs_submitted", len(assignments))
        bodies: dict[str, JobRequest] = {}
        for request in requests:
            bodies.setdefault(request.job_id, request)  # a repeated id: the first is the one stored
        hub.notify(assignments, bodies)
        if any(not a.worker for a in assignments):
            hub.request_dispatch()  # a worker may have become ready while we were routing

    def cancel(self, job_id: str, reason: str = "") -> bool:
        """Cancel a job: a routed job gets a durable cancel request to its worker (which then
        reports ``cancelled``); a queued job is marked ``cancelled`` at once.

        Returns:
            False when the job is unknown or already finished.

        Raises:
            JobTooLarge: ``reason`` is so long the cancel would not fit in one frame.
            StorageError: The cancel could not be stored.
            TimeoutError: The store did not answer in time.
        """
        self._check_frame(JobCancel(job_id=job_id, reason=reason), f"the cancel of job {job_id!r}")
        self._not_on_loop("cancel")
        done, worker, seq = self.store.cancel(
            job_id, reason, on_late=lambda r: self.hub.notify([Assignment(job_id, r[1], r[2])])
        )
        if done and worker:
            self.hub.notify([Assignment(job_id, worker, seq)])
        return done

    def _check_frame(self, body: JobRequest | JobCancel, what: str) -> None:
        """Refuse a body that could not be sent in one frame in every offered codec: stored, it
        would stop the worker's stream for good (every send of it fails).

        Raises:
            JobTooLarge: It does not fit in max_frame_bytes.
            ValueError: A codec cannot encode it (e.g. msgpack and an integer beyond 64 bits).
        """
        try:
            check_sendable(body, max_frame_bytes=self.config.max_frame_bytes, formats=self.config.formats)
        except LocalProtocolError as exc:
            detail = exc.detail.removeprefix("the message ")
            if exc.code is ErrorCode.FRAME_TOO_LARGE:
                raise JobTooLarge(f"{what} {detail}") from None
            raise ValueError(f"{what} {detail}") from None

    def job(self, job_id: str) -> JobView | None:
        """The job's record, status history and payload, or None if unknown.

        Raises:
            StorageError: The read failed.
            TimeoutError: The store did not answer in time.
        """
        found = self.store.job(job_id)
        if found is None:
            return None
        record, history, payload = found
        return JobView(record=record, history=history, payload=JOB_REQUEST.decode(payload).payload)

    def jobs(self, status: str | None = None, limit: int = 1000) -> list[JobRecord]:
        """The newest jobs first (at most ``limit``), optionally only with last status ``status``.

        Raises:
            ValueError: ``limit`` is negative (SQLite would read that as "no limit").
            StorageError: The read failed.
            TimeoutError: The store did not answer in time.
        """
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        return self.store.jobs(status, limit)

    def workers(self) -> list[WorkerView]:
        """Every worker that is authorized, connected or has stored state, by id.

        Raises:
            StorageError: The read failed.
            TimeoutError: The store did not answer in time.
        """
        self._not_on_loop("workers")
        return worker_views(self.store.worker_facts(), self.authorized, self.hub.live())

    def stats(self) -> FacilitatorStats:
        """A snapshot of the counters."""
        return FacilitatorStats(
            **self.counters.snapshot(),
            connected_workers=self.hub.connected(),
            store_commits=self.store.commits,
            store_operations=self.store.operations,
        )

    def saturation(self) -> str:
        """Why no more workers can connect now ("" when they can)."""
        return self.hub.saturation()

    def stop(self, timeout: float | None = None) -> None:
        """Close every connection with 1001, stop the server and close the database.

        Bounded: returns within ``timeout`` seconds (default ``config.stop_timeout``) even if a
        connection does not close cleanly (it is then abandoned and logged). Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + (self.config.stop_timeout if timeout is None else timeout)
        if self._thread.is_alive():
            shutdown = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
            try:
                shutdown.result(max(0.1, deadline - time.monotonic() - 0.5))
            except TimeoutError:
                logger.warning("facilitator: connections did not close in time; abandoning them")
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(max(0.1, deadline - time.monotonic() - 0.3))
        if not self.store.stop(max(0.1, deadline - time.monotonic())):
            logger.warning("facilitator: the store thread did not stop in time")
        logger.info("facilitator: stopped url={}", self.url)

    # ------------------------------------------------------------------ the loop thread

    def _not_on_loop(self, what: str) -> None:
        if threading.current_thread() is self._thread:
            raise RuntimeError(
                f"Facilitator.{what}() blocks: call it from another thread, not the event loop"
            )

    async def _listen(self) -> None:
        config = self.config
        # websockets logs an open and a close line per connection at INFO: with thousands of
        # workers that drowns the facilitator's own (one line per worker connected/disconnected).
        logging.getLogger("websockets.server").setLevel(logging.WARNING)
        try:
            self._server = await serve(
                self.hub.handle,
                config.host,
                config.port,
                compression=None,
                max_size=config.max_frame_bytes,
                ping_interval=None,
                open_timeout=config.handshake_timeout,
                close_timeout=CLOSE_TIMEOUT,
                ssl=config.tls_context(),
                backlog=config.listen_backlog,
                create_connection=gated_connection(self.hub.gate),
            )
        except OSError as exc:
            raise ConfigError(
                f"FacilitatorConfig.port: cannot listen on {config.host}:{config.port} ({exc})"
            ) from exc
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        self.url = f"{'wss' if config.tls_cert_file else 'ws'}://{config.host}:{self.port}"

    async def _shutdown(self) -> None:
        server = self._server
        if server is not None:
            server.close(close_connections=False)  # stop accepting; ours close below, with 1001
        await self.hub.close_all("facilitator shutting down")
        if server is not None:
            await server.wait_closed()

    def _start(self) -> None:
        self._fit_to_descriptors(_raise_open_file_limit())
        self.loop.set_exception_handler(self._on_loop_error)
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(30)
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            raise

    def _fit_to_descriptors(self, usable: int) -> None:
        """Size the connection limits to ``usable`` descriptors: unauthenticated connections
        get at most half, workers the rest, so the listener never fails to accept.

        Raises:
            ConfigError: fewer than _MIN_CONNECTIONS connections would fit.
        """
        config = self.config
        if usable < _MIN_CONNECTIONS:
            raise ConfigError(
                f"FacilitatorConfig.max_workers: the open-file limit leaves descriptors for "
                f"{max(usable, 0)} connections ({_FD_RESERVE} are kept for the database, the HTTP "
                f"API and logs); raise it (ulimit -n, LimitNOFILE=) to at least "
                f"{_FD_RESERVE + _MIN_CONNECTIONS}"
            )
        unauthenticated = min(config.max_unauthenticated, usable // 2)
        self.max_workers = min(config.max_workers, usable - unauthenticated)
        self.hub.max_workers = self.max_workers
        gate = self.hub.gate
        gate.max_unauthenticated = unauthenticated
        gate.max_connections = self.max_workers + unauthenticated

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # asyncio pauses the listener for a second when accept() fails (out of descriptors) and
        # then accepts again: note it so /healthz says so, and log it once a minute.
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            self.hub.accept_failed(context.get("exception"))
            return
        loop.default_exception_handler(context)


def _raise_open_file_limit() -> int:
    """Raise the soft open-file limit to the hard one; the descriptors left for connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # pragma: no cover - the hard limit is ours to take
            logger.warning("facilitator: could not raise the open-file limit to {}: {}", hard, exc)
    return (1 << 30 if soft == resource.RLIM_INFINITY else soft) - _FD_RESERVE


def start_facilitator(config: FacilitatorConfig) -> Facilitator:
    """Open the database, start the server and return once it listens.

    Args:
        config: The facilitator's settings.

    Returns:
        The running Facilitator (stop it with ``stop()`` or use it as a context manager).

    Raises:
        ConfigError: The facilitator's key or the authorized keys cannot be loaded, or the
            address cannot be bound.
        StorageError: The database cannot be opened (corrupt, read-only, other application…).
    """
    key = config.load_key()
    authorized = config.load_authorized_keys()
    if not authorized:
        logger.warning("facilitator: no authorized keys; every worker will be refused")
    store = FacilitatorStore(config.db_path, config.durability)
    store.start()
    facilitator = Facilitator(config, store, authorized, key)
    try:
        facilitator._start()
    except BaseException:
        store.stop()
        raise
    try:
        facilitator.hub.retries.recover(_RECOVER_TIMEOUT)
    except BaseException:
        facilitator.stop()
        raise
    capacity = facilitator.max_workers
    if capacity < min(config.max_workers, _QUIET_CAPACITY):
        logger.warning(
            "facilitator: the open-file limit allows about {} workers (max_workers {}); raise it "
            "(ulimit -n, LimitNOFILE=) to hold more",
            capacity,
            config.max_workers,
        )
    logger.info(
        "facilitator: listening url={} db={} workers={} capacity={} key={}",
        facilitator.url,
        config.db_path,
        len(authorized),
        capacity,
        facilitator.public_key,
    )
    return facilitator
