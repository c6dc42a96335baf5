# The lines a facilitator connection logs when its session opens or ends: one per session, and in
# a reconnect storm (or from a peer without a key) at most a few a second or a minute per source,
# the rest counted in the hub's Chatter summary, so neither the loop's time nor the log is flooded.
# The same moments are published as live events (worker.connected, worker.gone), never summarised.
from __future__ import annotations

from typing import TYPE_CHECKING

from jobrelay.protocol import events as ev
from jobrelay.protocol.close_codes import AUTH_CODES

if TYPE_CHECKING:
    from jobrelay.facilitator.connection import WorkerConnection

__all__ = ["log_closed", "log_opened"]


def log_opened(conn: WorkerConnection, event: ev.Opened, stored_out_last_seq: int) -> None:
    conn.hub.events.publish("worker.connected", worker=conn.worker_id, session=event.session_id)
    if event.new_out_stream and stored_out_last_seq:
        conn._log.warning(
            "facilitator: worker does not know our stream (its store is new) worker={} resume_after={}",
            conn.worker_id,
            event.resume_after,
        )
    if conn.hub.chatter.allow("workers connected"):
        conn._log.info(
            "facilitator: worker connected worker={} session={} resume_after={} in_hwm={}",
            conn.worker_id,
            event.session_id,
            event.resume_after,
            event.in_hwm,
        )


def log_closed(conn: WorkerConnection, event: ev.Closed, *, opened: bool = True) -> None:
    if conn.worker_id and opened:
        code = event.code.value if event.code else "normal"
        conn.hub.events.publish("worker.gone", worker=conn.worker_id, code=code, detail=event.detail)
    if not conn.worker_id:
        address = conn.ws.remote_address
        source = str(address[0]) if address else "?"
        # Anyone can cause this line without a key: one per session, and per remote address
        # at most a few a minute (the rest counted in the summary), never a flood.
        if event.code is not None and conn.hub.chatter.allow("handshakes refused", source):
            conn._log.warning(
                "facilitator: {} worker={} code={} detail={}",
                "authentication failed" if event.code in AUTH_CODES else "handshake refused",
                conn.session.peer_id or "?",
                event.code.value,
                event.detail,
            )
        return
    # One line per session that ends (worker connected has its own), summarised in a storm.
    if conn.hub.chatter.allow("workers disconnected"):
        left_out = conn.repeats.left_out()
        conn._log.info(
            "facilitator: worker disconnected worker={} code={} by_peer={} detail={}{}",
            conn.worker_id,
            event.code.value if event.code else "normal",
            event.by_peer,
            event.detail,
            f" (not logged one by one: {left_out})" if left_out else "",
        )
