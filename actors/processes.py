# Handler processes that never outlive their worker: spawn a command in its own process group
# under the lifeline watchdog (actors/lifeline.py), signal or kill the whole group, and journal
# the groups so that a restarted worker can make sure none of a previous life is still running.
# Invariants:
# - Every group is led by a watchdog that SIGKILLs it when this process dies (the lifeline pipe's
#   only write end is ours and close-on-exec), so a kill -9 of the worker ends its commands too.
# - The group is signalled only while its leader is unreaped (or has members), so a group id is
#   never reused under us: wait() sweeps leftover members before it reaps the leader.
# - A journal entry exists while its group may run; leftovers() trusts an entry only when it is
#   from this boot and the group id still names that group (leader's start time, or no leader).
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, NamedTuple

from loguru import logger

__all__ = ["GroupProcess", "ProcessJournal", "ProcessRecord", "spawn"]

_WATCHDOG = str(Path(__file__).with_name("lifeline.py"))
_lifeline_lock = threading.Lock()
_lifeline: tuple[int, int, int] | None = None  # (read end, write end, owning pid)


def _lifeline_fd() -> int:
    """The read end of this process's lifeline pipe (made once; the write end is never written)."""
    global _lifeline
    with _lifeline_lock:
        if _lifeline is None or _lifeline[2] != os.getpid():  # a forked child needs its own
            read, write = os.pipe()  # both close-on-exec: no other child inherits the write end
            _lifeline = (read, write, os.getpid())
        return _lifeline[0]


class GroupProcess:
    """A command running in its own process group under the lifeline watchdog."""

    def __init__(self, popen: subprocess.Popen[str]) -> None:
        self.popen = popen
        self.pid = self.pgid = popen.pid  # the watchdog leads a new session: its pid is the group id
        self.returncode: int | None = None
        self._lock = threading.Lock()

    @property
    def stdin(self) -> IO[str] | None:
        return self.popen.stdin

    @property
    def stdout(self) -> IO[str] | None:
        return self.popen.stdout

    @property
    def stderr(self) -> IO[str] | None:
        return self.popen.stderr

    def signal(self, sig: int) -> bool:
        """Send ``sig`` to the whole group; False once it has ended."""
        with self._lock:
            if self.returncode is not None:
                return False
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                return False
            return True

    def terminate(self) -> bool:
        """SIGTERM to the group (the watchdog ignores it and stays to report the command's end)."""
        return self.signal(signal.SIGTERM)

    def kill(self) -> bool:
        """SIGKILL to the group, watchdog included."""
        return self.signal(signal.SIGKILL)

    def poll(self) -> int | None:
        """The exit code once the command has ended (see wait()), else None."""
        with self._lock:
            if self.returncode is not None:
                return self.returncode
        if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            return None
        return self.wait()

    def wait(self) -> int:
        """Wait for the command's end, kill whatever it left in its group, return its exit code.

        The watchdog exits as the command did: 0..255, or -N when killed by signal N.
        """
        # Not reaped yet (WNOWAIT): its pid still reserves the group id for the sweep below.
        os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
        with self._lock:
            if self.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pgid, signal.SIGKILL)  # children the command left behind
                self.returncode = self.popen.wait()
            return self.returncode


def spawn(argv: Sequence[str], *, env: dict[str, str] | None = None) -> GroupProcess:
    """Start ``argv`` with text pipes for stdin, stdout and stderr, in a new session and process
    group that dies with this process.

    Raises:
        OSError: the watchdog could not be started (a command that cannot be run exits 127).
    """
    fd = _lifeline_fd()
    popen = subprocess.Popen(
        [sys.executable, "-I", "-S", _WATCHDOG, str(fd), *argv],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        pass_fds=(fd,),
        # A Ctrl-C at the worker's terminal must not reach the job directly: the worker decides.
        start_new_session=True,
    )
    return GroupProcess(popen)


class ProcessRecord(NamedTuple):
    """A journal entry: the group a job's command runs in."""

    job_id: str
    pgid: int
    started: int  # the leader's start time in clock ticks since boot (/proc/PID/stat field 22)
    boot_id: str


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])  # field 22; the name in () may hold spaces


def _members(pgid: int) -> list[int]:
    """Live members of group ``pgid`` (a zombie has ended: it only waits to be reaped)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                    members.append(int(entry.name))
    return members


class ProcessJournal:
    """Which process groups this worker's commands run in, one small file each in ``directory``
    (next to the worker's database), so a restarted worker can find and end leftovers."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def record(self, job_id: str, process: GroupProcess) -> None:
        """Journal ``process`` (durably: a crash right after must still find it)."""
        self.directory.mkdir(mode=0o700, exist_ok=True)
        entry = ProcessRecord(job_id, process.pgid, _start_ticks(process.pid) or 0, _boot_id())
        path = self.directory / f"{process.pgid}.json"
        tmp = path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(entry._asdict(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dirfd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)

    def forget(self, process: GroupProcess) -> None:
        """Drop the entry of a group that has ended."""
        with contextlib.suppress(FileNotFoundError):
            (self.directory / f"{process.pgid}.json").unlink()

    def entries(self) -> list[ProcessRecord]:
        if not self.directory.is_dir():
            return []
        found = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                found.append(ProcessRecord(**json.loads(path.read_text())))
            except (OSError, ValueError, TypeError):
                logger.warning("ignoring unreadable handler process record {}", path)
        return found

    def end_leftovers(self, timeout: float = 10.0) -> list[ProcessRecord]:
        """Kill every journaled group still running and wait until it is gone; clear the journal.

        Returns the entries whose groups were still running.

        Raises:
            TimeoutError: a group survived SIGKILL for ``timeout`` seconds (it cannot be made sure).
        """
        boot, alive = _boot_id(), []
        for entry in self.entries():
            if entry.boot_id == boot and self._ours(entry):
                alive.append(entry)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(entry.pgid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        for entry in alive:
            logger.warning(
                "job {}: its command from before the restart was still running (group {}); killed it",
                entry.job_id,
                entry.pgid,
            )
            while _members(entry.pgid):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"process group {entry.pgid} of job {entry.job_id} survived SIGKILL")
                time.sleep(0.01)  # polled with a deadline: the kernel frees the group asynchronously
        for path in self.directory.glob("*.json") if self.directory.is_dir() else ():
            path.unlink()
        return alive

    @staticmethod
    def _ours(entry: ProcessRecord) -> bool:
        # Linux gives no new process an id that names a live group, so if the leader's id is
        # taken by a process with another start time, our group has ended and that one is not ours.
        started = _start_ticks(entry.pgid)
        if started is not None:
            return started == entry.started
        return bool(_members(entry.pgid))
