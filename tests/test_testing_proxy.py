"""TcpProxy's faults behave as the network failures they stand for: a reset is a reset, a
refused connection never reaches the target, split and delayed bytes arrive intact and in order,
a stall holds bytes without closing, and a retarget sends new connections to the new port."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from jobrelay.testing.proxy import TcpProxy

pytestmark = pytest.mark.timeout(30)


class EchoServer:
    """Echoes every read back as one write; counts connections and reads."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.accepted = 0
        self.reads = 0
        self._threads: list[threading.Thread] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepted += 1
                threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError), conn:
            while data := conn.recv(65536):
                self.reads += 1
                conn.sendall(data)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.close()


def connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    return sock


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return data


def test_rst_cut_resets_the_connection(echo: EchoServer) -> None:
    with TcpProxy(("127.0.0.1", echo.port)) as proxy, connect(proxy) as sock:
        sock.sendall(b"ping")
        assert read_exactly(sock, 4) == b"ping"
        assert proxy.cut(rst=True) == 1
        with pytest.raises(ConnectionResetError):
            sock.recv(10)


def test_refused_connections_never_reach_the_target(echo: EchoServer) -> None:
    with TcpProxy(("127.0.0.1", echo.port)) as proxy:
        proxy.refuse()
        with pytest.raises(ConnectionResetError), connect(proxy) as sock:  # at connect or first read
            sock.sendall(b"x")
            sock.recv(10)
        assert echo.accepted == 0
        proxy.refuse(False)
        with connect(proxy) as sock:
            sock.sendall(b"back")
            assert read_exactly(sock, 4) == b"back"


def test_split_and_delayed_bytes_arrive_intact_in_order(echo: EchoServer) -> None:
    payload = bytes(range(256)) * 8  # 2 KiB
    with TcpProxy(("127.0.0.1", echo.port)) as proxy, connect(proxy) as sock:
        proxy.split(100)
        proxy.delay(0.05)
        started = time.monotonic()
        sock.sendall(payload)
        assert read_exactly(sock, len(payload)) == payload
        assert time.monotonic() - started >= 0.1  # delayed on the way there and back
        assert echo.reads > 1  # the target read the one write in pieces


def test_a_stall_holds_bytes_without_closing(echo: EchoServer) -> None:
    with TcpProxy(("127.0.0.1", echo.port)) as proxy, connect(proxy) as sock:
        proxy.stall()
        sock.sendall(b"held")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(10)
        proxy.stall(False)
        sock.settimeout(5)
        assert read_exactly(sock, 4) == b"held"


def test_retarget_sends_new_connections_to_the_new_port(echo: EchoServer) -> None:
    other = EchoServer()
    try:
        with TcpProxy(("127.0.0.1", echo.port)) as proxy:
            proxy.retarget(("127.0.0.1", other.port))
            with connect(proxy) as sock:
                sock.sendall(b"new")
                assert read_exactly(sock, 3) == b"new"
            assert (echo.accepted, other.accepted) == (0, 1)
    finally:
        other.close()
