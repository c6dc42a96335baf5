"""The command's log sinks: untrusted text (worker ids, error details, frame type names) cannot forge
a line or drive the operator's terminal in the human format, and arrives exact in JSON lines."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from jobrelay.cli.logs import configure
from jobrelay.common.logs import escape_controls
from tests.facilitator_client import HandshakeRefused, TestWorker, make_facilitator, wait_until

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
    record = json.loads(err)["record"]
    assert record["message"] == "detail=" + FORGED
    assert record["extra"]["worker_id"] == FORGED
    assert not any(key.startswith("_human") for key in record["extra"])


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
