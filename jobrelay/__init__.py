"""jobrelay: durable, effectively-once job relay between a worker and its facilitator.

The public API in one place::

    from jobrelay import WorkerConfig, start_worker, FacilitatorConfig, start_facilitator

Subpackages: ``jobrelay.protocol`` (sans-I/O wire protocol), ``jobrelay.storage`` (SQLite
outbox, inbox and job ledger), ``jobrelay.actors`` (the worker's pykka actors),
``jobrelay.facilitator`` (the reference facilitator), ``jobrelay.testing`` (in-memory transport
and facilitator for testing handlers), ``jobrelay.cli`` (the ``jobrelay`` command). Every name
is imported lazily: ``import jobrelay.protocol`` loads no pykka, SQLite or WebSocket library.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loguru import logger

from jobrelay.protocol.lazy import lazy_exports

# A library is quiet until its application asks: `logger.enable("jobrelay")` (and a sink at the
# level wanted) turns its lines on; the `jobrelay` command does that in cli/logs.py.
logger.disable("jobrelay")

if TYPE_CHECKING:
    from jobrelay.actors.actor_messages import ConnectionState
    from jobrelay.actors.commands import CommandHandler, CommandOptions
    from jobrelay.actors.config import WorkerConfig, generate_key, public_key_of
    from jobrelay.actors.errors import NotConnected, WorkerCrashed
    from jobrelay.actors.handlers import Handler, JobCancelled, JobContext, RetryableError, resumable
    from jobrelay.actors.job_limits import TimeLimitExceeded, time_limits
    from jobrelay.actors.metrics import MetricsSnapshot
    from jobrelay.actors.worker import Worker, start_worker
    from jobrelay.facilitator.config import FacilitatorConfig
    from jobrelay.facilitator.errors import JobTooLarge
    from jobrelay.facilitator.server import Facilitator, start_facilitator
    from jobrelay.protocol.auth import public_key_hex
    from jobrelay.protocol.errors import ConfigError, JobrelayError, ProtocolError
    from jobrelay.protocol.messages import (
        JobCancel,
        JobRequest,
        JobStatus,
        JobStatusUpdate,
        MachineSpecs,
        WorkerEvent,
    )
    from jobrelay.storage.errors import OutboxFull, StorageError

__all__ = [
    "CommandHandler",
    "CommandOptions",
    "ConfigError",
    "ConnectionState",
    "Facilitator",
    "FacilitatorConfig",
    "Handler",
    "JobCancel",
    "JobCancelled",
    "JobContext",
    "JobRequest",
    "JobStatus",
    "JobStatusUpdate",
    "JobTooLarge",
    "JobrelayError",
    "MachineSpecs",
    "MetricsSnapshot",
    "NotConnected",
    "OutboxFull",
    "ProtocolError",
    "RetryableError",
    "StorageError",
    "TimeLimitExceeded",
    "Worker",
    "WorkerConfig",
    "WorkerCrashed",
    "WorkerEvent",
    "__version__",
    "generate_key",
    "public_key_hex",
    "public_key_of",
    "resumable",
    "start_facilitator",
    "start_worker",
    "time_limits",
]

__version__ = "0.1.0"

_EXPORTS = {
    "CommandHandler": "jobrelay.actors.commands",
    "CommandOptions": "jobrelay.actors.commands",
    "ConfigError": "jobrelay.protocol.errors",
    "ConnectionState": "jobrelay.actors.actor_messages",
    "Facilitator": "jobrelay.facilitator.server",
    "FacilitatorConfig": "jobrelay.facilitator.config",
    "Handler": "jobrelay.actors.handlers",
    "JobCancel": "jobrelay.protocol.messages",
    "JobCancelled": "jobrelay.actors.handlers",
    "JobContext": "jobrelay.actors.handlers",
    "RetryableError": "jobrelay.actors.handlers",
    "JobRequest": "jobrelay.protocol.messages",
    "JobStatus": "jobrelay.protocol.messages",
    "JobStatusUpdate": "jobrelay.protocol.messages",
    "JobTooLarge": "jobrelay.facilitator.errors",
    "JobrelayError": "jobrelay.protocol.errors",
    "MachineSpecs": "jobrelay.protocol.messages",
    "MetricsSnapshot": "jobrelay.actors.metrics",
    "NotConnected": "jobrelay.actors.errors",
    "OutboxFull": "jobrelay.storage.errors",
    "ProtocolError": "jobrelay.protocol.errors",
    "StorageError": "jobrelay.storage.errors",
    "Worker": "jobrelay.actors.worker",
    "WorkerConfig": "jobrelay.actors.config",
    "WorkerCrashed": "jobrelay.actors.errors",
    "WorkerEvent": "jobrelay.protocol.messages",
    "generate_key": "jobrelay.actors.config",
    "public_key_hex": "jobrelay.protocol.auth",
    "public_key_of": "jobrelay.actors.config",
    "resumable": "jobrelay.actors.handlers",
    "TimeLimitExceeded": "jobrelay.actors.job_limits",
    "time_limits": "jobrelay.actors.job_limits",
    "start_facilitator": "jobrelay.facilitator.server",
    "start_worker": "jobrelay.actors.worker",
}
lazy_exports(globals(), _EXPORTS)
