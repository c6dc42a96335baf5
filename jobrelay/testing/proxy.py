# A loopback TCP proxy that makes real network failures on demand: the demo, the e2e tests and
# scripts/chaos put it between a worker and its facilitator. Faults: sever (FIN or RST), stall
# (a blackhole: nothing forwarded, nothing closed), block/refuse new connections, added latency
# and split writes (each chunk forwarded in small pieces, so peers see partial frames).
# Invariants: it only listens on the given local host and only connects to its current target;
# bytes are never dropped or reordered within a connection (TCP does not do that either), so
# every fault is one a real network can cause.
from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time

__all__ = ["TcpProxy"]

# SO_LINGER on with a zero timeout: close() sends RST and discards unsent data.
_LINGER_RST = struct.pack("ii", 1, 0)


def _close(sock: socket.socket, *, rst: bool) -> None:
    """Close with FIN, or with RST. A pump thread blocked in recv() holds the socket open past
    close(), so it is woken first: SHUT_RDWR (sends FIN) or, for a reset, SHUT_RD (sends nothing
    on Linux); the kernel then resets when the last reference goes (linger 0)."""
    with contextlib.suppress(OSError):
        if rst:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
        sock.shutdown(socket.SHUT_RD if rst else socket.SHUT_RDWR)
    sock.close()


class TcpProxy:
    """Forward ``listen_host:port`` (port 0 picks one) to ``target``; ``cut()`` severs all links.

    Use as a context manager, or call ``start()`` and ``stop()``. ``target`` may be reassigned
    (``retarget``) while running, e.g. after the facilitator restarted on another port: new
    connections go there.
    """

    def __init__(self, target: tuple[str, int], listen_host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self._server = socket.create_server((listen_host, port))
        self._server.settimeout(0.2)
        self.port: int = self._server.getsockname()[1]
        self.url = f"ws://{listen_host}:{self.port}"
        self._links: set[socket.socket] = set()
        self._resetting: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._blocked = threading.Event()
        self._refused = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._latency = 0.0
        self._split = 0
        self._thread = threading.Thread(target=self._accept_loop, name="jobrelay-proxy", daemon=True)
        self.connections = 0
        self.cuts = 0
        # time.monotonic() of every connection accepted, forwarded or not (refused, blocked):
        # how often peers try, e.g. to check a client's backoff or circuit breaker.
        self.attempts: list[float] = []

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def retarget(self, target: tuple[str, int]) -> None:
        """Send new connections to ``target`` (open ones are left alone)."""
        self.target = target

    def cut(self, *, rst: bool = False) -> int:
        """Sever every open connection, both directions, no close handshake; returns how many.

        Args:
            rst: reset the connections (RST, unsent data discarded) instead of shutting them down
                (FIN): what a crashed host's kernel or a stateful firewall does.
        """
        with self._lock:
            links, self._links = list(self._links), set()
            if rst:
                self._resetting.update(links)  # their pumps must not send a FIN first
        for sock in links:
            _close(sock, rst=rst)
        self.cuts += 1
        return len(links) // 2

    def stall(self, stalled: bool = True) -> None:
        """While stalled, nothing is forwarded and nothing is closed: a hung peer or a blackholed
        network (what was held is delivered, in order, if the connection outlives the stall)."""
        if stalled:
            self._running.clear()
        else:
            self._running.set()

    def block(self, blocked: bool = True) -> None:
        """While blocked, new connections are accepted and closed at once (a down peer)."""
        if blocked:
            self._blocked.set()
        else:
            self._blocked.clear()

    def refuse(self, refused: bool = True) -> None:
        """While refused, new connections are reset as soon as they are accepted (a port with
        nothing listening, or a firewall's reject)."""
        if refused:
            self._refused.set()
        else:
            self._refused.clear()

    def delay(self, seconds: float) -> None:
        """Hold each chunk ``seconds`` before forwarding it (0: no added latency)."""
        self._latency = max(0.0, seconds)

    def split(self, size: int) -> None:
        """Forward each chunk in pieces of at most ``size`` bytes, each its own TCP segment
        (0: whole chunks), so the receiver reads frames in parts."""
        self._split = max(0, size)

    def stop(self) -> None:
        self._stop.set()
        self._running.set()
        self.cut()
        self._server.close()
        if self._thread.is_alive():
            self._thread.join(timeout=2)

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.attempts.append(time.monotonic())
            if self._blocked.is_set() or self._refused.is_set():
                _close(client, rst=self._refused.is_set())
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._links.update((client, upstream))
            self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _forward(self, dst: socket.socket, data: bytes) -> None:
        if self._latency:
            time.sleep(self._latency)  # the fault itself: this link is slow
        size = self._split
        if not size or len(data) <= size:
            dst.sendall(data)
            return
        for start in range(0, len(data), size):
            dst.sendall(data[start : start + size])
            # A short pause between pieces, so the receiver's read returns a partial frame
            # instead of the kernel coalescing the pieces before it reads.
            time.sleep(0.001)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while not self._running.wait(0.1):
                    if self._stop.is_set():
                        return
                self._forward(dst, data)
        except OSError:
            pass
        finally:
            with self._lock:
                resetting = src in self._resetting
                self._resetting.discard(src)
                self._links.discard(src)
                self._links.discard(dst)
            for sock in (src, dst):
                _close(sock, rst=resetting)
