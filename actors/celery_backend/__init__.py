"""Scale-out on Celery (optional: ``pip install jobrelay[celery]``): job kinds run as Celery tasks,
their statuses relayed through the worker's Outbox in order and exactly once.

Worker side: ``handlers={"encode": celery_task("media.encode", broker="redis://…")}``.
Task side: ``@app.task(base=RelayedTask, name="media.encode")`` and ``report(progress=…)``.
Names are imported lazily, so importing this package needs no celery.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobrelay.protocol.lazy import lazy_exports

if TYPE_CHECKING:
    from jobrelay.actors.celery_backend.backend import CeleryBackend, CeleryHandler, celery_task
    from jobrelay.actors.celery_backend.task import RelayedTask, report

__all__ = ["CeleryBackend", "CeleryHandler", "RelayedTask", "celery_task", "report"]

_EXPORTS = {
    "CeleryBackend": "jobrelay.actors.celery_backend.backend",
    "CeleryHandler": "jobrelay.actors.celery_backend.backend",
    "celery_task": "jobrelay.actors.celery_backend.backend",
    "RelayedTask": "jobrelay.actors.celery_backend.task",
    "report": "jobrelay.actors.celery_backend.task",
}
lazy_exports(globals(), _EXPORTS)
