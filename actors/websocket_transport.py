# The worker's byte pipe to the facilitator over websocket-client. The only module that imports
# websocket-client, so another transport (an in-memory pair, QUIC…) plugs in without touching the
# actors. Invariant: every failure surfaces as TransportError/TransportClosed.
from __future__ import annotations

import contextlib
import socket
import ssl

import websocket

from jobrelay.common.transport import TransportClosed, TransportError

__all__ = ["WebSocketTransport"]


class WebSocketTransport:
    """websocket-client behind the Transport interface (``ws://`` and ``wss://``)."""

    def __init__(self, ca_file: str = "") -> None:
        self._ca_file = ca_file
        self._ws: websocket.WebSocket | None = None

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
        except (OSError, websocket.WebSocketException) as exc:
            raise TransportError(f"cannot connect to {url}: {exc}") from exc
        ws.settimeout(None)  # the reader blocks; liveness is the heartbeat's job
        if ws.sock is not None:
            ws.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._ws = ws

    def send(self, data: bytes, binary: bool) -> None:
        ws = self._ws
        if ws is None:
            raise TransportClosed("not connected")
        opcode = websocket.ABNF.OPCODE_BINARY if binary else websocket.ABNF.OPCODE_TEXT
        try:
            ws.send(data, opcode)
        except (OSError, websocket.WebSocketException) as exc:
            raise TransportClosed(f"send failed: {exc}") from exc

    def recv(self) -> bytes | str:
        ws = self._ws
        if ws is None:
            raise TransportClosed("not connected")
        try:
            opcode, data = ws.recv_data()
        except (OSError, websocket.WebSocketException) as exc:
            raise TransportClosed(str(exc) or type(exc).__name__) from exc
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
            raise TransportClosed(f"closed by peer ({code} {data[2:].decode(errors='replace')})")
        if opcode == websocket.ABNF.OPCODE_TEXT:
            return data.decode("utf-8", "replace") if isinstance(data, bytes) else data
        return bytes(data)

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
