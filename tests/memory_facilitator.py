"""An in-process facilitator over the in-memory transport, for fast worker-actor tests.

It serves every connection the worker's MemoryNetwork opens, with a FacilitatorSession and the
plain-Python Store from protocol_harness as its "durable" state (it survives reconnects, which
is all these tests need). The real SQLite-backed server is tested in test_facilitator*.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from jobrelay.common.transport import TransportClosed
from jobrelay.protocol import events as ev
from jobrelay.protocol.auth import NonceRegistry
from jobrelay.protocol.messages import JobRequest, JobStatusUpdate
from jobrelay.protocol.session import FacilitatorSession, SessionConfig
from jobrelay.testing.memory import MemoryEnd, MemoryNetwork

from .protocol_harness import Store


class MemoryFacilitator:
    def __init__(self, authorized: dict[str, str], config: SessionConfig | None = None) -> None:
        self.network = MemoryNetwork()
        self.authorized = authorized
        self.config = config or SessionConfig(heartbeat_interval=0.5, heartbeat_timeout=5.0)
        self.store = Store(out_epoch="f-epoch")
        self.nonces = NonceRegistry()
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.sessions = 0
        self.closes: list[ev.Closed] = []
        self.current: MemoryEnd | None = None
        self._session: FacilitatorSession | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="memory-facilitator", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ test API

    def submit(self, job_id: str, kind: str, payload: Any = None) -> None:
        with self.lock:
            self.store.publish(JobRequest(job_id=job_id, kind=kind, payload=payload))
            self._send_pending()

    def statuses(self, job_id: str | None = None) -> list[JobStatusUpdate]:
        with self.lock:
            return [
                b
                for b in self.store.delivered
                if isinstance(b, JobStatusUpdate) and (job_id is None or b.job_id == job_id)
            ]

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError("condition not met in time")
                self.changed.wait(min(left, 0.05))

    def cut(self) -> None:
        """Sever the current connection (both ends see it close)."""
        with self.lock:
            if self.current is not None:
                self.current.close(1006, "cut")

    def stop(self) -> None:
        self._stop.set()
        self.network.refuse.set()
        self.cut()
        self._thread.join(timeout=5)

    # ------------------------------------------------------------ serving

    def _serve(self) -> None:
        import queue

        while not self._stop.is_set():
            try:
                end = self.network.accepted.get(timeout=0.05)
            except queue.Empty:
                continue
            self._run(end)

    def _run(self, end: MemoryEnd) -> None:
        with self.lock:
            self.sessions += 1
            self.current = end
            self._session = FacilitatorSession(
                nonce=f"{self.sessions:064x}",
                session_id=f"mem-{self.sessions}",
                authorized=self.authorized,
                nonces=self.nonces,
                now=time.time(),
                config=self.config,
            )
        while not self._stop.is_set():
            try:
                data = end.recv(timeout=0.05)
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
