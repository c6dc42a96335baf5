"""Stateful model test of the two sessions over a hostile channel.

Invariant: each side's application receives the other side's data exactly once and in sending
order, whatever the channel and the processes do; after a final quiet period with the connection
up, everything sent was delivered.
"""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from jobrelay.protocol.messages import JobRequest, JobStatus, JobStatusUpdate
from jobrelay.protocol.session import SessionConfig

from .protocol_harness import Pair


def _bucket(n: int) -> str:
    return "0" if n == 0 else "1-9" if n < 10 else "10+"


DIRECTIONS = st.sampled_from(["w2f", "f2w"])


class ProtocolModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.counter = 0
        self.pair = Pair(
            # Acks may wait (ack_delay): a held ack lost with a connection is data sent again.
            SessionConfig(
                max_inflight=4, max_batch=3, heartbeat_interval=1.0, heartbeat_timeout=10.0, ack_delay=0.25
            ),
            persist_immediately=False,
        )

    def _bodies(self, n: int, worker: bool) -> list[Any]:
        out: list[Any] = []
        for _ in range(n):
            self.counter += 1
            job = f"job-{self.counter}"
            out.append(
                JobStatusUpdate(job_id=job, status=JobStatus.RUNNING, at=float(self.counter))
                if worker
                else JobRequest(job_id=job, kind="sleep")
            )
        return out

    @precondition(lambda self: not self.pair.connected)
    @rule()
    def connect(self) -> None:
        self.pair.connect()

    @precondition(lambda self: not self.pair.connected)
    @rule()
    def connect_and_handshake(self) -> None:
        """Most runs should spend their time with data flowing, not stuck in handshakes."""
        self.pair.connect()
        for _ in range(4):
            self.pair.deliver("w2f", 1)
            self.pair.deliver("f2w", 1)
        assert self.pair.open

    @precondition(lambda self: self.pair.connected)
    @rule(what=st.sampled_from(["cut", "crash worker", "crash facilitator"]))
    def disrupt(self, what: str) -> None:
        """The connection is cut, or one side crashes (keeping only its durable store)."""
        if what == "cut":
            self.pair.disconnect()
        else:
            self.pair.crash(getattr(self.pair, what.split()[1]))

    @rule(n=st.integers(1, 6))
    def worker_publishes(self, n: int) -> None:
        self.pair.publish(self.pair.worker, self._bodies(n, worker=True))

    @rule(n=st.integers(1, 6))
    def facilitator_publishes(self, n: int) -> None:
        self.pair.publish(self.pair.facilitator, self._bodies(n, worker=False))

    @precondition(lambda self: self.pair.connected)
    @rule(direction=DIRECTIONS, n=st.integers(1, 8))
    def deliver(self, direction: str, n: int) -> None:
        self.pair.deliver(direction, n)

    @precondition(lambda self: self.pair.connected)
    @rule(n=st.integers(1, 8))
    def deliver_both_ways(self, n: int) -> None:
        for _ in range(n):
            self.pair.deliver("w2f", 1)
            self.pair.deliver("f2w", 1)

    @precondition(lambda self: self.pair.w2f or self.pair.f2w)
    @rule(direction=DIRECTIONS, index=st.integers(0, 10), later=st.integers(0, 3))
    def duplicate_in_flight(self, direction: str, index: int, later: int) -> None:
        """A frame on the wire arrives twice, right after itself or a few frames later."""
        queue = self.pair.w2f if direction == "w2f" else self.pair.f2w
        if queue:
            position = index % len(queue)
            queue.insert(min(position + 1 + later, len(queue)), copy.copy(queue[position]))

    @precondition(lambda self: self.pair.connected)
    @rule(direction=DIRECTIONS, index=st.integers(0, 1000))
    def replay_old_frame(self, direction: str, index: int) -> None:
        """A frame seen earlier (maybe on an older connection) shows up again, late."""
        history = self.pair.history[direction]
        queue = self.pair.w2f if direction == "w2f" else self.pair.f2w
        if history:
            queue.insert(0, history[index % len(history)])

    @rule(side=st.sampled_from(["worker", "facilitator"]))
    def persist(self, side: str) -> None:
        self.pair.persist(getattr(self.pair, side))

    @rule(dt=st.sampled_from([0.5, 1.0, 2.5, 12.0]))
    def time_passes(self, dt: float) -> None:
        self.pair.tick(dt)

    @precondition(lambda self: self.pair.open)
    @rule()
    def heartbeats(self) -> None:
        for side in (self.pair.worker, self.pair.facilitator):
            if side.session is not None and side.session.is_open:
                side.session.send_heartbeat(self.pair.now)
        self.pair.collect()

    @invariant()
    def exactly_once_in_order(self) -> None:
        w, f = self.pair.worker.store, self.pair.facilitator.store
        assert f.delivered == w.sent[: len(f.delivered)]
        assert w.delivered == f.sent[: len(w.delivered)]

    def teardown(self) -> None:
        event(f"data delivered before teardown: {_bucket(len(self.pair.facilitator.store.delivered))}")
        event(
            f"duplicates dropped: {_bucket(self.pair.facilitator.duplicates + self.pair.worker.duplicates)}"
        )
        # Final quiet period: a clean connection, persisted promptly, until nothing moves.
        pair = self.pair
        pair.persist_immediately = True
        for side in (pair.worker, pair.facilitator):
            pair.persist(side)
        pair.pump()
        for _ in range(20):
            pair.tick(0.25)  # held acks go out
            pair.pump()
            if not pair.worker.store.out and not pair.facilitator.store.out:
                break
            pair.connect()
            pair.pump()
        w, f = pair.worker.store, pair.facilitator.store
        assert f.delivered == w.sent, "worker data lost or duplicated"
        assert w.delivered == f.sent, "facilitator data lost or duplicated"
        assert not w.out and not f.out, "everything delivered was acknowledged and deleted"


ProtocolModel.TestCase.settings = settings(
    max_examples=settings().max_examples * 2 if settings().max_examples >= 150 else 60,
    stateful_step_count=80,
    deadline=None,
)
TestProtocolModel = ProtocolModel.TestCase
