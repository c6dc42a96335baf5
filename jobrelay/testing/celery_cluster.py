# A real Redis and real Celery workers on this machine, for the Celery backend's tests, demo and
# benchmark: a redis-server on a free loopback port without persistence, and `celery worker`
# processes (prefork pool) of a given app module, each in a process group of its own.
# Invariants: everything started here is stopped by its PID (a worker by its process group, so
# its pool children go too), SIGTERM first, SIGKILL after a timeout.

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import celery
import redis

__all__ = [
    "REDIS_ENV",
    "CeleryWorker",
    "RedisServer",
    "redis_server",
    "start_celery_worker",
    "stop_celery_worker",
    "wait_celery_ready",
]

REDIS_ENV = "JOBRELAY_CELERY_REDIS"
"""The environment variable that tells a worker's app module its Redis URL."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes], *, group: bool = False, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; ``group``: the process's whole group (its pid)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM) if group else proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL) if group else proc.kill()
            proc.wait(timeout)
    if group:  # pool children that outlived their parent
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@dataclass
class RedisServer:
    url: str
    proc: subprocess.Popen[bytes]

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


@contextlib.contextmanager
def redis_server(log_dir: Path, attempts: int = 5) -> Iterator[RedisServer]:
    """A redis-server on 127.0.0.1 (a port found free just before; retried on a collision).

    Raises:
        RuntimeError: redis-server is not installed or did not start.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (scripts/test installs it with apt-get)")
    for _ in range(attempts):
        port = _free_port()
        log = open(log_dir / f"redis-{port}.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=log_dir,
        )
        url = f"redis://127.0.0.1:{port}/0"
        deadline = time.monotonic() + 10
        ready = False
        while proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                ready = bool(redis.Redis.from_url(url, socket_timeout=1).ping())
            if ready:
                break
            time.sleep(0.02)  # polled with a deadline: the server binds asynchronously
        if not ready:  # the port was taken meanwhile, or the server failed: try another
            _stop(proc)
            log.close()
            continue
        try:
            yield RedisServer(url, proc)
        finally:
            _stop(proc)
            log.close()
        return
    raise RuntimeError(f"redis-server did not start in {attempts} attempts (see {log_dir})")


@dataclass
class CeleryWorker:
    name: str
    proc: subprocess.Popen[bytes]


def start_celery_worker(
    redis_url: str,
    name: str,
    log_dir: Path,
    *,
    app: str,
    concurrency: int = 2,
    pythonpath: Path | None = None,
    options: Sequence[str] = (),
) -> CeleryWorker:
    """A `celery -A app worker` (prefork, ``concurrency`` children) in a process group of its
    own; ``app`` reads its Redis URL from $JOBRELAY_CELERY_REDIS. ``options`` go to `celery
    worker` as they are (e.g. ``("-Q", "one", "--prefetch-multiplier", "4")``)."""
    env = {**os.environ, REDIS_ENV: redis_url}
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(pythonpath), env.get("PYTHONPATH")) if p)
    log = open(log_dir / f"celery-{name}.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "--pool=prefork",
            f"--concurrency={concurrency}",
            f"--hostname={name}@%h",
            "--loglevel=WARNING",
            "--without-mingle",
            "--without-gossip",
            *options,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=log_dir,
        start_new_session=True,
    )
    log.close()
    return CeleryWorker(name, proc)


def wait_celery_ready(redis_url: str, workers: list[CeleryWorker], timeout: float = 30.0) -> None:
    """Until every worker answers a ping (its consumer is up).

    Raises:
        RuntimeError: a worker exited, or did not answer within ``timeout``.
    """
    app = celery.Celery("probe", broker=redis_url, backend=redis_url)
    wanted = {w.name for w in workers}
    deadline = time.monotonic() + timeout
    while True:
        for w in workers:
            if w.proc.poll() is not None:
                raise RuntimeError(f"celery worker {w.name} exited with {w.proc.returncode}")
        answered = {next(iter(reply)).split("@")[0] for reply in app.control.ping(timeout=0.5)}
        if wanted <= answered:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"celery workers {sorted(wanted - answered)} not ready in {timeout} s")


def stop_celery_worker(worker: CeleryWorker) -> None:
    _stop(worker.proc, group=True)
