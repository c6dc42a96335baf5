"""jobrelay: durable, effectively-once job relay between a worker and its facilitator.

The public API in one place::

    from jobrelay import WorkerConfig, start_worker, FacilitatorConfig, start_facilitator

Subpackages: ``jobrelay.protocol`` (sans-I/O wire protocol), ``jobrelay.storage`` (SQLite
outbox, inbox and job ledger), ``jobrelay.actors`` (the pykka actors and the reference
facilitator), ``jobrelay.cli`` (the ``jobrelay`` command).
"""

from jobrelay.actors import (
    CommandHandler,
    ConfigError,
    ConnectionState,
    Handler,
    JobCancelled,
    JobContext,
    MetricsSnapshot,
    NotConnected,
    Worker,
    WorkerConfig,
    WorkerCrashed,
    generate_key,
    public_key_of,
    resumable,
    start_worker,
)
from jobrelay.actors.facilitator import Facilitator, start_facilitator
from jobrelay.actors.facilitator_config import FacilitatorConfig
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.errors import JobrelayError, ProtocolError
from jobrelay.protocol.messages import (
    JobCancel,
    JobRequest,
    JobStatus,
    JobStatusUpdate,
    MachineSpecs,
    WorkerEvent,
)
from jobrelay.storage import OutboxFull, StorageError

__all__ = [
    "CommandHandler",
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
    "JobrelayError",
    "MachineSpecs",
    "MetricsSnapshot",
    "NotConnected",
    "OutboxFull",
    "ProtocolError",
    "StorageError",
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
]

__version__ = "0.1.0"
