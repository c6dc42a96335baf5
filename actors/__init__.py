"""jobrelay's worker: five pykka actors (Connection, Outbox, JobRouter, Heartbeat, Metrics) over plain
classes, its handlers and its health endpoint.

Start a worker with :func:`start_worker`; it returns a :class:`Worker` holding the actor proxies.
Names are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobrelay.protocol.lazy import lazy_exports

if TYPE_CHECKING:
    from jobrelay.actors.actor_messages import ConnectionState
    from jobrelay.actors.commands import CommandHandler, CommandOptions
    from jobrelay.actors.config import WorkerConfig, generate_key, load_key, public_key_of
    from jobrelay.actors.errors import NotConnected, WorkerCrashed
    from jobrelay.actors.handlers import Handler, JobCancelled, JobContext, RetryableError, resumable
    from jobrelay.actors.health import WorkerHealth, serve_worker
    from jobrelay.actors.job_limits import TimeLimitExceeded, concurrency, time_limits
    from jobrelay.actors.metrics import MetricsSnapshot
    from jobrelay.actors.worker import Worker, start_worker

__all__ = [
    "CommandHandler",
    "CommandOptions",
    "ConnectionState",
    "Handler",
    "JobCancelled",
    "JobContext",
    "MetricsSnapshot",
    "NotConnected",
    "RetryableError",
    "TimeLimitExceeded",
    "Worker",
    "WorkerConfig",
    "WorkerCrashed",
    "WorkerHealth",
    "concurrency",
    "generate_key",
    "load_key",
    "public_key_of",
    "resumable",
    "serve_worker",
    "start_worker",
    "time_limits",
]

_EXPORTS = {
    "CommandHandler": "jobrelay.actors.commands",
    "CommandOptions": "jobrelay.actors.commands",
    "ConnectionState": "jobrelay.actors.actor_messages",
    "Handler": "jobrelay.actors.handlers",
    "JobCancelled": "jobrelay.actors.handlers",
    "JobContext": "jobrelay.actors.handlers",
    "RetryableError": "jobrelay.actors.handlers",
    "MetricsSnapshot": "jobrelay.actors.metrics",
    "NotConnected": "jobrelay.actors.errors",
    "Worker": "jobrelay.actors.worker",
    "WorkerConfig": "jobrelay.actors.config",
    "WorkerCrashed": "jobrelay.actors.errors",
    "WorkerHealth": "jobrelay.actors.health",
    "generate_key": "jobrelay.actors.config",
    "load_key": "jobrelay.actors.config",
    "public_key_of": "jobrelay.actors.config",
    "resumable": "jobrelay.actors.handlers",
    "TimeLimitExceeded": "jobrelay.actors.job_limits",
    "time_limits": "jobrelay.actors.job_limits",
    "concurrency": "jobrelay.actors.job_limits",
    "serve_worker": "jobrelay.actors.health",
    "start_worker": "jobrelay.actors.worker",
}
lazy_exports(globals(), _EXPORTS)
