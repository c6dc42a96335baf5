# The `websockets` server connection the facilitator uses: the stock one, plus the type (text or
# binary) of each message, which ``recv(decode=False)`` drops. The codec needs it: a text frame
# on a msgpack session, or a binary one on a JSON session, is malformed_frame (PROTOCOL §2).
# A message over max_size gets the session's `error` frame (frame_too_large) before websockets'
# close 1009. It also counts the messages received whole and not yet taken, so a reader can
# take what is buffered without waiting for the peer (the facilitator's read-ahead).
# Invariant: one entry per data message, appended as its first frame arrives and taken by the
# ``recv`` that returns that message, so the two queues stay in step.
from __future__ import annotations

from collections import deque
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import Event, State

__all__ = ["FrameConnection", "message_waiting", "recv_message"]

_DATA = (Opcode.TEXT, Opcode.BINARY, Opcode.CONT)


class FrameConnection(ServerConnection):
    """A ServerConnection that remembers whether each received message was binary, and lets its
    user send an ``error`` frame before websockets closes a too-large message with 1009."""

    on_too_big: Callable[[str], None] | None = None  # called with websockets' reason, then 1009

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._binary: deque[bool] = deque()
        self._whole = 0  # messages received in full and not yet taken by recv_message()
        protocol = self.protocol
        fail = protocol.fail

        def fail_after_error_frame(code: int, reason: str = "") -> None:
            # websockets refuses a message over max_size from its header (nothing is buffered) and
            # closes at once; PROTOCOL §7 wants the `error` frame (frame_too_large) first.
            callback = self.on_too_big
            if code == CloseCode.MESSAGE_TOO_BIG and callback is not None and protocol.state is State.OPEN:
                callback(reason)
            fail(code, reason)

        protocol.fail = fail_after_error_frame  # type: ignore[method-assign]

    def process_event(self, event: Event) -> None:
        if isinstance(event, Frame) and event.opcode in _DATA:
            if event.opcode is not Opcode.CONT:
                self._binary.append(event.opcode is Opcode.BINARY)
            if event.fin:
                self._whole += 1
        super().process_event(event)

    def message_waiting(self) -> bool:
        """A whole message is buffered: ``recv_message()`` returns it without waiting for the peer."""
        return self._whole > 0

    async def recv_message(self) -> tuple[bytes | str, bool]:
        """The next message and whether it was binary; a text message as ``str`` decoded with
        ``surrogateescape`` (invalid UTF-8 is the codec's to refuse, with an error frame)."""
        try:
            data = await self.recv(decode=False)
        except BaseException:
            # A message counted whole that recv() refused (too many fragments): the connection
            # is failing; nothing counted may make a reader expect a message without waiting.
            self._whole = 0
            raise
        self._whole -= 1
        binary = self._binary.popleft()
        return (data if binary else data.decode("utf-8", "surrogateescape")), binary


async def recv_message(ws: ServerConnection) -> tuple[bytes | str, bool | None]:
    """The next message of ``ws`` and whether it was binary (None from a stock connection, which
    does not tell)."""
    if isinstance(ws, FrameConnection):
        return await ws.recv_message()
    return await ws.recv(decode=False), None


def message_waiting(ws: ServerConnection) -> bool:
    """``recv_message(ws)`` would return at once (never True for a stock connection)."""
    return isinstance(ws, FrameConnection) and ws.message_waiting()
