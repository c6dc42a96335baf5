# The facilitator's end of a session (sans-I/O; see session.py): hello, challenge, the worker's
# auth verified, then the owner accepts with the stored stream marks (or rejects).
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.protocol.auth import (
    NonceRegistry,
    Transcript,
    check_nonce,
    facilitator_signature,
    public_key_hex,
    verify_auth,
)
from jobrelay.protocol.codec import Format, facilitator_codec
from jobrelay.protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from jobrelay.protocol.events import (
    Acked,
    AuthVerified,
    Opened,
    RestartOwnStream,
)
from jobrelay.protocol.messages import (
    PROTOCOL_VERSION,
    Auth,
    Challenge,
    Heartbeat,
    Hello,
    Welcome,
    WorkerFrame,
)
from jobrelay.protocol.session_base import _Session
from jobrelay.protocol.session_states import ACCEPT, SessionConfig, SessionState
from jobrelay.protocol.streams import Receiver, Sender, StreamMarks, resolve_resume

__all__ = ["FacilitatorSession"]


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

    def lengthen_heartbeat(self, now: float, interval: float, timeout: float) -> None:
        """Both sides keep to a longer ``interval`` and ``timeout`` from now on, sent at once in
        a heartbeat (before our next one could be later than the worker's old timeout). Values
        not longer than the current ones are ignored: a session never gets shorter ones."""
        if not (self.heartbeat_interval < interval < timeout and timeout > self.heartbeat_timeout):
            return
        self._require_open("lengthen heartbeats")
        self.heartbeat_interval, self.heartbeat_timeout = interval, timeout
        ms_interval, ms_timeout = int(interval * 1000), int(timeout * 1000)
        self._send(Heartbeat(at=now, heartbeat_interval_ms=ms_interval, heartbeat_timeout_ms=ms_timeout))
        self.last_sent = now

    def reject(self, code: ErrorCode, detail: str) -> None:
        """Refuse a verified worker (for example: already connected elsewhere)."""
        self.close(code, detail)
