"""Tests marked ``alone`` run while no other test runs, also when scripts/test runs the suite in
several processes (pytest-xdist): they read counters the whole machine shares (the kernel's
count of connections dropped by full listen queues) or start hundreds of connections at once.

A readers-writer lock on a file every test process shares: each test holds it shared, an
``alone`` test exclusively. A turnstile taken first stops new shared holders while an ``alone``
test waits, so a stream of ordinary tests cannot starve it. tests/conftest.py holds it around
each test's whole run, its module's set-up and tear-down included.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["held"]


@contextmanager
def held(directory: Path, *, exclusive: bool) -> Iterator[None]:
    """The suite's lock in ``directory`` (shared by every test process), held for the block."""
    with (directory / "turnstile.lock").open("a") as turnstile:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        lock = (directory / "tests.lock").open("a")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        except BaseException:
            lock.close()
            raise
        finally:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
