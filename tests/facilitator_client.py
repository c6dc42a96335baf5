"""A minimal synchronous test worker for the reference facilitator.

``TestWorker`` speaks the protocol through ``WorkerSession`` over websocket-client, in the calling
thread only (no background threads). Its "durable" store is a plain ``ClientStore`` in memory, so
a test can drop the connection, keep (or tamper with) the store and connect again, exactly like a
restarted worker process would.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websocket
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.actors import WorkerConfig
from jobrelay.facilitator import Facilitator, FacilitatorConfig, start_facilitator
from jobrelay.protocol import events as ev
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.messages import JobStatus, JobStatusUpdate, WorkerBody
from jobrelay.protocol.session import OutFrame, SessionConfig, WorkerSession
from jobrelay.protocol.streams import StreamMarks

from .protocol_harness import FACILITATOR_KEY, FACILITATOR_PUBLIC, send_window

KEYS: dict[str, Ed25519PrivateKey] = {f"w{i}": Ed25519PrivateKey.generate() for i in (1, 2, 3)}
AUTHORIZED: dict[str, str] = {worker_id: public_key_hex(key) for worker_id, key in KEYS.items()}


def worker_config(fac: Facilitator, tmp_path: Path, worker_id: str, **changes: Any) -> WorkerConfig:
    """A config for worker ``worker_id`` (one of KEYS) of ``fac``, db in tmp_path, quick to
    reconnect; ``changes`` override any field."""
    values: dict[str, Any] = {
        "url": fac.url,
        "worker_id": worker_id,
        "key": KEYS[worker_id].private_bytes_raw().hex(),
        "facilitator_key": FACILITATOR_PUBLIC,
        "db_path": str(tmp_path / f"{worker_id}.db"),
        "backoff_base": 0.05,
        "backoff_cap": 0.2,
    }
    values.update(changes)
    return WorkerConfig(**values)


def make_facilitator(tmp_path: Path, **overrides: Any) -> Facilitator:
    """Start a facilitator on 127.0.0.1 (free port) with KEYS authorized, db in tmp_path."""
    values: dict[str, Any] = {
        "db_path": str(tmp_path / "facilitator.db"),
        "authorized_keys": AUTHORIZED,
        "key": FACILITATOR_KEY.private_bytes_raw().hex(),
        "durability": "normal",
        "stop_timeout": 3.0,
    }
    values.update(overrides)
    return start_facilitator(FacilitatorConfig(**values))


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll ``predicate`` until true; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


def pump_until(workers: Sequence[TestWorker], predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Pump every worker in turn until ``predicate()``; AssertionError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        for worker in workers:
            worker.pump(0.005)


@dataclass
class ClientStore:
    """What a worker keeps durably (here: in memory)."""

    out_epoch: str = field(default_factory=lambda: secrets.token_hex(8))
    out: dict[int, WorkerBody] = field(default_factory=dict)  # unacked seq -> body
    out_last_seq: int = 0
    out_acked: int = 0
    in_epoch: str = ""
    in_hwm: int = 0
    received: list[Any] = field(default_factory=list)  # facilitator bodies, in order, once

    def marks(self) -> StreamMarks:
        return StreamMarks(self.out_epoch, self.out_acked, self.out_last_seq, self.in_epoch, self.in_hwm)


class HandshakeRefused(Exception):
    """The facilitator closed the connection before the session opened."""

    def __init__(self, closed: ev.Closed | None, close_code: int | None) -> None:
        super().__init__(f"refused: {closed} (close code {close_code})")
        self.closed = closed
        self.close_code = close_code


class TestWorker:
    """A synchronous worker end (see module docstring).

    Args:
        url: The facilitator's ws:// URL.
        worker_id: The id to authenticate as.
        key: The Ed25519 key to sign with.
        store: The durable state (a new one if None).
        persist_incoming: When False, received job requests are seen but neither stored nor
            acknowledged (as if the worker crashed before making them durable).
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        url: str,
        worker_id: str,
        key: Ed25519PrivateKey,
        store: ClientStore | None = None,
        *,
        persist_incoming: bool = True,
        formats: Sequence[str] = ("json",),
        facilitator_key: str = FACILITATOR_PUBLIC,
        kinds: Sequence[str] | None = None,
        credit: int | None = None,
    ) -> None:
        self.url = url
        self.kinds = kinds  # announced in hello (None: any kind)
        self.credit = credit  # granted in hello (None: no limit)
        self.facilitator_key = facilitator_key
        self.worker_id = worker_id
        self.key = key
        self.store = store or ClientStore()
        self.persist_incoming = persist_incoming
        self.formats = tuple(formats)
        self.draining = False
        self.ws: websocket.WebSocket | None = None
        self.session: WorkerSession | None = None
        self.seen: list[Any] = []  # every facilitator body delivered this connection (persisted or not)
        self.warnings: list[ev.PeerWarning] = []
        self.closed: ev.Closed | None = None
        self.close_code: int | None = None
        self.opened: ev.Opened | None = None
        self.sent_frames: list[OutFrame] = []  # data frames sent, for re-sending duplicates

    # ------------------------------------------------------------------ connection

    def connect(self, timeout: float = 5.0) -> ev.Opened:
        """Connect and authenticate; returns the Opened event.

        Raises:
            HandshakeRefused: the facilitator closed the connection first.
        """
        self.disconnect()
        self.seen, self.warnings, self.closed, self.close_code, self.opened = [], [], None, None, None
        self.ws = websocket.create_connection(self.url, timeout=timeout)
        self.session = WorkerSession(
            worker_id=self.worker_id,
            key=self.key,
            facilitator_key=self.facilitator_key,
            nonce=secrets.token_hex(32),
            marks=self.store.marks(),
            now=time.time(),
            config=SessionConfig(formats=self.formats),  # type: ignore[arg-type]
            kinds=self.kinds,
            credit=self.credit,
        )
        self._flush()
        deadline = time.monotonic() + timeout
        while self.opened is None:
            if self.ws is None or time.monotonic() > deadline:
                raise HandshakeRefused(self.closed, self.close_code)
            self.pump(0.1)
        return self.opened

    def disconnect(self) -> None:
        """Close the connection cleanly (code 1000); the store stays."""
        if self.ws is not None:
            with contextlib.suppress(Exception):
                self.ws.close(timeout=1.0)
        self._lost()

    def kill(self) -> None:
        """Drop the TCP connection without a close handshake."""
        if self.ws is not None and self.ws.sock is not None:
            with contextlib.suppress(OSError):
                self.ws.sock.shutdown(socket.SHUT_RDWR)
            self.ws.sock.close()
        self._lost()

    def _lost(self) -> None:
        if self.ws is not None and self.ws.sock is not None:
            self.ws.sock.close()
        if self.session is not None:
            self.session.connection_lost()
            self._process()
        self.ws = None
        self.session = None

    @property
    def is_open(self) -> bool:
        return self.session is not None and self.session.is_open

    # ------------------------------------------------------------------ data

    def publish(self, bodies: Sequence[WorkerBody]) -> None:
        """Make bodies durable in the store, then send what the window allows."""
        for body in bodies:
            self.store.out_last_seq += 1
            self.store.out[self.store.out_last_seq] = body
        if self.session is not None:
            self.session.note_appended(self.store.out_last_seq)
            if self.session.is_open:
                self._send_pending()

    def status(
        self, job_id: str, status: JobStatus, *, progress: float | None = None, detail: str = ""
    ) -> None:
        self.publish(
            [JobStatusUpdate(job_id=job_id, status=status, at=time.time(), progress=progress, detail=detail)]
        )

    def send_raw(self, frame: OutFrame) -> None:
        assert self.ws is not None
        opcode = websocket.ABNF.OPCODE_BINARY if frame.binary else websocket.ABNF.OPCODE_TEXT
        self.ws.send(frame.data, opcode=opcode)

    def all_acked(self) -> bool:
        return self.store.out_acked == self.store.out_last_seq

    # ------------------------------------------------------------------ receiving

    def pump(self, timeout: float = 0.05) -> None:
        """Read and handle one frame if one arrives within ``timeout``; run timers."""
        ws, session = self.ws, self.session
        if ws is None or session is None:
            return
        ws.settimeout(max(timeout, 0.001))  # 0 would make the socket non-blocking mid-frame
        try:
            frame = ws.recv_frame()  # not recv_data_frame: it answers a close before returning it
        except websocket.WebSocketTimeoutException:
            frame = None
        except (websocket.WebSocketConnectionClosedException, OSError):
            self._lost()
            return
        now = time.time()
        if frame is not None and frame.opcode == websocket.ABNF.OPCODE_CLOSE:
            data = bytes(frame.data)
            self.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
            with contextlib.suppress(websocket.WebSocketException, OSError):
                ws.send_close()
            self._lost()
            return
        if frame is not None and frame.opcode == websocket.ABNF.OPCODE_PING:
            ws.pong(frame.data)
        elif frame is not None and frame.opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
            session.receive_data(bytes(frame.data), now)
        session.tick(now)
        self._process()
        if self.session is not None and self.session.heartbeat_due(now):
            self.session.send_heartbeat(now, draining=self.draining)
        self._flush()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Pump until ``predicate()``; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout}s")
            if self.ws is None:
                time.sleep(0.01)
            self.pump(0.02)

    def wait_closed(self, timeout: float = 5.0) -> int | None:
        """Pump until the facilitator closed the connection; returns the close code."""
        self.wait_for(lambda: self.ws is None, timeout)
        return self.close_code

    def heartbeat(self) -> None:
        """Send a heartbeat now (with the current ``draining`` flag)."""
        assert self.session is not None
        self.session.send_heartbeat(time.time(), draining=self.draining)
        self._flush()

    def _process(self) -> None:
        session = self.session
        if session is None:
            return
        store = self.store
        while events := session.events_received():
            for event in events:
                match event:
                    case ev.Opened():
                        self.opened = event
                        store.in_epoch, store.in_hwm = event.in_epoch, event.in_hwm
                    case ev.DataReceived():
                        self.seen.append(event.body)
                        if self.persist_incoming:
                            store.received.append(event.body)
                            store.in_hwm = event.seq
                            session.acknowledge(event.seq)
                    case ev.Acked():
                        for seq in range(store.out_acked + 1, event.upto + 1):
                            store.out.pop(seq, None)
                        store.out_acked = max(store.out_acked, event.upto)
                    case ev.PeerWarning():
                        self.warnings.append(event)
                    case ev.Closed():
                        self.closed = event
                    case _:
                        pass
        if session.is_open:
            self._send_pending()

    def _send_pending(self) -> None:
        session = self.session
        assert session is not None
        if send_window(session, self.store.out, self.store.out_last_seq):
            self._flush()

    def _flush(self) -> None:
        if self.session is None or self.ws is None:
            return
        for frame in self.session.data_to_send():
            if frame.data.startswith((b'{"type":"data"', b'{"type":"batch"')):
                self.sent_frames.append(frame)
            try:
                self.send_raw(frame)
            except (websocket.WebSocketConnectionClosedException, OSError):
                self._lost()
                return
