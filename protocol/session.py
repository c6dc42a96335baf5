# The session state machines, sans-I/O: bytes in (receive_data), frames out (data_to_send),
# events out (events_received). No sockets, threads, clocks or randomness: time, nonces and
# session ids are arguments.
#
# Everything that affects the state machine lives in this module: the states, the table of
# frames each state accepts (ACCEPTS) and the handlers that move between states. A frame not
# listed for the current state closes the session with UNEXPECTED_FRAME (or NOT_AUTHENTICATED for
# data before the handshake). A remote violation never raises out of receive_data(): it queues a
# fatal error frame, moves to CLOSED and emits Closed. Misuse by the owner raises
# LocalProtocolError.
from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final, Generic, NamedTuple, TypeVar

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.protocol.auth import (
    NonceRegistry,
    Transcript,
    check_nonce,
    facilitator_signature,
    public_key_hex,
    verify_auth,
    verify_challenge,
    worker_signature,
)
from jobrelay.protocol.codec import FORMATS, Codec, Format, facilitator_codec, worker_codec
from jobrelay.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from jobrelay.protocol.events import (
    Acked,
    AuthVerified,
    Closed,
    DataReceived,
    DuplicateDropped,
    Event,
    HeartbeatReceived,
    Opened,
    PeerStreamAdvanced,
    PeerStreamStarted,
    PeerWarning,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
    RestartOwnStream,
)
from jobrelay.protocol.messages import (
    PROTOCOL_VERSION,
    Ack,
    Auth,
    Challenge,
    Data,
    DataBatch,
    Error,
    FacilitatorFrame,
    Heartbeat,
    Hello,
    Request,
    Response,
    Welcome,
    WorkerFrame,
)
from jobrelay.protocol.streams import Receiver, Sender, StreamMarks, resolve_resume

__all__ = [
    "ACCEPT",
    "ACCEPTS",
    "CLOSE",
    "TRANSITIONS",
    "FacilitatorSession",
    "OutFrame",
    "SessionConfig",
    "SessionState",
    "WorkerSession",
]


class SessionState(enum.Enum):
    AWAIT_HELLO = "await_hello"  # facilitator: connection open, nothing received
    AWAIT_CHALLENGE = "await_challenge"  # worker: hello sent
    AWAIT_AUTH = "await_auth"  # facilitator: challenge sent
    VERIFYING = "verifying"  # facilitator: auth verified, owner must accept() with stored marks
    AWAIT_WELCOME = "await_welcome"  # worker: auth sent
    OPEN = "open"
    CLOSED = "closed"


ACCEPT: Final = "accept"
"""The owner's trigger that opens a verified facilitator session (``FacilitatorSession.accept``)."""
CLOSE: Final = "close"
"""The trigger of every ending: an error frame, a violation, a timeout, ``close()``, a lost link."""

Trigger = type | str
_OPEN_FRAMES = (Ack, Heartbeat, Request, Response, Data, DataBatch)
TRANSITIONS: Final[dict[SessionState, dict[Trigger, SessionState]]] = {
    SessionState.AWAIT_HELLO: {Hello: SessionState.AWAIT_AUTH, CLOSE: SessionState.CLOSED},
    SessionState.AWAIT_CHALLENGE: {Challenge: SessionState.AWAIT_WELCOME, CLOSE: SessionState.CLOSED},
    SessionState.AWAIT_AUTH: {Auth: SessionState.VERIFYING, CLOSE: SessionState.CLOSED},
    SessionState.VERIFYING: {ACCEPT: SessionState.OPEN, CLOSE: SessionState.CLOSED},
    SessionState.AWAIT_WELCOME: {Welcome: SessionState.OPEN, CLOSE: SessionState.CLOSED},
    SessionState.OPEN: {**{frame: SessionState.OPEN for frame in _OPEN_FRAMES}, CLOSE: SessionState.CLOSED},
    SessionState.CLOSED: {},
}
"""The one transition table: state → {trigger → next state}. A trigger is a frame type received
(``error`` frames aside: every state but CLOSED accepts them and a fatal one means CLOSE) or an
owner action (ACCEPT, CLOSE). A frame type not listed for the current state closes the session with
UNEXPECTED_FRAME (NOT_AUTHENTICATED for data before the handshake)."""

ACCEPTS: Final[dict[SessionState, tuple[type, ...]]] = {
    state: tuple(t for t in row if isinstance(t, type)) for state, row in TRANSITIONS.items()
}
"""Frame types each state accepts, read from TRANSITIONS."""


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Limits and timers of one session; a facilitator's values are sent to the worker in welcome."""

    max_inflight: int = 1_000
    max_frame_bytes: int = 1_048_576
    max_batch: int = 500
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 20.0
    handshake_timeout: float = 10.0
    max_clock_skew: float = 120.0
    formats: tuple[Format, ...] = ("json",)
    # A facilitator's welcome says it takes back released jobs only if its owner queues them
    # again (the reference facilitator does); otherwise a draining worker keeps them.
    takes_releases: bool = False

    def __post_init__(self) -> None:
        for name in ("max_inflight", "max_frame_bytes", "max_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"SessionConfig.{name} must be ≥ 1")
        if not 0 < self.heartbeat_interval < self.heartbeat_timeout:
            raise ValueError("SessionConfig needs 0 < heartbeat_interval < heartbeat_timeout")
        if not self.formats or any(f not in FORMATS for f in self.formats):
            raise ValueError(f"SessionConfig.formats must be a non-empty subset of {FORMATS}")


class OutFrame(NamedTuple):
    """One WebSocket message to send: text when ``binary`` is False."""

    data: bytes
    binary: bool


In = TypeVar("In", WorkerFrame, FacilitatorFrame)


class _Session(Generic[In]):
    """What both sides share: data streams, acks, heartbeats, requests, errors and closing."""

    def __init__(self, codec: Codec[In], config: SessionConfig, now: float, state: SessionState) -> None:
        self.config = config
        self.state = state
        self.started_at = now
        self.last_received = now
        self.last_sent = now
        self.peer_id = ""
        self.session_id = ""
        self.peer_draining = False
        self.heartbeat_interval = config.heartbeat_interval
        self.heartbeat_timeout = config.heartbeat_timeout
        self.sender = Sender(0, 0, config.max_inflight)
        self.receiver = Receiver(0, config.max_inflight)
        self.close_code: ErrorCode | None = None
        self._codec: Codec[In] = codec
        self._send_codec: Codec[In] = codec
        self._events: list[Event] = []
        self._out: list[OutFrame] = []
        self._requests: dict[str, float] = {}

    # ------------------------------------------------------------ owner API: inputs

    def receive_data(self, data: bytes | str, now: float, binary: bool | None = None) -> None:
        """Feed one received WebSocket message (``binary``: whether it was a binary message, None
        when the caller cannot tell; see ``Codec.decode``). Never raises for anything the peer
        sent."""
        if self.state is SessionState.CLOSED:
            return
        self.last_received = now
        if self.state is SessionState.AWAIT_WELCOME:
            # The facilitator switches to the negotiated codec right after sending welcome, so an
            # error we send about what arrives now (a bad welcome) must already use it.
            self._send_codec = type(self._codec)(
                self._codec_incoming, self._format, self.config.max_frame_bytes
            )
        try:
            frame = self._codec.decode(data, binary)
            self._dispatch(frame, now)
        except RemoteProtocolError as exc:
            self._fail(exc.code, exc.detail)

    def connection_lost(self, detail: str = "connection lost") -> None:
        """The transport went away (no close handshake)."""
        if self.state is not SessionState.CLOSED:
            self._closed(None, detail, by_peer=True)

    def tick(self, now: float) -> None:
        """Check deadlines: handshake timeout, peer silence, request timeouts."""
        if self.state is SessionState.CLOSED:
            return
        if self.state is not SessionState.OPEN:
            if now - self.started_at > self.config.handshake_timeout:
                self._fail(
                    ErrorCode.HANDSHAKE_TIMEOUT, f"no handshake within {self.config.handshake_timeout}s"
                )
            return
        if self.silent_for(now) > self.heartbeat_timeout:
            self._fail(ErrorCode.HEARTBEAT_TIMEOUT, f"peer silent for {self.silent_for(now):.1f}s")
            return
        for request_id, deadline in list(self._requests.items()):
            if now >= deadline:
                del self._requests[request_id]
                self._events.append(RequestTimedOut(id=request_id))

    # ------------------------------------------------------------ owner API: outputs

    def events_received(self) -> list[Event]:
        """Events since the last call, in order."""
        events, self._events = self._events, []
        return events

    def data_to_send(self) -> list[OutFrame]:
        """Frames to write to the transport since the last call, in order."""
        out, self._out = self._out, []
        return out

    # ------------------------------------------------------------ owner API: actions

    @property
    def is_open(self) -> bool:
        return self.state is SessionState.OPEN

    def silent_for(self, now: float) -> float:
        return now - self.last_received

    def heartbeat_due(self, now: float) -> bool:
        return self.is_open and now - self.last_sent >= self.heartbeat_interval

    def next_deadline(self) -> float:
        """When ``tick`` next has work (same clock as ``now``): before the session opens, the
        handshake deadline; once open, the next heartbeat due, the peer's silence deadline or a
        request's timeout, whichever comes first; ``inf`` once closed. An owner sleeps until then
        instead of ticking on a fixed period."""
        if self.state is SessionState.CLOSED:
            return math.inf
        if self.state is not SessionState.OPEN:
            return self.started_at + self.config.handshake_timeout
        return min(
            self.last_sent + self.heartbeat_interval,
            self.last_received + self.heartbeat_timeout,
            min(self._requests.values(), default=math.inf),
        )

    def send_data(self, items: Sequence[tuple[int, Any]]) -> None:
        """Send data messages ``(seq, body)``; seqs must continue the stream contiguously.

        Raises:
            LocalProtocolError: session not open, seqs out of order, window or frame size exceeded.
        """
        self._require_open("send data")
        if not items:
            return
        first = items[0][0]
        for offset, (seq, _) in enumerate(items):
            if seq != first + offset:
                raise LocalProtocolError(
                    ErrorCode.SEQ_GAP, f"seqs must be contiguous, got {seq} after {first + offset - 1}"
                )
        frames = self._encode_data(items)
        self.sender.take(first, len(items))
        for frame in frames:
            self._push(frame)

    def queue_data(self, items: Sequence[tuple[int, Any]]) -> None:
        """Hand over data messages ``(seq, body)`` beyond the window: what fits is sent now, the
        rest as soon as acks make room (see ``Sender.handover_limit`` for how much to hand over).

        Raises:
            LocalProtocolError: session not open, or seqs not contiguous after what was handed over.
        """
        self._require_open("send data")
        self.sender.queue(items)
        self._send_queued()

    def _send_queued(self) -> None:
        items = self.sender.sendable()
        if not items:
            return
        try:
            self.send_data(items)
        except LocalProtocolError as exc:
            # Our side's fault (a message too large for the peer's frame limit): end the session
            # so the owner replays from the peer's acknowledged seq on the next one.
            self.close(ErrorCode.INTERNAL, f"cannot send queued data: {exc.detail}")

    def note_appended(self, last_seq: int) -> None:
        """Storage has assigned seqs up to ``last_seq`` (lets acks be checked against it)."""
        self.sender.note_appended(last_seq)

    def acknowledge(self, upto: int) -> None:
        """Everything of the peer's stream up to ``upto`` is durable: send a cumulative ack."""
        self._require_open("acknowledge")
        if self.receiver.acknowledge(upto):
            self._send(Ack(upto=upto))

    def send_heartbeat(self, now: float, draining: bool = False) -> None:
        self._require_open("send a heartbeat")
        self._send(Heartbeat(at=now, draining=draining))
        self.last_sent = now

    def lengthen_heartbeat(self, now: float, interval: float, timeout: float) -> None:
        """Facilitator: both sides keep to a longer ``interval`` and ``timeout`` from now on, sent
        at once in a heartbeat (before our next one could be later than the peer's old timeout).
        Values not longer than the current ones are ignored: a session never gets shorter ones."""
        if not (self.heartbeat_interval < interval < timeout and timeout > self.heartbeat_timeout):
            return
        self._require_open("lengthen heartbeats")
        self.heartbeat_interval, self.heartbeat_timeout = interval, timeout
        ms_interval, ms_timeout = int(interval * 1000), int(timeout * 1000)
        self._send(Heartbeat(at=now, heartbeat_interval_ms=ms_interval, heartbeat_timeout_ms=ms_timeout))
        self.last_sent = now

    def _heartbeat_values(self, frame: Heartbeat) -> None:
        """A received heartbeat's interval and timeout (only a worker adopts them)."""

    def send_request(self, request: Request, now: float) -> None:
        self._require_open("send a request")
        self._requests[request.id] = now + request.timeout_ms / 1000.0
        self._send(request)

    def send_response(self, response: Response) -> None:
        self._require_open("send a response")
        self._send(response)

    def send_warning(self, code: ErrorCode, detail: str = "") -> None:
        """Tell the peer something it sent was refused, without closing (non-fatal error frame)."""
        self._require_open("send a warning")
        self._send(Error(code=code.value, detail=detail, fatal=False))

    def close(self, code: ErrorCode | None = None, detail: str = "") -> None:
        """End the session; with a ``code``, the peer is told why in an error frame first."""
        if self.state is SessionState.CLOSED:
            return
        if code is not None:
            self._send(Error(code=code.value, detail=detail))
        self._closed(code, detail, by_peer=False)

    # ------------------------------------------------------------ internals

    def _dispatch(self, frame: Any, now: float) -> None:
        if isinstance(frame, Error):
            self._on_error(frame)
            return
        target = TRANSITIONS[self.state].get(type(frame))
        if target is None:
            if isinstance(frame, Data | DataBatch):
                raise RemoteProtocolError(ErrorCode.NOT_AUTHENTICATED, "data before the handshake completed")
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED_FRAME, f"{type(frame).__name__} not allowed in state {self.state.value}"
            )
        match frame:
            case Data():
                self._on_data((frame,))
            case DataBatch():
                self._on_data(frame.items)
            case Ack():
                if self.sender.on_ack(frame.upto):
                    self._events.append(Acked(upto=frame.upto))
                    self._send_queued()
            case Heartbeat():
                self.peer_draining = frame.draining
                if frame.heartbeat_interval_ms is not None:
                    self._heartbeat_values(frame)
                self._events.append(HeartbeatReceived(at=frame.at, draining=frame.draining))
            case Request():
                self._events.append(RequestReceived(request=frame))
            case Response():
                if self._requests.pop(frame.id, None) is not None:
                    self._events.append(ResponseReceived(response=frame))
            case _:
                self._on_handshake(frame, now)
        if self.state is not SessionState.CLOSED:
            self._move(type(frame))

    def _move(self, trigger: Trigger) -> None:
        """Enter the state TRANSITIONS names for ``trigger`` in the current state.

        Raises:
            LocalProtocolError: the table has no such transition (an owner action out of turn).
        """
        target = TRANSITIONS[self.state].get(trigger)
        if target is None:
            name = trigger if isinstance(trigger, str) else trigger.__name__
            raise LocalProtocolError(ErrorCode.UNEXPECTED_FRAME, f"{name} in state {self.state.value}")
        self.state = target

    def _note_peer_stream(self, marks: StreamMarks, epoch: str, hwm: int, new_stream: bool) -> None:
        """Tell the owner what to record of the peer's stream before the session counts as open:
        a new epoch, or a mark the peer knows is higher than our stored one."""
        if new_stream:
            self._events.append(PeerStreamStarted(epoch=epoch, after=hwm, previous_epoch=marks.in_epoch))
        elif hwm > marks.in_hwm:
            self._events.append(PeerStreamAdvanced(epoch=epoch, hwm=hwm, stored_hwm=marks.in_hwm))

    def _on_handshake(self, frame: Any, now: float) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def _on_data(self, items: Sequence[Data[Any]]) -> None:
        for item in items:
            if self.receiver.classify(item.seq):
                self._events.append(DataReceived(seq=item.seq, body=item.body))
            else:
                self._events.append(DuplicateDropped(seq=item.seq))

    def _on_error(self, frame: Error) -> None:
        if not frame.fatal and self.state is SessionState.OPEN:
            self._events.append(PeerWarning(code=frame.code, detail=frame.detail))
            return
        try:
            code: ErrorCode | None = ErrorCode(frame.code)
        except ValueError:
            code = ErrorCode.INTERNAL
        self._closed(code, frame.detail or frame.code, by_peer=True)

    def _encode_data(self, items: Sequence[tuple[int, Any]]) -> list[OutFrame]:
        limit = self.config.max_frame_bytes
        frames: list[OutFrame] = []
        step = self.config.max_batch
        for start in range(0, len(items), step):
            frames.extend(self._encode_chunk(items[start : start + step], limit))
        return frames

    def _encode_chunk(self, chunk: Sequence[tuple[int, Any]], limit: int) -> list[OutFrame]:
        if self._send_codec.fmt != "json" and any(isinstance(body, msgspec.Raw) for _, body in chunk):
            # Stored JSON goes out as stored in a JSON session; msgpack needs the value itself.
            chunk = [(seq, _json_value(b) if isinstance(b, msgspec.Raw) else b) for seq, b in chunk]
        if len(chunk) == 1:
            frame: msgspec.Struct = Data(seq=chunk[0][0], body=chunk[0][1])
        else:
            frame = DataBatch(items=[Data(seq=seq, body=body) for seq, body in chunk])
        data = self._send_codec.encode(frame)
        if len(data) <= limit:
            return [OutFrame(data, self._send_codec.binary)]
        if len(chunk) == 1:
            raise LocalProtocolError(
                ErrorCode.FRAME_TOO_LARGE, f"seq {chunk[0][0]} encodes to {len(data)} bytes > {limit}"
            )
        half = len(chunk) // 2
        return self._encode_chunk(chunk[:half], limit) + self._encode_chunk(chunk[half:], limit)

    def _send(self, frame: msgspec.Struct) -> None:
        self._push(OutFrame(self._send_codec.encode(frame), self._send_codec.binary))

    def _push(self, frame: OutFrame) -> None:
        self._out.append(frame)

    def _require_open(self, what: str) -> None:
        if self.state is not SessionState.OPEN:
            raise LocalProtocolError(
                ErrorCode.NOT_AUTHENTICATED, f"cannot {what} in state {self.state.value}"
            )

    def _switch_codec(self, fmt: Format) -> None:
        self._codec = type(self._codec)(self._codec_incoming, fmt, self.config.max_frame_bytes)
        self._send_codec = self._codec

    _codec_incoming: object = None
    _format: Format = "json"

    def _fail(self, code: ErrorCode, detail: str) -> None:
        self.close(code, detail)

    def _closed(self, code: ErrorCode | None, detail: str, by_peer: bool) -> None:
        self._move(CLOSE)
        self.close_code = code
        self._requests.clear()
        self._events.append(Closed(code=code, detail=detail, by_peer=by_peer))


class WorkerSession(_Session[FacilitatorFrame]):
    """The worker's end of one connection. Sends hello on creation.

    Args:
        worker_id: this worker's id (must be in the facilitator's authorized keys).
        key: this worker's Ed25519 private key.
        facilitator_key: the pinned public key (hex) of the facilitator; a challenge signed by
            any other key closes the session with WRONG_KEY before the worker signs anything.
        nonce: a fresh random value (64 hex characters) for this connection, sent in hello.
        marks: durable stream state read from storage just before connecting.
        now: current time (seconds since the epoch; also used for the auth timestamp).
        kinds / credit / kind_credit: announced in hello (see ``Hello``); None: any kind / no
            limit / no per-kind limit.
    """

    _codec_incoming = FacilitatorFrame

    def __init__(
        self,
        *,
        worker_id: str,
        key: Ed25519PrivateKey,
        facilitator_key: str,
        nonce: str,
        marks: StreamMarks,
        now: float,
        config: SessionConfig | None = None,
        kinds: Sequence[str] | None = None,
        credit: int | None = None,
        kind_credit: Mapping[str, int] | None = None,
    ) -> None:
        config = config or SessionConfig()
        super().__init__(
            worker_codec("json", config.max_frame_bytes), config, now, SessionState.AWAIT_CHALLENGE
        )
        self.worker_id = worker_id
        self.marks = marks
        self._key = key
        self._facilitator_key = facilitator_key.lower()
        self._nonce = nonce
        self._format: Format = "json"
        self._send(
            Hello(
                version=PROTOCOL_VERSION,
                worker_id=worker_id,
                codecs=config.formats,
                nonce=nonce,
                kinds=None if kinds is None else tuple(kinds),
                credit=credit,
                kind_credit=None if not kind_credit else dict(kind_credit),
            )
        )

    def _on_handshake(self, frame: Any, now: float) -> None:
        match frame:
            case Challenge():
                self._on_challenge(frame, now)
            case Welcome():
                self._on_welcome(frame)

    def _on_challenge(self, frame: Challenge, now: float) -> None:
        if frame.version != PROTOCOL_VERSION:
            raise RemoteProtocolError(ErrorCode.UNSUPPORTED_VERSION, f"facilitator speaks v{frame.version}")
        if frame.codec not in self.config.formats:
            raise RemoteProtocolError(ErrorCode.UNSUPPORTED_CODEC, f"codec {frame.codec!r} was not offered")
        check_nonce(frame.nonce, "challenge.nonce")
        transcript = Transcript(
            PROTOCOL_VERSION, self._nonce, frame.nonce, frame.public_key, frame.codec, self.worker_id
        )
        # Before signing anything: a relay that forwards another facilitator's challenge, or signs
        # one with its own key, is refused here, and a signature only ever names the pinned key.
        verify_challenge(frame, transcript, pinned_key=self._facilitator_key)
        self._format = frame.codec
        timestamp_ms = int(now * 1000)
        self._send(
            Auth(
                worker_id=self.worker_id,
                public_key=public_key_hex(self._key),
                nonce=frame.nonce,
                timestamp_ms=timestamp_ms,
                signature=worker_signature(self._key, transcript, timestamp_ms),
                out_epoch=self.marks.out_epoch,
                out_acked=self.marks.out_acked,
                in_epoch=self.marks.in_epoch,
                in_hwm=self.marks.in_hwm,
            )
        )

    def _heartbeat_values(self, frame: Heartbeat) -> None:
        # Longer values only, interval below timeout (PROTOCOL §6.1); anything else is ignored.
        interval, timeout = frame.heartbeat_interval_ms, frame.heartbeat_timeout_ms
        if interval is None or timeout is None or not interval < timeout:
            return
        if interval / 1000.0 > self.heartbeat_interval and timeout / 1000.0 > self.heartbeat_timeout:
            self.heartbeat_interval, self.heartbeat_timeout = interval / 1000.0, timeout / 1000.0

    def _on_welcome(self, frame: Welcome) -> None:
        marks = self.marks
        if not marks.out_acked <= frame.ack <= max(marks.out_last_seq, self.sender.last_seq):
            detail = (
                f"welcome acks {frame.ack}; our stream has acked {marks.out_acked}, "
                f"last seq {marks.out_last_seq}"
            )
            self._events.append(RestartOwnStream(detail=detail))
            raise RemoteProtocolError(ErrorCode.ACK_OUT_OF_RANGE, detail)
        in_hwm, new_in = resolve_resume(marks.in_epoch, marks.in_hwm, frame.out_epoch, frame.out_acked)
        self.session_id = frame.session_id
        self.peer_id = "facilitator"
        self.heartbeat_interval = frame.heartbeat_interval_ms / 1000.0
        self.heartbeat_timeout = frame.heartbeat_timeout_ms / 1000.0
        self.sender = Sender(frame.ack, max(marks.out_last_seq, self.sender.last_seq), frame.max_inflight)
        self.receiver = Receiver(in_hwm, frame.max_inflight)
        self.config = replace(
            self.config, max_inflight=frame.max_inflight, max_frame_bytes=frame.max_frame_bytes
        )
        self._switch_codec(self._format)
        self._note_peer_stream(marks, frame.out_epoch, in_hwm, new_in)
        if frame.ack > marks.out_acked:
            self._events.append(Acked(upto=frame.ack))
        self._events.append(
            Opened(
                session_id=frame.session_id,
                peer_id=self.peer_id,
                resume_after=frame.ack,
                in_epoch=frame.out_epoch,
                in_hwm=in_hwm,
                new_in_stream=new_in,
                new_out_stream=frame.new_stream,
                takes_releases=frame.releases,
            )
        )


class FacilitatorSession(_Session[WorkerFrame]):
    """The facilitator's end of one connection.

    Args:
        nonce: a fresh random challenge (64 hex characters) for this connection.
        session_id: a fresh id for this connection.
        key: the facilitator's own Ed25519 private key; it signs each challenge (one signature
            per handshake), and workers pin its public key.
        authorized: worker id → public key hex (the authorized-keys file).
        nonces: the registry shared by all sessions, against replayed auth frames.
        now: current time (seconds since the epoch).
    """

    _codec_incoming = WorkerFrame

    def __init__(
        self,
        *,
        nonce: str,
        session_id: str,
        key: Ed25519PrivateKey,
        authorized: Mapping[str, str],
        nonces: NonceRegistry,
        now: float,
        config: SessionConfig | None = None,
    ) -> None:
        config = config or SessionConfig()
        super().__init__(
            facilitator_codec("json", config.max_frame_bytes), config, now, SessionState.AWAIT_HELLO
        )
        self.session_id = session_id
        self._nonce = nonce
        self._key = key
        self._authorized = authorized
        self._nonces = nonces
        self._format: Format = "json"
        self._auth: Auth | None = None
        self.hello: Hello | None = None
        self._transcript: Transcript | None = None

    def _on_handshake(self, frame: Any, now: float) -> None:
        match frame:
            case Hello():
                self._on_hello(frame)
            case Auth():
                self._on_auth(frame, now)

    def _on_hello(self, frame: Hello) -> None:
        if frame.version != PROTOCOL_VERSION:
            raise RemoteProtocolError(
                ErrorCode.UNSUPPORTED_VERSION, f"worker speaks v{frame.version}, we speak v{PROTOCOL_VERSION}"
            )
        shared = [f for f in self.config.formats if f in frame.codecs]
        if not shared:
            raise RemoteProtocolError(ErrorCode.UNSUPPORTED_CODEC, f"no common codec in {list(frame.codecs)}")
        check_nonce(frame.nonce, "hello.nonce")
        self._format = shared[0]
        self.peer_id = frame.worker_id
        self.hello = frame  # its capabilities (kinds, credit) route jobs once the session opens
        transcript = Transcript(
            PROTOCOL_VERSION,
            frame.nonce,
            self._nonce,
            public_key_hex(self._key),
            self._format,
            frame.worker_id,
        )
        self._transcript = transcript
        self._send(
            Challenge(
                version=PROTOCOL_VERSION,
                nonce=self._nonce,
                codec=self._format,
                public_key=transcript.facilitator_key,
                signature=facilitator_signature(self._key, transcript),
            )
        )

    def _on_auth(self, frame: Auth, now: float) -> None:
        if frame.worker_id != self.peer_id:
            raise RemoteProtocolError(ErrorCode.WRONG_KEY, "auth is for another worker than hello")
        assert self._transcript is not None  # AWAIT_AUTH is entered only through _on_hello
        verify_auth(
            frame,
            transcript=self._transcript,
            authorized=self._authorized,
            nonces=self._nonces,
            now=now,
            max_skew=self.config.max_clock_skew,
        )
        self._auth = frame
        self._events.append(
            AuthVerified(
                worker_id=frame.worker_id,
                out_epoch=frame.out_epoch,
                out_acked=frame.out_acked,
                in_epoch=frame.in_epoch,
                in_hwm=frame.in_hwm,
            )
        )

    def accept(self, marks: StreamMarks) -> None:
        """Open the session after ``AuthVerified``, given this worker's stored stream marks.

        ``marks`` describe our stream to this worker (``out_*``) and what we accepted of its
        stream (``in_*``). Emits ``Acked`` (when the worker had more than we knew) and ``Opened``.

        Raises:
            LocalProtocolError: not in the VERIFYING state.
        """
        if self.state is not SessionState.VERIFYING or self._auth is None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_FRAME, f"accept() in state {self.state.value}")
        auth = self._auth
        in_hwm, new_in = resolve_resume(marks.in_epoch, marks.in_hwm, auth.out_epoch, auth.out_acked)
        resume, new_out = resolve_resume(auth.in_epoch, auth.in_hwm, marks.out_epoch, marks.out_acked)
        if resume > marks.out_last_seq:
            detail = f"worker has accepted up to {resume} but our stream only reached {marks.out_last_seq}"
            self._events.append(RestartOwnStream(detail=detail))
            self._fail(ErrorCode.ACK_OUT_OF_RANGE, detail)
            return
        config = self.config
        self._send(
            Welcome(
                session_id=self.session_id,
                ack=in_hwm,
                out_epoch=marks.out_epoch,
                out_acked=marks.out_acked,
                new_stream=new_in,
                heartbeat_interval_ms=int(config.heartbeat_interval * 1000),
                heartbeat_timeout_ms=int(config.heartbeat_timeout * 1000),
                max_inflight=config.max_inflight,
                max_frame_bytes=config.max_frame_bytes,
                releases=config.takes_releases,
            )
        )
        self._switch_codec(self._format)
        self.sender = Sender(resume, marks.out_last_seq, config.max_inflight)
        self.receiver = Receiver(in_hwm, config.max_inflight)
        self._move(ACCEPT)
        self._note_peer_stream(marks, auth.out_epoch, in_hwm, new_in)
        if resume > marks.out_acked:
            self._events.append(Acked(upto=resume))
        self._events.append(
            Opened(
                session_id=self.session_id,
                peer_id=auth.worker_id,
                resume_after=resume,
                in_epoch=auth.out_epoch,
                in_hwm=in_hwm,
                new_in_stream=new_in,
                new_out_stream=new_out,
            )
        )

    def reject(self, code: ErrorCode, detail: str) -> None:
        """Refuse a verified worker (for example: already connected elsewhere)."""
        self.close(code, detail)


def _json_value(raw: msgspec.Raw) -> Any:
    return msgspec.json.decode(raw)
