"""A worker or facilitator started wrongly says so in one line and stops, as a user meets it
(real `jobrelay` subprocesses on 127.0.0.1): attempts counted 1..N, a URL without a port or at an
HTTP port, a refused key (exit 3, unless told to keep trying), a second process on one database,
relative file names in a TOML file; and a first connection whose log has no WARNING in it."""

from __future__ import annotations

import json
import re
import signal
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.protocol_harness import FACILITATOR_KEY_HEX, FACILITATOR_PUBLIC
from tests.test_cli_helpers import (
    Service,
    free_port,
    make_key,
    run_cli,
    services,
    wait_until,
    worker_args,
)

pytestmark = pytest.mark.timeout(60)


def facilitator_args(tmp: Path, *extra: str) -> list[str]:
    key = tmp / "facilitator.key"
    key.write_text(FACILITATOR_KEY_HEX + "\n")
    key.chmod(0o600)
    return [
        "facilitator", "--key-file", str(key), "--authorized-keys", str(tmp / "authorized_keys"),
        "--db", str(tmp / "f.db"), "--port", "0", "--http-port", "0", "--durability", "normal",
        "--ready-file", str(tmp / "f.ready"), *extra,
    ]  # fmt: skip


def start_facilitator(tmp: Path, running: list[Service], *authorized: str) -> dict[str, str]:
    (tmp / "authorized_keys").write_text("".join(f"{line}\n" for line in authorized))
    fac = Service(facilitator_args(tmp), tmp / "f.log").start()
    running.append(fac)
    return fac.ready(tmp / "f.ready")


def test_failed_attempts_are_numbered_one_to_max_attempts(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path, "w1")
    url = f"ws://127.0.0.1:{free_port()}"  # nothing listens there
    done = run_cli(worker_args(tmp_path, url, "w1", key, "--max-attempts", "3"))
    assert done.returncode == 1
    numbers = [int(n) for n in re.findall(r"connection attempt (\d+) to", done.stderr)]
    assert numbers == [1, 2, 3], done.stderr
    assert "giving up after 3 failed connection attempts" in done.stderr


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ws://localhost", "no port"),
        ("ws://localhost/", "no port"),
        ("wss://relay.example.com", "no port"),
        ("ws://127.0.0.1:8765/relay", "without a path"),
        ("ws://127.0.0.1:99999", "bad port"),
        ("http://127.0.0.1:8765", "expected ws://host:port"),
    ],
)
def test_a_url_the_worker_cannot_mean_is_refused_before_it_dials(tmp_path: Path, url: str, why: str) -> None:
    key, _ = make_key(tmp_path, "w1")
    done = run_cli(worker_args(tmp_path, url, "w1", key))
    assert done.returncode == 2
    assert done.stderr.startswith("jobrelay: error: worker.url (from --url): ") and why in done.stderr
    assert done.stderr.count("\n") == 1 and not (tmp_path / "w1.db").exists()


def test_a_url_at_the_http_port_says_so_in_one_line(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path, "w1")
    with services() as running:
        ready = start_facilitator(tmp_path, running)
        port = ready["http_url"].rsplit(":", 1)[1]
        done = run_cli(worker_args(tmp_path, f"ws://127.0.0.1:{port}", "w1", key, "--max-attempts", "1"))
    assert done.returncode == 1
    (failed,) = [line for line in done.stderr.splitlines() if "connection attempt 1" in line]
    assert "answered HTTP 403 Forbidden, not a WebSocket upgrade" in failed
    assert "HTTP port" in failed and "-+-+-" not in done.stderr and "content-type" not in done.stderr


def test_a_refused_key_stops_the_worker_with_exit_3(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path, "w1")
    _, other_public = make_key(tmp_path, "other")
    with services() as running:
        ready = start_facilitator(tmp_path, running, f"w1 {other_public}")  # not w1's key
        done = run_cli(worker_args(tmp_path, ready["url"], "w1", key), timeout=30)
    assert done.returncode == 3, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 2, done.stderr  # what the facilitator said, and why the worker stops
    assert (
        "authentication failed (facilitator ended it)" in errors[0] and "check worker_id and key" in errors[0]
    )
    assert "authentication was refused" in errors[1] and "--retry-auth-failures" in errors[1]
    assert done.stderr.count("authentication failed") == 1  # tried once, not forever


def test_a_facilitator_that_is_not_the_pinned_one_stops_the_worker_too(tmp_path: Path) -> None:
    key, public = make_key(tmp_path, "w1")
    _, not_it = make_key(tmp_path, "impostor")
    with services() as running:
        ready = start_facilitator(tmp_path, running, f"w1 {public}")
        args = worker_args(tmp_path, ready["url"], "w1", key)
        args[args.index(FACILITATOR_PUBLIC)] = not_it
        done = run_cli(args, timeout=30)
    assert done.returncode == 3, done.stderr
    assert "check facilitator_key and url" in done.stderr


def test_retry_auth_failures_keeps_trying_until_stopped(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path, "w1")
    _, other_public = make_key(tmp_path, "other")
    with services() as running:
        ready = start_facilitator(tmp_path, running, f"w1 {other_public}")
        worker = Service(
            worker_args(tmp_path, ready["url"], "w1", key, "--retry-auth-failures"), tmp_path / "w1.log"
        ).start()
        running.append(worker)
        wait_until(lambda: worker.text().count("authentication failed") >= 2, what="a second refusal")
        assert worker.proc is not None and worker.proc.poll() is None
        worker.signal(signal.SIGTERM)
        assert worker.wait(20) == 0


def test_one_database_one_process(tmp_path: Path) -> None:
    key, public = make_key(tmp_path, "w1")
    with services() as running:
        ready = start_facilitator(tmp_path, running, f"w1 {public}")
        second_fac = run_cli(facilitator_args(tmp_path, "--ready-file", ""))
        assert second_fac.returncode == 2
        assert second_fac.stderr.count("\n") == 1
        assert re.match(
            r"jobrelay: error: facilitator.db_path \(from --db\): .*f\.db is in use by process \d+",
            second_fac.stderr,
        ), second_fac.stderr
        worker = Service(worker_args(tmp_path, ready["url"], "w1", key), tmp_path / "w1.log").start()
        running.append(worker)
        worker.ready(tmp_path / "w1.ready")
        assert worker.proc is not None
        twin = run_cli(worker_args(tmp_path, ready["url"], "w1", key))
        assert twin.returncode == 2 and twin.stderr.count("\n") == 1
        assert f"w1.db is in use by process {worker.proc.pid}" in twin.stderr
        # A reader still reads: status takes no lock (WAL readers run beside the writer).
        status = run_cli(["status", "--db", str(tmp_path / "w1.db"), "--json"])
        assert status.returncode == 0, status.stderr
        # The lock goes with its holder, even a kill -9: the next start is not blocked.
        worker.kill()
        again = Service(worker_args(tmp_path, ready["url"], "w1", key), tmp_path / "w1b.log").start()
        running.append(again)
        (tmp_path / "w1.ready").unlink()
        again.ready(tmp_path / "w1.ready")


def test_file_names_in_a_toml_file_are_relative_to_that_file(tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    key, _ = make_key(conf, "w1")
    (conf / "worker.toml").write_text(
        '[worker]\nurl = "ws://127.0.0.1:8765"\nworker_id = "w1"\n'
        f'key_file = "{key.name}"\ndb_path = "data/../w1.db"\nfacilitator_key = "{FACILITATOR_PUBLIC}"\n'
        'ready_file = "w1.ready"\n'
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (conf / "data").mkdir()
    done = run_cli(["worker", "--config", "../conf/worker.toml", "--print-config"], cwd=elsewhere)
    assert done.returncode == 0, done.stderr
    values = {k: v["value"] for k, v in json.loads(done.stdout)["worker"].items()}
    assert Path(elsewhere / values["key_file"]).resolve() == key.resolve()
    assert Path(elsewhere / values["db_path"]).resolve() == (conf / "w1.db").resolve()
    assert Path(elsewhere / values["ready_file"]).resolve() == (conf / "w1.ready").resolve()
    # A flag stays relative to where the command runs.
    flag = run_cli(
        ["worker", "--config", "../conf/worker.toml", "--db", "mine.db", "--print-config"], cwd=elsewhere
    )
    assert json.loads(flag.stdout)["worker"]["db_path"]["value"] == "mine.db"


def test_a_first_connection_and_a_stop_log_no_warning(tmp_path: Path) -> None:
    key, public = make_key(tmp_path, "w1")
    with services() as running:
        ready = start_facilitator(tmp_path, running, f"w1 {public}")
        worker = Service(worker_args(tmp_path, ready["url"], "w1", key), tmp_path / "w1.log").start()
        running.append(worker)
        worker.ready(tmp_path / "w1.ready")
        wait_until(lambda: "connection connected" in worker.text(), what="the session")
        fac = running[0]
        fac.signal(signal.SIGTERM)  # the facilitator ends the session: the worker logs why, once
        assert fac.wait(20) == 0
        wait_until(lambda: "connection closed (facilitator ended it)" in worker.text(), what="the close")
        # Reconnecting, it counts its attempts from 1 again (not on from the session's attempt id).
        wait_until(lambda: "connection attempt 2 to" in worker.text(), what="two reconnect attempts")
        after = worker.text().split("facilitator ended it", 1)[1]
        assert [int(n) for n in re.findall(r"connection attempt (\d+) to", after)][:2] == [1, 2]
    worker_log, fac_log = worker.text(), fac.text()
    # Up to the close: after it the worker rightly warns of every failed reconnect.
    worker_log = worker_log[: worker_log.index("\n", worker_log.index("facilitator ended it"))]
    for log in (worker_log, fac_log):
        assert " WARNING " not in log, log
        assert not re.search(r"\S  +\S", "\n".join(line[21:] for line in log.splitlines())), log
    assert sum("listening" in line or "serving" in line for line in fac_log.splitlines()) == 2  # ws + http
    assert sum("started" in line or "running:" in line for line in worker_log.splitlines()) == 1


def test_polling_healthz_through_an_outage_logs_no_warning_per_503(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path, "w1")
    url = f"ws://127.0.0.1:{free_port()}"  # the facilitator is down
    with services() as running:
        worker = Service(
            worker_args(tmp_path, url, "w1", key, "--http-port", "0"), tmp_path / "w1.log"
        ).start()
        running.append(worker)
        health = worker.ready(tmp_path / "w1.ready")["http_url"] + "/healthz"
        for _ in range(5):
            with pytest.raises(urllib.error.HTTPError) as unhealthy:
                urllib.request.urlopen(health, timeout=5)
            assert unhealthy.value.code == 503
    polled = [line for line in worker.text().splitlines() if "/healthz" in line]
    assert not [line for line in polled if " WARNING " in line], polled
