"""One publisher per peer for scripts/bench_peers.py: each publishes `n` copies of one payload with
at most WINDOW of them unacknowledged, and returns messages/s from the first publish to the last
acknowledgement. The client libraries are imported inside the functions: bench_peers.py installs
them first when they are missing.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

import bench_e2e
import msgspec
from bench_e2e import jobrelay_worker

from jobrelay.actors import Worker
from jobrelay.protocol.messages import WorkerEvent

WINDOW = 1_000  # publishes in flight (sent, not yet acknowledged) for every peer
TIMEOUT = 300.0  # for one round of one peer


def jobrelay_body(size: int) -> WorkerEvent:
    """A WorkerEvent whose encoding (what the worker stores and sends as the body) is `size` B."""
    empty = len(msgspec.json.encode(WorkerEvent(event="bench", at=0.0, detail="")))
    return WorkerEvent(event="bench", at=0.0, detail="x" * max(0, size - empty))


def acked_count(worker: Worker) -> int:
    return worker.snapshot().counter("acked")


def jobrelay(tmp: Path, n: int, size: int) -> float:
    """Durable end to end: publish_many() into the worker's outbox (durable before it is sent),
    sent over the session's window (WINDOW unacknowledged at most: bench_e2e's facilitator is
    started with that max_inflight), stored by the facilitator (durability full) and
    acknowledged back."""
    assert bench_e2e.WINDOW == WINDOW  # the window every other peer gets
    body = jobrelay_body(size)
    with jobrelay_worker(tmp, 2 * n) as (worker, _):
        start = acked_count(worker)
        t0 = time.perf_counter()
        futures = [worker.outbox.publish_many([body] * min(WINDOW, n - i)) for i in range(0, n, WINDOW)]
        for f in futures:
            f.get(timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        # The acked counter moves as each ack arrives (the outbox deletes acked rows later).
        while acked_count(worker) < start + n:
            if time.monotonic() > deadline:
                raise RuntimeError("jobrelay: acks did not arrive in time")
            time.sleep(0.001)  # polling with a deadline
        return n / (time.perf_counter() - t0)


def mqtt(port: int, n: int, payload: bytes) -> float:
    """paho-mqtt, QoS 1 (each publish acknowledged by PUBACK) to mosquitto."""
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    connected, done = threading.Event(), threading.Event()
    window = threading.Semaphore(WINDOW)
    acked = 0

    def on_connect(client: paho.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        connected.set()

    def on_publish(client: paho.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        nonlocal acked
        acked += 1  # called on the client's one network thread
        window.release()
        if acked == n:
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}")
    # The window is kept here, not by paho's max_inflight_messages: paho scans every message it
    # holds on each PUBACK, which at 1,000 in flight costs it 2-3x its throughput.
    client.max_inflight_messages_set(0)
    client.on_connect, client.on_publish = on_connect, on_publish
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        if not connected.wait(10):
            raise RuntimeError("mqtt: not connected in 10 s")
        t0 = time.perf_counter()
        for _ in range(n):
            if not window.acquire(timeout=TIMEOUT):
                raise RuntimeError(f"mqtt: no PUBACK for {TIMEOUT:g} s")
            client.publish("bench", payload, qos=1)
        if not done.wait(TIMEOUT):
            raise RuntimeError(f"mqtt: {acked} of {n} acknowledged in time")
        return n / (time.perf_counter() - t0)
    finally:
        client.disconnect()
        client.loop_stop()


def nats(port: int, n: int, payload: bytes, name: str) -> float:
    """nats-py, JetStream publish_async with its PubAck, into a stream with file storage."""
    return asyncio.run(asyncio.wait_for(_nats(port, n, payload, name), TIMEOUT))


async def _nats(port: int, n: int, payload: bytes, name: str) -> float:
    import nats as nats_py
    from nats.js.api import StorageType

    nc = await nats_py.connect(f"nats://127.0.0.1:{port}", allow_reconnect=False)
    try:
        # publish_async waits when WINDOW acks are outstanding
        js = nc.jetstream(publish_async_max_pending=WINDOW)
        await js.add_stream(name=name, subjects=[name], storage=StorageType.FILE)
        t0 = time.perf_counter()
        futures = [await js.publish_async(name, payload) for _ in range(n)]
        await asyncio.gather(*futures)  # raises the first failed publish
        rate = n / (time.perf_counter() - t0)
        await js.delete_stream(name)
        return rate
    finally:
        await nc.close()


def rabbitmq(port: int, n: int, payload: bytes, queue: str) -> float:
    """pika's SelectConnection, publisher confirms, persistent messages into a durable queue; the
    next publish goes out as each confirm frees a place in the window."""
    return _Confirms(port, n, payload, queue).run()


class _Confirms:
    """One publisher-confirms run on pika's own I/O loop (callbacks all run on this thread)."""

    def __init__(self, port: int, n: int, payload: bytes, queue: str) -> None:
        import pika  # type: ignore[import-untyped]

        self.pika: Any = pika
        self.n, self.payload, self.queue = n, payload, queue
        self.props = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
        self.sent = self.acked = self.nacked = self.confirmed = 0
        self.t0 = self.t1 = 0.0
        self.errors: list[str] = []
        self.channel: Any = None
        params = pika.ConnectionParameters(host="127.0.0.1", port=port, connection_attempts=3)
        self.connection: Any = pika.SelectConnection(
            params, on_open_callback=lambda c: c.channel(on_open_callback=self.on_channel),
            on_open_error_callback=self.on_open_error, on_close_callback=self.on_close,
        )  # fmt: skip

    def run(self) -> float:
        loop = self.connection.ioloop
        timer = loop.call_later(TIMEOUT, self.on_timeout)
        try:
            loop.start()  # until on_close or on_open_error stops it
        finally:
            # Interrupted (Ctrl-C), the socket is left to close with the broker, which goes next.
            loop.remove_timeout(timer)
        if self.errors:
            raise RuntimeError(f"rabbitmq: {self.errors[0]}")
        if self.nacked:
            raise RuntimeError(f"rabbitmq: {self.nacked} publishes nacked")
        return self.n / (self.t1 - self.t0)

    def on_channel(self, channel: Any) -> None:
        self.channel = channel
        channel.queue_declare(
            self.queue, durable=True,
            callback=lambda _f: channel.confirm_delivery(self.on_confirm, callback=self.on_selected),
        )  # fmt: skip

    def on_selected(self, _frame: Any) -> None:
        self.t0 = time.perf_counter()
        self.publish_up_to_window()

    def publish_up_to_window(self) -> None:
        while self.sent < self.n and self.sent - self.acked - self.nacked < WINDOW:
            self.channel.basic_publish("", self.queue, self.payload, self.props)
            self.sent += 1

    def on_confirm(self, frame: Any) -> None:
        # A confirm with `multiple` covers every delivery tag up to its own (tags count from 1).
        tag, multiple = frame.method.delivery_tag, frame.method.multiple
        count = tag - self.confirmed if multiple else 1
        self.confirmed = max(self.confirmed, tag)
        if isinstance(frame.method, self.pika.spec.Basic.Ack):
            self.acked += count
        else:
            self.nacked += count
        if self.acked + self.nacked < self.n:
            self.publish_up_to_window()
        elif not self.t1:
            self.t1 = time.perf_counter()
            self.channel.queue_delete(self.queue, callback=lambda _f: self.connection.close())

    def on_open_error(self, _conn: Any, exc: BaseException) -> None:
        self.errors.append(f"connection failed: {exc!r}")
        self.connection.ioloop.stop()

    def on_close(self, _conn: Any, exc: BaseException) -> None:
        if not self.t1:
            self.errors.append(f"connection closed early: {exc!r}")
        self.connection.ioloop.stop()

    def on_timeout(self) -> None:
        self.errors.append(f"not all confirmed within {TIMEOUT:g} s")
        self.connection.close()
