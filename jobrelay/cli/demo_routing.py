# The demo's second worker: an in-process worker that runs only `thumbnail` jobs, beside the demo
# worker (which runs `sleep` and `echo`). Jobs are submitted without naming a worker, so the
# summary shows the facilitator sending each kind only to the worker that announced it.
# Invariants: the thumbnail worker is stopped before the demo checks its results; a job of
# either kind that ran anywhere else, or was rejected, is reported as a problem.
from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.actors import JobContext, Worker, WorkerConfig, start_worker
from jobrelay.actors.config import generate_key
from jobrelay.facilitator import Facilitator
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.messages import JobRequest
from jobrelay.storage.ledger import JobRecord

__all__ = ["THUMBS_ID", "ThumbnailWorker", "routing_rows", "submit_thumbnails"]

THUMBS_ID = "demo-thumbs"
KIND = "thumbnail"


def _thumbnail(job: JobRequest, ctx: JobContext) -> dict[str, int]:
    size = job.payload.get("size", 64) if isinstance(job.payload, dict) else 64
    return {"width": size, "height": size}


class ThumbnailWorker:
    """A worker of kind `thumbnail` only, with its own key and database in ``tmp``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.key = generate_key()
        self.worker: Worker | None = None

    @property
    def public_key(self) -> str:
        return public_key_hex(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(self.key)))

    def start(self, fac: Facilitator) -> None:
        config = WorkerConfig(
            url=fac.url,
            worker_id=THUMBS_ID,
            key=self.key,
            facilitator_key=fac.public_key,
            db_path=str(self.tmp / "thumbs.db"),
            max_concurrent_jobs=2,
        )
        self.worker = start_worker(config, {KIND: _thumbnail})
        self.worker.wait_connected(10)

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.stop(5)
            self.worker = None


def submit_thumbnails(fac: Facilitator, count: int) -> list[str]:
    """Submit ``count`` thumbnail jobs to whichever worker runs that kind."""
    return fac.submit_many([(KIND, {"size": 32 + n % 4 * 32}, f"thumb-{n:04d}") for n in range(count)])


def routing_rows(
    records: dict[str, JobRecord], by_kind: dict[str, str]
) -> tuple[list[tuple[str, str]], list[str]]:
    """The summary rows of where each kind went, and the problems: a job that ran on a worker
    other than the one of its kind (``by_kind``), or was rejected."""
    problems: list[str] = []
    went: dict[tuple[str, str], int] = {}
    rejected = 0
    for record in records.values():
        went[(record.kind, record.peer)] = went.get((record.kind, record.peer), 0) + 1
        if record.status == "rejected":
            rejected += 1
            problems.append(f"{record.job_id}: rejected: {record.detail}")
        elif by_kind.get(record.kind) != record.peer:
            problems.append(f"{record.job_id}: kind {record.kind} went to {record.peer or 'no worker'!r}")
    routed = ", ".join(f"{n} {kind} → {peer or 'queued'}" for (kind, peer), n in sorted(went.items()))
    return [("jobs routed by kind", routed), ("jobs rejected (unknown kind)", f"{rejected}")], problems
