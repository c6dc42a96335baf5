"""FacilitatorStore: what the store thread keeps in memory follows the database through rollbacks
of one operation and of a whole group commit."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from jobrelay.facilitator.placement import Candidates
from jobrelay.facilitator.store import FacilitatorStore
from jobrelay.protocol.messages import JobRequest
from jobrelay.storage import routing
from jobrelay.storage.errors import StorageError
from tests.facilitator_client import wait_until

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[FacilitatorStore]:
    made = FacilitatorStore(str(tmp_path / "f.db"), "normal")
    made.start()
    try:
        yield made
    finally:
        made.stop()


def run(op: Callable[..., asyncio.Future[Any]], *args: Any) -> Any:
    """Call a connection-side store operation (they return futures of the calling event loop)."""

    async def call() -> Any:
        return await asyncio.wait_for(op(*args), 5)

    return asyncio.run(call())


def touch_then_fail(s: Any) -> None:
    """An operation that opens a never-seen worker's outbox (creating its stream row in its
    savepoint), counts a job for it, and then fails."""
    s.outbox("w9")
    s.add_outstanding("w9", 1, "k")
    s.add_outstanding("w1", 1, "k")
    raise RuntimeError("failed after creating the outbox")


def assert_w9_usable(store: FacilitatorStore, outstanding: dict[str, int]) -> None:
    [assignment] = store.submit([JobRequest(job_id="j1", kind="k")], "w9", Candidates())
    assert assignment.seq == 1
    marks = run(store.marks, "w9")
    assert (marks.out_acked, marks.out_last_seq) == (0, 1)
    assert [seq for seq, _ in run(store.pending, "w9", 0, 10)] == [1]
    assert store.worker_facts().outstanding == outstanding


def test_a_failed_operation_forgets_the_outbox_it_created(store: FacilitatorStore) -> None:
    store.submit([JobRequest(job_id="j0", kind="k")], "w1", Candidates())
    with pytest.raises(RuntimeError, match="after creating"):
        store._call("failing op", touch_then_fail)
    assert store.worker_facts().outstanding == {"w1": 1}  # the failed op's counts are undone
    assert_w9_usable(store, {"w1": 1, "w9": 1})


def test_a_failed_group_commit_forgets_what_its_operations_did(store: FacilitatorStore) -> None:
    store.submit([JobRequest(job_id="j0", kind="k")], "w1", Candidates())
    gate = threading.Event()
    errors: list[BaseException] = []

    def call(name: str, fn: Any) -> None:
        try:
            store._call(name, fn)
        except BaseException as exc:
            errors.append(exc)

    def break_the_commit(s: Any) -> None:
        # A foreign-key violation checked only at COMMIT: the whole group rolls back.
        s.db.conn.execute("PRAGMA defer_foreign_keys = ON")
        s.db.conn.execute(
            "INSERT INTO outbox_segments (stream_id, last_seq, first_seq, kinds, sizes, payloads, created_at)"
            " VALUES (999999, 1, 1, 'x', x'01000000', x'00', 0)"
        )

    def opens_w9(s: Any) -> None:
        s.outbox("w9").append("job_request", b"{}")
        s.add_outstanding("w9", 1, "k")
        s.add_outstanding("w1", 1, "k")

    blocker = threading.Thread(target=call, args=("hold the store thread", lambda s: gate.wait(5)))
    blocker.start()
    wait_until(lambda: store._queue.qsize() == 0)  # the store thread runs the blocker
    threads = [
        threading.Thread(target=call, args=("opens w9", opens_w9)),
        threading.Thread(target=call, args=("breaks the commit", break_the_commit)),
    ]
    for thread in threads:
        thread.start()
        queued = threads.index(thread) + 1
        wait_until(lambda: store._queue.qsize() == queued)  # noqa: B023 - called before the next loop
    gate.set()  # both queued operations now run in one group, whose COMMIT fails
    for thread in [blocker, *threads]:
        thread.join(5)
    assert len(errors) == 2 and all(isinstance(e, StorageError) for e in errors), errors
    assert store.worker_facts().outstanding == {"w1": 1}
    assert_w9_usable(store, {"w1": 1, "w9": 1})


def test_a_call_after_stop_fails_at_once(store: FacilitatorStore) -> None:
    """Nothing is queued behind the stop (it would never be answered: a 30 s wait)."""
    gate = threading.Event()
    blocker = threading.Thread(target=store._call, args=("hold the store thread", lambda s: gate.wait(5)))
    blocker.start()
    wait_until(lambda: store._queue.qsize() == 0)
    assert not store.stop(timeout=0)  # the thread is busy: stop is queued
    with pytest.raises(StorageError, match="not running"):
        run(store.marks, "w1")
    gate.set()
    blocker.join(5)
    assert store.stop(timeout=5)


def test_a_late_batch_from_an_old_epoch_is_not_stored(store: FacilitatorStore) -> None:
    """A replaced connection finishing late must not write its old epoch's seqs into the new
    epoch's inbox (they would make the new stream's seq 1.. look like duplicates)."""
    from jobrelay.protocol.messages import WorkerEvent

    run(store.open_stream, "w1", "old-epoch", 0, True)
    assert run(store.accept, "w1", "old-epoch", [(1, WorkerEvent(event="a", at=0.0))]).upto == 1
    run(store.open_stream, "w1", "new-epoch", 0, True)  # the worker came back with a new store
    late = run(store.accept, "w1", "old-epoch", [(2, WorkerEvent(event="late", at=0.0))])
    assert late.gap and late.upto == 0 and late.accepted == 0
    fresh = run(store.accept, "w1", "new-epoch", [(1, WorkerEvent(event="fresh", at=0.0))])
    assert (fresh.upto, fresh.accepted, fresh.duplicates) == (1, 1, 0)


def test_an_accepted_batch_is_applied_and_deduplicated_without_inbox_rows(tmp_path: Path) -> None:
    """The facilitator applies what it accepts in the same commit: it keeps only the hwm (no
    inbox row is written to be deleted), which still drops a replay, also after a reopen."""
    from jobrelay.protocol.messages import WorkerEvent
    from jobrelay.storage import Inbox, open_database

    def batch(seqs: range) -> list[tuple[int, WorkerEvent]]:
        return [(seq, WorkerEvent(event=f"e{seq}", at=float(seq))) for seq in seqs]

    path = str(tmp_path / "f.db")
    store = FacilitatorStore(path, "normal")
    store.start()
    try:
        run(store.open_stream, "w1", "epoch", 0, True)
        first = run(store.accept, "w1", "epoch", batch(range(1, 4)))
        assert (first.upto, first.accepted, first.duplicates) == (3, 3, 0)
    finally:
        store.stop()
    store = FacilitatorStore(path, "normal")
    store.start()
    try:
        again = run(store.accept, "w1", "epoch", batch(range(2, 6)))  # a replay overlapping 2..3
        assert (again.upto, again.accepted, again.duplicates) == (5, 2, 2)
    finally:
        store.stop()
    with open_database(path) as db:
        inbox = Inbox(db)
        assert inbox.state("w1") == ("epoch", 5)
        assert inbox.unconsumed("w1") == []
        events = routing.worker_events(db, "w1")
    assert [e for e, _, _ in events] == ["e1", "e2", "e3", "e4", "e5"]
