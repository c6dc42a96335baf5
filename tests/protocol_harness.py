"""A worker session and a facilitator session joined by an in-memory channel (like h11's
ConnectionPair), each side with a plain-Python model of its durable store.

The channel can drop the connection, duplicate, delay and re-inject frames; each side can crash
(losing everything but its durable store) and can hold received data unpersisted (so a crash loses
it and it must come again). Time is virtual.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.protocol import events as ev
from jobrelay.protocol.auth import NonceRegistry, public_key_hex
from jobrelay.protocol.session import FacilitatorSession, OutFrame, SessionConfig, WorkerSession
from jobrelay.testing.store import MemoryStore, send_window

Store = MemoryStore  # each side's durable store (the library's in-memory model of one)
__all__ = [
    "AUTHORIZED",
    "FACILITATOR_KEY",
    "FACILITATOR_KEY_HEX",
    "FACILITATOR_PUBLIC",
    "KEY",
    "T0",
    "WORKER_ID",
    "Pair",
    "Side",
    "Store",
    "send_window",
]

WORKER_ID = "worker-1"
KEY = Ed25519PrivateKey.generate()
AUTHORIZED = {WORKER_ID: public_key_hex(KEY)}
FACILITATOR_KEY = Ed25519PrivateKey.generate()  # the test facilitators' own key
FACILITATOR_PUBLIC = public_key_hex(FACILITATOR_KEY)  # what test workers pin
FACILITATOR_KEY_HEX = FACILITATOR_KEY.private_bytes_raw().hex()  # for FacilitatorConfig.key
T0 = 1_700_000_000.0


@dataclass
class Side:
    store: Store
    session: WorkerSession | FacilitatorSession | None = None
    unpersisted: list[tuple[int, Any]] = field(default_factory=list)
    duplicates: int = 0
    new_streams: int = 0
    closes: list[ev.Closed] = field(default_factory=list)


class Pair:
    """Both ends and the wire between them."""

    def __init__(self, config: SessionConfig | None = None, *, persist_immediately: bool = True) -> None:
        self.config = config or SessionConfig()
        self.now = T0
        self.worker = Side(Store(out_epoch="w-epoch-1"))
        self.facilitator = Side(Store(out_epoch="f-epoch-1"))
        self.nonces = NonceRegistry()
        self.w2f: list[OutFrame] = []
        self.f2w: list[OutFrame] = []
        self.history: dict[str, list[OutFrame]] = {"w2f": [], "f2w": []}
        self.persist_immediately = persist_immediately
        self._ids = itertools.count(1)
        self._disconnecting = False

    # ---------------------------------------------------------------- connection

    @property
    def connected(self) -> bool:
        return self.worker.session is not None and self.facilitator.session is not None

    @property
    def open(self) -> bool:
        w, f = self.worker.session, self.facilitator.session
        return w is not None and f is not None and w.is_open and f.is_open

    def connect(self) -> None:
        self.disconnect()
        n = next(self._ids)
        self.worker.session = WorkerSession(
            worker_id=WORKER_ID,
            key=KEY,
            facilitator_key=FACILITATOR_PUBLIC,
            nonce=f"{n:064x}",
            marks=self.worker.store.marks(),
            now=self.now,
            config=self.config,
        )
        self.facilitator.session = FacilitatorSession(
            nonce=f"{n:064x}",
            session_id=f"s{n}",
            key=FACILITATOR_KEY,
            authorized=AUTHORIZED,
            nonces=self.nonces,
            now=self.now,
            config=self.config,
        )
        self.collect()

    def disconnect(self) -> None:
        if self._disconnecting:
            return
        self._disconnecting = True
        try:
            self._disconnect()
        finally:
            self._disconnecting = False

    def _disconnect(self) -> None:
        for side in (self.worker, self.facilitator):
            if side.session is not None:
                side.session.connection_lost()
                self.process(side)
            side.session = None
            # Data that arrived before the cut is still made durable (never acked on this session).
            self.persist(side)
        self.w2f.clear()
        self.f2w.clear()

    def crash(self, side: Side) -> None:
        """The process dies: the connection goes and so does everything not in its store."""
        side.unpersisted.clear()
        self.disconnect()

    # ---------------------------------------------------------------- moving frames

    def collect(self) -> None:
        """Move what each session wants to send onto the wire."""
        for side, queue, name in ((self.worker, self.w2f, "w2f"), (self.facilitator, self.f2w, "f2w")):
            if side.session is not None:
                frames = side.session.data_to_send()
                queue.extend(frames)
                self.history[name].extend(frames)

    def deliver(self, direction: str, count: int = 1) -> None:
        queue = self.w2f if direction == "w2f" else self.f2w
        target = self.facilitator if direction == "w2f" else self.worker
        for _ in range(min(count, len(queue))):
            frame = queue.pop(0)
            if target.session is None:
                return
            target.session.receive_data(frame.data if frame.binary else frame.data.decode(), self.now)
            self.process(target)
            if not self.connected:
                return

    def process(self, side: Side) -> None:
        """Act on a side's events the way the actors do."""
        session = side.session
        if session is None:
            return
        while events := session.events_received():
            for event in events:
                match event:
                    case ev.AuthVerified():
                        assert isinstance(session, FacilitatorSession)
                        session.accept(side.store.marks())
                    case ev.Opened():
                        side.new_streams += event.new_in_stream
                        side.store.in_epoch, side.store.in_hwm = event.in_epoch, event.in_hwm
                    case ev.DataReceived():
                        side.unpersisted.append((event.seq, event.body))
                    case ev.DuplicateDropped():
                        side.duplicates += 1
                    case ev.Acked():
                        side.store.ack(event.upto)
                    case ev.Closed():
                        side.closes.append(event)
        if self.persist_immediately:
            self.persist(side)
        if session.is_open:
            self.send_pending(side)
        self.collect()
        if session.state.value == "closed":
            # The owner closes the transport after a close: both ends see it go.
            self.disconnect()

    def persist(self, side: Side) -> None:
        """Make received data durable, then acknowledge it (durable before acknowledged)."""
        session = side.session
        if not side.unpersisted:
            return
        store = side.store
        for seq, body in side.unpersisted:
            assert seq == store.in_hwm + 1, f"application would see seq {seq} after {store.in_hwm}"
            store.in_hwm = seq
            store.delivered.append(body)
        side.unpersisted.clear()
        if session is not None and session.is_open:
            session.acknowledge(store.in_hwm, self.now)
            self.collect()

    def send_pending(self, side: Side) -> None:
        session = side.session
        assert session is not None
        if side.store.send_window(session):
            self.collect()

    def publish(self, side: Side, bodies: list[Any]) -> None:
        for body in bodies:
            side.store.publish(body)
        if side.session is not None:
            side.session.note_appended(side.store.out_last_seq)
            if side.session.is_open:
                self.send_pending(side)

    def pump(self, max_rounds: int = 10_000) -> None:
        """Deliver everything until the wire is quiet (bounded)."""
        for _ in range(max_rounds):
            if not (self.w2f or self.f2w):
                return
            if self.w2f:
                self.deliver("w2f", len(self.w2f))
            if self.f2w:
                self.deliver("f2w", len(self.f2w))
        raise AssertionError("wire did not go quiet")

    def tick(self, dt: float) -> None:
        self.now += dt
        for side in (self.worker, self.facilitator):
            if side.session is not None:
                side.session.tick(self.now)
                self.process(side)
