# The ordered channel between a Celery task and the jobrelay worker that dispatched it, in Redis:
# per task a stream of events (XADD by the task, XREAD by the worker from its recorded position),
# a claim key (the first run of the task takes it; a second run, or a cancel before the start,
# finds it taken) and a lease key the running task keeps alive. Both sides use this module; it
# imports redis, never celery.
# Invariants: a task's events are appended by the one run that holds its claim, in order, the
# terminal one last, and the lease is dropped only after the terminal event is appended; the claim
# and the first lease are set in one atomic step, so "claimed and no lease" means the run is gone.
from __future__ import annotations

import math
import threading
from typing import Any, Final, NamedTuple

import redis

from jobrelay.protocol.messages import JobRequest, JobStatus

__all__ = [
    "CANCELLED_HOLDER",
    "KEEP_SECONDS",
    "Channel",
    "Event",
    "client_for",
    "task_id_of",
]

KEEP_SECONDS: Final = 7 * 24 * 3600  # a task's keys outlive any reasonable restart of its worker
_PREFIX: Final = "jobrelay:task:"
_MAX_CONNECTIONS: Final = 1024
CANCELLED_HOLDER: Final = "cancelled before it started"  # the claim a cancel takes
_CLAIM_SCRIPT: Final = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', ARGV[2]) then
    redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[3])
    return 1
end
return 0
"""

_clients: dict[str, redis.Redis] = {}
_clients_lock = threading.Lock()


def client_for(url: str) -> redis.Redis:
    """One Redis client (and connection pool) per URL per process; redis-py makes a forked child
    open its own connections. Each relayed job holds a connection while it waits on its stream:
    past ``_MAX_CONNECTIONS`` a caller waits for a free one (up to 10 s) instead of failing."""
    with _clients_lock:
        found = _clients.get(url)
        if found is None:
            pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=_MAX_CONNECTIONS, timeout=10, decode_responses=True
            )
            found = _clients[url] = redis.Redis(connection_pool=pool)
        return found


def task_id_of(job: JobRequest) -> str:
    """The Celery task id of a job's attempt: the job id (``~N`` appended for attempt N > 1)."""
    return job.job_id if job.attempt <= 1 else f"{job.job_id}~{job.attempt}"


class Event(NamedTuple):
    """One entry of a task's stream: a status of its job, as the task reported it."""

    status: JobStatus
    progress: float | None = None
    detail: str = ""
    retryable: bool = False

    def fields(self) -> dict[str, str]:
        return {
            "s": self.status.value,
            "p": "" if self.progress is None else repr(self.progress),
            "d": self.detail,
            "r": "1" if self.retryable else "",
        }

    @classmethod
    def parse(cls, fields: dict[str, str]) -> Event:
        """Raises: ValueError for an entry no task of this channel wrote."""
        status = JobStatus(fields.get("s", ""))
        text = fields.get("p", "")
        progress = float(text) if text else None
        if progress is not None and not (math.isfinite(progress) and 0.0 <= progress <= 1.0):
            raise ValueError(f"progress {text!r} outside [0, 1]")
        return cls(status, progress, fields.get("d", ""), fields.get("r", "") == "1")


class Channel:
    """The Redis keys of one task."""

    def __init__(self, client: redis.Redis, task_id: str) -> None:
        self.client = client
        self.task_id = task_id
        base = f"{_PREFIX}{task_id}:"
        self.stream, self.claim_key, self.lease_key = base + "events", base + "claim", base + "lease"

    # ------------------------------------------------------------ the task's side

    def claim(self, holder: str, lease_seconds: float) -> bool:
        """Take the task's claim and its first lease; False when it is taken (a second run, or
        the job was cancelled before it started)."""
        taken = self.client.eval(
            _CLAIM_SCRIPT,
            2,
            self.claim_key,
            self.lease_key,
            holder,
            str(KEEP_SECONDS),
            str(max(1, int(lease_seconds * 1000))),
        )
        return bool(taken)

    def renew(self, holder: str, lease_seconds: float) -> None:
        self.client.set(self.lease_key, holder, px=max(1, int(lease_seconds * 1000)))

    def drop_lease(self) -> None:
        self.client.delete(self.lease_key)

    def append(self, event: Event) -> str:
        """Append ``event``; its stream entry id."""
        pipe = self.client.pipeline(transaction=True)
        pipe.xadd(self.stream, event.fields())  # type: ignore[arg-type]
        pipe.expire(self.stream, KEEP_SECONDS)
        entry_id, _ = pipe.execute()
        return str(entry_id)

    # ------------------------------------------------------------ the worker's side

    def read(self, after: str, *, block_ms: int | None, count: int = 100) -> list[tuple[str, dict[str, str]]]:
        """Entries after ``after`` in order (waiting up to ``block_ms`` for one; None: no wait)."""
        # RESP2 shape: [[stream, [(id, {field: value}), …]]] (the client's types cover RESP3 too).
        found: Any = self.client.xread({self.stream: after}, count=count, block=block_ms)
        entries: list[tuple[str, dict[str, str]]] = []
        for _, items in found or ():
            entries.extend((str(entry_id), dict(fields)) for entry_id, fields in items)
        return entries

    def claim_for_cancel(self) -> bool:
        """Take the claim so that no run of the task will start; False if one already did."""
        return bool(self.client.set(self.claim_key, CANCELLED_HOLDER, nx=True, ex=KEEP_SECONDS))

    def holder(self) -> str | None:
        """Who holds the claim (None: the task has not started)."""
        value = self.client.get(self.claim_key)
        return None if value is None else str(value)

    def holder_and_lease(self) -> tuple[str | None, bool]:
        """Who holds the claim (None: nobody yet) and whether a lease is alive."""
        pipe = self.client.pipeline(transaction=False)
        pipe.get(self.claim_key)
        pipe.exists(self.lease_key)
        holder, leased = pipe.execute()
        return (None if holder is None else str(holder)), bool(leased)
