"""storage/lock.py: one writer per database, refused at once, released with its holder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from jobrelay.actors.config import WorkerConfig, generate_key, public_key_of
from jobrelay.actors.worker import start_worker
from jobrelay.storage import DatabaseInUse, StorageError, inspect_database, lock_database
from jobrelay.testing import MemoryFacilitator

pytestmark = pytest.mark.timeout(30)


def test_a_second_lock_is_refused_naming_the_holder(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    with lock_database(db) as held:
        assert held.held and (tmp_path / "w.db.lock").read_text().strip() == str(os.getpid())
        with pytest.raises(DatabaseInUse, match=rf"w\.db is in use by process {os.getpid()}") as refused:
            lock_database(db)  # flock belongs to the open file: refused within one process too
        assert refused.value.holder == os.getpid()
    assert not held.held
    lock_database(db).release()  # free again once released


def test_a_lock_file_that_cannot_be_made_is_a_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot create the lock file"):
        lock_database(tmp_path / "missing" / "w.db")


def test_two_library_workers_on_one_database(tmp_path: Path) -> None:
    key = generate_key()
    with MemoryFacilitator({"w1": public_key_of(key)}) as facilitator:
        config = WorkerConfig(
            url=facilitator.url, worker_id="w1", key=key, facilitator_key=facilitator.public_key,
            db_path=str(tmp_path / "w1.db"), durability="normal",
        )  # fmt: skip
        with start_worker(config, transport_factory=facilitator.transport_factory):
            with pytest.raises(DatabaseInUse):
                start_worker(config, transport_factory=facilitator.transport_factory)
            assert inspect_database(config.db_path).jobs_total == 0  # readers take no lock
        # stopped: the lock went with it
        with start_worker(config, transport_factory=facilitator.transport_factory):
            pass
