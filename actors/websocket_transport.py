# The worker's byte pipe to the facilitator over websocket-client. The only module that imports
# websocket-client, so another transport (an in-memory pair, QUIC…) plugs in without touching the
# actors. Invariants: every failure surfaces as TransportError/TransportClosed; a message larger
# than the frame limit is refused from its frame headers (FrameTooLarge) before its payload is
# read, fragments included, so a hostile peer cannot make the worker buffer it.
from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable

import websocket
from websocket._abnf import frame_buffer

try:  # websockets (the facilitator's server library) masks in C
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a websockets build without its C extension
    from websockets.utils import apply_mask

from jobrelay.common.transport import FrameTooLarge, ServerBusy, TransportClosed, TransportError
from jobrelay.protocol.come_back import parse_retry_after

__all__ = ["MaskedFrame", "WebSocketTransport"]

_DATA = (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY)


class MaskedFrame(websocket.ABNF):
    """A data frame masked by websockets' C ``apply_mask``: websocket-client masks in Python,
    0.8 ms per 100 KB frame, about an eighth of the worker's CPU in a backlog replay
    (scripts/bench_backlog.py); the C function takes 6 µs. The bytes on the wire are the same."""

    def __init__(self, data: bytes | str, opcode: int) -> None:
        # Encoded first: the header counts bytes (websocket-client's create_frame does the same).
        super().__init__(1, 0, 0, 0, opcode, 1, data.encode("utf-8") if isinstance(data, str) else data)

    def _get_masked(self, mask_key: str | bytes) -> bytes:
        key = mask_key.encode("latin-1") if isinstance(mask_key, str) else mask_key
        data = self.data.encode("utf-8") if isinstance(self.data, str) else self.data
        return key + apply_mask(data, key)


class _GuardedFrames(frame_buffer):
    """websocket-client's frame reader, checking each frame's length as soon as its header is
    read (websocket-client itself reads the whole payload first)."""

    def __init__(self, recv_fn: Callable[[int], bytes], limit: int) -> None:
        super().__init__(recv_fn, True)
        self.limit = limit
        self.pending = 0  # bytes of the message's earlier fragments

    def recv_length(self) -> None:
        super().recv_length()
        assert self.header is not None and self.length is not None  # read just now
        if self.header[4] < 0x8 and self.pending + self.length > self.limit:  # data, not control
            raise FrameTooLarge(self.pending + self.length, self.limit)


class WebSocketTransport:
    """websocket-client behind the Transport interface (``ws://`` and ``wss://``).

    Args:
        ca_file: CA bundle for ``wss://`` ("" for the system's).
        max_frame_bytes: the largest message read; larger ones raise FrameTooLarge unread.
    """

    def __init__(self, ca_file: str = "", max_frame_bytes: int = 1_048_576) -> None:
        self._ca_file = ca_file
        self._limit = max_frame_bytes
        self._ws: websocket.WebSocket | None = None
        self._frames: _GuardedFrames | None = None

    def connect(self, url: str, timeout: float) -> None:
        sslopt: dict[str, object] = {}
        if url.startswith("wss://"):
            sslopt = {"cert_reqs": ssl.CERT_REQUIRED}
            if self._ca_file:
                sslopt["ca_certs"] = self._ca_file
        try:
            ws = websocket.create_connection(
                url, timeout=timeout, sslopt=sslopt, enable_multithread=True, skip_utf8_validation=True
            )
        except websocket.WebSocketBadStatusException as exc:
            # An HTTP answer instead of a WebSocket upgrade: say so in one line, not the dump of
            # headers and body websocket-client puts in its message.
            status = f"{exc.status_code} {exc.status_message or ''}".strip()
            retry_after = parse_retry_after((exc.resp_headers or {}).get("retry-after"))
            if exc.status_code == 503 and retry_after is not None:
                raise ServerBusy(
                    f"{url} is busy admitting other workers (HTTP 503): asked to come back in "
                    f"{retry_after:g}s",
                    retry_after,
                ) from exc
            raise TransportError(
                f"cannot connect to {url}: it answered HTTP {status}, not a WebSocket upgrade "
                "(is this the facilitator's HTTP port instead of its worker port, --port?)"
            ) from exc
        except (OSError, websocket.WebSocketException) as exc:
            raise TransportError(f"cannot connect to {url}: {exc}") from exc
        ws.settimeout(None)  # the reader blocks; liveness is the heartbeat's job
        if ws.sock is not None:
            ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # websocket-client has no size limit: its reader is replaced by one that checks headers.
        self._frames = ws.frame_buffer = _GuardedFrames(ws._recv, self._limit)
        self._ws = ws

    def send(self, data: bytes, binary: bool) -> None:
        ws = self._ws
        if ws is None:
            raise TransportClosed("not connected")
        opcode = websocket.ABNF.OPCODE_BINARY if binary else websocket.ABNF.OPCODE_TEXT
        try:
            ws.send_frame(MaskedFrame(data, opcode))
        except (OSError, websocket.WebSocketException) as exc:
            raise TransportClosed(f"send failed: {exc}") from exc

    def recv(self) -> bytes | str:
        ws, frames = self._ws, self._frames
        if ws is None or frames is None:
            raise TransportClosed("not connected")
        try:
            opcode, data = self._read_message(ws, frames)
        except FrameTooLarge:
            raise
        except (OSError, websocket.WebSocketException) as exc:
            raise TransportClosed(str(exc) or type(exc).__name__) from exc
        if opcode == websocket.ABNF.OPCODE_TEXT:
            return data.decode("utf-8", "surrogateescape")  # bad UTF-8 is the codec's to refuse
        return data

    @staticmethod
    def _read_message(ws: websocket.WebSocket, frames: _GuardedFrames) -> tuple[int, bytes]:
        """Read frames until one whole data message (answering pings on the way)."""
        parts: list[bytes] = []
        opcode = 0
        frames.pending = 0
        while True:
            frame = ws.recv_frame()  # type: ignore[no-untyped-call]
            if frame.opcode == websocket.ABNF.OPCODE_CLOSE:
                data = bytes(frame.data)
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
                reason = data[2:].decode(errors="replace").strip()
                raise TransportClosed(f"closed by peer ({code}{reason and ' ' + reason})")
            if frame.opcode == websocket.ABNF.OPCODE_PING:
                ws.pong(frame.data)
                continue
            if frame.opcode == websocket.ABNF.OPCODE_PONG:
                continue
            if (frame.opcode in _DATA) == bool(
                parts or opcode
            ):  # a new message mid-message, or a stray continuation
                raise websocket.WebSocketProtocolException("illegal frame sequence")
            opcode = opcode or frame.opcode
            parts.append(bytes(frame.data))
            frames.pending += len(frame.data)
            if frame.fin:
                frames.pending = 0
                return opcode, b"".join(parts)

    def close(self, code: int = 1000, reason: str = "") -> None:
        ws, self._ws = self._ws, None
        if ws is None:
            return
        # send_close + shutdown, not close(): close() waits for the peer's reply and would race
        # the reader thread, which is blocked in recv() and wakes up when the socket goes.
        with contextlib.suppress(OSError, websocket.WebSocketException):
            ws.send_close(status=code, reason=reason.encode()[:120])
        with contextlib.suppress(OSError, websocket.WebSocketException):
            ws.shutdown()  # type: ignore[no-untyped-call]
