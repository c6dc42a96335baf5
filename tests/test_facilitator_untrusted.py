"""What a peer without a key can make the facilitator log: one line per refused session, at most a
few per remote address a minute (the rest summarised), so one address cannot flood the log.
Real sockets on 127.0.0.1; the facilitator runs in this process."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import websocket
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from loguru import logger

from tests.facilitator_client import HandshakeRefused, TestWorker, make_facilitator, wait_until

pytestmark = pytest.mark.timeout(60)


def test_refused_handshakes_from_one_address_are_rate_limited_and_summarised(tmp_path: Path) -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{message}")
    fac = make_facilitator(tmp_path)
    try:
        for _ in range(30):
            intruder = TestWorker(fac.url, "nobody", Ed25519PrivateKey.generate())
            with pytest.raises(HandshakeRefused):
                intruder.connect()
            intruder.disconnect()
        wait_until(lambda: fac.counters.snapshot().get("auth_failures", 0) >= 30)
        wait_until(lambda: any("handshakes refused" in line for line in lines), timeout=5)
    finally:
        fac.stop()
        logger.remove(sink)
    refused = [line for line in lines if "authentication failed" in line]
    assert 1 <= len(refused) <= 5, refused
    summaries = [line for line in lines if "handshakes refused" in line]
    assert sum(int(line.split("also ")[1].split()[0]) for line in summaries) == 30 - len(refused)


def test_a_session_refused_before_authentication_logs_exactly_one_line(tmp_path: Path) -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="INFO", format="{message}")
    fac = make_facilitator(tmp_path)
    try:
        ws = websocket.create_connection(fac.url, timeout=5)
        ws.send(json.dumps({"type": "evil\n12:00:00 INFO forged", "version": 1}))
        deadline = time.monotonic() + 5
        with pytest.raises(websocket.WebSocketConnectionClosedException):
            while time.monotonic() < deadline:
                ws.recv()  # the error frame, then the close
        ws.close()
        wait_until(lambda: any("handshake refused" in line for line in lines), timeout=5)
    finally:
        fac.stop()
        logger.remove(sink)
    refused = [line for line in lines if "handshake refused" in line or "authentication failed" in line]
    assert len(refused) == 1, lines
    assert "code=unknown_type" in refused[0]
