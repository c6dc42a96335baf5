# An in-process facilitator over the in-memory transport, for testing a worker and its handlers
# without a network, a database on the facilitator's side or a second process. It speaks the real
# protocol: every connection the worker opens is served by a FacilitatorSession, so a handler sees
# exactly what it would see against the reference facilitator. Its "durable" state is a
# MemoryStore (plain Python, it survives reconnects but not the process): it is a test double, not
# a facilitator to run in production (see docs/TESTING.md).
# Invariant: one serving thread, started by the constructor, ended (and joined) by stop().
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, ClassVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.common.transport import TransportClosed
from jobrelay.facilitator.job_requests import check_frame
from jobrelay.protocol import events as ev
from jobrelay.protocol.auth import NonceRegistry, public_key_hex
from jobrelay.protocol.messages import JobCancel, JobRequest, JobStatus, JobStatusUpdate
from jobrelay.protocol.session import FacilitatorSession, SessionConfig
from jobrelay.testing.memory import MemoryEnd, MemoryNetwork
from jobrelay.testing.store import MemoryStore

__all__ = ["MemoryFacilitator"]

_POLL = 0.05  # seconds: how often the serving thread looks at its stop flag and timers


class MemoryFacilitator:
    """A facilitator in the test's own process, reached through an in-memory transport.

    It starts serving when it is made and stops on ``stop()`` or at the end of a ``with`` block.
    Give a worker its transport factory and any ``url`` (the transport ignores it)::

        with MemoryFacilitator({"w1": public_key_of(key)}) as facilitator:
            config = WorkerConfig(
                url=facilitator.url, worker_id="w1", key=key,
                facilitator_key=facilitator.public_key, db_path=...,
            )
            with start_worker(config, handlers, transport_factory=facilitator.transport_factory):
                facilitator.submit("j1", "resize", {"image": "cat.png"})
                final = facilitator.wait_for_job("j1")

    Each connection is served by the real protocol session (FacilitatorSession): the handshake
    with authentication, acknowledgements, replay after a reconnect and heartbeats are the real
    ones. It serves one worker connection at a time, sends every job to whichever worker is
    connected, and keeps its state in a MemoryStore (nothing on disk).

    Attributes:
        url: A well-formed URL to put in ``WorkerConfig.url`` (never dialled).
        public_key: Its own public key (hex), to put in ``WorkerConfig.facilitator_key``.
        network: The MemoryNetwork the worker connects through; ``network.refuse.set()`` makes
            connection attempts fail until it is cleared.
        store: Its stream state; ``store.delivered`` is everything the worker sent, in order.
        sessions: Connections served so far (a reconnect counts again).
        closes: How each session ended, oldest first.
        lock / changed: The lock over all of the above; a condition notified on every change.
    """

    url: ClassVar[str] = "ws://jobrelay-memory.invalid:8765"  # a port, as WorkerConfig.check requires

    def __init__(
        self,
        authorized: Mapping[str, str],
        config: SessionConfig | None = None,
        key: Ed25519PrivateKey | None = None,
    ) -> None:
        """Start serving.

        Args:
            authorized: Worker id → public key hex (``jobrelay.public_key_of(private_key)``).
            config: The facilitator's session limits and timers (default: heartbeats every 0.5 s,
                a worker silent for 5 s is dropped).
            key: Its own Ed25519 key, which signs each challenge (default: a new one, since a
                test facilitator lives no longer than the workers that pin it).
        """
        self.key = key or Ed25519PrivateKey.generate()
        self.public_key = public_key_hex(self.key)
        self.network = MemoryNetwork()
        self.authorized: dict[str, str] = dict(authorized)
        self.config = config or SessionConfig(heartbeat_interval=0.5, heartbeat_timeout=5.0)
        self.store = MemoryStore(out_epoch="f-epoch")
        self.nonces = NonceRegistry()
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.sessions = 0
        self.closes: list[ev.Closed] = []
        self.current: MemoryEnd | None = None
        self._session: FacilitatorSession | None = None
        self._jobs: dict[str, JobRequest] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="jobrelay-memory-facilitator", daemon=True)
        self._thread.start()

    def __repr__(self) -> str:
        state = "stopped" if self._stop.is_set() else "connected" if self.connected else "waiting"
        return f"<MemoryFacilitator {state}, {len(self._jobs)} jobs, {self.sessions} sessions>"

    def __enter__(self) -> MemoryFacilitator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ------------------------------------------------------------------ public API

    @property
    def transport_factory(self) -> Callable[[], MemoryEnd]:
        """What to pass as ``start_worker(config, handlers, transport_factory=...)``: each call
        opens a new in-memory connection to this facilitator."""
        return self.network

    @property
    def connected(self) -> bool:
        """A worker has completed the handshake and its session is open."""
        with self.lock:
            return self._session is not None and self._session.is_open

    @property
    def stopped(self) -> bool:
        """``stop()`` was called."""
        return self._stop.is_set()

    def submit(self, job_id: str, kind: str, payload: Any = None) -> str:
        """Send a job to the worker: at once if one is connected, else when one connects.

        Submitting an id that was submitted before changes nothing (like the reference facilitator,
        where that makes retries safe).

        Args:
            job_id: The job's id, 1–256 characters; statuses are read back by it.
            kind: The job kind, i.e. the key of the handler in the worker's ``handlers``.
            payload: The job's input: anything JSON (and msgpack) can encode.

        Returns:
            ``job_id``.

        Raises:
            ValueError: ``job_id`` or ``kind`` is empty or longer than 256 characters, or the
                payload cannot be encoded.
            JobTooLarge: (a ValueError) the job would not fit in one frame (``max_frame_bytes``).
            RuntimeError: the facilitator was stopped.
        """
        for name, value in (("job_id", job_id), ("kind", kind)):
            if not 1 <= len(value) <= 256:
                raise ValueError(f"{name} must be 1..256 characters, got {value!r}")
        request = JobRequest(job_id=job_id, kind=kind, payload=payload, submitted_at=time.time())
        with self.lock:
            self._require_running("submit a job")
            if job_id in self._jobs:
                return job_id
            self._publish(request, f"job {job_id!r}")
            self._jobs[job_id] = request
        return job_id

    def cancel(self, job_id: str, reason: str = "") -> bool:
        """Ask the worker to stop a job. Its handler sees ``ctx.cancelled`` and the job ends as
        ``cancelled`` with ``reason`` as detail, unless it finished first.

        Args:
            job_id: A job given to ``submit``.
            reason: Why; the detail of the ``cancelled`` status.

        Returns:
            False (and nothing is sent) if the job is unknown or already has a terminal status.

        Raises:
            JobTooLarge: ``reason`` is so long the cancel would not fit in one frame.
            RuntimeError: the facilitator was stopped.
        """
        with self.lock:
            self._require_running("cancel a job")
            if job_id not in self._jobs or self._terminal(job_id) is not None:
                return False
            self._publish(JobCancel(job_id=job_id, reason=reason), f"the cancel of job {job_id!r}")
            return True

    def statuses(self, job_id: str | None = None) -> list[JobStatusUpdate]:
        """A job's status history as the worker reported it, oldest first (every job's if
        ``job_id`` is None). Typically: accepted, running (with progress), then one terminal
        status (completed, failed, rejected or cancelled).
        """
        with self.lock:
            return [
                b
                for b in self.store.delivered
                if isinstance(b, JobStatusUpdate) and (job_id is None or b.job_id == job_id)
            ]

    def status(self, job_id: str) -> JobStatus | None:
        """The job's latest status, or None if the worker has reported none yet."""
        history = self.statuses(job_id)
        return history[-1].status if history else None

    def received(self) -> list[Any]:
        """Everything the worker sent, in order: JobStatusUpdate, MachineSpecs and WorkerEvent."""
        with self.lock:
            return list(self.store.delivered)

    def wait_for_job(self, job_id: str, timeout: float = 10.0) -> JobStatusUpdate:
        """Wait until the job has a terminal status.

        Args:
            job_id: A job given to ``submit``.
            timeout: Seconds to wait at most.

        Returns:
            The terminal status update (``.status``, ``.detail``: the handler's return value as a
            string, or the error it raised).

        Raises:
            ValueError: ``job_id`` was never submitted.
            TimeoutError: no terminal status within ``timeout``; the message says which statuses
                arrived and whether a worker was connected.
        """
        with self.lock:
            if job_id not in self._jobs:
                raise ValueError(f"job {job_id!r} was never submitted to this facilitator")
        try:
            self.wait_for(lambda: self._terminal(job_id) is not None, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"job {job_id!r} did not finish within {timeout} s: {self._diagnosis(job_id)}"
            ) from None
        final = self._terminal(job_id)
        assert final is not None
        return final

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` is true; it is checked whenever something arrives (and at
        least every 50 ms), with the facilitator's lock held.

        Raises:
            TimeoutError: ``predicate()`` was still false after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"condition not met within {timeout} s")
                self.changed.wait(min(left, _POLL))

    def cut(self) -> None:
        """Sever the current connection, as a network failure would (both ends see it close);
        the worker reconnects and both sides replay what was not acknowledged."""
        with self.lock:
            if self.current is not None:
                self.current.close(1006, "cut")

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: refuse new connections, close the current one and join the serving
        thread. Statuses stay readable. Calling it again does nothing.

        Raises:
            TimeoutError: the serving thread did not end within ``timeout`` seconds.
        """
        self._stop.set()
        self.network.refuse.set()
        self.cut()
        self._thread.join(timeout)
        self._close_unserved()
        if self._thread.is_alive():
            raise TimeoutError(f"the memory facilitator's thread did not stop within {timeout} s")

    # ------------------------------------------------------------------ internals

    def _require_running(self, what: str) -> None:
        if self._stop.is_set():
            raise RuntimeError(f"cannot {what}: the memory facilitator was stopped")

    def _publish(self, body: JobRequest | JobCancel, what: str) -> None:
        """Check that ``body`` can be sent, store it and send it if a session is open."""
        check_frame(body, what, self.config.max_frame_bytes, self.config.formats)
        self.store.publish(body)
        if self._session is not None:
            self._session.note_appended(self.store.out_last_seq)
        self._send_pending()

    def _terminal(self, job_id: str) -> JobStatusUpdate | None:
        for update in self.statuses(job_id):
            if update.status.terminal:
                return update
        return None

    def _diagnosis(self, job_id: str) -> str:
        with self.lock:
            seen = ", ".join(u.status.value for u in self.statuses(job_id)) or "none"
            if self.connected:
                link = "a worker is connected"
            elif self.sessions == 0:
                link = "no worker ever connected (is transport_factory passed to start_worker?)"
            else:
                last = self.closes[-1] if self.closes else None
                why = f" (last session ended: {last.detail or last.code})" if last else ""
                link = f"no worker is connected{why}"
            return f"statuses so far: {seen}; {link}"

    def _close_unserved(self) -> None:
        while True:
            try:
                self.network.accepted.get_nowait().close(1001, "facilitator stopped")
            except queue.Empty:
                return

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                end = self.network.accepted.get(timeout=_POLL)
            except queue.Empty:
                continue
            self._run(end)
        self._close_unserved()

    def _run(self, end: MemoryEnd) -> None:
        with self.lock:
            self.sessions += 1
            self.current = end
            self._session = FacilitatorSession(
                nonce=f"{self.sessions:064x}",
                session_id=f"mem-{self.sessions}",
                key=self.key,
                authorized=self.authorized,
                nonces=self.nonces,
                now=time.time(),
                config=self.config,
            )
        while not self._stop.is_set():
            try:
                data = end.recv(timeout=_POLL)
            except TimeoutError:
                data = None
            except TransportClosed:
                break
            with self.lock:
                session = self._session
                assert session is not None
                now = time.time()
                if data is not None:
                    session.receive_data(data, now)
                session.tick(now)
                if session.heartbeat_due(now):
                    session.send_heartbeat(now)
                self._process(session)
                self._flush(end, session)
                self.changed.notify_all()
                if session.state.value == "closed":
                    end.close(4000, "closed")
                    break
        with self.lock:
            if self._session is not None:
                self._session.connection_lost()
                self._process(self._session)
            self._session = None
            self.current = None
            end.close(1001, "facilitator stopped")  # a no-op unless we left because of stop()
            self.changed.notify_all()

    def _process(self, session: FacilitatorSession) -> None:
        store = self.store
        while events := session.events_received():
            for event in events:
                match event:
                    case ev.AuthVerified():
                        session.accept(store.marks())
                    case ev.Opened():
                        store.in_epoch, store.in_hwm = event.in_epoch, event.in_hwm
                    case ev.DataReceived(seq=seq, body=body):
                        if seq == store.in_hwm + 1:
                            store.in_hwm = seq
                            store.delivered.append(body)
                    case ev.Acked(upto=upto):
                        store.ack(upto)
                    case ev.Closed():
                        self.closes.append(event)
        if session.is_open:
            if session.receiver.seen > session.receiver.acked:
                session.acknowledge(session.receiver.seen)
            self._send_pending()

    def _send_pending(self) -> None:
        session = self._session
        if session is None or not session.is_open:
            return
        if self.store.send_window(session) and self.current is not None:
            self._flush(self.current, session)

    @staticmethod
    def _flush(end: MemoryEnd, session: FacilitatorSession) -> None:
        for frame in session.data_to_send():
            try:
                end.send(frame.data, frame.binary)
            except TransportClosed:
                return
