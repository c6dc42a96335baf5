# Local mode: the worker runs without its facilitator. A plain class the Connection owns: it
# decides when the worker enters and leaves local mode, persists the record in the worker's
# database (storage/local_state.py) and reports it to Metrics.
# Invariants:
# - Enter when no session has been open for ``after`` seconds, or at once when the connection's
#   circuit breaker is open; leave when a session opens. Each entry counts one activation, also
#   across restarts (the count is stored); a worker that stopped while local starts local.
# - Nothing about jobs changes here: jobs keep running and their statuses keep going into the
#   outbox whatever the mode; reconciliation on return is the protocol's replay in both streams
#   (a cancel queued at the facilitator arrives then; a status after a job's end is refused there).
# - A failed write is logged, never raised: the mode is also known in memory, and the next
#   transition writes the whole record again.
from __future__ import annotations

from typing import Any

import msgspec

from jobrelay.actors.actor_messages import Gauge, Tellable, send
from jobrelay.storage import LocalState, LocalStateStore, StorageError, open_database
from jobrelay.storage.database import Database, Durability

__all__ = ["LocalMode", "LocalModeStatus"]


class LocalModeStatus(msgspec.Struct, frozen=True, kw_only=True):
    """Local mode as /healthz, ``jobrelay status`` and tests see it (times: seconds since the epoch)."""

    active: bool
    since: float | None
    last_facilitator_contact: float | None
    activations: int


class LocalMode:
    """Tracks and stores whether the worker is in local mode.

    Args:
        after: seconds without a session before the worker enters local mode.
        log: a loguru logger bound to the worker.
        metrics: where reports go (gauges ``local_mode_active``, ``local_mode_activations``,
            ``last_facilitator_contact``).
    """

    def __init__(self, after: float, log: Any, metrics: Tellable) -> None:
        self.after = after
        self._log = log
        self._metrics = metrics
        self._db: Database | None = None
        self._store: LocalStateStore | None = None
        self._state = LocalState()
        self._down_since: float | None = None  # no session since then

    def open(self, db_path: str, durability: Durability, now: float) -> None:
        """Open the record (in the owning actor's thread: SQLite connections are thread-bound)."""
        self._down_since = now
        try:
            self._db = open_database(db_path, durability=durability, check=False)
            self._store = LocalStateStore(self._db)
            self._state = self._store.load()
        except StorageError as exc:
            self._log.error("local mode: cannot read its record ({}); starting from none", exc)
        if self._state.active:
            self._log.warning("starting in local mode (the worker stopped while its facilitator was away)")
        self._report()

    def close(self) -> None:
        db, self._db, self._store = self._db, None, None
        if db is not None:
            db.close()

    @property
    def active(self) -> bool:
        return self._state.active

    def status(self) -> LocalModeStatus:
        state = self._state
        return LocalModeStatus(
            active=state.active,
            since=state.since,
            last_facilitator_contact=state.last_contact,
            activations=state.activations,
        )

    def check(self, now: float, *, breaker_open: bool) -> None:
        """Enter local mode if the facilitator has been away long enough (or the breaker is open)."""
        down = self._down_since
        if self._state.active or down is None:
            return
        if not breaker_open and now - down < self.after:
            return
        why = (
            "the connection's circuit breaker is open"
            if breaker_open
            else f"no session for {now - down:.0f}s"
        )
        self._state = self._state._replace(active=True, since=now, activations=self._state.activations + 1)
        self._log.warning(
            "entering local mode: {}; running jobs go on, their statuses wait in the outbox", why
        )
        self._save()

    def session_opened(self, now: float) -> None:
        self._down_since = None
        was = self._state
        self._state = was._replace(active=False, since=None, last_contact=now)
        if was.active:
            away = now - was.since if was.since is not None else 0.0
            self._log.info("leaving local mode after {:.1f}s: the facilitator is back", away)
        self._save()

    def session_closed(self, now: float, last_contact: float) -> None:
        self._down_since = now
        if last_contact:
            self._state = self._state._replace(last_contact=last_contact)
        self._save()

    def _save(self) -> None:
        if self._store is not None:
            try:
                self._store.save(self._state)
            except StorageError as exc:
                self._log.error("local mode: cannot store its record: {}", exc)
        self._report()

    def _report(self) -> None:
        state = self._state
        send(self._metrics, Gauge("local_mode_active", 1.0 if state.active else 0.0))
        send(self._metrics, Gauge("local_mode_activations", float(state.activations)))
        send(self._metrics, Gauge("last_facilitator_contact", state.last_contact or 0.0))
