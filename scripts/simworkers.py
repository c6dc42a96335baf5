"""Simulated jobrelay workers for bench_scale.py: many per process on one asyncio loop.

A `SimWorker` has its own Ed25519 key and speaks the real protocol through `WorkerSession`
(sans-I/O) over a `websockets` asyncio client connection. What a real worker keeps durably it keeps
in memory (a `MemoryStore`: stream marks, unacknowledged outgoing messages): that survives
reconnects, not the process. It acknowledges received data at once, answers each new job request
with `accepted`, `running`, `completed` status updates (sequenced, replayed after a reconnect from
the facilitator's acknowledgement, like a real worker), heartbeats on one loop timer per
connection, and reconnects with full-jitter backoff (`ReconnectPolicy` with the real worker's
defaults; after a 503 with a Retry-After, that many seconds plus up to one, like a real worker)
whenever a connection ends, until its process stops. The process (simchild.py) reads
what the workers did from their shared `Tally`.

Invariants: every await on the network is bounded (connecting by `connect_timeout`, the protocol
handshake and peer silence by the session's deadlines, closing by `close_timeout`); nothing
busy-waits (one timer per connection, at its next deadline); a job counts as done when the
facilitator acknowledges its `completed` update, i.e. after the facilitator committed it.
Times are `time.monotonic()` (CLOCK_MONOTONIC: the same clock in every process on Linux).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from jobrelay.actors.config import WorkerConfig
from jobrelay.protocol import events as ev
from jobrelay.protocol.backoff import ReconnectPolicy
from jobrelay.protocol.close_codes import close_code_for
from jobrelay.protocol.come_back import come_back_delay, parse_retry_after
from jobrelay.protocol.errors import ErrorCode
from jobrelay.protocol.messages import JobCancel, JobRequest, JobStatus, JobStatusUpdate
from jobrelay.protocol.session import OutFrame, SessionState, WorkerSession
from jobrelay.testing.store import MemoryStore

__all__ = ["BENCH_KIND", "SimWorker", "Tally"]

BENCH_KIND = "bench"  # the one job kind simulated workers run (bench_scale submits it)
_MAX_ERRORS = 20  # error texts kept (all are counted)


@dataclass
class Tally:
    """What the workers of one process did, for their owner to report.

    Attributes:
        total: How many workers share it.
        connected: Workers with an open session now.
        all_open_at: When every worker had an open session again after ``expect_all_open()``.
        done: Jobs done and not yet reported: (job_id, worker_id, request received, `completed` acked).
        closes: Ended connections by reason (see ``SimWorker.close_reason``).
        attempt_failures: Connection attempts that failed before the WebSocket opened, by reason.
        counts: heartbeat_timeouts (sessions ended so, either side), duplicate_requests, cancels.
        stopping: Set by the owner: workers stop reconnecting.
    """

    total: int
    connected: int = 0
    all_open_at: float | None = None
    done: list[tuple[str, str, float, float]] = field(default_factory=list)
    closes: Counter[str] = field(default_factory=Counter)
    attempt_failures: Counter[str] = field(default_factory=Counter)
    counts: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    error_texts: list[str] = field(default_factory=list)
    stopping: bool = False
    on_all_open: Callable[[], None] | None = None  # called when the last worker opens

    def expect_all_open(self) -> None:
        self.all_open_at = None

    def opened(self) -> None:
        self.connected += 1
        if self.connected == self.total and self.all_open_at is None:
            self.all_open_at = time.monotonic()
            if self.on_all_open is not None:
                self.on_all_open()

    def lost(self) -> None:
        self.connected -= 1

    def error(self, text: str) -> None:
        self.errors += 1
        if len(self.error_texts) < _MAX_ERRORS:
            self.error_texts.append(text)


class SimWorker:
    """One simulated worker: its durable state in memory and at most one live connection."""

    def __init__(
        self, tally: Tally, config: WorkerConfig, worker_id: str, key: Ed25519PrivateKey, source: str
    ) -> None:
        self.tally = tally
        self.config = config
        self.session_config = config.session_config()
        self.worker_id = worker_id
        self.key = key
        self.source = source
        self.store = MemoryStore(out_epoch=secrets.token_hex(8))
        self.policy = ReconnectPolicy(base=config.backoff_base, cap=config.backoff_cap)
        self.session: WorkerSession | None = None
        self.ws: ClientConnection | None = None
        self.out: asyncio.Queue[OutFrame | int] = asyncio.Queue()  # int: close with that code
        self.timer: asyncio.TimerHandle | None = None
        self.is_open = False
        self.was_cut = False
        self.close_queued = False
        self.closed: ev.Closed | None = None  # how the current connection's session ended
        self.jobs_seen: set[str] = set()
        self.completions: deque[tuple[int, str, float]] = deque()  # (seq of `completed`, job, received)
        self.last_frame = 0.0
        self.max_gap = 0.0
        self.retry_after: float | None = None  # the facilitator's Retry-After on its last refusal

    async def run(self, delay: float = 0.0) -> None:
        """After ``delay``: connect, serve, back off, until the process stops (or the task is
        cancelled)."""
        await asyncio.sleep(delay)
        while not self.tally.stopping:
            reason = ""
            try:
                reason = await self._connection()
            except Exception as exc:
                reason = "error"
                self.tally.error(f"{self.worker_id}: {type(exc).__name__}: {exc}")
            if reason:
                self.tally.attempt_failures[reason] += 1
            rand = random.random()
            backoff = self.policy.next_delay(rand)  # None only with max_attempts
            if self.retry_after is not None:  # busy: come back when told, as a real worker does
                backoff, self.retry_after = come_back_delay(self.retry_after, rand), None
            await asyncio.sleep(backoff if backoff is not None else self.policy.cap)

    async def _connection(self) -> str:
        """One connection attempt and its session; returns why the attempt failed ("" if it
        connected)."""
        config = self.config
        try:
            ws = await connect(
                config.url,
                compression=None,
                ping_interval=None,
                proxy=None,
                user_agent_header=None,
                open_timeout=config.connect_timeout,
                close_timeout=1.0,
                max_size=config.max_frame_bytes,
                local_addr=(self.source, 0),
            )
        except TimeoutError:
            return "connect_timeout"
        except ConnectionRefusedError:
            return "refused"
        except InvalidStatus as exc:
            self.retry_after = parse_retry_after(exc.response.headers.get("Retry-After"))
            return f"http_{exc.response.status_code}"
        except (InvalidHandshake, ConnectionError, EOFError):
            return "handshake_dropped"
        except OSError as exc:
            return f"os_error_{exc.errno}"
        self.ws, self.out = ws, asyncio.Queue()
        self.close_queued = self.was_cut = False
        self.closed = None
        session = WorkerSession(
            worker_id=self.worker_id,
            key=self.key,
            facilitator_key=self.config.facilitator_key,
            nonce=secrets.token_hex(32),
            marks=self.store.marks(),
            now=time.time(),
            config=self.session_config,
            # Capabilities, as a real worker announces them: its one kind, and credit for its
            # slots plus prefetch (a simulated job ends the moment it arrives).
            kinds=(BENCH_KIND,),
            credit=self.config.max_concurrent_jobs + self.config.prefetch,
        )
        self.session = session
        writer = asyncio.create_task(self._writer(ws, self.out))
        self._process()
        self._arm()
        try:
            async for message in ws:
                now = time.monotonic()
                if self.is_open:
                    self.max_gap = max(self.max_gap, now - self.last_frame)
                self.last_frame = now
                session.receive_data(message, time.time())
                self._process()
        except ConnectionClosed:
            pass
        finally:
            if self.timer is not None:
                self.timer.cancel()
            session.connection_lost()
            self._process()
            writer.cancel()  # it may wait on a dead socket; what it had to send is moot now
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            self.ws = None
            self.tally.closes[self.close_reason(ws)] += 1
        return ""

    def close_reason(self, ws: ClientConnection) -> str:
        """One name per ended connection: "cut" (ours, on command), the session's error code and
        who sent it, else the WebSocket close code (1001: shutdown or replaced; 1006: dropped)."""
        event = self.closed
        if self.was_cut:
            return "cut"
        if event is not None and event.code is not None:
            return f"{'facilitator' if event.by_peer else 'worker'}:{event.code.value}"
        return f"ws_{ws.close_code}"

    async def _writer(self, ws: ClientConnection, out: asyncio.Queue[OutFrame | int]) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                item = await out.get()
                if isinstance(item, int):
                    await ws.close(item)  # after the frames before it (an error frame, say)
                    return
                await ws.send(item.data, text=not item.binary)

    def _arm(self) -> None:
        """(Re)set the connection's one timer to the session's next deadline (heartbeat due,
        peer silence, handshake timeout)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        session = self.session
        if session is None or session.state is SessionState.CLOSED:
            return
        delay = max(0.0, session.next_deadline() - time.time()) + 0.001
        self.timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        session = self.session
        if session is None:
            return
        try:
            now = time.time()
            session.tick(now)
            if session.heartbeat_due(now):
                session.send_heartbeat(now)
            self._process()
            self._arm()
        except Exception as exc:
            self.tally.error(f"{self.worker_id}: timer: {type(exc).__name__}: {exc}")

    def _process(self) -> None:
        """Act on the session's events the way a worker does, then hand its frames to the writer."""
        session = self.session
        if session is None:
            return
        store = self.store
        received = opened = False
        for event in session.events_received():
            match event:
                case ev.PeerStreamStarted():
                    store.in_epoch, store.in_hwm = event.epoch, event.after
                case ev.PeerStreamAdvanced():
                    store.in_hwm = event.hwm
                case ev.Opened():
                    store.in_epoch, store.in_hwm = event.in_epoch, event.in_hwm
                    self.policy.opened(time.monotonic())
                    self.is_open = opened = True
                    self.last_frame = time.monotonic()
                    self.tally.opened()
                case ev.DataReceived():
                    store.in_hwm = event.seq  # "durable" at once: memory is this worker's disk
                    received = True
                    self._on_body(event.body)
                case ev.Acked():
                    self._on_acked(event.upto)
                case ev.RestartOwnStream():
                    self.tally.error(f"{self.worker_id}: restarting own stream: {event.detail}")
                    self._restart_stream()
                case ev.Closed():
                    self._on_closed(event)
                case _:
                    pass
        if session.is_open:
            if received:
                session.acknowledge(store.in_hwm)
            store.send_window(session)
        for frame in session.data_to_send():
            self.out.put_nowait(frame)
        if session.state is SessionState.CLOSED and not self.close_queued:
            self.close_queued = True
            self.out.put_nowait(close_code_for(session.close_code))
        if opened:
            self._arm()  # from the handshake deadline to the heartbeat schedule

    def _on_body(self, body: object) -> None:
        if isinstance(body, JobCancel):
            self.tally.counts["cancels"] += 1
            return
        if not isinstance(body, JobRequest):
            return
        if body.job_id in self.jobs_seen:
            self.tally.counts["duplicate_requests"] += 1
            return
        self.jobs_seen.add(body.job_id)
        received = time.monotonic()
        for status in (JobStatus.ACCEPTED, JobStatus.RUNNING, JobStatus.COMPLETED):
            seq = self.store.publish(JobStatusUpdate(job_id=body.job_id, status=status, at=time.time()))
        self.completions.append((seq, body.job_id, received))
        assert self.session is not None
        self.session.note_appended(self.store.out_last_seq)

    def _on_acked(self, upto: int) -> None:
        self.store.ack(upto)
        now = time.monotonic()
        while self.completions and self.completions[0][0] <= upto:
            _seq, job_id, received = self.completions.popleft()
            self.tally.done.append((job_id, self.worker_id, received, now))

    def _on_closed(self, event: ev.Closed) -> None:
        if self.is_open:
            self.is_open = False
            self.policy.closed(time.monotonic())
            self.tally.lost()
        self.closed = event
        if event.code is ErrorCode.HEARTBEAT_TIMEOUT:
            self.tally.counts["heartbeat_timeouts"] += 1

    def _restart_stream(self) -> None:
        """Our stream is behind what the facilitator holds: what we still hold goes out again
        as a new epoch, renumbered from 1 (what a real worker does)."""
        old = self.store
        self.store = MemoryStore(out_epoch=secrets.token_hex(8), in_epoch=old.in_epoch, in_hwm=old.in_hwm)
        renumber = {}
        for seq in sorted(old.out):
            renumber[seq] = self.store.publish(old.out[seq])
        self.completions = deque((renumber[s], j, r) for s, j, r in self.completions if s in renumber)

    def cut(self) -> bool:
        """Abort the connection (no close handshake, like a pulled cable); True if there was one."""
        ws = self.ws
        if ws is None:
            return False
        self.was_cut = True
        if self.is_open:
            self.is_open = False
            self.policy.closed(time.monotonic())
            self.tally.lost()
        ws.transport.abort()
        return True

    def gap(self, now: float) -> float:
        """The longest silence of the facilitator on this worker's connections since the last
        call (the current one included while open), then start over."""
        gap = max(self.max_gap, now - self.last_frame) if self.is_open else self.max_gap
        self.max_gap = 0.0
        return gap
