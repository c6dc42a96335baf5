# The worker's end of a session (sans-I/O; see session.py): hello, the facilitator's challenge
# checked against its pinned key, auth, welcome.
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.protocol.auth import (
    Transcript,
    check_nonce,
    public_key_hex,
    verify_challenge,
    worker_signature,
)
from jobrelay.protocol.codec import Format, worker_codec
from jobrelay.protocol.errors import ErrorCode, RemoteProtocolError
from jobrelay.protocol.events import (
    Acked,
    Opened,
    RestartOwnStream,
)
from jobrelay.protocol.messages import (
    PROTOCOL_VERSION,
    Auth,
    Challenge,
    FacilitatorFrame,
    Heartbeat,
    Hello,
    Welcome,
)
from jobrelay.protocol.session_base import _Session
from jobrelay.protocol.session_states import SessionConfig, SessionState
from jobrelay.protocol.streams import Receiver, Sender, StreamMarks, resolve_resume

__all__ = ["WorkerSession"]


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
