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
import functools
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Final

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger
from websockets.asyncio.server import Server

from jobrelay.common.loop import run_loop
from jobrelay.facilitator.config import FacilitatorConfig
from jobrelay.facilitator.counters import Counters
from jobrelay.facilitator.descriptors import fit_to_descriptors, raise_open_file_limit, warn_if_small
from jobrelay.facilitator.hub import ConnectionHub
from jobrelay.facilitator.job_options import JobOptions
from jobrelay.facilitator.job_requests import check_frame, make_requests
from jobrelay.facilitator.listener import listen, on_loop_error, shut_down
from jobrelay.facilitator.placement import Candidates
from jobrelay.facilitator.store import FacilitatorStore
from jobrelay.facilitator.store_ops import JOB_REQUEST, Assignment
from jobrelay.facilitator.views import FacilitatorStats, JobView, WorkerView, worker_views
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.messages import JobCancel, JobRequest, JobStatus
from jobrelay.storage.ledger import QUEUED, JobRecord

__all__ = ["LISTED_STATUSES", "Facilitator", "start_facilitator"]

LISTED_STATUSES: Final = (QUEUED, *(s.value for s in JobStatus))
"""The last statuses a job can have, as ``jobs(status)`` takes them and ``job_counts`` names them."""

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
        self.calls = self.hub.calls  # calls to workers, methods served to them, resource leases
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
        requests = make_requests(self.config, self.authorized, jobs, worker, options)
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
        requests = make_requests(self.config, self.authorized, jobs, worker, options)
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

    def _routed(self, assignments: Sequence[Assignment], requests: Sequence[JobRequest]) -> None:
        hub = self.hub
        self.counters.add("jobs_submitted", len(assignments))
        bodies: dict[str, JobRequest] = {}
        for request in requests:
            bodies.setdefault(request.job_id, request)  # a repeated id: the first is the one stored
        hub.notify(assignments, bodies)
        hub.submitted(assignments, bodies)
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
        cancel = JobCancel(job_id=job_id, reason=reason)
        check_frame(cancel, f"the cancel of job {job_id!r}", self.config.max_frame_bytes, self.config.formats)
        self._not_on_loop("cancel")
        done, worker, seq = self.store.cancel(
            job_id, reason, on_late=lambda r: self.hub.notify([Assignment(job_id, r[1], r[2])])
        )
        if done and worker:
            self.hub.notify([Assignment(job_id, worker, seq)])
        elif done:  # it was queued here: ended now
            self.hub.events.job_status(job_id, None, "cancelled", reason or "cancelled")
        return done

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
        if status is not None and status not in LISTED_STATUSES:
            raise ValueError(f"unknown status {status!r}; expected one of {', '.join(LISTED_STATUSES)}")
        return self.store.jobs(status, limit)

    def job_counts(self) -> dict[str, int]:
        """How many jobs have each status of LISTED_STATUSES (0 for none), over the whole ledger.
        Raises StorageError or TimeoutError as ``jobs`` does."""
        counts = self.store.job_counts()
        return {status: counts.get(status, 0) for status in LISTED_STATUSES}

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
            shutdown = asyncio.run_coroutine_threadsafe(shut_down(self._server, self.hub), self.loop)
            try:
                shutdown.result(max(0.1, deadline - time.monotonic() - 0.5))
            except TimeoutError:
                logger.warning("facilitator: connections did not close in time; abandoning them")
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(max(0.1, deadline - time.monotonic() - 0.3))
        self.calls.close()
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
        self._server = await listen(self.config, self.hub)
        self.port = int(next(iter(self._server.sockets)).getsockname()[1])
        self.url = f"{'wss' if self.config.tls_cert_file else 'ws'}://{self.config.host}:{self.port}"

    def _start(self) -> None:
        self.max_workers = fit_to_descriptors(self.config, self.hub, raise_open_file_limit())
        self.loop.set_exception_handler(functools.partial(on_loop_error, self.hub))
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), self.loop).result(30)
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(5)
            raise


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
    warn_if_small(config, facilitator.max_workers)
    logger.info(
        "facilitator: listening url={} db={} workers={} capacity={} key={}",
        facilitator.url,
        config.db_path,
        len(authorized),
        facilitator.max_workers,
        facilitator.public_key,
    )
    return facilitator
