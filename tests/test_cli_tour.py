"""The README's five-minute tour, as written, and the same commands as separate subprocesses."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.test_cli_helpers import ROOT, Service, clean_env, free_port, run_cli, services

pytestmark = pytest.mark.timeout(90)


def readme_tour() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("<!-- tour:", 1)[1]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "README tour block not found"
    return match.group(1)


def test_readme_tour_runs_as_pasted() -> None:
    script = readme_tour()
    for port in ("8765", "8766", "8767"):  # the README's ports, swapped for free ones
        script = re.sub(rf"\b{port}\b", str(free_port()), script)
    proc = subprocess.Popen(
        ["bash", "-e", "-c", script], cwd=ROOT, env=clean_env(), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    assert proc.returncode == 0, f"stdout:\n{out}\nstderr:\n{err}"
    history = re.findall(r"^\d+\s+\S+\s+(\w+)\s+(\S+)", out, re.M)
    assert history[:2] == [("accepted", "-"), ("running", "-")]
    assert [p for s, p in history if s == "running"][1:] == ["25%", "50%", "75%", "100%"]
    assert history[-1][0] == "completed"
    # The --watch step: piped, plain tables; the last one shows the job completed on w1.
    watched = re.findall(r"^[0-9a-f]{24}\s+sleep\s+(\w+)\s+\S+(?:\s+\d+%)?\s+w1\s", out, re.M)
    assert watched and watched[-1] == "completed" and "\x1b" not in out, out
    assert "w1  healthy" in out and "connection  connected" in out
    assert re.search(r"^jobrelay_worker_acked_total\{worker_id=\"w1\"\} \d+", out, re.M)


def test_tour_commands_against_each_other(tmp_path: Path) -> None:
    keyline = run_cli(["keygen", "--worker-id", "w1", "--key-file", str(tmp_path / "w1.key")])
    assert keyline.returncode == 0, keyline.stderr
    worker_id, public = keyline.stdout.split()
    assert worker_id == "w1" and re.fullmatch(r"[0-9a-f]{64}", public)
    assert (tmp_path / "w1.key").stat().st_mode & 0o777 == 0o600
    (tmp_path / "authorized_keys").write_text(keyline.stdout)
    again = run_cli(["keygen", "--worker-id", "w1", "--key-file", str(tmp_path / "w1.key")])
    assert again.returncode == 2 and "exists; use --force" in again.stderr
    made = run_cli(["keygen", "--facilitator", "--key-file", str(tmp_path / "f.key")])
    fkey = made.stdout.strip()
    assert made.returncode == 0 and re.fullmatch(r"[0-9a-f]{64}", fkey), made.stderr
    shown = run_cli(["keygen", "--facilitator", "--key-file", str(tmp_path / "f.key"), "--show"])
    assert shown.stdout.strip() == fkey

    with services() as running:
        fac = Service(
            ["facilitator", "--key-file", str(tmp_path / "f.key"),
             "--authorized-keys", str(tmp_path / "authorized_keys"), "--db",
             str(tmp_path / "f.db"), "--port", "0", "--http-port", "0", "--durability", "normal",
             "--ready-file", str(tmp_path / "f.ready")],
            tmp_path / "f.log",
        ).start()  # fmt: skip
        running.append(fac)
        fready = fac.ready(tmp_path / "f.ready")
        api = fready["http_url"]
        worker = Service(
            ["worker", "--url", fready["url"], "--worker-id", "w1", "--key-file", str(tmp_path / "w1.key"),
             "--facilitator-key", fkey,
             "--db", str(tmp_path / "w1.db"), "--log-json", "--ready-file", str(tmp_path / "w1.ready")],
            tmp_path / "w1.log",
        ).start()  # fmt: skip
        running.append(worker)
        worker.ready(tmp_path / "w1.ready")

        submitted = run_cli(
            ["submit", "--facilitator", api, "echo", "--payload", '{"n": 1}', "--job-id", "j1"]
        )
        assert submitted.returncode == 0, submitted.stderr
        assert submitted.stdout.strip() == "j1"
        waited = run_cli(["jobs", "--facilitator", api, "j1", "--wait", "20", "--json"])
        assert waited.returncode == 0, waited.stderr
        view = json.loads(waited.stdout)
        assert [e["status"] for e in view["history"]] == ["accepted", "running", "completed"]
        assert view["peer"] == "w1" and view["payload"] == {"n": 1}

        listed = run_cli(["jobs", "--facilitator", api])
        assert re.search(r"^j1\s+echo\s+completed\s+w1", listed.stdout, re.M), listed.stdout
        workers = run_cli(["jobs", "--facilitator", api, "--workers", "--json"])
        assert json.loads(workers.stdout)[0]["connected"] is True
        unknown = run_cli(["submit", "--facilitator", api, "echo", "--worker", "nobody"])
        assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "nobody" in unknown.stderr
        # A kind no connected worker runs waits queued, then fails no_worker at its deadline.
        nobody = run_cli(["submit", "--facilitator", api, "encode", "--start-within", "0.5", "--wait", "20"])
        assert nobody.returncode == 1 and "no_worker" in nobody.stdout + nobody.stderr, nobody
        negative = run_cli(["submit", "--facilitator", api, "encode", "--start-within", "-1"])
        assert negative.returncode == 2 and "start-within" in negative.stderr
        missing = run_cli(["jobs", "--facilitator", api, "no-such-job"])
        assert missing.returncode == 1 and "no-such-job" in missing.stderr

        # JSON log lines with the worker id bound in their context.
        lines = [json.loads(line) for line in worker.text().splitlines() if line.startswith("{")]
        assert lines and all(line["worker_id"] == "w1" for line in lines)
        assert any("connected" in line["message"] for line in lines)

        worker.signal(signal.SIGTERM)
        fac.signal(signal.SIGTERM)
        assert worker.wait(10) == 0
        assert fac.wait(10) == 0
