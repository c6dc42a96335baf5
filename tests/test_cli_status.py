"""`jobrelay status` on a running worker subprocess (read-only database + /healthz), and the
worker's /healthz and /metrics served by the `jobrelay worker` process itself."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobrelay.facilitator import FacilitatorConfig, start_facilitator
from jobrelay.testing.proxy import TcpProxy
from tests.protocol_harness import FACILITATOR_KEY_HEX
from tests.test_cli_helpers import Service, make_key, run_cli, services, wait_until, worker_args

pytestmark = pytest.mark.timeout(60)


def test_status_of_a_running_worker(tmp_path: Path) -> None:
    key, public = make_key(tmp_path, "w1")
    config = FacilitatorConfig(
        key=FACILITATOR_KEY_HEX,
        db_path=str(tmp_path / "f.db"),
        authorized_keys={"w1": public},
        durability="normal",
    )
    with start_facilitator(config) as fac, TcpProxy(("127.0.0.1", fac.port)) as proxy, services() as running:
        # Local mode (healthy but local) would follow the cut: this test is about the unhealthy
        # answer of a disconnected worker, so local mode is kept far away (tests/test_local_mode.py).
        args = ["--http-port", "0", "--local-mode-after", "600", "--breaker-failure-threshold", "1000"]
        worker = Service(worker_args(tmp_path, proxy.url, "w1", key, *args), tmp_path / "w1.log")
        running.append(worker.start())
        http_url = worker.ready(tmp_path / "w1.ready")["http_url"]
        port = str(urlsplit(http_url).port)
        job_id = fac.submit("sleep", {"seconds": 30, "steps": 30}, worker="w1")
        wait_until(lambda: len(fac.job(job_id).history) >= 3, what="the job running")  # type: ignore[union-attr]

        db = str(tmp_path / "w1.db")
        result = run_cli(["status", "--db", db, "--http-port", port])
        assert result.returncode == 0, result.stderr
        assert "w1  healthy" in result.stdout and "connection  connected" in result.stdout
        assert f"running     1 job(s): {job_id}" in result.stdout
        assert "outbox      out: " in result.stdout and "jobs        1 known, 1 unfinished" in result.stdout

        result = run_cli(
            ["status", "--json"], env={**worker.env, "JOBRELAY_DB": db, "JOBRELAY_HTTP_PORT": port}
        )
        doc = json.loads(result.stdout)
        assert doc["health"]["running_jobs"] == [job_id]
        assert doc["database"]["jobs_unfinished"] == 1 and doc["database"]["outbox"][0]["last_seq"] >= 3

        with urllib.request.urlopen(http_url + "/metrics", timeout=5) as resp:
            families = {f.name: f for f in text_string_to_metric_families(resp.read().decode())}
        running_jobs = families["jobrelay_worker_running_jobs"].samples[0]
        assert running_jobs.value == 1.0 and running_jobs.labels == {"worker_id": "w1"}
        assert families["jobrelay_worker_jobs_started"].type == "counter"

        proxy.block(True)
        proxy.cut()

        def unhealthy() -> str:
            result = run_cli(["status", "--db", db, "--http-port", port])
            return result.stdout if result.returncode == 1 else ""

        out = wait_until(unhealthy, what="status exit 1 once disconnected")
        assert "UNHEALTHY: not connected" in out

        result = run_cli(["status", "--db", db])  # database only: no verdict on the connection
        assert result.returncode == 0 and "connection  unknown" in result.stdout
        worker.signal(signal.SIGTERM)
        assert worker.wait(10) == 0


def test_status_of_a_missing_database_is_one_line_exit_2(tmp_path: Path) -> None:
    result = run_cli(["status", "--db", str(tmp_path / "missing.db")])
    assert result.returncode == 2
    assert result.stderr.startswith("jobrelay: error: worker.db_path (from --db): ")
    assert result.stderr.count("\n") == 1
