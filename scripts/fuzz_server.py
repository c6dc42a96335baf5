"""The hostile server: a `websockets` asyncio server that a real worker dials. It answers the
handshake correctly (fuzz_handshake.py) and then, in ``hostile`` mode, sends generated garbage
(fuzz_frames.py) as fast as the worker reads; in ``good`` mode it behaves: acknowledges what the
worker sends, beats, sends a few real jobs and records their statuses.

Hostile connection plans: ``preauth`` (a hard frame instead of the challenge or the welcome) or
``open`` (many soft frames, then usually one hard frame, then close).
It runs on its own thread and event loop (``start``/``stop``); the orchestrator switches modes
with ``set_mode``, which also closes the connections of the other mode.
Invariants: every receive and close is bounded; ``stop`` joins the thread with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import threading
import time
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fuzz_client import Tally
from fuzz_frames import FrameGen, Stream
from fuzz_handshake import HandshakeRefused, ServerStream, server_handshake
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from jobrelay.protocol.messages import Ack, Data, Heartbeat, JobRequest

__all__ = ["HostileServer"]

_TIMEOUT = 10.0
_NEW_DATA = 20  # new job requests per hostile connection: inside the window, and each is a job


class HostileServer:
    """See the module docstring. ``url`` is valid after ``start``."""

    def __init__(self, seed: int, frames: int, max_frame_bytes: int) -> None:
        self.key = Ed25519PrivateKey.generate()  # the facilitator key the worker pins
        self.rng = random.Random(f"{seed}/server")
        self.tally = Tally(budget=frames)
        self.max_frame_bytes = max_frame_bytes
        self.mode = "good"
        self.stream = ServerStream(epoch=secrets.token_hex(8))
        self.url = ""
        self.good_sessions = 0
        self.statuses: dict[str, list[str]] = {}  # job id → statuses received in good mode
        self.good_jobs: list[str] = []
        self.errors: list[str] = []
        self._gens = {
            fmt: FrameGen(self.rng, "facilitator", fmt, max_frame_bytes) for fmt in ("json", "msgpack")
        }
        self._conns: set[ServerConnection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # ------------------------------------------------------------ from the orchestrator's thread

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._run, name="hostile-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the hostile server did not start")

    def stop(self, timeout: float = 10.0) -> None:
        loop = self._loop
        if loop is not None and self._server is not None:
            loop.call_soon_threadsafe(self._server.close)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError("the hostile server did not stop")

    def set_mode(self, mode: str) -> None:
        """Switch to ``good`` or ``hostile``; open connections of the old mode are closed."""
        self.mode = mode
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._close_all)

    def send_jobs(self, job_ids: list[str]) -> None:
        """Good mode: send these echo jobs on the next good connection (or the current one)."""
        self.good_jobs.extend(job_ids)

    # ------------------------------------------------------------ the loop thread

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        async with serve(
            self._handle, "127.0.0.1", 0, max_size=None, compression=None, close_timeout=1.0
        ) as server:
            self._server = server
            port = next(iter(server.sockets)).getsockname()[1]
            self.url = f"ws://127.0.0.1:{port}"
            self._ready.set()
            await server.wait_closed()

    def _close_all(self) -> None:
        for ws in list(self._conns):
            task = asyncio.get_running_loop().create_task(ws.close(1001, "mode change"))
            self._tasks.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(self._tasks.discard)

    async def _handle(self, ws: ServerConnection) -> None:
        mode = self.mode
        self._conns.add(ws)
        try:
            if mode == "good":
                await self._good(ws)
            else:
                await self._hostile(ws)
        except (ConnectionClosed, TimeoutError):
            pass
        except HandshakeRefused as exc:
            self.errors.append(f"{mode}: {exc}"[:300])
        finally:
            self._conns.discard(ws)

    async def _hostile(self, ws: ServerConnection) -> None:
        rng, tally = self.rng, self.tally
        if tally.left() <= 0:
            await asyncio.sleep(0.5)  # budget spent: keep the worker waiting, not spinning
            return
        tally.sessions += 1
        if rng.random() < 0.1:  # garbage where the handshake goes on
            await asyncio.wait_for(ws.recv(), _TIMEOUT)
            name, frame = self._gens["json"].hard(Stream())
            await self._send(ws, f"{name}@preauth", frame)
            return
        ok = await server_handshake(
            ws, self.stream, key=self.key, timeout=_TIMEOUT, max_frame_bytes=self.max_frame_bytes
        )
        gen = self._gens[ok.codec]
        stream = Stream(hwm=ok.hwm, next_seq=ok.hwm + 1, new_left=_NEW_DATA, acked_ok=ok.auth.out_acked)
        reader = asyncio.create_task(_drain(ws))
        try:
            count = min(tally.left(), rng.choice((50, 200, 1_000, 5_000)))
            for _ in range(count):
                name, frame = gen.soft(stream)
                await self._send(ws, name, frame)
            self.stream.last_seq = max(self.stream.last_seq, stream.next_seq - 1)
            if rng.random() < 0.7:
                name, frame = gen.hard(stream)
                await self._send(ws, name, frame)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                await reader

    async def _send(self, ws: ServerConnection, name: str, frame: tuple[bytes, bool]) -> None:
        await ws.send(frame[0], text=frame[1])
        self.tally.frames += 1
        self.tally.by_class[name] += 1

    async def _good(self, ws: ServerConnection) -> None:
        ok = await server_handshake(
            ws, self.stream, key=self.key, timeout=_TIMEOUT, max_frame_bytes=self.max_frame_bytes
        )
        self.good_sessions += 1
        codec = ok.codec
        decode: Any = msgspec.msgpack.decode if codec == "msgpack" else msgspec.json.decode
        beats = asyncio.create_task(self._beat(ws, codec))
        next_seq, sent = ok.hwm + 1, 0
        try:
            async for message in ws:
                # Send the jobs asked for (few: well inside the window), each once per session.
                while sent < len(self.good_jobs):
                    job = JobRequest(job_id=self.good_jobs[sent], kind="echo", payload={"n": sent})
                    await ws.send(_encode(codec, Data(seq=next_seq, body=job)))
                    next_seq, sent = next_seq + 1, sent + 1
                    self.stream.last_seq = max(self.stream.last_seq, next_seq - 1)
                upto = self._on_worker_frame(decode(message))
                if upto:
                    await ws.send(_encode(codec, Ack(upto=upto)))  # stored at once: ours is no store
        finally:
            beats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beats

    def _on_worker_frame(self, doc: Any) -> int:
        """Record the statuses in a worker frame; the highest seq it carried (0: no data)."""
        if not isinstance(doc, dict):
            return 0
        items = (
            doc.get("items", []) if doc.get("type") == "batch" else [doc] if doc.get("type") == "data" else []
        )
        upto = 0
        for item in items:
            body = item.get("body", {})
            if body.get("type") == "job_status":
                self.statuses.setdefault(body["job_id"], []).append(body["status"])
            upto = max(upto, int(item["seq"]))
        return upto

    async def _beat(self, ws: ServerConnection, codec: str) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(1.0)
                await ws.send(_encode(codec, Heartbeat(at=time.time())))


def _encode(codec: str, frame: msgspec.Struct) -> str | bytes:
    if codec == "msgpack":
        return msgspec.msgpack.encode(frame)
    return msgspec.json.encode(frame).decode()


async def _drain(ws: ServerConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass
