"""The keys bench_scale.py gives its simulated workers and its facilitator, in the run's folder."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from jobrelay.protocol.auth import public_key_hex

__all__ = ["make_facilitator_key", "make_keys"]


def make_keys(n: int, folder: Path) -> tuple[Path, list[str]]:
    """n worker keys: a private file for the children, the authorized-keys lines for the facilitator."""
    private, public = [], []
    for i in range(n):
        key = Ed25519PrivateKey.generate()
        private.append(f"w{i:05d} {key.private_bytes_raw().hex()}\n")
        public.append(f"w{i:05d} {public_key_hex(key)}\n")
    path = folder / "worker_keys"
    path.touch(mode=0o600)
    path.write_text("".join(private))
    return path, public


def make_facilitator_key(folder: Path) -> str:
    """The facilitator's own key in ``folder``/facilitator.key; returns the public key workers pin."""
    key = Ed25519PrivateKey.generate()
    path = folder / "facilitator.key"
    path.write_text(key.private_bytes_raw().hex() + "\n")
    path.chmod(0o600)  # the facilitator refuses a private key others may read
    return public_key_hex(key)
