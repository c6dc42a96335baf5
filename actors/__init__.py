"""jobrelay's actors: the I/O, threads and timing around the sans-I/O protocol.

Start a worker with :func:`start_worker`; it returns a :class:`Worker` holding the actor proxies.
"""

from jobrelay.actors.config import WorkerConfig, generate_key, load_key, public_key_of
from jobrelay.actors.errors import ConfigError, NotConnected, WorkerCrashed
from jobrelay.actors.handlers import CommandHandler, Handler, JobCancelled, JobContext, resumable
from jobrelay.actors.messages import ConnectionState
from jobrelay.actors.metrics import MetricsSnapshot
from jobrelay.actors.worker import Worker, start_worker

__all__ = [
    "CommandHandler",
    "ConfigError",
    "ConnectionState",
    "Handler",
    "JobCancelled",
    "JobContext",
    "MetricsSnapshot",
    "NotConnected",
    "Worker",
    "WorkerConfig",
    "WorkerCrashed",
    "generate_key",
    "load_key",
    "public_key_of",
    "resumable",
    "start_worker",
]
