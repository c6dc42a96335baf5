"""The reference facilitator: the server workers connect to, its store thread, HTTP API and config.

Start one with :func:`start_facilitator`. Names are imported lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobrelay.protocol.lazy import lazy_exports

if TYPE_CHECKING:
    from jobrelay.facilitator.config import FacilitatorConfig, load_facilitator_config
    from jobrelay.facilitator.errors import JobTooLarge
    from jobrelay.facilitator.http_api import FacilitatorHealth, serve_facilitator
    from jobrelay.facilitator.job_options import JobOptions
    from jobrelay.facilitator.server import Facilitator, start_facilitator
    from jobrelay.facilitator.views import FacilitatorStats, JobView, WorkerView

__all__ = [
    "Facilitator",
    "FacilitatorConfig",
    "FacilitatorHealth",
    "FacilitatorStats",
    "JobOptions",
    "JobTooLarge",
    "JobView",
    "WorkerView",
    "load_facilitator_config",
    "serve_facilitator",
    "start_facilitator",
]

_EXPORTS = {
    "Facilitator": "jobrelay.facilitator.server",
    "FacilitatorConfig": "jobrelay.facilitator.config",
    "FacilitatorHealth": "jobrelay.facilitator.http_api",
    "FacilitatorStats": "jobrelay.facilitator.views",
    "JobOptions": "jobrelay.facilitator.job_options",
    "JobTooLarge": "jobrelay.facilitator.errors",
    "JobView": "jobrelay.facilitator.views",
    "WorkerView": "jobrelay.facilitator.views",
    "load_facilitator_config": "jobrelay.facilitator.config",
    "serve_facilitator": "jobrelay.facilitator.http_api",
    "start_facilitator": "jobrelay.facilitator.server",
}
lazy_exports(globals(), _EXPORTS)
