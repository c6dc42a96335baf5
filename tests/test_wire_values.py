"""Hostile values and frames over real loopback sockets (issue 11, points 2, 3 and 7): an
authorized worker cannot break the facilitator's reads with one frame, and a hostile facilitator
cannot make a worker buffer a huge frame."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from pathlib import Path
from typing import Any

import msgspec
import pytest

from jobrelay.common.transport import FrameTooLarge
from jobrelay.facilitator.http_api import serve_facilitator
from jobrelay.protocol.session import OutFrame
from tests.facilitator_client import KEYS, TestWorker, make_facilitator
from tests.test_health import http

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize(
    "value",
    [float("nan"), float("inf"), msgspec.msgpack.Ext(1, b"x"), b"raw", 2**64 - 1],
    ids=["nan", "inf", "ext", "bin", "uint64"],
)
def test_a_hostile_value_is_refused_before_it_is_stored_and_reads_keep_working(
    tmp_path: Path, value: Any
) -> None:
    fac = make_facilitator(tmp_path, formats=("msgpack", "json"))
    server = serve_facilitator(fac)
    worker = TestWorker(fac.url, "w1", KEYS["w1"], formats=("msgpack",))
    try:
        worker.connect()
        frame = {
            "type": "data",
            "seq": 1,
            "body": {"type": "machine_specs", "at": 1.0, "specs": {"v": [value]}},
        }
        worker.send_raw(OutFrame(msgspec.msgpack.encode(frame), True))
        assert worker.wait_closed() == 4000
        assert worker.closed is not None and worker.closed.code is not None
        assert worker.closed.code.value == "invalid_field" and "$.body.specs.v[0]" in worker.closed.detail
        assert worker.store.out_acked == 0  # never acknowledged
        for path in ("/healthz", "/workers", "/metrics"):
            status, _ = http("GET", server.url + path)
            assert status in (200, 503), path  # 503 = no worker connected, never a 500
        assert fac.workers()[0].specs is None
    finally:
        worker.disconnect()
        server.stop()
        fac.stop()


def test_a_text_frame_on_a_msgpack_session_is_malformed(tmp_path: Path) -> None:
    fac = make_facilitator(tmp_path, formats=("msgpack", "json"))
    worker = TestWorker(fac.url, "w1", KEYS["w1"], formats=("msgpack",))
    try:
        worker.connect()
        worker.send_raw(OutFrame(b'{"type":"heartbeat","at":1.0}', False))
        assert worker.wait_closed() == 4000
        assert worker.closed is not None and worker.closed.code is not None
        assert worker.closed.code.value == "malformed_frame"
    finally:
        worker.disconnect()
        fac.stop()


def test_a_message_over_the_limit_gets_an_error_frame_before_the_close(tmp_path: Path) -> None:
    fac = make_facilitator(tmp_path, max_frame_bytes=4096)
    worker = TestWorker(fac.url, "w1", KEYS["w1"])
    try:
        worker.connect()
        worker.send_raw(OutFrame(b'{"type":"heartbeat","at":1.0,"x":"' + b"a" * 10_000 + b'"}', False))
        assert worker.wait_closed() == 1009  # refused from its header by websockets
        assert worker.closed is not None and worker.closed.code is not None
        assert worker.closed.code.value == "frame_too_large"  # our error frame came first
        assert fac.stats().frames_in == 2  # hello and auth: the big one was never read whole
    finally:
        worker.disconnect()
        fac.stop()


class _HostileServer:
    """A TCP server that completes the WebSocket upgrade, then announces a huge binary frame and
    sends only its first bytes, recording what the client sends back."""

    def __init__(self, announced: int) -> None:
        self.announced = announced
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import base64
        import hashlib

        try:
            conn, _ = self.sock.accept()
            with conn:
                conn.settimeout(10)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(4096)
                key = next(
                    line.split(b":", 1)[1].strip()
                    for line in request.split(b"\r\n")
                    if line.lower().startswith(b"sec-websocket-key")
                )
                accept = base64.b64encode(
                    hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
                )
                conn.sendall(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
                )
                conn.sendall(b"\x82\x7f" + struct.pack("!Q", self.announced) + b"\x00" * 65536)
                with contextlib.suppress(OSError):
                    while chunk := conn.recv(65536):
                        self.received += chunk
        except OSError:
            pass
        finally:
            self.done.set()

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)


def test_the_worker_transport_refuses_a_huge_frame_from_its_header() -> None:
    from jobrelay.actors.websocket_transport import WebSocketTransport

    server = _HostileServer(announced=64 * 1024 * 1024)
    transport = WebSocketTransport(max_frame_bytes=1_048_576)
    try:
        transport.connect(f"ws://127.0.0.1:{server.port}", 5.0)
        with pytest.raises(FrameTooLarge) as info:
            transport.recv()  # returns at once: nothing but the header is read
        assert info.value.size == 64 * 1024 * 1024
        transport.close(1009, "frame_too_large")
        assert server.done.wait(10)
        assert b"\x88" in server.received[:2]  # a close frame came back (masked, from the client)
    finally:
        transport.close()
        server.close()


def test_a_refused_welcome_is_answered_in_the_negotiated_codec() -> None:
    from jobrelay.protocol import messages as m
    from jobrelay.protocol.auth import NonceRegistry
    from jobrelay.protocol.session import FacilitatorSession, SessionConfig, WorkerSession
    from jobrelay.protocol.streams import StreamMarks
    from tests.protocol_harness import AUTHORIZED, FACILITATOR_KEY, FACILITATOR_PUBLIC, KEY, WORKER_ID

    config = SessionConfig(formats=("msgpack",))
    w = WorkerSession(
        worker_id=WORKER_ID,
        key=KEY,
        facilitator_key=FACILITATOR_PUBLIC,
        nonce="01" * 32,
        marks=StreamMarks("e", 0, 0, "", 0),
        now=1.0,
        config=config,
    )
    f = FacilitatorSession(
        nonce="02" * 32,
        session_id="s",
        key=FACILITATOR_KEY,
        authorized=AUTHORIZED,
        nonces=NonceRegistry(),
        now=1.0,
        config=config,
    )
    (hello,) = w.data_to_send()
    f.receive_data(hello.data.decode(), 1.0, False)
    (challenge,) = f.data_to_send()  # a real, signed challenge choosing msgpack
    w.receive_data(challenge.data.decode(), 1.0, False)
    w.data_to_send()  # auth
    w.receive_data(msgspec.json.encode(m.Welcome(session_id="s", ack=9, out_epoch="f")).decode(), 1.0, False)
    (error,) = w.data_to_send()
    assert error.binary and msgspec.msgpack.decode(error.data)["code"] == "ack_out_of_range"


def test_the_worker_masks_its_frames_exactly_as_websocket_client_would() -> None:
    """The worker's frames are masked by websockets' C apply_mask instead of websocket-client's
    Python loop: the bytes on the wire must not change, for any length header size."""
    import websocket

    from jobrelay.actors.websocket_transport import MaskedFrame

    for size in (0, 1, 125, 126, 65535, 65536, 100_003):
        data = bytes(range(256)) * (size // 256) + bytes(size % 256)
        for opcode in (websocket.ABNF.OPCODE_TEXT, websocket.ABNF.OPCODE_BINARY):
            ours, theirs = MaskedFrame(data, opcode), websocket.ABNF.create_frame(data, opcode)
            ours.get_mask_key = theirs.get_mask_key = lambda n: b"\x9a\x01\xf3\x5c"
            assert ours.format() == theirs.format()


def test_a_text_frame_given_as_str_is_counted_in_bytes() -> None:
    import websocket

    from jobrelay.actors.websocket_transport import MaskedFrame

    ours, theirs = MaskedFrame("héllo", 1), websocket.ABNF.create_frame("héllo", 1)
    ours.get_mask_key = theirs.get_mask_key = lambda n: b"\x01\x02\x03\x04"
    assert ours.format() == theirs.format()
