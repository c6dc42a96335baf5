"""Jobs go where they can run: real workers and the reference facilitator over loopback sockets.
A job goes only to a worker that announced its kind, waits queued while none is connected (and
fails ``no_worker`` past its start deadline), and a worker never holds more unfinished jobs than
the credit it granted (its slots plus prefetch), so an idle worker is never starved by a busy one."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import msgspec
import pykka
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.actors import Handler, JobContext, Worker, WorkerConfig, concurrency, start_worker
from jobrelay.facilitator import Facilitator, FacilitatorConfig, start_facilitator
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.errors import ErrorCode
from jobrelay.protocol.messages import JobRequest, JobStatus
from tests.facilitator_client import TestWorker
from tests.protocol_harness import FACILITATOR_KEY_HEX, FACILITATOR_PUBLIC

pytestmark = pytest.mark.timeout(120)

KEYS = {f"w{i}": Ed25519PrivateKey.generate() for i in range(1, 4)}
TERMINAL = ("completed", "failed", "rejected", "cancelled")


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


@pytest.fixture
def fac(tmp_path: Path) -> Iterator[Facilitator]:
    f = start_facilitator(
        FacilitatorConfig(
            key=FACILITATOR_KEY_HEX,
            db_path=str(tmp_path / "fac.db"),
            port=0,
            authorized_keys={w: public_key_hex(k) for w, k in KEYS.items()},
            durability="normal",
        )
    )
    yield f
    f.stop()


def worker(
    fac: Facilitator,
    tmp_path: Path,
    worker_id: str,
    handlers: Mapping[str, Handler],
    slots: int = 4,
    prefetch: int = 1,
) -> Worker:
    config = WorkerConfig(
        facilitator_key=FACILITATOR_PUBLIC,
        url=fac.url,
        worker_id=worker_id,
        key=KEYS[worker_id].private_bytes_raw().hex(),
        db_path=str(tmp_path / f"{worker_id}.db"),
        durability="normal",
        max_concurrent_jobs=slots,
        prefetch=prefetch,
    )
    w = start_worker(config, handlers)
    w.wait_connected(10)
    return w


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def finished(fac: Facilitator, ids: list[str]) -> bool:
    return all((view := fac.job(j)) is not None and view.status in TERMINAL for j in ids)


def quick(job: JobRequest, ctx: JobContext) -> None:
    """A short job."""


def test_each_job_goes_to_a_worker_that_runs_its_kind(fac: Facilitator, tmp_path: Path) -> None:
    """Three workers with different kinds; 60 mixed jobs all complete, none is rejected, and each
    ran on a worker that announced its kind (before: most ended `rejected: unknown job kind`)."""
    kinds = {"w1": ("encode",), "w2": ("thumbnail",), "w3": ("encode", "transcode")}
    workers = [worker(fac, tmp_path, w, dict.fromkeys(ks, quick)) for w, ks in kinds.items()]
    try:
        jobs = [(("encode", "thumbnail", "transcode")[i % 3], i, None) for i in range(60)]
        ids = fac.submit_many(jobs)
        wait_until(lambda: finished(fac, ids), 60, "60 jobs")
        for job_id in ids:
            view = fac.job(job_id)
            assert view is not None
            assert view.status == "completed", (job_id, view.history)
            assert view.record.kind in kinds[view.record.peer]
        # Jobs of one kind spread over the workers of that kind: the one with more credit left wins.
        spread = fac.submit_many([("encode", i, None) for i in range(10)])
        wait_until(lambda: finished(fac, spread), 60, "10 encode jobs")
        peers = [v.record.peer for j in spread if (v := fac.job(j)) and v.status == "completed"]
        assert sorted(peers) == ["w1"] * 5 + ["w3"] * 5, peers
    finally:
        for w in workers:
            w.stop(5)


def test_a_job_no_worker_can_run_waits_queued_then_runs_when_one_connects(
    fac: Facilitator, tmp_path: Path
) -> None:
    w1 = worker(fac, tmp_path, "w1", {"encode": quick})
    w2 = None
    try:
        job_id = fac.submit("thumbnail", {"size": 64})
        encode_id = fac.submit("encode", None)
        wait_until(lambda: finished(fac, [encode_id]), 20, "the encode job")
        view = fac.job(job_id)
        assert view is not None and view.record.peer == "" and view.status is None  # queued
        assert [j.job_id for j in fac.jobs() if j.status is None] == [job_id]
        w2 = worker(fac, tmp_path, "w2", {"thumbnail": quick})
        wait_until(lambda: finished(fac, [job_id]), 20, "the thumbnail job")
        view = fac.job(job_id)
        assert view is not None and view.status == "completed" and view.record.peer == "w2"
    finally:
        w1.stop(5)
        if w2 is not None:
            w2.stop(5)


def test_a_job_still_queued_at_its_start_deadline_fails_no_worker(fac: Facilitator, tmp_path: Path) -> None:
    w1 = worker(fac, tmp_path, "w1", {"encode": quick})
    try:
        t0 = time.monotonic()
        late = fac.submit("thumbnail", None, start_within=0.5)
        waits = fac.submit("thumbnail", None)  # no deadline: it waits as long as it takes
        runs = fac.submit("encode", None, start_within=0.5)  # a worker takes it in time
        wait_until(lambda: finished(fac, [late, runs]), 10, "the deadline")
        assert time.monotonic() - t0 < 3.0
        view = fac.job(late)
        assert view is not None
        assert (view.status, view.record.detail) == ("failed", "no_worker")
        assert [h.status for h in view.history] == ["failed"]
        view = fac.job(runs)
        assert view is not None and view.status == "completed"
        view = fac.job(waits)
        assert view is not None and view.status is None
        with pytest.raises(ValueError, match="start_within"):
            fac.submit("thumbnail", None, start_within=-1)
    finally:
        w1.stop(5)


def test_the_facilitator_default_start_deadline(tmp_path: Path) -> None:
    f = start_facilitator(
        FacilitatorConfig(
            key=FACILITATOR_KEY_HEX,
            db_path=str(tmp_path / "fac.db"),
            port=0,
            authorized_keys={"w1": public_key_hex(KEYS["w1"])},
            durability="normal",
            schedule_to_start_timeout=0.3,
        )
    )
    try:
        job_id = f.submit("nobody-runs-this", None)
        wait_until(lambda: finished(f, [job_id]), 10, "the default deadline")
        view = f.job(job_id)
        assert view is not None and (view.status, view.record.detail) == ("failed", "no_worker")
    finally:
        f.stop()


def held_at_most(fac: Facilitator, ids: list[str]) -> dict[str, int]:
    """The most jobs each worker held at once (received, not finished), replayed exactly from
    the statuses it stamped: `accepted` when a request arrived, the terminal one when it ended."""
    events: dict[str, list[tuple[float, int]]] = {}
    for job_id in ids:
        view = fac.job(job_id)
        assert view is not None
        for h in view.history:
            if h.status == "accepted":
                events.setdefault(view.record.peer, []).append((h.at, 1))
            elif h.status in TERMINAL:
                events.setdefault(view.record.peer, []).append((h.at, -1))  # ties: ended first
    peaks: dict[str, int] = {}
    for peer, items in events.items():
        held = peak = 0
        for _, delta in sorted(items):
            held += delta
            peak = max(peak, held)
        peaks[peer] = peak
    return peaks


def test_two_workers_with_two_slots_drain_200_jobs_holding_at_most_their_credit(
    fac: Facilitator, tmp_path: Path
) -> None:
    """Before: all 200 were pushed at once, 100 waiting behind each worker. Now each worker holds
    at most slots + prefetch (3), and both take a fair share."""
    running: dict[str, int] = {"w1": 0, "w2": 0}
    most_running: dict[str, int] = {"w1": 0, "w2": 0}
    lock = threading.Lock()

    def short(name: str) -> Handler:
        def run(job: JobRequest, ctx: JobContext) -> None:
            with lock:
                running[name] += 1
                most_running[name] = max(most_running[name], running[name])
            time.sleep(0.002)  # the job's own work (not a synchronisation)
            with lock:
                running[name] -= 1

        return run

    workers = [worker(fac, tmp_path, w, {"short": short(w)}, slots=2, prefetch=1) for w in ("w1", "w2")]
    try:
        t0 = time.monotonic()
        ids = fac.submit_many([("short", i, None) for i in range(200)])
        wait_until(lambda: finished(fac, ids), 90, "200 jobs")
        elapsed = time.monotonic() - t0
        assert all((v := fac.job(j)) is not None and v.status == "completed" for j in ids)
        peaks = held_at_most(fac, ids)
        assert set(peaks) == {"w1", "w2"}
        assert max(peaks.values()) <= 3, peaks
        assert max(most_running.values()) <= 2
        shares = {p: sum(1 for j in ids if (v := fac.job(j)) and v.record.peer == p) for p in peaks}
        assert min(shares.values()) >= 50, shares
        print(
            f"200 jobs on 2 workers x 2 slots (+1 prefetch): {elapsed:.2f}s, held at most {peaks}, {shares}"
        )
    finally:
        for w in workers:
            w.stop(5)


def test_credit_survives_a_reconnect(fac: Facilitator) -> None:
    """A worker that granted credit 2 holds 2 unfinished jobs; after a reconnect nothing more is
    sent until one of them ends, and then exactly one more."""
    tw = TestWorker(fac.url, "w1", KEYS["w1"], kinds=("k",), credit=2)

    def received() -> list[str]:
        return [b.job_id for b in tw.store.received if isinstance(b, JobRequest)]

    try:
        tw.connect()
        ids = fac.submit_many([("k", i, f"j{i}") for i in range(5)])
        tw.wait_for(lambda: len(received()) == 2, 10)
        assert received() == ["j0", "j1"]
        for job_id in received():
            tw.status(job_id, JobStatus.ACCEPTED)
        tw.wait_for(tw.all_acked, 10)
        tw.disconnect()
        tw.connect()
        tw.heartbeat()
        tw.wait_for(lambda: tw.all_acked() and fac.job("j1") is not None, 5)
        for _ in range(10):
            tw.pump(0.05)  # time for anything wrongly sent to arrive
        assert received() == ["j0", "j1"]
        tw.status("j0", JobStatus.COMPLETED)
        tw.wait_for(lambda: len(received()) == 3, 10)
        assert received() == ["j0", "j1", "j2"]
        for _ in range(10):
            tw.pump(0.05)
        assert received() == ["j0", "j1", "j2"]
        assert [v.record.peer for j in ids if (v := fac.job(j))] == ["w1", "w1", "w1", "", ""]
    finally:
        tw.disconnect()


def test_a_v2_hello_is_refused_by_version(fac: Facilitator) -> None:
    """A worker of the previous protocol is refused with `unsupported_version`, not misread."""
    import websocket

    ws = websocket.create_connection(fac.url, timeout=5)
    try:
        ws.send(
            b'{"type":"hello","version":2,"worker_id":"w1","codecs":["json"],"nonce":"' + b"ab" * 32 + b'"}'
        )
        reply = msgspec.json.decode(ws.recv())
        assert reply["type"] == "error" and reply["code"] == ErrorCode.UNSUPPORTED_VERSION.value
    finally:
        ws.close()


def test_a_kind_with_its_own_concurrency_is_sent_no_more_than_that(fac: Facilitator, tmp_path: Path) -> None:
    """w1 runs `encode` one at a time (`@concurrency(1)`, no prefetch) besides `thumb`; w2 runs
    `encode` on 4 slots. Of 10 encode jobs w1 gets 1, w2 4, and 5 wait queued (before: w1 was
    sent 4 encode jobs and 3 sat behind its one encode slot while w2 had room); w1's 3 other
    slots still take `thumb` jobs."""
    gate = threading.Event()

    @concurrency(1)
    def encode(job: JobRequest, ctx: JobContext) -> None:
        gate.wait(30)

    w1 = worker(fac, tmp_path, "w1", {"encode": encode, "thumb": quick}, slots=4, prefetch=0)
    w2 = worker(fac, tmp_path, "w2", {"encode": lambda job, ctx: gate.wait(30)}, slots=4, prefetch=0)
    try:
        ids = fac.submit_many([("encode", i, None) for i in range(10)])

        def peers() -> list[str]:
            return sorted(v.record.peer for j in ids if (v := fac.job(j)) is not None)

        expected = [""] * 5 + ["w1"] + ["w2"] * 4
        wait_until(lambda: peers() == expected, 10, "1 encode job at w1, 4 at w2, 5 queued")
        thumbs = fac.submit_many([("thumb", i, None) for i in range(3)])
        wait_until(lambda: finished(fac, thumbs), 30, "3 thumb jobs on w1's free slots")
        assert all((v := fac.job(j)) is not None and v.record.peer == "w1" for j in thumbs)
        assert peers() == expected  # the thumb jobs' endings gave w1 no encode credit
        gate.set()
        wait_until(lambda: finished(fac, ids), 60, "10 encode jobs")
        assert all((v := fac.job(j)) is not None and v.status == "completed" for j in ids)
        encode_peaks = held_at_most(fac, [j for j in ids if (v := fac.job(j)) and v.record.peer == "w1"])
        assert encode_peaks.get("w1", 0) <= 1, encode_peaks
    finally:
        gate.set()
        w1.stop(5)
        w2.stop(5)
