"""kill -9 at random moments loses nothing that a store call had returned.

A child process (tests/storage_crash_child.py) writes in a loop and prints each result after
the call returned; the test SIGKILLs it after a random number of lines, reopens the file and
checks every printed line against the database.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobrelay.storage import Inbox, Outbox, open_database

CHILD = Path(__file__).with_name("storage_crash_child.py")
KILLS = 24
BUDGET = 45.0  # seconds for the whole test; pytest-timeout backs it up


class Child:
    """A running child whose stdout is read line by line with deadlines (never blocks)."""

    def __init__(self, mode: str, path: Path, seed: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), mode, str(path), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.lines: list[list[str]] = []

    def _pump(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return True
        chunk = os.read(self.fd, 65536)
        self.buf += chunk
        *complete, self.buf = self.buf.split(b"\n")
        self.lines.extend(line.decode().split() for line in complete)
        return bool(chunk)

    def read_until(self, count: int, deadline: float) -> None:
        while len(self.lines) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"child too slow; stderr: {self.stderr()}")
            if not self._pump(min(remaining, 1.0)):
                raise AssertionError(f"child exited early; stderr: {self.stderr()}")

    def kill(self) -> list[list[str]]:
        """SIGKILL, then collect every complete line written before death (those count too)."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)
        while self._pump(1.0):
            pass
        assert self.proc.returncode == -signal.SIGKILL, self.stderr()
        return self.lines

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")[-2000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def kill_loop(mode: str, path: Path, check: object) -> int:
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    started = time.monotonic()
    deadline = started + BUDGET
    kills = 0
    children: list[Child] = []
    try:
        while kills < KILLS:
            child = Child(mode, path, rng.randrange(1 << 32))
            children.append(child)
            child.read_until(1, deadline)  # "R": open and ready
            # A random moment: right after opening, or after up to 150 committed results.
            child.read_until(1 + rng.choice([0, rng.randint(1, 150)]), deadline)
            lines = child.kill()
            kills += 1
            child.close()
            assert callable(check)
            check(lines[1:], f"seed={seed} kill={kills}")
    finally:
        for child in children:
            child.close()
    assert time.monotonic() - started < BUDGET
    return kills


@pytest.mark.timeout(90)
def test_outbox_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    known: dict[int, str] = {}  # seq -> payload hex, of every row ever seen or printed
    max_printed = 0
    max_acked = 0
    epoch: list[str] = []

    def check(lines: list[list[str]], where: str) -> None:
        nonlocal max_printed, max_acked
        for line in lines:
            if line[0] == "A":
                seq = int(line[1])
                assert known.setdefault(seq, line[2]) == line[2], where
                max_printed = max(max_printed, seq)
            elif line[0] == "K":
                max_acked = max(max_acked, int(line[1]))
        with open_database(path) as db:
            box = Outbox(db)
            stats = box.stats()
            epoch.append(stats.epoch)
            assert len(set(epoch)) == 1, f"epoch changed: {where}"
            assert stats.last_acked >= max_acked, where
            assert stats.last_seq >= max_printed, where
            rows = list(box.pending())
            # Stored rows are exactly the unacked ones, contiguous, with their payloads.
            assert [r.seq for r in rows] == list(range(stats.last_acked + 1, stats.last_seq + 1))
            assert stats.depth_rows == len(rows)
            assert stats.depth_bytes == sum(len(r.payload) for r in rows)
            for row in rows:
                assert known.setdefault(row.seq, row.payload.hex()) == row.payload.hex(), where
            for seq in range(stats.last_acked + 1, max_printed + 1):
                assert seq in known, where

    assert kill_loop("outbox", path, check) >= 20
    assert max_printed > 0
    with open_database(path) as db:
        box = Outbox(db)
        last = box.last_seq
        assert box.append("k", b"after the crashes") == last + 1


@pytest.mark.timeout(90)
def test_inbox_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "w.db"
    max_accepted = 0
    max_consumed = 0

    def check(lines: list[list[str]], where: str) -> None:
        nonlocal max_accepted, max_consumed
        for line in lines:
            if line[0] == "A":
                seq = int(line[1])
                assert seq == max_accepted + 1 or seq <= max_accepted, where
                max_accepted = max(max_accepted, seq)
            elif line[0] == "C":
                max_consumed = max(max_consumed, int(line[1]))
        with open_database(path) as db:
            inbox = Inbox(db)
            epoch, hwm = inbox.state("fac")
            assert epoch == "epoch-1"
            # Every seq the receiver could have acked is durably accepted.
            assert hwm >= max_accepted, where
            rows = inbox.unconsumed("fac")
            seqs = [r.seq for r in rows]
            # Unconsumed rows: contiguous up to the hwm, none that was reported consumed,
            # each with its payload.
            if rows:
                assert seqs == list(range(seqs[0], hwm + 1)), where
                assert seqs[0] > max_consumed, where
            assert all(r.payload == f"m{r.seq}".encode() for r in rows), where
        max_accepted = max(max_accepted, hwm)

    assert kill_loop("inbox", path, check) >= 20
    assert max_accepted > 0
