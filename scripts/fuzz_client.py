"""The hostile client: WebSocket connections to a facilitator that speak WebSocket correctly and
send generated garbage (fuzz_frames.py), as fast as the socket takes it, without waiting for
replies.

Connection plans, drawn per connection from the seeded generator:
- ``unauth``: no handshake (or only a hello), then a few hard frames: the first one closes it;
- ``auth``: authenticate with a real worker key (fuzz_handshake.py), send many soft frames (the
  session must take them all without closing), then usually one hard frame;
- ``flood``: authenticate, then soft frames that get no reply, and never read the socket.
Each concurrent lane uses its own worker id, so lanes never replace each other's sessions.
Invariants: every wait is bounded; a lane ends its connection (close, bounded) before opening the
next; the frame budget is shared by all lanes and counts frames handed to the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fuzz_frames import Frame, FrameGen, Stream
from fuzz_handshake import HandshakeRefused, client_handshake
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

__all__ = ["Identity", "Tally", "attack"]

_TIMEOUT = 10.0  # longest wait for one handshake frame, connect or close
_NEW_DATA = 200  # new data per connection: well inside the facilitator's window (1000)
_PLANS = ("unauth", "auth", "flood")
_PLAN_WEIGHTS = (4, 5, 1)


@dataclass
class Identity:
    """A worker identity the client authenticates as; ``hwm`` follows its stream across
    connections (from each welcome)."""

    worker_id: str
    key: Ed25519PrivateKey
    epoch: str
    hwm: int = 500  # claimed as acknowledged on the first connection: room for duplicates


@dataclass
class Tally:
    """What the attack did."""

    frames: int = 0
    sessions: int = 0
    by_class: Counter[str] = field(default_factory=Counter)
    handshake_failures: list[str] = field(default_factory=list)
    budget: int = 0

    def left(self) -> int:
        return self.budget - self.frames


async def attack(
    url: str, identities: list[Identity], frames: int, seed: int, max_frame_bytes: int, stop_at: float
) -> Tally:
    """Send ``frames`` frames over ``len(identities)`` concurrent lanes (or stop at ``stop_at``,
    a monotonic deadline)."""
    tally = Tally(budget=frames)
    lanes = [
        _lane(url, ident, random.Random(f"{seed}/{i}"), tally, max_frame_bytes, stop_at)
        for i, ident in enumerate(identities)
    ]
    await asyncio.gather(*lanes)
    return tally


async def _lane(
    url: str, ident: Identity, rng: random.Random, tally: Tally, max_frame_bytes: int, stop_at: float
) -> None:
    gens = {fmt: FrameGen(rng, "worker", fmt, max_frame_bytes) for fmt in ("json", "msgpack")}
    while tally.left() > 0 and time.monotonic() < stop_at:
        plan = rng.choices(_PLANS, _PLAN_WEIGHTS)[0]
        try:
            async with asyncio.timeout(_TIMEOUT):
                ws = await connect(
                    url, max_size=None, compression=None, close_timeout=1.0, open_timeout=_TIMEOUT
                )
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            tally.handshake_failures.append(f"connect: {exc!r}")
            await asyncio.sleep(0.1)  # the facilitator refused or is busy: do not spin
            continue
        tally.sessions += 1
        readers: list[asyncio.Task[None]] = []  # none while the handshake reads; none in a flood
        try:
            if plan == "unauth":
                readers.append(asyncio.create_task(_drain(ws)))
                await _unauth(ws, gens["json"], rng, tally)
            else:
                await _authenticated(ws, ident, gens, rng, tally, plan, stop_at, readers)
        except ConnectionClosed:
            pass  # the facilitator closed it (after a hard frame, or it timed us out)
        except (HandshakeRefused, TimeoutError) as exc:
            tally.handshake_failures.append(f"{ident.worker_id}: {exc!r}"[:300])
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(_TIMEOUT):
                    await ws.close()
            for reader in readers:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
                    await reader


async def _drain(ws: ClientConnection) -> None:
    with contextlib.suppress(ConnectionClosed):
        async for _ in ws:
            pass


async def _send(ws: ClientConnection, tally: Tally, name: str, frame: Frame) -> None:
    data, text = frame
    await ws.send(data, text=text)
    tally.frames += 1
    tally.by_class[name] += 1


async def _unauth(ws: ClientConnection, gen: FrameGen, rng: random.Random, tally: Tally) -> None:
    stream = Stream()
    if rng.random() < 0.5:
        await _send(ws, tally, "hello", (b'{"type":"hello","version":1,"worker_id":"nobody"}', True))
    for _ in range(rng.randint(1, 3)):
        name, frame = gen.hard(stream) if rng.random() < 0.8 else gen.soft(stream)
        await _send(ws, tally, f"{name}@unauth", frame)


async def _authenticated(
    ws: ClientConnection,
    ident: Identity,
    gens: dict[str, FrameGen],
    rng: random.Random,
    tally: Tally,
    plan: str,
    stop_at: float,
    readers: list[asyncio.Task[None]],
) -> None:
    codecs = ("json", "msgpack") if rng.random() < 0.3 else ("json",)
    welcomed = await client_handshake(
        ws, worker_id=ident.worker_id, key=ident.key, epoch=ident.epoch, out_acked=ident.hwm,
        codecs=codecs, timeout=_TIMEOUT,
    )  # fmt: skip
    ident.hwm = welcomed.ack
    if plan != "flood":
        readers.append(asyncio.create_task(_drain(ws)))
    gen = gens[welcomed.codec]
    stream = Stream(hwm=welcomed.ack, next_seq=welcomed.ack + 1, new_left=0 if plan == "flood" else _NEW_DATA)
    count = min(tally.left(), 20_000 if plan == "flood" else rng.choice((50, 200, 1_000, 5_000)))
    for i in range(count):
        name, frame = gen.quiet(stream) if plan == "flood" else gen.soft(stream)
        await _send(ws, tally, name, frame)
        if i % 1024 == 1023 and time.monotonic() >= stop_at:
            return
    # What the facilitator accepted of the new data is its next welcome's ack.
    if plan == "auth" and rng.random() < 0.7:
        name, frame = gen.hard(stream)
        await _send(ws, tally, name, frame)
