"""Facilitator authentication, deadlines, configuration and bounded stop, over real sockets."""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import pytest
import websocket
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.facilitator import (
    Facilitator,
    FacilitatorConfig,
    load_facilitator_config,
    start_facilitator,
)
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.close_codes import close_code_for
from jobrelay.protocol.errors import ConfigError, ErrorCode
from jobrelay.storage.errors import StorageError
from tests.facilitator_client import (
    AUTHORIZED,
    KEYS,
    HandshakeRefused,
    TestWorker,
    make_facilitator,
)
from tests.protocol_harness import FACILITATOR_KEY_HEX

pytestmark = pytest.mark.timeout(30)


def refused(fac: Facilitator, worker_id: str, key: Ed25519PrivateKey) -> HandshakeRefused:
    worker = TestWorker(fac.url, worker_id, key)
    try:
        with pytest.raises(HandshakeRefused) as info:
            worker.connect(timeout=3.0)
    finally:
        worker.disconnect()
    return info.value


def test_unknown_key_is_refused_with_4001(fac: Facilitator) -> None:
    refusal = refused(fac, "stranger", Ed25519PrivateKey.generate())
    assert refusal.close_code == 4001
    assert refusal.closed is not None and refusal.closed.code is ErrorCode.UNKNOWN_KEY
    assert fac.stats().auth_failures == 1
    assert fac.stats().sessions_opened == 0


def test_wrong_key_is_refused_with_4001(fac: Facilitator) -> None:
    refusal = refused(fac, "w1", KEYS["w2"])
    assert refusal.close_code == 4001
    assert refusal.closed is not None and refusal.closed.code is ErrorCode.WRONG_KEY
    assert [v.connected for v in fac.workers()] == [False, False, False]


def test_data_before_the_handshake_is_refused(fac: Facilitator) -> None:
    ws = websocket.create_connection(fac.url, timeout=3)
    try:
        ws.send('{"type":"data","seq":1,"body":{"type":"worker_event","event":"x","at":1.0}}')
        frame = ws.recv()
        assert '"not_authenticated"' in frame
        opcode, close = ws.recv_data_frame(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert int.from_bytes(close.data[:2], "big") == 4001
    finally:
        ws.close()


def test_silent_connection_times_out(tmp_path: Path) -> None:
    fac = make_facilitator(tmp_path, handshake_timeout=0.3, heartbeat_interval=0.1, heartbeat_timeout=0.4)
    ws = websocket.create_connection(fac.url, timeout=3)
    worker = TestWorker(fac.url, "w1", KEYS["w1"])
    try:
        opcode, close = ws.recv_data_frame(control_frame=True)  # the error frame first
        assert opcode == websocket.ABNF.OPCODE_TEXT and b"handshake_timeout" in close.data
        opcode, close = ws.recv_data_frame(control_frame=True)
        assert int.from_bytes(close.data[:2], "big") == 4003
        worker.connect()
        assert worker.session is not None
        worker.session.heartbeat_interval = math.inf  # the worker deliberately stays silent
        assert worker.wait_closed(timeout=3.0) == 4002  # well past heartbeat_timeout
        assert worker.closed is not None and worker.closed.code is ErrorCode.HEARTBEAT_TIMEOUT
        assert fac.stats().heartbeat_timeouts == 1
    finally:
        ws.close()
        worker.disconnect()
        fac.stop()


def test_heartbeats_keep_a_quiet_worker_connected(tmp_path: Path) -> None:
    fac = make_facilitator(tmp_path, heartbeat_interval=0.1, heartbeat_timeout=0.4)
    worker = TestWorker(fac.url, "w1", KEYS["w1"])
    try:
        worker.connect()
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            worker.pump(0.02)  # answers heartbeats: the session stays up
        assert worker.is_open
        assert fac.stats().heartbeat_timeouts == 0
    finally:
        worker.disconnect()
        fac.stop()


def test_stop_is_bounded_with_a_connected_worker(tmp_path: Path) -> None:
    fac = make_facilitator(tmp_path)
    worker = TestWorker(fac.url, "w1", KEYS["w1"])
    stopping = threading.Event()

    def pump() -> None:
        while not stopping.is_set() and worker.ws is not None:
            worker.pump(0.02)

    try:
        worker.connect()
        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        started = time.monotonic()
        fac.stop(timeout=2.0)
        assert time.monotonic() - started < 2.5
        reader.join(3.0)
        assert worker.close_code == 1001
    finally:
        stopping.set()
        worker.disconnect()
        fac.stop()


def test_stop_is_bounded_when_the_worker_never_answers(tmp_path: Path) -> None:
    fac = make_facilitator(tmp_path)
    worker = TestWorker(fac.url, "w1", KEYS["w1"])
    try:
        worker.connect()  # then never reads again
        started = time.monotonic()
        fac.stop(timeout=1.5)
        assert time.monotonic() - started < 2.0
    finally:
        worker.disconnect()
        fac.stop()


def test_context_manager_and_authorized_keys_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "authorized_keys"
    keys_file.write_text(f"# workers\nw1 {AUTHORIZED['w1']}\n")
    config = FacilitatorConfig(
        key=FACILITATOR_KEY_HEX, db_path=str(tmp_path / "f.db"), authorized_keys_file=str(keys_file)
    )
    with start_facilitator(config) as fac:
        assert fac.url == f"ws://127.0.0.1:{fac.port}" and fac.port > 0
        worker = TestWorker(fac.url, "w1", KEYS["w1"])
        worker.connect()
        worker.disconnect()
        assert [v.worker_id for v in fac.workers()] == ["w1"]
    with pytest.raises(Exception, match="not running"):
        fac.jobs()


@pytest.mark.parametrize(
    ("values", "field"),
    [
        ({"port": 70000}, "port"),
        ({"port": "eighty"}, "port"),
        ({"durability": "sometimes"}, "durability"),
        ({"max_inflight": 0}, "max_inflight"),
        ({"max_frame_bytes": 10}, "max_frame_bytes"),
        ({"heartbeat_interval": 5.0, "heartbeat_timeout": 5.0}, "heartbeat_timeout"),
        ({"handshake_timeout": -1.0}, "handshake_timeout"),
        ({"heartbeat_rate": -1.0}, "heartbeat_rate"),
        ({"heartbeat_rate": float("inf")}, "heartbeat_rate"),
        ({"heartbeat_rate": float("nan")}, "heartbeat_rate"),
        ({"formats": ["xml"]}, "formats"),
        ({"authorized_keys": {"w1": "not-hex"}}, "authorized_keys"),
        ({"db_path": ""}, "db_path"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_config_names_the_field(values: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=rf"^FacilitatorConfig\.{field}: "):
        load_facilitator_config({"db_path": "f.db", **values})


def test_heartbeat_scale_follows_the_budget_and_stops_at_a_minute() -> None:
    config = load_facilitator_config({"db_path": "f.db", "heartbeat_interval": 5.0})  # rate 1,000/s
    scales = [config.heartbeat_scale(n) for n in (1, 5_000, 5_001, 10_000, 20_000)]
    assert scales == [1.0, 1.0, 1.25, 2.0, 4.0]
    tiny = load_facilitator_config({"db_path": "f.db", "heartbeat_interval": 5.0, "heartbeat_rate": 0.001})
    assert tiny.heartbeat_scale(20_000) == 12.0  # 60 s, not 2e7 s
    fixed = load_facilitator_config({"db_path": "f.db", "heartbeat_rate": 0})
    assert fixed.heartbeat_scale(20_000) == 1.0


def test_bad_config_in_code_and_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"FacilitatorConfig\.port: must be 0\.\.65535, got 70000"):
        FacilitatorConfig(key=FACILITATOR_KEY_HEX, db_path="f.db", port=70000)
    with pytest.raises(ConfigError, match=r"FacilitatorConfig\.authorized_keys_file: cannot be read"):
        start_facilitator(
            FacilitatorConfig(
                key=FACILITATOR_KEY_HEX,
                db_path=str(tmp_path / "f.db"),
                authorized_keys_file=str(tmp_path / "missing"),
            )
        )
    bad = tmp_path / "keys"
    bad.write_text("w1 nothex\n")
    with pytest.raises(ConfigError, match=r"authorized_keys_file: .*line 1"):
        start_facilitator(
            FacilitatorConfig(
                key=FACILITATOR_KEY_HEX, db_path=str(tmp_path / "f.db"), authorized_keys_file=str(bad)
            )
        )
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 10)
    with pytest.raises(StorageError):
        start_facilitator(FacilitatorConfig(key=FACILITATOR_KEY_HEX, db_path=str(tmp_path / "junk.db")))
    with make_facilitator(tmp_path) as running:
        taken = running.port
        with pytest.raises(ConfigError, match=r"FacilitatorConfig\.port: cannot listen"):
            make_facilitator(tmp_path / "..", db_path=str(tmp_path / "other.db"), port=taken)
    assert public_key_hex(KEYS["w1"]) == AUTHORIZED["w1"]


def test_close_codes() -> None:
    assert close_code_for(None) == 1000
    assert close_code_for(ErrorCode.REPLAYED_NONCE) == 4001
    assert close_code_for(ErrorCode.HEARTBEAT_TIMEOUT) == 4002
    assert close_code_for(ErrorCode.HANDSHAKE_TIMEOUT) == 4003
    assert close_code_for(ErrorCode.UNSUPPORTED_CODEC) == 4004
    assert close_code_for(ErrorCode.FRAME_TOO_LARGE) == 1009
    assert close_code_for(ErrorCode.SEQ_GAP) == 4000
