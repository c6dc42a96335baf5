"""What an operator asks a running facilitator and worker, through real `jobrelay` subprocesses:
waits that say when they ran out, status filters that name the valid statuses, counts by status
over every job, a worker that is idle, the worker's own record of a job, and a submit that says
it is retrying a facilitator that is down."""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.protocol_harness import FACILITATOR_KEY_HEX
from tests.test_cli_helpers import (
    JOBRELAY,
    Service,
    clean_env,
    free_port,
    make_key,
    run_cli,
    services,
    wait_until,
    worker_args,
)

pytestmark = pytest.mark.timeout(90)


class Running(NamedTuple):
    http: str  # the facilitator's HTTP API
    db: str  # the worker's database
    tmp: Path


def facilitator_args(tmp: Path, *extra: str) -> list[str]:
    key = tmp / "facilitator.key"
    key.write_text(FACILITATOR_KEY_HEX + "\n")
    key.chmod(0o600)
    return [
        "facilitator", "--key-file", str(key), "--authorized-keys", str(tmp / "authorized_keys"),
        "--db", str(tmp / "f.db"), "--port", "0", "--http-port", "0", "--durability", "normal",
        "--ready-file", str(tmp / "f.ready"), *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A facilitator and worker w1 (kinds sleep, echo) as subprocesses, for the whole module."""
    tmp = tmp_path_factory.mktemp("operator")
    key, public = make_key(tmp, "w1")
    (tmp / "authorized_keys").write_text(f"w1 {public}\n")
    with services() as started:
        fac = Service(facilitator_args(tmp), tmp / "f.log").start()
        started.append(fac)
        ready = fac.ready(tmp / "f.ready")
        worker = Service(worker_args(tmp, ready["url"], "w1", key), tmp / "w1.log").start()
        started.append(worker)
        worker.ready(tmp / "w1.ready")
        yield Running(ready["http_url"], str(tmp / "w1.db"), tmp)


def cli(r: Running, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run_cli([*args[:1], "--facilitator", r.http, *args[1:]], timeout=timeout)


def submit(r: Running, kind: str, payload: str, *extra: str) -> str:
    done = cli(r, "submit", kind, "--payload", payload, *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_wait_that_runs_out_says_it_timed_out(running: Running) -> None:
    job = submit(running, "sleep", '{"seconds": 30, "steps": 30}')
    done = cli(running, "jobs", job, "--wait", "0.5")
    assert done.returncode == 1
    assert done.stderr.startswith(f"jobrelay: timed out after 0.5 s waiting for job {job} (still ")
    assert done.stderr.count("\n") == 1
    # submit --wait runs out the same way
    waited = cli(running, "submit", "sleep", "--payload", '{"seconds": 30}', "--wait", "0.3", "--json")
    assert waited.returncode == 1 and "jobrelay: timed out after 0.3 s waiting for job" in waited.stderr
    for started in (job, json.loads(waited.stdout)["job_id"]):
        assert cli(running, "cancel", started, "--wait", "30").returncode == 0


@pytest.mark.parametrize("status", ["bogus", "Completed ", "queud"])
def test_an_unknown_status_is_refused_naming_the_valid_ones(running: Running, status: str) -> None:
    done = cli(running, "jobs", "--status", status)
    expected_ok = status.strip().lower() == "completed"
    if expected_ok:  # the same word in another case or with blanks is that status
        assert done.returncode == 0, done.stderr
        return
    assert done.returncode == 2 and done.stdout == ""
    assert "expected one of queued, accepted, running, completed, failed" in done.stderr
    assert done.stderr.count("\n") == 1


def test_the_api_itself_refuses_an_unknown_status(running: Running) -> None:
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{running.http}/jobs?status=bogus", timeout=10)
    assert refused.value.code == 400
    assert "expected one of queued" in json.loads(refused.value.read())["error"]


def test_queued_lists_and_counts_the_jobs_no_worker_has(running: Running) -> None:
    job = submit(running, "nobody-runs-this", "1")  # no worker has this kind: it stays queued
    listed = cli(running, "jobs", "--status", "queued", "--json")
    assert job in [j["job_id"] for j in json.loads(listed.stdout)]
    counts = json.loads(cli(running, "jobs", "--summary", "--json").stdout)
    assert counts["counts"]["queued"] >= 1


def test_the_summary_counts_every_job_not_a_page(running: Running) -> None:
    before = json.loads(cli(running, "jobs", "--summary", "--json").stdout)
    jobs = [submit(running, "echo", f'"n{n}"') for n in range(5)]
    done = cli(running, "jobs", "--status", "completed", "--limit", "2", "--wait-all", "30")
    # --wait-all waits for the listed jobs (2 of them); the others end on their own
    assert done.returncode == 0, done.stderr

    def status(job: str) -> str:
        return str(json.loads(cli(running, "jobs", job, "--json").stdout)["status"])

    wait_until(lambda: all(status(j) == "completed" for j in jobs), timeout=30, what="the echo jobs ended")
    after = json.loads(cli(running, "jobs", "--summary", "--json", "--limit", "1").stdout)
    assert after["counts"]["completed"] >= before["counts"]["completed"] + 5
    assert after["total"] == sum(after["counts"].values()) >= 5  # --limit does not cap it
    text = cli(running, "jobs", "--summary").stdout.splitlines()
    assert text[0].split() == ["STATUS", "JOBS"] and text[-1].split() == ["total", str(after["total"])]


def test_wait_all_waits_for_every_listed_job_and_says_when_it_runs_out(running: Running) -> None:
    short = [submit(running, "sleep", '{"seconds": 0.5, "steps": 1}') for _ in range(2)]
    done = cli(running, "jobs", "--status", "running", "--wait-all", "30", "--json")
    assert done.returncode == 0, done.stderr
    ended = {j["job_id"]: j["status"] for j in json.loads(done.stdout)}
    assert all(ended[j] == "completed" for j in short if j in ended)
    long = submit(running, "sleep", '{"seconds": 60, "steps": 60}')
    wait_until(lambda: json.loads(cli(running, "jobs", long, "--json").stdout)["status"] == "running")
    late = cli(running, "jobs", "--status", "running", "--wait-all", "0.5")
    assert late.returncode == 1
    assert late.stderr.startswith("jobrelay: timed out after 0.5 s waiting for 1 of 1 listed jobs")
    assert cli(running, "cancel", long, "--wait", "30").returncode == 0


def test_status_knows_what_the_worker_sent_for_a_job(running: Running) -> None:
    job = submit(running, "sleep", '{"seconds": 0.2, "steps": 2}')
    assert cli(running, "jobs", job, "--wait", "30").returncode == 0
    done = run_cli(["status", "--db", running.db, "--job", job, "--json"])
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "completed" and record["kind"] == "sleep"
    sent = [e["status"] for e in record["history"]]
    assert sent[0] == "accepted" and sent[-1] == "completed" and "running" in sent
    text = run_cli(["status", "--db", running.db, "--job", job]).stdout.splitlines()
    assert text[0].startswith(f"job {job}  kind sleep  status completed")
    unknown = run_cli(["status", "--db", running.db, "--job", "no-such-job"])
    assert unknown.returncode == 1 and "has no job 'no-such-job'" in unknown.stderr


def test_status_wait_idle(running: Running) -> None:
    job = submit(running, "sleep", '{"seconds": 60, "steps": 60}')
    wait_until(lambda: json.loads(cli(running, "jobs", job, "--json").stdout)["status"] == "running")
    busy = run_cli(["status", "--db", running.db, "--wait-idle", "0.3"])
    assert busy.returncode == 1
    assert busy.stderr.startswith("jobrelay: timed out after 0.3 s waiting for the worker to be idle (")
    assert "1 job(s) unfinished" in busy.stderr
    assert cli(running, "cancel", job, "--wait", "30").returncode == 0
    idle = run_cli(["status", "--db", running.db, "--wait-idle", "30", "--json"])
    assert idle.returncode == 0, idle.stderr
    db = json.loads(idle.stdout)["database"]
    assert db["jobs_unfinished"] == 0 and all(o["depth_rows"] == 0 for o in db["outbox"])


def test_submit_to_a_facilitator_that_is_down_says_it_is_retrying(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    proc = subprocess.Popen(
        [*JOBRELAY, "submit", "--facilitator", url, "--timeout", "20", "sleep"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=clean_env(),
        start_new_session=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # at once, long before the 20 s are over
        assert proc.poll() is None, first
        assert first.startswith(f"jobrelay: cannot reach the facilitator at {url} (")
        assert first.rstrip().endswith("retrying for up to 20 s (--timeout)")
    finally:
        os.killpg(proc.pid, 9)
        proc.communicate(timeout=10)
    # ... and says it once, then the error, when the time is up
    done = run_cli(["submit", "--facilitator", url, "--timeout", "0.5", "sleep"])
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert len(lines) == 2 and "retrying" in lines[0]
    assert lines[1].startswith(f"jobrelay: error: cannot reach the facilitator at {url}")


def test_the_facilitator_process_reports_its_garbage_collections_in_metrics(running: Running) -> None:
    # `jobrelay facilitator` sets the collector for many connections (gc_policy) and measures it:
    # an operator sees on /metrics when collections stop the loop, and for how long.
    with urllib.request.urlopen(running.http + "/metrics", timeout=10) as response:
        text = response.read().decode()
    seconds = {
        line.split('generation="')[1].split('"')[0]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("jobrelay_facilitator_gc_seconds_total{")
    }
    assert sorted(seconds) == ["0", "1", "2"]
    assert all(value >= 0 for value in seconds.values())
    assert "# HELP jobrelay_facilitator_gc_longest_pause_seconds" in text
