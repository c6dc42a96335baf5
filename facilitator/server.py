# The reference facilitator: a `websockets` threaded server (one handler thread per worker
# connection) in front of one SQLite database owned by a single store thread (group commit).
# Invariants:
# - submit()/cancel() return only after the job (and its request in the worker's outbox) is
#   committed; a job is routed at most once: to the named worker, else to the connected
#   non-draining worker with the fewest unfinished jobs, else it stays queued and is routed when
#   a worker becomes ready.
# - submit()/cancel() never wait on a socket: after the commit they only wake the worker's
#   connection, whose own thread sends (facilitator_conn.py).
# - A job whose request would not fit in one frame (max_frame_bytes) is refused, never stored.
# - At most one connection per worker id: a newer authenticated connection replaces the older,
#   which is closed with 1001 ("replaced by a new connection"); the new one waits a bounded time
#   for the old one to let go.
# - stop() is bounded: connections are closed with 1001, the server stops, the store commits
#   what is queued and closes the file, all within the timeout.
from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from loguru import logger
from websockets.sync.server import Server, ServerConnection, serve

from jobrelay.facilitator.config import FacilitatorConfig
from jobrelay.facilitator.connection import WorkerConnection
from jobrelay.facilitator.errors import JobTooLarge
from jobrelay.facilitator.hub import Counters, LockedNonceRegistry
from jobrelay.facilitator.server_transport import CLOSE_TIMEOUT
from jobrelay.facilitator.store import FacilitatorStore
from jobrelay.facilitator.store_ops import JOB_REQUEST, Assignment
from jobrelay.facilitator.views import FacilitatorStats, JobView, Live, WorkerView, worker_views
from jobrelay.protocol.auth import NonceRegistry
from jobrelay.protocol.close_codes import GOING_AWAY
from jobrelay.protocol.codec import check_sendable
from jobrelay.protocol.errors import ConfigError, ErrorCode, LocalProtocolError
from jobrelay.protocol.messages import JobCancel, JobRequest
from jobrelay.storage.ledger import JobRecord

__all__ = ["Facilitator", "start_facilitator"]


_REPLACE_WAIT = 2.0  # longest a new connection waits for the one it replaces to let go


class Facilitator:
    """A running reference facilitator (made by ``start_facilitator``; a context manager).

    Attributes:
        config: Its configuration.
        url: ``ws://host:port`` workers connect to.
        port: The TCP port it listens on.
    """

    def __init__(
        self, config: FacilitatorConfig, store: FacilitatorStore, authorized: Mapping[str, str]
    ) -> None:
        self.config = config
        self.session_config = config.session_config()
        self.store = store
        self.authorized: Mapping[str, str] = dict(authorized)
        self.nonces: NonceRegistry = LockedNonceRegistry(ttl=max(600.0, 2 * config.max_clock_skew))
        self.counters = Counters()
        self.stopping = threading.Event()
        self.port = 0
        self.url = ""
        self._lock = threading.Lock()
        self._conns: dict[str, WorkerConnection] = {}
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    def __repr__(self) -> str:
        return f"<Facilitator {self.url} db={self.config.db_path!r}>"

    def __enter__(self) -> Facilitator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ public API

    def submit(
        self, kind: str, payload: Any = None, *, job_id: str | None = None, worker: str | None = None
    ) -> str:
        """Durably record a job and route it (see ``submit_many``).

        Args:
            kind: The job kind (the worker's handler name).
            payload: JSON-serialisable job input.
            job_id: The job's id (default: a new random id). Submitting an id that exists
                changes nothing and returns it (idempotent retries).
            worker: Send it to this worker only (kept until it connects); default: any.

        Returns:
            The job id.

        Raises:
            ValueError: ``kind``/``job_id`` empty or longer than 256, or ``worker`` unknown.
            JobTooLarge: (a ValueError) The encoded request would exceed ``max_frame_bytes``;
                nothing was stored.
            TypeError: ``payload`` is not JSON-serialisable.
            StorageError: The job could not be stored.
            TimeoutError: The store did not answer in time.
        """
        return self.submit_many([(kind, payload, job_id)], worker=worker)[0]

    def submit_many(
        self, jobs: Sequence[tuple[str, Any, str | None]], *, worker: str | None = None
    ) -> list[str]:
        """Durably record several jobs ``(kind, payload, job_id or None)`` in one commit and route
        them: to ``worker`` if given, else each to the connected non-draining worker with the
        fewest unfinished jobs, else queued until a worker is ready.

        Returns:
            The job ids, in order.

        Raises:
            ValueError, JobTooLarge, TypeError, StorageError, TimeoutError: as for ``submit``
                (a refused job refuses the whole call: nothing is stored).
        """
        if worker is not None and worker not in self.authorized:
            raise ValueError(f"worker {worker!r} is not in the authorized keys")
        now = time.time()
        requests: list[JobRequest] = []
        for kind, payload, given_id in jobs:
            job_id = given_id if given_id is not None else secrets.token_hex(12)
            for name, value in (("kind", kind), ("job_id", job_id)):
                if not 1 <= len(value) <= 256:
                    raise ValueError(f"{name} must be 1..256 characters, got {value!r}")
            request = JobRequest(job_id=job_id, kind=kind, payload=payload, submitted_at=now)
            self._check_frame(request, f"job {job_id!r}")  # before anything is stored
            requests.append(request)
        assignments = self.store.submit(requests, worker, self._eligible())
        self.counters.add("jobs_submitted", len(requests))
        self._notify(assignments)
        if any(not a.worker for a in assignments):
            self._dispatch()  # a worker may have become ready while we were routing
        return [r.job_id for r in requests]

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
        done, worker, seq = self.store.cancel(job_id, reason)
        if done and worker:
            self._notify([Assignment(job_id, worker, seq)])
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
        facts = self.store.worker_facts()
        with self._lock:
            live = {w: Live(c.is_open, c.draining, c.last_contact) for w, c in self._conns.items()}
        return worker_views(facts, self.authorized, live)

    def stats(self) -> FacilitatorStats:
        """A snapshot of the counters."""
        values = self.counters.snapshot()
        with self._lock:
            connected = sum(1 for c in self._conns.values() if c.is_open)
        return FacilitatorStats(
            **values,
            connected_workers=connected,
            store_commits=self.store.commits,
            store_operations=self.store.operations,
        )

    def stop(self, timeout: float | None = None) -> None:
        """Close every connection with 1001, stop the server and close the database.

        Bounded: returns within ``timeout`` seconds (default ``config.stop_timeout``) even if a
        connection does not close cleanly (it is then abandoned and logged). Idempotent.
        """
        if self._stopped:
            return
        self._stopped = True
        deadline = time.monotonic() + (self.config.stop_timeout if timeout is None else timeout)
        self.stopping.set()
        with self._lock:
            conns = list(self._conns.values())
        for conn in conns:
            conn.request_close(GOING_AWAY, "facilitator shutting down")
        server = self._server
        if server is not None:
            shutdown = threading.Thread(
                target=server.shutdown,
                kwargs={"code": 1001, "reason": "facilitator shutting down"},
                name="facilitator-shutdown",
                daemon=True,
            )
            shutdown.start()
            shutdown.join(max(0.0, deadline - time.monotonic() - 0.5))
            if shutdown.is_alive():
                logger.warning("facilitator: connections did not close in time; abandoning them")
        if self._thread is not None:
            self._thread.join(max(0.0, deadline - time.monotonic() - 0.5))
        if not self.store.stop(max(0.1, deadline - time.monotonic())):
            logger.warning("facilitator: the store thread did not stop in time")
        logger.info("facilitator: stopped url={}", self.url)

    # ------------------------------------------------------------------ connection hub

    def handle(self, ws: ServerConnection) -> None:
        """The server's handler: serve one worker connection."""
        WorkerConnection(ws, self).run()

    def attach(self, conn: WorkerConnection) -> None:
        """Register an authenticated connection; an older one of the same worker is closed.

        Waits at most ``_REPLACE_WAIT`` seconds for the old connection's thread to stop using
        its session (so the new one reads the stream marks after the old one's last commit);
        the old socket closes on its own thread, aborted if its writer is stuck.
        """
        with self._lock:
            old = self._conns.get(conn.worker_id)
            self._conns[conn.worker_id] = conn
        if old is not None and old is not conn:
            self.counters.add("connections_replaced")
            logger.warning("facilitator: connection replaced worker={}", conn.worker_id)
            old.request_close(GOING_AWAY, "replaced by a new connection")
            if not old.released.wait(_REPLACE_WAIT):
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
        logger.info("facilitator: worker disconnected worker={}", conn.worker_id)

    def worker_ready(self, worker_id: str) -> None:
        """Route queued jobs now that ``worker_id`` can take them."""
        self._dispatch()

    def _eligible(self) -> list[str]:
        if self.stopping.is_set():
            return []
        with self._lock:
            return sorted(w for w, c in self._conns.items() if c.is_open and not c.draining)

    def _dispatch(self) -> None:
        eligible = self._eligible()
        if eligible:
            self._notify(self.store.dispatch_queued(eligible))

    def _notify(self, assignments: Sequence[Assignment]) -> None:
        """Wake the connections of workers that got new rows (never blocks: they send)."""
        workers = {a.worker for a in assignments if a.worker and a.seq}
        with self._lock:
            conns = [self._conns[w] for w in sorted(workers) if w in self._conns]
        for conn in conns:
            conn.wake()

    def _serve(self) -> None:
        config = self.config
        tls = config.tls_context()
        try:
            server = serve(
                self.handle,
                config.host,
                config.port,
                compression=None,
                max_size=config.max_frame_bytes,
                ping_interval=None,
                open_timeout=config.handshake_timeout,
                close_timeout=CLOSE_TIMEOUT,
                ssl=tls,
            )
        except OSError as exc:
            raise ConfigError(
                f"FacilitatorConfig.port: cannot listen on {config.host}:{config.port} ({exc})"
            ) from exc
        self._server = server
        self.port = int(server.socket.getsockname()[1])
        self.url = f"{'wss' if tls else 'ws'}://{config.host}:{self.port}"
        self._thread = threading.Thread(target=server.serve_forever, name="facilitator-server", daemon=True)
        self._thread.start()


def start_facilitator(config: FacilitatorConfig) -> Facilitator:
    """Open the database, start the server and return once it listens.

    Args:
        config: The facilitator's settings.

    Returns:
        The running Facilitator (stop it with ``stop()`` or use it as a context manager).

    Raises:
        ConfigError: The authorized keys cannot be loaded or the address cannot be bound.
        StorageError: The database cannot be opened (corrupt, read-only, other application…).
    """
    authorized = config.load_authorized_keys()
    if not authorized:
        logger.warning("facilitator: no authorized keys; every worker will be refused")
    store = FacilitatorStore(config.db_path, config.durability)
    store.start()
    facilitator = Facilitator(config, store, authorized)
    try:
        facilitator._serve()
    except BaseException:
        store.stop()
        raise
    logger.info(
        "facilitator: listening url={} db={} workers={}", facilitator.url, config.db_path, len(authorized)
    )
    return facilitator
