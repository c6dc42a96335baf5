# The Connection actor's attempts: one at a time, each with an I/O thread that connects and reads
# and only `tell`s the actor, a writer thread once connected, and the timer that schedules the
# next attempt. Invariant: every message an attempt's threads send carries its attempt id, and
# the id moves on whenever an attempt is given up, so the actor drops what an old one reports.
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pykka

from jobrelay.actors.actor_messages import IoClosed, Reconnect, send
from jobrelay.actors.config import WorkerConfig
from jobrelay.actors.io_thread import read_connection
from jobrelay.actors.one_shot import OneShot
from jobrelay.actors.websocket_transport import WebSocketTransport
from jobrelay.common.transport import BackgroundSender, Transport
from jobrelay.protocol.session import OutFrame
from jobrelay.protocol.streams import StreamMarks

__all__ = ["Dialer"]


class Dialer:
    """Starts, writes to and ends the attempts of one Connection actor (see module comment).

    Attributes:
        attempt: the id of the current attempt (its I/O messages carry it).
        tries: attempts since the last session opened (the actor resets it), for the log.
    """

    def __init__(
        self,
        config: WorkerConfig,
        marks: Callable[[], StreamMarks],
        factory: Callable[[], Transport] | None = None,
    ) -> None:
        """``factory`` makes each attempt's transport (default: websocket-client's; tests pass
        an in-memory one)."""
        self._config = config
        self._marks = marks
        self._factory = factory or (lambda: WebSocketTransport(config.ca_file, config.max_frame_bytes))
        self.attempt = 0
        self.tries = 0
        self._transport: Transport | None = None
        self._writer: BackgroundSender | None = None
        self._timer = OneShot("jobrelay-reconnect")

    def dial(self, ref: pykka.ActorRef[Any]) -> None:
        """Start a new attempt: its I/O thread connects, then reads, telling ``ref``."""
        self.attempt += 1
        self.tries += 1
        transport = self._factory()
        self._transport = transport
        config = self._config
        threading.Thread(
            target=read_connection,
            args=(ref, self.attempt, transport, config.url, config.connect_timeout, self._marks),
            name=f"jobrelay-io-{self.attempt}",
            daemon=True,
        ).start()

    def writer(self, ref: pykka.ActorRef[Any]) -> Callable[[OutFrame], None]:
        """The connected attempt's writer thread, as the session driver's write function; a failed
        send tells ``ref`` the attempt closed."""
        assert self._transport is not None
        attempt = self.attempt
        writer = BackgroundSender(
            self._transport,
            lambda detail: send(ref, IoClosed(attempt, f"send failed: {detail}")),
            name=f"jobrelay-writer-{attempt}",
        )
        self._writer = writer

        def write(frame: OutFrame) -> None:
            writer.put(frame.data, frame.binary)

        return write

    def retry_in(self, delay: float, ref: pykka.ActorRef[Any]) -> None:
        """Tell ``ref`` to try again (``Reconnect``) after ``delay`` seconds."""
        self._timer.arm(delay, ref, Reconnect(self.attempt))

    def abandon(self) -> None:
        """Give up the current attempt: what its threads still report is dropped."""
        self.attempt += 1

    def hang_up(self, reason: str, code: int) -> None:
        """Cancel a scheduled retry and close the attempt's connection with ``code``: after the
        frames already queued (e.g. an error frame) when it has a writer."""
        self._timer.cancel()
        transport, self._transport = self._transport, None
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.finish(code, reason)
        elif transport is not None:
            transport.close(code, reason)
