"""`jobrelay submit --soft-time-limit/--time-limit` and `jobrelay worker --time-limit KIND=[SOFT/]HARD`,
as real processes over real sockets; bad values are one line and exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.protocol_harness import FACILITATOR_KEY_HEX
from tests.test_cli_helpers import Service, make_key, run_cli, services, worker_args

pytestmark = pytest.mark.timeout(90)


def test_job_and_kind_time_limits_through_the_cli(tmp_path: Path) -> None:
    (tmp_path / "f.key").write_text(FACILITATOR_KEY_HEX + "\n")  # the key worker_args pins
    (tmp_path / "f.key").chmod(0o600)
    key, public = make_key(tmp_path, "w1")
    (tmp_path / "authorized_keys").write_text(f"w1 {public}\n")
    with services() as running:
        fac = Service(
            ["facilitator", "--key-file", str(tmp_path / "f.key"),
             "--authorized-keys", str(tmp_path / "authorized_keys"), "--db", str(tmp_path / "f.db"),
             "--port", "0", "--http-port", "0", "--durability", "normal",
             "--ready-file", str(tmp_path / "f.ready")],
            tmp_path / "f.log",
        ).start()  # fmt: skip
        running.append(fac)
        ready = fac.ready(tmp_path / "f.ready")
        worker = Service(
            worker_args(tmp_path, ready["url"], "w1", key, "--time-limit", "sleep=0.5/1"), tmp_path / "w1.log"
        ).start()
        running.append(worker)
        worker.ready(tmp_path / "w1.ready")
        api = ready["http_url"]

        # The kind's default (1 s) ends a 30 s sleep; `--wait` exits 1 for a job that did not complete.
        ended = run_cli(
            ["submit", "--facilitator", api, "sleep", "--payload", "30", "--wait", "30", "--json"]
        )
        assert ended.returncode == 1, ended.stderr
        view = json.loads(ended.stdout)
        assert (view["status"], view["detail"]) == ("failed", "time_limit")
        assert [e["status"] for e in view["history"]].count("failed") == 1

        # A time limit is retryable: with --retries 1 it runs twice, and still ends once.
        retried = run_cli(
            [
                "submit",
                "--facilitator",
                api,
                "sleep",
                "--payload",
                "30",
                "--retries",
                "1",
                "--wait",
                "30",
                "--json",
            ]
        )
        assert retried.returncode == 1, retried.stderr
        history = [e["status"] for e in json.loads(retried.stdout)["history"]]
        assert history == ["accepted", "running", "retrying", "accepted", "running", "failed"]

        # The job's own limit overrides the kind's: this 1.5 s sleep completes.
        done = run_cli(
            [
                "submit",
                "--facilitator",
                api,
                "sleep",
                "--payload",
                "1.5",
                "--time-limit",
                "20",
                "--wait",
                "30",
            ]
        )
        assert done.returncode == 0, done.stderr + done.stdout

        for bad, what in (
            (["--time-limit", "0"], "--time-limit"),
            (["--soft-time-limit", "nan"], "--soft-time-limit"),
            (["--soft-time-limit", "5", "--time-limit", "5"], "soft_time_limit"),
            (["--retries", "100"], "--retries"),
            (["--retry-backoff", "-1"], "--retry-backoff"),
            (["--retry-backoff", "86401"], "--retry-backoff"),
        ):
            refused = run_cli(["submit", "--facilitator", api, "sleep", *bad])
            assert refused.returncode == 2, refused.stderr
            assert what in refused.stderr and refused.stderr.strip().count("\n") <= 2  # usage + one line


@pytest.mark.parametrize("value", ["sleep=abc", "sleep=5/5", "sleep=/", "nokind=5"])
def test_a_bad_kind_time_limit_is_one_line_and_exit_2(tmp_path: Path, value: str) -> None:
    key, _ = make_key(tmp_path, "w1")
    args = worker_args(tmp_path, "ws://127.0.0.1:1", "w1", key, "--time-limit", value)
    proc = run_cli([*args, "--print-config"])
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "worker.time_limits" in proc.stderr, proc.stderr
