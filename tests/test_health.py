"""actors/health.py: /healthz, /metrics (parsed with prometheus-client) and the facilitator's API."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobrelay.actors import WorkerConfig, WorkerHealth, generate_key, start_worker
from jobrelay.actors.connect_pacer import BreakerStatus
from jobrelay.actors.local_mode import LocalModeStatus
from jobrelay.actors.worker import Worker
from jobrelay.cli.samples import SAMPLE_HANDLERS
from jobrelay.common.http import HealthServer
from jobrelay.facilitator import Facilitator, FacilitatorConfig, FacilitatorHealth, start_facilitator
from jobrelay.protocol.auth import public_key_hex
from jobrelay.storage import OutboxStats
from jobrelay.testing.proxy import TcpProxy
from tests.protocol_harness import FACILITATOR_KEY_HEX, FACILITATOR_PUBLIC
from tests.test_cli_helpers import wait_until

pytestmark = pytest.mark.timeout(30)


def http(method: str, url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")  # the API takes JSON bodies only
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            payload, status, ctype = resp.read(), resp.status, resp.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        payload, status, ctype = exc.read(), exc.code, exc.headers["Content-Type"]
    return status, json.loads(payload) if ctype.startswith("application/json") else payload.decode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, keyed by (name, sorted labels)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[Facilitator, TcpProxy, Worker]]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = generate_key()
    public = public_key_hex(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(key)))
    fconfig = FacilitatorConfig(
        key=FACILITATOR_KEY_HEX,
        db_path=str(tmp_path / "f.db"),
        authorized_keys={"w1": public},
        durability="normal",
    )
    with start_facilitator(fconfig) as fac, TcpProxy(("127.0.0.1", fac.port)) as proxy:
        wconfig = WorkerConfig(
            url=proxy.url, worker_id="w1", key=key, facilitator_key=FACILITATOR_PUBLIC,
            db_path=str(tmp_path / "w1.db"), durability="normal", backoff_base=0.05,
            backoff_cap=0.2, stop_timeout=2.0,
        )  # fmt: skip
        with start_worker(wconfig, SAMPLE_HANDLERS) as worker:
            worker.wait_connected(10)
            yield fac, proxy, worker


def test_worker_healthz_and_metrics(system: tuple[Facilitator, TcpProxy, Worker]) -> None:
    fac, proxy, worker = system
    job_id = fac.submit("echo", "hi", worker="w1")
    wait_until(lambda: fac.job(job_id).status == "completed")  # type: ignore[union-attr]
    with HealthServer(WorkerHealth(worker)) as server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}"
        status, doc = http("GET", server.url + "/healthz")
        assert status == 200, doc
        assert doc["healthy"] is True and doc["state"] == "connected" and doc["worker_id"] == "w1"
        assert doc["running_jobs"] == [] and doc["last_contact_age"] < 10
        assert {"outbox_depth", "oldest_unacked_age", "last_acked"} <= set(doc)

        status, text = http("GET", server.url + "/metrics")
        assert status == 200
        got = samples(text)
        w1 = (("worker_id", "w1"),)
        assert got[("jobrelay_worker_connection_state", (("state", "connected"), ("worker_id", "w1")))] == 1.0
        assert got[("jobrelay_worker_connection_state", (("state", "backoff"), ("worker_id", "w1")))] == 0.0
        assert got[("jobrelay_worker_jobs_completed_total", w1)] == 1.0
        assert got[("jobrelay_worker_acked_total", w1)] >= 1
        assert ("jobrelay_worker_ack_latency_seconds_count", w1) in got
        assert ("jobrelay_worker_ack_latency_seconds_bucket", (("le", "+Inf"), ("worker_id", "w1"))) in got

        proxy.block(True)
        proxy.cut()

        def unhealthy() -> Any:
            status, doc = http("GET", server.url + "/healthz")
            return doc if status == 503 else None

        doc = wait_until(unhealthy, what="503 after the cut")
        assert doc["healthy"] is False and doc["reason"].startswith("not connected")
        assert http("GET", server.url + "/nope")[0] == 404


class _Done:
    def __init__(self, value: Any) -> None:
        self.value = value

    def get(self, timeout: float | None = None) -> Any:
        return self.value


class _FakeWorker:
    """Just what WorkerHealth reads, with a settable ack mark."""

    def __init__(self) -> None:
        self.stopped = False
        self.config = type("C", (), {"worker_id": "fake"})()
        self.depth, self.acked = 5, 10
        outer = self

        class Conn:
            def state(self) -> _Done:
                return _Done("connected")

            def last_contact(self) -> _Done:
                return _Done(100.0)

            def breaker(self) -> _Done:
                return _Done(BreakerStatus(state="closed", since=0.0, trips=0, retry_at=None))

            def local_mode(self) -> _Done:
                return _Done(
                    LocalModeStatus(active=False, since=None, last_facilitator_contact=100.0, activations=0)
                )

        class Outbox:
            def stats(self) -> _Done:
                return _Done(
                    OutboxStats("out", "e", outer.depth, 50, 1.0, outer.acked + outer.depth, outer.acked)
                )

        class Router:
            def running(self) -> _Done:
                return _Done(["j1"])

        self.connection, self.outbox, self.router = Conn(), Outbox(), Router()


def test_stalled_acks_are_unhealthy_until_they_advance() -> None:
    now = [100.0]
    fake = _FakeWorker()
    health = WorkerHealth(fake, ack_stall=30.0, clock=lambda: now[0])  # type: ignore[arg-type]
    assert health.health().healthy
    now[0] += 31
    report = health.health()
    assert not report.healthy and report.reason.startswith("acks stalled: 5 pending")
    fake.acked += 1
    assert health.health().healthy  # acks moved
    fake.depth = 0
    now[0] += 100
    assert health.health().healthy  # nothing pending: idle is healthy
    fake.stopped = True
    assert health.health().reason == "worker stopped"


def test_facilitator_api_health_and_metrics(system: tuple[Facilitator, TcpProxy, Worker]) -> None:
    fac, _, _ = system
    with HealthServer(FacilitatorHealth(fac)) as server:
        base = server.url
        status, doc = http("POST", base + "/jobs", {"kind": "sleep", "payload": {"seconds": 0.2, "steps": 2}})
        assert status == 201, doc
        job_id = doc["job_id"]
        assert http("POST", base + "/jobs", {"kind": "echo", "job_id": "mine", "worker": "w1"}) == (
            201,
            {"job_id": "mine"},
        )

        def finished() -> Any:
            _, view = http("GET", f"{base}/jobs/{job_id}")
            return view if view["status"] == "completed" else None

        view = wait_until(finished, what="job completed")
        assert [(e["status"], e["progress"]) for e in view["history"]] == [
            ("accepted", None), ("running", None), ("running", 0.5), ("running", 1.0), ("completed", None),
        ]  # fmt: skip
        assert view["payload"] == {"seconds": 0.2, "steps": 2} and view["peer"] == "w1"
        status, listed = http("GET", base + "/jobs?status=completed")
        assert status == 200 and job_id in {j["job_id"] for j in listed["jobs"]}
        status, workers = http("GET", base + "/workers")
        assert workers["workers"][0]["worker_id"] == "w1" and workers["workers"][0]["connected"] is True
        assert http("POST", f"{base}/jobs/{job_id}/cancel", {})[1] == {
            "job_id": job_id, "cancelled": False, "status": "completed",
        }  # fmt: skip

        assert http("POST", base + "/jobs", raw=b"{not json")[0] == 400
        assert http("POST", base + "/jobs", {"kind": "echo", "colour": "red"}) == (
            400,
            {"error": "unknown fields: colour"},
        )
        assert http("POST", base + "/jobs", {"payload": 1})[0] == 400
        # Fits the 1 MiB body limit, but not one frame (max_frame_bytes 1 MiB) once wrapped.
        status, doc = http("POST", base + "/jobs", {"kind": "echo", "payload": "x" * ((1 << 20) - 64)})
        assert status == 413 and "max_frame_bytes (1048576)" in doc["error"]
        status, doc = http("POST", base + "/jobs", {"kind": "echo", "worker": "nobody"})
        assert status == 400 and "nobody" in doc["error"]
        assert http("GET", base + "/jobs/unknown")[0] == 404
        assert http("GET", base + "/jobs?limit=x")[0] == 400

        status, doc = http("GET", base + "/healthz")
        assert status == 200 and doc["state"] == "serving" and doc["connected_workers"] == 1
        assert doc["workers"]["w1"]["connected"] is True
        got = samples(http("GET", base + "/metrics")[1])
        assert got[("jobrelay_facilitator_jobs_submitted_total", ())] == 2.0
        assert got[("jobrelay_facilitator_data_accepted_total", ())] >= 8
        assert got[("jobrelay_facilitator_connected_workers", ())] == 1.0
        assert got[("jobrelay_facilitator_worker_connected", (("worker_id", "w1"),))] == 1.0
