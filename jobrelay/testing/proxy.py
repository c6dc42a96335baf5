# A loopback TCP proxy that can sever every connection through it on demand: the demo and the
# cut/chaos tests put it between a worker and its facilitator to make real network failures.
# Invariant: it only listens on the given local host and only connects to the given target.
from __future__ import annotations

import contextlib
import socket
import threading

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forward ``listen_host:port`` (port 0 picks one) to ``target``; ``cut()`` severs all links.

    Use as a context manager, or call ``start()`` and ``stop()``.
    """

    def __init__(self, target: tuple[str, int], listen_host: str = "127.0.0.1", port: int = 0) -> None:
        self.target = target
        self._server = socket.create_server((listen_host, port))
        self._server.settimeout(0.2)
        self.port: int = self._server.getsockname()[1]
        self.url = f"ws://{listen_host}:{self.port}"
        self._links: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._blocked = threading.Event()
        self._running = threading.Event()
        self._running.set()
        self._thread = threading.Thread(target=self._accept_loop, name="jobrelay-proxy", daemon=True)
        self.connections = 0
        self.cuts = 0

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> TcpProxy:
        self._thread.start()
        return self

    def cut(self) -> int:
        """Sever every open connection (both directions, no close handshake); returns how many."""
        with self._lock:
            links, self._links = list(self._links), set()
        for sock in links:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        self.cuts += 1
        return len(links) // 2

    def stall(self, stalled: bool = True) -> None:
        """While stalled, nothing is forwarded and nothing is closed: a hung peer or network."""
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
            if self._blocked.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            with self._lock:
                self._links.update((client, upstream))
            self.connections += 1
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                while not self._running.wait(0.1):
                    if self._stop.is_set():
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            with self._lock:
                self._links.discard(src)
                self._links.discard(dst)
