"""The processes of a chaos or soak run: one `jobrelay facilitator` and N `jobrelay worker`s (the
latter through chaos_worker.py, which adds the recording ``chaos`` handler), each worker reaching
the facilitator through its own TcpProxy.

Invariants: every command line is built in ``facilitator_argv``/``worker_argv`` (the one place to
change when the handshake or the HTTP API gain flags); every process runs in its own session and is
stopped by its process group (scale_procs.Processes), also on errors and Ctrl-C; every wait has a
deadline; the databases survive restarts (a restart is the same facilitator or worker again).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from scale_procs import Api, Processes

from jobrelay.actors.config import generate_key, public_key_of
from jobrelay.testing.proxy import TcpProxy

__all__ = [
    "Cluster",
    "FacilitatorProc",
    "Timing",
    "WorkerProc",
    "facilitator_argv",
    "on_sigterm",
    "run_cluster",
    "worker_argv",
]

CHAOS_WORKER = Path(__file__).with_name("chaos_worker.py")


@dataclass(frozen=True)
class Timing:
    """The link settings of a run: short, so faults are noticed and healed within seconds."""

    heartbeat_interval: float = 0.5
    heartbeat_timeout: float = 2.0  # a blackhole longer than this must end the session
    stop_timeout: float = 5.0
    drain_timeout: float = 1.0  # a SIGTERMed worker lets running jobs finish this long (warm stop)
    max_jobs: int = 4


def facilitator_argv(folder: Path, ready: Path, timing: Timing) -> list[str]:
    """The facilitator's command line (free ports on 127.0.0.1; same database every start)."""
    return [
        sys.executable, "-m", "jobrelay", "facilitator", "--log-json", "--log-level", "INFO",
        "--db", str(folder / "facilitator.db"), "--authorized-keys", str(folder / "authorized_keys"),
        "--key-file", str(folder / "facilitator.key"), "--host", "127.0.0.1", "--port", "0",
        "--http-host", "127.0.0.1", "--http-port", "0",
        "--heartbeat-interval", str(timing.heartbeat_interval),
        "--heartbeat-timeout", str(timing.heartbeat_timeout),
        "--stop-timeout", str(timing.stop_timeout), "--ready-file", str(ready),
    ]  # fmt: skip


def worker_argv(folder: Path, name: str, url: str, ready: Path, timing: Timing) -> list[str]:
    """Worker ``name``'s command line: the real `jobrelay worker` flags, its own key and database."""
    return [
        sys.executable, str(CHAOS_WORKER), "worker", "--log-json", "--log-level", "INFO",
        "--url", url, "--worker-id", name, "--key-file", str(folder / f"{name}.key"),
        "--facilitator-key", (folder / "facilitator.pub").read_text().strip(),
        "--db", str(folder / f"{name}.db"), "--max-jobs", str(timing.max_jobs),
        "--backoff-base", "0.05", "--backoff-cap", "0.5", "--connect-timeout", "3",
        "--handshake-timeout", "3", "--stop-timeout", str(timing.stop_timeout),
        "--drain-timeout", str(timing.drain_timeout), "--ready-file", str(ready),
    ]  # fmt: skip


def _start(procs: Processes, argv: list[str], ready: Path, log: Path, deadline: float, **env: str) -> Any:
    """Start ``argv`` (output appended to ``log``) and wait for its ready file; returns its JSON.

    Raises:
        RuntimeError: it exited first, or was not ready by the deadline (it is stopped).
    """
    ready.unlink(missing_ok=True)
    environ = {k: v for k, v in os.environ.items() if not k.startswith("JOBRELAY_")}
    environ.update(env, PYTHONUNBUFFERED="1")
    with log.open("ab") as out:
        proc = procs.start(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, env=environ)
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() >= deadline:
            procs.stop(proc, 5.0)
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-10:])
            raise RuntimeError(f"{argv[3]} not ready (exit {proc.returncode}); {log}:\n{tail}")
        time.sleep(0.02)  # polling a file the child writes atomically, under a deadline
    return proc, json.loads(ready.read_text())


@dataclass
class FacilitatorProc:
    proc: subprocess.Popen[bytes]
    port: int
    api: Api


@dataclass
class WorkerProc:
    name: str
    proxy: TcpProxy
    record: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0


@dataclass
class Cluster:
    """The facilitator, the workers and their proxies, in ``folder``."""

    folder: Path
    workers: int
    timing: Timing = field(default_factory=Timing)
    procs: Processes = field(default_factory=Processes)
    fac: FacilitatorProc | None = None
    members: list[WorkerProc] = field(default_factory=list)
    unclean_stops: list[str] = field(default_factory=list)
    facilitator_starts: int = 0

    def start(self, deadline: float) -> None:
        key = generate_key()  # the facilitator's own key; workers pin its public half
        (self.folder / "facilitator.key").write_text(key + "\n")
        (self.folder / "facilitator.key").chmod(0o600)
        (self.folder / "facilitator.pub").write_text(public_key_of(key) + "\n")
        lines = []
        for n in range(self.workers):
            name = f"w{n}"
            key = generate_key()
            path = self.folder / f"{name}.key"
            path.write_text(key + "\n")
            path.chmod(0o600)
            lines.append(f"{name} {public_key_of(key)}")
        (self.folder / "authorized_keys").write_text("\n".join(lines) + "\n")
        self.start_facilitator(deadline)
        assert self.fac is not None
        for n in range(self.workers):
            proxy = TcpProxy(("127.0.0.1", self.fac.port)).start()
            self.members.append(WorkerProc(f"w{n}", proxy, self.folder / f"w{n}.records.jsonl"))
        for member in self.members:
            self.start_worker(member, deadline)

    def start_facilitator(self, deadline: float) -> None:
        ready = self.folder / "facilitator.ready"
        argv = facilitator_argv(self.folder, ready, self.timing)
        proc, doc = _start(self.procs, argv, ready, self.folder / "facilitator.log", deadline)
        port = int(doc["url"].rsplit(":", 1)[1])
        self.fac = FacilitatorProc(proc, port, Api(doc["http_url"], timeout=5.0))
        self.facilitator_starts += 1
        for member in self.members:
            member.proxy.retarget(("127.0.0.1", port))  # a restart listens on a new free port

    def start_worker(self, member: WorkerProc, deadline: float) -> None:
        ready = self.folder / f"{member.name}.ready"
        argv = worker_argv(self.folder, member.name, member.proxy.url, ready, self.timing)
        log = self.folder / f"{member.name}.log"
        member.proc, _ = _start(self.procs, argv, ready, log, deadline, CHAOS_RECORD=str(member.record))
        member.starts += 1

    def api(self) -> Api:
        assert self.fac is not None
        return self.fac.api

    def kill_facilitator(self, sig: signal.Signals, deadline: float) -> None:
        """Stop the facilitator with ``sig`` (SIGKILL: at once; SIGTERM: must exit 0 in time), then
        start it again on the same database."""
        assert self.fac is not None
        self._signal(self.fac.proc, sig, "facilitator")
        self.start_facilitator(deadline)

    def kill_worker(self, member: WorkerProc, sig: signal.Signals, deadline: float) -> None:
        assert member.proc is not None
        self._signal(member.proc, sig, member.name)
        self.start_worker(member, deadline)

    def _signal(self, proc: subprocess.Popen[bytes], sig: signal.Signals, name: str) -> None:
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, signal.SIGKILL)  # not procs.stop: its SIGTERM first would drain
            proc.wait(10.0)
            self.procs.stop(proc, 0.0)  # forget it (and kill any member of its group left)
            return
        # Its own bound (a worker's drain first), plus start-up slack on a busy box.
        grace = self.timing.stop_timeout + self.timing.drain_timeout + 10.0
        os.killpg(proc.pid, sig)
        try:
            code = proc.wait(grace)
        except subprocess.TimeoutExpired:
            code = None
        if code != 0:
            self.unclean_stops.append(f"{name} pid {proc.pid}: {sig.name} -> exit {code} within {grace:g}s")
        self.procs.stop(proc, 1.0)  # reap; SIGKILLs the group if it hung

    def stop(self) -> None:
        """SIGTERM every worker (checking each stops cleanly), then the proxies; the facilitator
        is left running for the checker (``stop_all`` ends it)."""
        for member in self.members:
            if member.proc is not None and member.proc.poll() is None:
                self._signal(member.proc, signal.SIGTERM, member.name)
            member.proc = None

    def stop_facilitator(self) -> None:
        """SIGTERM the facilitator (it must exit 0 in time)."""
        if self.fac is not None and self.fac.proc.poll() is None:
            self._signal(self.fac.proc, signal.SIGTERM, "facilitator")

    def stop_all(self) -> None:
        for member in self.members:
            member.proxy.stop()
        self.procs.stop_all()


def on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same clean-up as Ctrl-C


def run_cluster(name: str, cluster: Cluster, *, keep: bool, body: Callable[[], bool]) -> int:
    """Run ``body`` (True when the run passed) and stop every process of ``cluster`` afterwards,
    on errors and Ctrl-C/SIGTERM too; the cluster's folder is removed when it passed (unless
    ``keep``). Returns the exit code: 0 passed, 1 failed, 130 interrupted."""
    ok = False
    try:
        ok = body()
        return 0 if ok else 1
    except KeyboardInterrupt:
        print(f"{name}: interrupted; stopping every process", flush=True)
        return 130
    except RuntimeError as exc:
        print(f"{name}: FAILED: {exc}", flush=True)
        return 1
    finally:
        cluster.stop_all()
        if ok and not keep:
            shutil.rmtree(cluster.folder, ignore_errors=True)
        else:
            print(f"{name}: files kept in {cluster.folder}", flush=True)
