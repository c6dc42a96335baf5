"""Bad input to the `jobrelay` command, as an attacker or a tired operator gives it: every case is
refused promptly with one line on stderr and exit 2 (never a traceback, a hang, or a key file that
locks workers out later). Each runs the real command in a subprocess, with a timeout."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from jobrelay.protocol.auth import parse_authorized_keys, worker_id_problem
from tests.protocol_harness import FACILITATOR_KEY_HEX, FACILITATOR_PUBLIC
from tests.test_cli_helpers import make_key, run_cli

pytestmark = pytest.mark.timeout(60)

PUBLIC = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"


def refused(args: list[str], pattern: str, *, cwd: Path | None = None) -> None:
    """The command exits 2 within 20 s with exactly one stderr line matching ``pattern``."""
    done = run_cli(args, timeout=20, cwd=cwd)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert re.fullmatch(f"jobrelay: error: {pattern}", lines[0]), lines[0]


def worker_args(tmp: Path, key: Path | str) -> list[str]:
    return [
        "worker",
        "--url",
        "ws://127.0.0.1:1",
        "--worker-id",
        "w1",
        "--key-file",
        str(key),
        "--facilitator-key",
        FACILITATOR_PUBLIC,
        "--db",
        str(tmp / "w.db"),
        "--max-attempts",
        "1",
    ]


def facilitator_args(tmp: Path, *extra: str) -> list[str]:
    key = tmp / "facilitator.key"
    if not key.exists():
        key.write_text(FACILITATOR_KEY_HEX + "\n")
        key.chmod(0o600)
    return [
        "facilitator", "--key-file", str(key), "--db", str(tmp / "f.db"), "--port", "0", "--http-port", "0",
        *extra,
    ]  # fmt: skip


# ------------------------------------------------------------------ what a path may be


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_a_config_file_that_is_not_a_regular_file_is_refused(
    tmp_path: Path, fifo: Path, special: str
) -> None:
    path = str(fifo) if special == "fifo" else special
    refused(
        [*facilitator_args(tmp_path), "--config", path],
        rf"--config: cannot read {path}: not a regular file \(it is a .*\)",
    )


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_a_key_file_that_is_not_a_regular_file_is_refused(tmp_path: Path, fifo: Path, special: str) -> None:
    path = str(fifo) if special == "fifo" else special
    refused(
        worker_args(tmp_path, path),
        rf"worker\.key_file \(from --key-file\): cannot read {path}: not a regular file .*",
    )


@pytest.mark.parametrize("special", ["fifo", "/dev/zero"])
def test_an_authorized_keys_file_that_is_not_a_regular_file_is_refused(
    tmp_path: Path, fifo: Path, special: str
) -> None:
    path = str(fifo) if special == "fifo" else special
    refused(
        facilitator_args(tmp_path, "--authorized-keys", path),
        r"facilitator\.authorized_keys_file \(from --authorized-keys\): cannot be read "
        r"\(not a regular file .*",
    )


def test_tls_files_and_databases_that_are_fifos_are_refused(tmp_path: Path, fifo: Path) -> None:
    refused(
        facilitator_args(tmp_path, "--tls-cert", str(fifo), "--tls-key", str(fifo)),
        r"facilitator\.tls_cert_file \(from --tls-cert\): must be a regular file, got '.*fifo'",
    )
    refused(["status", "--db", str(fifo)], r"worker\.db_path \(from --db\): .*fifo is not a regular file.*")


def test_an_oversized_config_file_is_refused(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (2 << 20) + "\n")
    refused(
        [*facilitator_args(tmp_path), "--config", str(big)],
        rf"--config: cannot read {big}: \d+ bytes is larger than the 1048576 bytes allowed",
    )


# ------------------------------------------------------------------ modes, as ssh checks them


def test_a_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path, "w1")
    key.chmod(0o644)
    refused(
        worker_args(tmp_path, key),
        r"worker\.key_file \(from --key-file\): cannot read .*w1\.key: permissions 0644 are too open: "
        r"a private key must be readable by its owner only \(chmod 600\)",
    )


def test_an_authorized_keys_file_writable_by_others_is_refused(tmp_path: Path) -> None:
    keys = tmp_path / "authorized_keys"
    keys.write_text(f"w1 {PUBLIC}\n")
    keys.chmod(0o666)
    refused(
        facilitator_args(tmp_path, "--authorized-keys", str(keys)),
        r"facilitator\.authorized_keys_file \(from --authorized-keys\): cannot be read "
        r"\(permissions 0666 are too open: .*\), got '.*authorized_keys'",
    )


# ------------------------------------------------------------------ keygen


@pytest.mark.parametrize("worker_id", ["w#1", "w\x1b[31m1", "w\u20281", "x" * 257])
def test_keygen_refuses_a_worker_id_the_authorized_keys_file_cannot_hold(
    tmp_path: Path, worker_id: str
) -> None:
    # "w#1 <key>" appended to authorized_keys used to be accepted here, and then made the whole
    # file invalid: every worker locked out at the facilitator's next restart.
    refused(
        ["keygen", "--worker-id", worker_id, "--key-file", str(tmp_path / "k")],
        r"keygen\.worker_id \(from --worker-id\): must .*, got .*",
    )
    assert not (tmp_path / "k").exists()


def test_every_id_keygen_accepts_loads_back() -> None:
    for worker_id in ("w1", "gpu-node.eu_3", "wörker-ü", "a" * 256):
        assert worker_id_problem(worker_id) == ""
        assert parse_authorized_keys(f"{worker_id} {PUBLIC}\n") == {worker_id: PUBLIC}


def test_keygen_force_does_not_follow_a_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "w1.key").symlink_to(victim)
    refused(
        ["keygen", "--worker-id", "w1", "--key-file", str(tmp_path / "w1.key"), "--force"],
        r"keygen\.key_file \(from --key-file\): .*w1\.key is a symbolic link; refusing to write a "
        r"key through it",
    )
    assert victim.read_text() == "precious\n"


def test_keygen_force_does_not_write_into_a_fifo_or_device(tmp_path: Path, fifo: Path) -> None:
    for target in (str(fifo), "/dev/null"):
        refused(
            ["keygen", "--worker-id", "w1", "--key-file", target, "--force"],
            r"keygen\.key_file \(from --key-file\): .* is not a regular file; "
            r"refusing to write a key to it",
        )


def test_authorized_keys_errors_name_the_line_and_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"^line 3: worker id 'w\\x0b2' must not contain whitespace"):
        parse_authorized_keys(f"# fleet\nw1 {PUBLIC}\nw\x0b2 {PUBLIC}\n")
    with pytest.raises(ValueError, match=r"^line 2: expected '<worker_id> <public_key_hex>', got 3 fields"):
        parse_authorized_keys(f"w1 {PUBLIC}\r\nw2 {PUBLIC} extra\r\n")


# ------------------------------------------------------------------ settings no connection survives


@pytest.mark.parametrize(
    ("extra", "pattern"),
    [
        (["--max-inflight", "2000000"],
         r"facilitator\.max_inflight \(from --max-inflight\): must be ≤ 1000000 \(what a worker accepts\), got 2000000"),  # noqa: E501
        (["--max-frame-bytes", "100000000000000000000000"],
         r"facilitator\.max_frame_bytes \(from --max-frame-bytes\): must be 1024\.\.1073741824, got 1000+"),
        (["--max-batch", "20000"],
         r"facilitator\.max_batch \(from --max-batch\): must be ≤ 10000 \(the most a batch frame may carry\), got 20000"),  # noqa: E501
    ],
)  # fmt: skip
def test_facilitator_settings_that_every_connection_would_fail_on_are_refused(
    tmp_path: Path, extra: list[str], pattern: str
) -> None:
    refused(facilitator_args(tmp_path, *extra), pattern)


def test_worker_frame_limit_is_bounded(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path, "w1")
    refused([*worker_args(tmp_path, key), "--max-frame-bytes", "99999999999999"],
            r"worker\.max_frame_bytes \(from --max-frame-bytes\): must be 1024\.\.1073741824, got 99999999999999")  # fmt: skip  # noqa: E501


# ------------------------------------------------------------------ plain flags: one line, exit 2


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["submit", "x", "--timeout", "nan"], r"jobrelay submit: error: argument --timeout: expected a finite .*'nan'.*"),  # noqa: E501
        (["submit", "x", "--timeout", "1e400"], r"jobrelay submit: error: argument --timeout: expected a finite .*"),  # noqa: E501
        (["submit", "x", "--facilitator", "http://[::1"],
         r"jobrelay: error: client\.facilitator: expected http://host:port, got 'http://\[::1'"),
        (["jobs", "--facilitator", "http://h:99999"],
         r"jobrelay: error: client\.facilitator: expected http://host:port, got 'http://h:99999'"),
        (["jobs", "--limit", "-5"], r"jobrelay jobs: error: argument --limit: expected 0\.\.10000, got -5 .*"),  # noqa: E501
        (["jobs", "x", "--wait", "inf"], r"jobrelay jobs: error: argument --wait: expected a finite .*"),
        (["demo", "--jobs", "0"], r"jobrelay demo: error: argument --jobs: expected 1\.\.1000000, got 0 .*"),
        (["demo", "--job-seconds", "nan"], r"jobrelay demo: error: argument --job-seconds: expected a finite .*"),  # noqa: E501
        (["demo", "--max-jobs", "0"], r"jobrelay demo: error: argument --max-jobs: expected 1\.\.10000, got 0 .*"),  # noqa: E501
    ],
)  # fmt: skip
def test_bad_plain_flags_are_one_line_and_exit_2(args: list[str], pattern: str) -> None:
    done = run_cli(args, timeout=20)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and re.fullmatch(pattern, lines[0]), done.stderr


def test_a_ready_file_in_a_missing_directory_is_refused_before_starting(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path, "w1")
    refused([*worker_args(tmp_path, key), "--ready-file", str(tmp_path / "no" / "ready.json")],
            r"worker\.ready_file \(from --ready-file\): directory .*/no does not exist")  # fmt: skip
    refused(facilitator_args(tmp_path, "--ready-file", str(tmp_path / "no" / "ready.json")),
            r"facilitator\.ready_file \(from --ready-file\): directory .*/no does not exist")  # fmt: skip
    assert not (tmp_path / "f.db").exists()  # refused before anything started


def test_a_facilitator_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    args = facilitator_args(tmp_path)
    (tmp_path / "facilitator.key").chmod(0o644)
    too_open = r"cannot be read \(permissions 0644 are too open.*"
    refused(args, r"facilitator\.key_file \(from --key-file\): " + too_open)
