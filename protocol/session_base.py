# What both ends of a session share (sans-I/O; see session.py): bytes in, frames and events out,
# the send window and the receiver, heartbeats, requests, closing. The handshake is the roles'
# part (worker_session.py, facilitator_session.py).
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

import msgspec

from jobrelay.protocol.codec import Codec, Format
from jobrelay.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from jobrelay.protocol.events import (
    Acked,
    Closed,
    DataReceived,
    DuplicateDropped,
    Event,
    HeartbeatReceived,
    PeerStreamAdvanced,
    PeerStreamStarted,
    PeerWarning,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
)
from jobrelay.protocol.messages import (
    Ack,
    Data,
    DataBatch,
    Error,
    FacilitatorFrame,
    Heartbeat,
    Request,
    Response,
    WorkerFrame,
)
from jobrelay.protocol.session_states import (
    CLOSE,
    TRANSITIONS,
    OutFrame,
    SessionConfig,
    SessionState,
    Trigger,
)
from jobrelay.protocol.streams import Receiver, Sender, StreamMarks

__all__ = ["In"]


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
        if (due := self.receiver.due_at) is not None and now >= due:
            self.send_held_ack(now)
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

    @property
    def sends_json(self) -> bool:
        """Data goes out as JSON text: a body stored as JSON bytes is sent as it is."""
        return self._send_codec.fmt == "json"

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
            math.inf if self.receiver.due_at is None else self.receiver.due_at,  # a held ack
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

    def acknowledge(self, upto: int, now: float | None = None) -> None:
        """Everything of the peer's stream up to ``upto`` is durable: send a cumulative ack, or
        with ``config.ack_delay`` and ``now``, hold it until ``receiver.due_at`` (``tick``) to
        cover later calls too, like TCP's delayed ack (``Receiver.ack_now`` says when)."""
        self._require_open("acknowledge")
        if self.receiver.acknowledge(upto) and self.receiver.ack_now(now, self.config.ack_delay):
            self._send(Ack(upto=self.receiver.ack_sent(now)))

    def send_held_ack(self, now: float | None) -> None:
        """Send the ack ``acknowledge`` held, if any, now (its timer fired; or the session ends)."""
        if self.receiver.due_at is not None and self.is_open:
            self._send(Ack(upto=self.receiver.ack_sent(now)))

    def send_heartbeat(self, now: float, draining: bool = False) -> None:
        self._require_open("send a heartbeat")
        self._send(Heartbeat(at=now, draining=draining))
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
        self.send_held_ack(None)  # durable here: the peer need not send it again
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
        # At most half the window a frame: two frames in flight, so the peer commits one while
        # the next arrives (a frame as large as the window was stop-and-wait).
        step = min(self.config.max_batch, max(1, self.sender.window // 2))
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


def _json_value(raw: msgspec.Raw) -> Any:
    return msgspec.json.decode(raw)
