"""The processes bench_scale.py runs and talks to: the facilitator (a `jobrelay facilitator`
command, its HTTP API and /proc numbers) and the simulated-worker children (simchild.py,
JSON lines over pipes).

Invariants: every process is started in its own session and stopped by its process group id
(SIGTERM, then SIGKILL after a grace), also when the bench is interrupted; every wait has a
deadline and raises TimeoutError (or RuntimeError when a child died) instead of hanging.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlsplit

import msgspec
from simchild import ChildMessage, Failure, Jobs, Ready, Report, Status

__all__ = [
    "Api",
    "Children",
    "FacilitatorProcess",
    "ProcStats",
    "Processes",
    "pin",
    "proc_stats",
    "tcp_counters",
]

SIMCHILD = Path(__file__).with_name("simchild.py")
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class Processes:
    """Every process the bench started, to stop each by its process group id."""

    def __init__(self) -> None:
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, cmd: list[str], cpus: set[int] | None = None, **kw: Any) -> subprocess.Popen[bytes]:
        """Start ``cmd`` in its own session, on ``cpus`` if given (see ``pin``)."""
        proc = subprocess.Popen(cmd, start_new_session=True, **kw)
        self.running.append(proc)
        if cpus:
            pin(proc.pid, cpus)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], grace: float) -> None:
        """SIGTERM the process group, SIGKILL it after ``grace`` seconds; reaps the leader."""
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10.0)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        # A leader that exited may leave members of its group behind (a wrapper's children).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(self.running):
            self.stop(proc, 5.0)


def pin(pid: int, cpus: set[int]) -> None:
    """Run every thread of ``pid`` on ``cpus`` (threads it starts later inherit it)."""
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(tid), cpus)
    except (FileNotFoundError, ProcessLookupError):
        pass  # it exited: whoever waits for it will notice


@dataclass(frozen=True)
class ProcStats:
    rss_kib: int
    fds: int
    threads: int
    cpu_seconds: float  # utime + stime


def proc_stats(pid: int) -> ProcStats:
    """RSS, open descriptors, threads and CPU time of ``pid`` from /proc.

    Raises:
        OSError: the process is gone.
    """
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # fields from the 3rd on (state is first)
    return ProcStats(
        rss_kib=int(status["VmRSS"].split()[0]),
        fds=len(os.listdir(f"/proc/{pid}/fd")),
        threads=int(status["Threads"]),
        cpu_seconds=(int(fields[11]) + int(fields[12])) / _CLK_TCK,
    )


TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPReqQFullDrop")


def tcp_counters() -> dict[str, int]:
    """This network namespace's TCP counters of interest (/proc/net/netstat, TcpExt): accept
    queue overflows and drops at any listener, SYN retransmits of any client."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for header, values in zip(lines[::2], lines[1::2], strict=False):
        if header.startswith("TcpExt:"):
            found = dict(zip(header.split()[1:], values.split()[1:], strict=True))
            return {name: int(found.get(name, 0)) for name in TCP_COUNTERS}
    return dict.fromkeys(TCP_COUNTERS, 0)


class Api:
    """The facilitator's HTTP API: one keep-alive connection per thread, retried on a drop (a
    POST /jobs carries its job id, so a retry is an idempotent repeat)."""

    def __init__(self, http_url: str, timeout: float = 10.0) -> None:
        parts = urlsplit(http_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.timeout = timeout
        self._local = threading.local()

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """``(status, JSON document)``.

        Raises:
            OSError: the facilitator could not be reached in 3 attempts.
        """
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        path = "/".join(quote(p, safe="") for p in path.split("/"))
        error: Exception | None = None
        for _ in range(3):
            conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(
                    self.host, self.port, timeout=self.timeout
                )
            try:
                conn.request(method, path, body=data, headers=headers)
                response = conn.getresponse()
                return response.status, json.loads(response.read() or b"null")
            except (OSError, http.client.HTTPException) as exc:
                error = exc
                conn.close()
                self._local.conn = None
        raise OSError(f"{method} {path}: {error}")

    def stats(self) -> dict[str, int]:
        status, doc = self.call("GET", "/stats")
        if status != 200:
            raise RuntimeError(f"GET /stats -> {status} {doc}")
        return dict(doc)

    def wait_connected(self, n: int, deadline: float) -> int:
        """Poll /stats until ``connected_workers`` is ``n`` or the deadline passes; returns the last value."""
        while True:
            connected = self.stats().get("connected_workers", 0)
            if connected == n or time.monotonic() >= deadline:
                return connected
            time.sleep(0.1)


class FacilitatorProcess:
    """A running facilitator command, listening on free ports of 127.0.0.1."""

    def __init__(self, proc: subprocess.Popen[bytes], ready: dict[str, Any], log: Path) -> None:
        self.proc = proc
        self.url: str = ready["url"]
        self.http_url: str = ready["http_url"]
        self.pid: int = int(ready["pid"])  # the facilitator itself (the command may be a wrapper)
        self.log = log

    @classmethod
    def start(
        cls, cmd: list[str], folder: Path, procs: Processes, deadline: float, cpus: set[int] | None = None
    ) -> FacilitatorProcess:
        """Start ``cmd`` with a fresh database, the folder's authorized_keys and facilitator.key
        (its own key) and its default settings (no JOBRELAY_* variables); wait for its ready file.

        Raises:
            TimeoutError: no ready file before the deadline (the process is stopped).
            RuntimeError: it exited first.
        """
        ready_file, log = folder / "ready.json", folder / "facilitator.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBRELAY_")}  # its defaults
        flags = ["--authorized-keys", str(folder / "authorized_keys"), "--db", str(folder / "facilitator.db")]
        flags += ["--key-file", str(folder / "facilitator.key")]
        flags += ["--host", "127.0.0.1", "--port", "0", "--http-host", "127.0.0.1", "--http-port", "0"]
        flags += ["--ready-file", str(ready_file)]
        with log.open("wb") as out:
            proc = procs.start(
                [*cmd, *flags], cpus, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=env
            )
        while not ready_file.exists():
            if proc.poll() is not None or time.monotonic() >= deadline:
                procs.stop(proc, 5.0)
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
                if proc.returncode is not None and time.monotonic() < deadline:
                    raise RuntimeError(f"facilitator exited with {proc.returncode}:\n{tail}")
                raise TimeoutError(f"facilitator not ready in time:\n{tail}")
            time.sleep(0.05)
        fac = cls(proc, json.loads(ready_file.read_text()), log)
        if cpus:
            pin(fac.pid, cpus)  # the command may be a wrapper; its threads exist now
        return fac

    def stop(self, procs: Processes) -> None:
        procs.stop(self.proc, 15.0)  # its own stop_timeout is 5 s

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class Children:
    """The simulated-worker processes: commands out on their stdin, messages in from their stdout."""

    def __init__(self, procs: list[subprocess.Popen[bytes]], folder: Path) -> None:
        self.procs = procs
        self.folder = folder
        self.inbox: queue.Queue[tuple[int, ChildMessage | None]] = queue.Queue()
        self.status: dict[int, Status] = {}
        self.reports: list[Report] = []
        self.ready: set[int] = set()
        self.done: dict[str, list[tuple[str, float, float]]] = {}  # job → [(worker, received, acked)]
        self.phase = 0
        for index, proc in enumerate(procs):
            assert proc.stdout is not None
            threading.Thread(target=self._read, args=(index, proc.stdout), daemon=True).start()

    @classmethod
    def start(
        cls,
        url: str,
        keys: Path,
        n: int,
        k: int,
        sources: list[str],
        folder: Path,
        procs: Processes,
        facilitator_key: str,
        cpus: set[int] | None = None,
    ) -> Children:
        """k processes, worker lines [0, n) of ``keys`` split between them, each pinning
        ``facilitator_key`` (the facilitator's public key)."""
        started = []
        for index in range(k):
            first, last = n * index // k, n * (index + 1) // k
            cmd = [sys.executable, str(SIMCHILD), "--url", url, "--keys", str(keys)]
            cmd += ["--first", str(first), "--count", str(last - first), "--child", str(index)]
            cmd += ["--sources", ",".join(sources), "--facilitator-key", facilitator_key]
            with (folder / f"simchild-{index}.log").open("wb") as err:
                started.append(
                    procs.start(cmd, cpus, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
                )
        return cls(started, folder)

    def _read(self, index: int, stream: IO[bytes]) -> None:
        decoder = msgspec.json.Decoder(ChildMessage)
        for line in stream:
            try:
                self.inbox.put((index, decoder.decode(line)))
            except msgspec.DecodeError as exc:
                self.inbox.put((index, Failure(index, f"bad line {line[:200]!r}: {exc}")))
        self.inbox.put((index, None))

    def _pump(self, until: Callable[[], bool], deadline: float, what: str) -> None:
        """Handle messages until ``until()`` holds.

        Raises:
            TimeoutError: not by the deadline.
            RuntimeError: a child failed or exited.
        """
        while not until():
            try:
                index, message = self.inbox.get(timeout=max(0.0, min(0.5, deadline - time.monotonic())))
            except queue.Empty:
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{what}: no result in time") from None
                continue
            match message:
                case None | Failure():
                    tail = (self.folder / f"simchild-{index}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"simulated workers {index} failed ({what}): {message}\n{tail}")
                case Ready():
                    self.ready.add(index)
                case Status():
                    self.status[index] = message
                case Jobs():
                    for job_id, worker, received, acked in message.items:
                        self.done.setdefault(job_id, []).append((worker, received, acked))
                case Report():
                    self.reports.append(message)

    def _send(self, cmd: str, rate: float = 0.0) -> None:
        line = json.dumps({"cmd": cmd, "rate": rate}).encode() + b"\n"
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(line)
            proc.stdin.flush()

    def wait_ready(self, deadline: float) -> None:
        self._pump(lambda: len(self.ready) == len(self.procs), deadline, "start")

    def connected(self) -> int:
        return sum(s.connected for s in self.status.values())

    def _all_open(self, command: str, deadline: float, rate: float = 0.0) -> float | None:
        """Send ``command`` (connect or cut); when every worker is open again, the latest
        moment one opened (None: not by the deadline)."""
        self.phase += 1
        self._send(command, rate / len(self.procs))

        def all_open() -> bool:
            current = [s for s in self.status.values() if s.phase == self.phase]
            return len(current) == len(self.procs) and all(s.all_open_at is not None for s in current)

        try:
            self._pump(all_open, deadline, command)
        except TimeoutError:
            return None
        return max(s.all_open_at or 0.0 for s in self.status.values())

    def connect(self, deadline: float, rate: float = 0.0) -> float | None:
        """Start every worker: all at once, or ``rate`` per second in all."""
        return self._all_open("connect", deadline, rate)

    def cut(self, deadline: float) -> float | None:
        return self._all_open("cut", deadline)

    def report(self, deadline_s: float = 30.0) -> list[Report]:
        """One Report from every child (what happened since the previous report)."""
        self.reports = []
        self._send("report")
        self._pump(lambda: len(self.reports) == len(self.procs), time.monotonic() + deadline_s, "report")
        return self.reports

    def wait_jobs(self, ids: set[str], deadline: float) -> None:
        """Until every job in ``ids`` was reported done, or the deadline (no error: the caller
        checks each job)."""
        with contextlib.suppress(TimeoutError):
            self._pump(lambda: ids <= self.done.keys(), deadline, "jobs")

    def stop(self, procs: Processes) -> None:
        """Ask every child to close its connections and exit; stop any that does not."""
        for proc in self.procs:
            try:
                assert proc.stdin is not None
                proc.stdin.write(b'{"cmd": "stop"}\n')
                proc.stdin.close()
            except OSError:
                pass
        deadline = time.monotonic() + 10.0
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, deadline - time.monotonic()))
            procs.stop(proc, 2.0)
