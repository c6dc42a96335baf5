"""read_small_file: what an operator's config, key and authorized-keys paths may be.

Tests run as root, which reads any file whatever its mode: these check the mode check itself.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from jobrelay.common.files import FileRefused, read_small_file

pytestmark = pytest.mark.timeout(30)


def _refused_within(path: str, seconds: float = 5.0, **kw: object) -> str:
    """The refusal of reading ``path``, which must come within ``seconds`` (a FIFO used to hang)."""
    result: list[BaseException | bytes] = []
    reader = threading.Thread(
        target=lambda: result.append(_catch(path, **kw)), daemon=True, name="read-small-file"
    )
    reader.start()
    reader.join(seconds)
    assert not reader.is_alive(), f"reading {path} did not return within {seconds}s"
    assert isinstance(result[0], FileRefused), result[0]
    return str(result[0])


def _catch(path: str, **kw: object) -> BaseException | bytes:
    try:
        return read_small_file(path, limit=1024, **kw)  # type: ignore[arg-type]
    except BaseException as exc:  # handed to the test's thread
        return exc


def test_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert _refused_within(str(fifo)) == "not a regular file (it is a FIFO)"


def test_a_device_is_refused_not_read() -> None:
    assert _refused_within("/dev/zero") == "not a regular file (it is a character device)"


def test_a_directory_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    assert "directory" in _refused_within(str(tmp_path))
    assert _refused_within(str(tmp_path / "absent")) == "No such file or directory"


def test_size_is_bounded(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(b"x" * 1025)
    assert "larger than the 1024 bytes allowed" in _refused_within(str(big))
    big.write_bytes(b"x" * 1024)
    assert read_small_file(str(big), limit=1024) == b"x" * 1024


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_a_private_file_readable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "k"
    key.write_text("secret\n")
    key.chmod(mode)
    assert f"permissions {mode:04o} are too open" in _refused_within(str(key), private=True)


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_private_file_of_its_owner_is_read(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "k"
    key.write_text("secret\n")
    key.chmod(mode)
    assert read_small_file(str(key), limit=1024, private=True) == b"secret\n"


@pytest.mark.parametrize("mode", [0o666, 0o646, 0o664])
def test_a_trusted_file_writable_by_others_is_refused(tmp_path: Path, mode: int) -> None:
    keys = tmp_path / "authorized_keys"
    keys.write_text("w1 00\n")
    keys.chmod(mode)
    assert f"permissions {mode:04o} are too open" in _refused_within(str(keys), trusted=True)
    keys.chmod(0o644)
    assert read_small_file(str(keys), limit=1024, trusted=True) == b"w1 00\n"
