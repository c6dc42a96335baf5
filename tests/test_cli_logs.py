"""The command's log sinks: untrusted text (worker ids, error details, frame type names) cannot forge
a line or drive the operator's terminal in the human format, and arrives exact in JSON lines."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from jobrelay.cli.logs import configure
from jobrelay.common.logs import escape_controls
from tests.facilitator_client import HandshakeRefused, TestWorker, make_facilitator, wait_until
from tests.test_cli_helpers import free_port, make_key, run_cli, worker_args

pytestmark = pytest.mark.timeout(60)

FORGED = "w1\n12:00:00.000 INFO    facilitator: worker connected worker=admin \x1b[2J\x1b[31m\u2028\x9b"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    logger.remove()
    logger.configure(extra={}, patcher=None)
    logger.add(__import__("sys").stderr)


def test_human_lines_escape_control_characters_in_message_and_context(
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure("INFO", json=False)
    logger.bind(worker_id=FORGED, job_id="j\r1").warning("detail={}", FORGED)
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err  # one record, one line
    for raw in ("\x1b", "\r", "\u2028", "\x9b"):
        assert raw not in err
    assert "[worker_id=w1\\n12:00:00.000 INFO    facilitator: worker connected worker=admin \\x1b[2J" in err
    assert "job_id=j\\r1]" in err
    assert err.rstrip("\n").endswith("detail=" + escape_controls(FORGED))


def test_json_lines_keep_untrusted_values_exact(capsys: pytest.CaptureFixture[str]) -> None:
    configure("INFO", json=True)
    logger.bind(worker_id=FORGED).warning("detail={}", FORGED)
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    record = json.loads(err)
    assert record["message"] == "detail=" + FORGED
    assert record["worker_id"] == FORGED
    assert not any(key.startswith("_human") for key in record)


def test_json_lines_are_flat_records_a_shipper_can_index(capsys: pytest.CaptureFixture[str]) -> None:
    configure("INFO", json=True, worker_id="w1")
    logger.bind(session="s1", job_id="j1", state="connected").info("job {} done", "j1")
    try:
        int("boom")
    except ValueError:
        logger.opt(exception=True).error("it failed")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert set(first) == {"time", "level", "message", "logger", "worker_id", "session", "job_id", "state"}
    assert first["level"] == "INFO" and first["message"] == "job j1 done" and first["logger"] == __name__
    assert (first["worker_id"], first["session"], first["job_id"]) == ("w1", "s1", "j1")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first["time"])
    assert not any(isinstance(v, dict) for v in first.values())  # flat: no nested record
    assert second["level"] == "ERROR" and second["exception"].endswith("'boom'")
    assert "Traceback" in second["exception"] and "session" not in second


def test_a_worker_with_log_json_writes_one_flat_object_per_line(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path, "w1")
    url = f"ws://127.0.0.1:{free_port()}"  # nothing listens: a few lines, then it gives up
    done = run_cli([*worker_args(tmp_path, url, "w1", key, "--max-attempts", "2"), "--log-json"])
    assert done.returncode == 1
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(lines) >= 4 and all({"time", "level", "message", "logger"} <= set(r) for r in lines)
    assert all(r["worker_id"] == "w1" and not isinstance(r.get("record"), dict) for r in lines)
    assert any(r["level"] == "WARNING" and "connection attempt 1" in r["message"] for r in lines)
    assert {r["logger"] for r in lines} >= {"jobrelay.actors.connection", "jobrelay.cli.service"}


def test_a_worker_id_sent_by_an_attacker_cannot_forge_a_facilitator_log_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    configure("INFO", json=False)
    fac = make_facilitator(tmp_path)
    try:
        attacker = TestWorker(fac.url, FORGED, Ed25519PrivateKey.generate())
        with pytest.raises(HandshakeRefused):
            attacker.connect()
        attacker.disconnect()
        wait_until(lambda: fac.counters.snapshot().get("auth_failures", 0) >= 1)
    finally:
        fac.stop()
    lines = capsys.readouterr().err.splitlines()
    refused = [line for line in lines if "authentication failed" in line]
    assert len(refused) == 1, lines
    assert "worker=w1\\n12:00:00.000 INFO" in refused[0]
    assert not any(line.startswith("12:00:00.000") for line in lines)
    assert not any("\x1b" in line for line in lines)
