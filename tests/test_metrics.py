"""/metrics of the worker and the facilitator by Prometheus' conventions, read with
prometheus-client's own parser: real HELP texts, histograms (never summaries) for latencies and
durations, counters present at 0 from the start, one series per fact, job counts by status and
worker, process metrics."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from jobrelay.actors import WorkerHealth
from jobrelay.actors.metrics import COUNTERS
from jobrelay.actors.worker import Worker
from jobrelay.common.http import HealthServer
from jobrelay.facilitator import Facilitator, FacilitatorConfig, start_facilitator
from jobrelay.facilitator.http_api import serve_facilitator
from jobrelay.facilitator.metrics import COUNTER_HELP
from jobrelay.testing.proxy import TcpProxy
from tests.protocol_harness import FACILITATOR_KEY_HEX
from tests.test_cli_helpers import wait_until
from tests.test_health import http, system  # noqa: F401 - `system` is a fixture used below

pytestmark = pytest.mark.timeout(60)


def families(url: str) -> dict[str, Metric]:
    status, text = http("GET", url + "/metrics")
    assert status == 200, text
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(family: Metric, suffix: str = "", **labels: str) -> float:
    found = [s.value for s in family.samples if s.name == family.name + suffix and s.labels == labels]
    assert len(found) == 1, (family.name + suffix, labels, family.samples)
    return found[0]


def assert_conventions(got: dict[str, Metric], prefix: str) -> None:
    ours = {name: f for name, f in got.items() if name.startswith(prefix)}
    assert ours
    for name, family in ours.items():
        # A HELP that only repeats the name tells an operator nothing.
        assert family.documentation and "counter " not in family.documentation, name
        assert family.documentation.lower() != name.removeprefix(prefix).replace("_", " ")
        assert family.type in ("counter", "gauge", "histogram"), (name, family.type)  # no summary
    # process metrics (prometheus-client's ProcessCollector, Linux /proc)
    assert got["process_cpu_seconds"].type == "counter"
    assert got["process_resident_memory_bytes"].type == "gauge"
    assert got["process_open_fds"].type == "gauge"


def test_worker_metrics_follow_prometheus_conventions(system: tuple[Facilitator, TcpProxy, Worker]) -> None:  # noqa: F811
    fac, _proxy, worker = system
    with HealthServer(WorkerHealth(worker)) as server:
        before = families(server.url)
        assert_conventions(before, "jobrelay_worker_")
        w1 = {"worker_id": "w1"}
        # Every counter is there from the start, at 0 until it moves (a rate() needs the zero).
        for name in COUNTERS:
            family = before[f"jobrelay_worker_{name}"]
            assert family.type == "counter", name
            if name.startswith("jobs_"):
                assert value(family, "_total", **w1) == 0, name
        for name in ("ack_latency_seconds", "job_duration_seconds"):
            family = before[f"jobrelay_worker_{name}"]
            assert family.type == "histogram", name
        assert value(before["jobrelay_worker_job_duration_seconds"], "_count", **w1) == 0
        # One series per fact: the oldest unacked message's age has one name.
        assert "jobrelay_worker_outbox_oldest_age" not in before
        assert before["jobrelay_worker_outbox_oldest_unacked_seconds"].type == "gauge"

        job_id = fac.submit("sleep", {"seconds": 0.2}, worker="w1")
        wait_until(lambda: fac.job(job_id).status == "completed")  # type: ignore[union-attr]

        def counted() -> dict[str, Metric] | None:
            got = families(server.url)
            done = value(got["jobrelay_worker_job_duration_seconds"], "_count", **w1)
            return got if done == 1 and value(got["jobrelay_worker_acked"], "_total", **w1) > 0 else None

        after = wait_until(counted, what="the job's duration observed")
        duration = after["jobrelay_worker_job_duration_seconds"]
        assert value(after["jobrelay_worker_jobs_completed"], "_total", **w1) == 1
        assert 0.2 <= value(duration, "_sum", **w1) < 10
        assert value(duration, "_bucket", le="0.1", **w1) == 0  # it slept 0.2 s
        assert value(duration, "_bucket", le="0.5", **w1) == 1
        assert value(duration, "_bucket", le="+Inf", **w1) == 1
        acks = after["jobrelay_worker_ack_latency_seconds"]
        assert value(acks, "_count", **w1) >= 1


def test_facilitator_metrics_follow_prometheus_conventions(tmp_path: Path) -> None:
    config = FacilitatorConfig(
        key=FACILITATOR_KEY_HEX,
        db_path=str(tmp_path / "f.db"),
        authorized_keys={},
        durability="normal",
        schedule_to_start_timeout=None,
    )
    with start_facilitator(config) as fac:
        http_server = serve_facilitator(fac)
        try:
            before = families(http_server.url)
            assert_conventions(before, "jobrelay_facilitator_")
            for name in COUNTER_HELP:  # at 0 from the start, each with its own HELP
                family = before[f"jobrelay_facilitator_{name}"]
                assert (family.type, family.documentation) == ("counter", COUNTER_HELP[name]), name
                if not name.startswith("store_"):  # reading the database at start commits
                    assert value(family, "_total") == 0, name
            assert before["jobrelay_facilitator_jobs"].samples == []
            assert before["jobrelay_facilitator_connected_workers"].type == "gauge"

            # Queued jobs (no worker runs `encode`), one of which fails no_worker at its deadline.
            fac.submit("encode", None, job_id="waits")
            fac.submit("encode", None, job_id="gives-up", start_within=0.2)
            wait_until(lambda: fac.job("gives-up").status == "failed")  # type: ignore[union-attr]
            deadline = time.monotonic() + 5
            while True:  # the counter is added after the status commits
                after = families(http_server.url)
                if value(after["jobrelay_facilitator_jobs_no_worker"], "_total") == 1:
                    break
                assert time.monotonic() < deadline
            jobs = after["jobrelay_facilitator_jobs"]
            assert jobs.type == "gauge"
            assert value(jobs, status="queued", worker_id="") == 1
            assert value(jobs, status="failed", worker_id="") == 1
            assert value(after["jobrelay_facilitator_jobs_submitted"], "_total") == 2
        finally:
            http_server.stop()
