"""wss:// end to end: the facilitator serves TLS, the worker verifies it with a CA file."""

from __future__ import annotations

import datetime
import ipaddress
import time
from collections.abc import Iterator
from pathlib import Path

import pykka
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from jobrelay import ConfigError, NotConnected, WorkerConfig, start_worker
from jobrelay.facilitator import FacilitatorConfig, start_facilitator
from jobrelay.protocol.auth import public_key_hex
from jobrelay.protocol.messages import MachineSpecs
from tests.protocol_harness import FACILITATOR_KEY_HEX, FACILITATOR_PUBLIC

KEY = Ed25519PrivateKey.generate()


@pytest.fixture(autouse=True)
def _stop_all() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=5)


def self_signed(tmp_path: Path, name: str = "cert") -> tuple[Path, Path]:
    """A throwaway certificate for 127.0.0.1 (made with cryptography, no openssl needed)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "jobrelay test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


@pytest.mark.timeout(60)
def test_wss_with_ca_file(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    config = FacilitatorConfig(
        key=FACILITATOR_KEY_HEX,
        db_path=str(tmp_path / "fac.db"),
        authorized_keys={"w1": public_key_hex(KEY)},
        tls_cert_file=str(cert),
        tls_key_file=str(key),
    )
    with start_facilitator(config) as fac:
        assert fac.url.startswith("wss://")
        worker_config = WorkerConfig(
            facilitator_key=FACILITATOR_PUBLIC,
            url=fac.url,
            worker_id="w1",
            key=KEY.private_bytes_raw().hex(),
            db_path=str(tmp_path / "w.db"),
            ca_file=str(cert),
        )
        with start_worker(worker_config) as worker:
            worker.wait_connected(10)
            worker.outbox.publish(MachineSpecs(specs={"gpu": 1}, at=0.0)).get(timeout=10)
            deadline = time.monotonic() + 10
            while fac.workers()[0].specs is None:
                assert time.monotonic() < deadline, "specs did not arrive over wss://"
                time.sleep(0.02)
            assert fac.workers()[0].specs == {"gpu": 1}


@pytest.mark.timeout(60)
def test_wss_refuses_an_untrusted_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    other_ca, _ = self_signed(tmp_path, "other")
    config = FacilitatorConfig(
        key=FACILITATOR_KEY_HEX,
        db_path=str(tmp_path / "fac.db"),
        authorized_keys={"w1": public_key_hex(KEY)},
        tls_cert_file=str(cert),
        tls_key_file=str(key),
    )
    with start_facilitator(config) as fac:
        worker_config = WorkerConfig(
            facilitator_key=FACILITATOR_PUBLIC,
            url=fac.url,
            worker_id="w1",
            key=KEY.private_bytes_raw().hex(),
            db_path=str(tmp_path / "w.db"),
            ca_file=str(other_ca),
            backoff_base=0.05,
            backoff_cap=0.1,
        )
        with start_worker(worker_config) as worker, pytest.raises(NotConnected):
            worker.wait_connected(1.5)


def test_tls_config_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"FacilitatorConfig\.tls_cert_file"):
        FacilitatorConfig(key=FACILITATOR_KEY_HEX, db_path=str(tmp_path / "f.db"), tls_cert_file="x.pem")
    with pytest.raises(ConfigError, match=r"WorkerConfig\.ca_file"):
        start_worker(
            WorkerConfig(
                facilitator_key=FACILITATOR_PUBLIC,
                url="wss://127.0.0.1:1",
                worker_id="w",
                key=KEY.private_bytes_raw().hex(),
                db_path=str(tmp_path / "w.db"),
                ca_file="nope.pem",
            )
        )
