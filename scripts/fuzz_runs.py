"""The two fuzz runs, end to end against real processes.

- ``run_client``: a `jobrelay facilitator` process (its own folder, ports read back from its ready
  file) attacked by the hostile client (fuzz_client.py) while a real `jobrelay worker` connected to
  it completes jobs submitted through the HTTP API.
- ``run_server``: a real `jobrelay worker` process dials the hostile server (fuzz_server.py); after
  the attack the server behaves, and the worker must deliver its outbox and run new jobs.
Both measure the target before and after (fuzz_measure.py). Invariants: every process is started
in its own session and stopped by its process group id, also on errors; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fuzz_client import Identity, attack
from fuzz_measure import FuzzResult, LogWindow, settle
from fuzz_server import HostileServer
from scale_procs import Api, FacilitatorProcess, Processes, proc_stats

from jobrelay.actors.config import generate_key
from jobrelay.protocol.auth import public_key_hex

__all__ = ["run_client", "run_server"]

JOBRELAY = [sys.executable, "-m", "jobrelay"]
_START = 30.0  # longest wait for a process to be ready or a worker to connect
_SETTLE = 30.0  # longest wait for descriptors and threads to come back after the attack


def _fresh(folder: Path) -> None:
    """Forget what an earlier run left in ``folder`` (a stale ready file would be read as ours)."""
    for name in ("ready.json", "worker.ready", "facilitator.db", "worker.db"):
        for path in folder.glob(f"{name}*"):
            path.unlink()


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JOBRELAY_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _key(folder: Path, name: str) -> tuple[Ed25519PrivateKey, str]:
    """A new key: written to ``folder/name.key`` (0600); returns it and its authorized-keys line."""
    hex_key = generate_key()
    path = folder / f"{name}.key"
    path.write_text(hex_key + "\n")
    path.chmod(0o600)
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(hex_key))
    return key, f"{name} {public_key_hex(key)}"


def _facilitator_key(folder: Path) -> str:
    """The facilitator's own key in ``folder``/facilitator.key (0600); its public key, which the
    good worker pins."""
    key, _ = _key(folder, "facilitator")
    return public_key_hex(key)


def _start_worker(
    procs: Processes, folder: Path, url: str, flags: list[str]
) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    ready = folder / "worker.ready"
    cmd = [*JOBRELAY, "worker", "--url", url, "--worker-id", "good", "--key-file", str(folder / "good.key")]
    cmd += ["--db", str(folder / "worker.db"), "--log-json", "--ready-file", str(ready)]
    cmd += ["--http-port", "0", *flags]
    with (folder / "worker.log").open("wb") as log:
        proc = procs.start(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=_env())
    deadline = time.monotonic() + _START
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() >= deadline:
            raise RuntimeError(
                f"worker not ready (exit {proc.poll()}): {(folder / 'worker.log').read_text()[-2000:]}"
            )
        time.sleep(0.05)
    return proc, json.loads(ready.read_text())


def _wait(predicate: Any, deadline: float, what: str) -> None:
    while not predicate():
        if time.monotonic() >= deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def _problems_in_log(window: LogWindow) -> list[str]:
    bad = [
        line
        for line in window.lines()
        if "Traceback" in line or '"name": "ERROR"' in line or '"name": "CRITICAL"' in line
    ]
    return [f"{len(bad)} error/traceback log lines, first: {bad[0][:400]}"] if bad else []


# ---------------------------------------------------------------- hostile client → facilitator


def run_client(
    folder: Path, frames: int, seed: int, connections: int, max_frame_bytes: int, time_limit: float
) -> FuzzResult:
    result = FuzzResult(mode="facilitator", seed=seed)
    procs = Processes()
    _fresh(folder)
    try:
        _, good_line = _key(folder, "good")
        identities, lines = [], [good_line]
        for i in range(connections):
            key, line = _key(folder, f"fuzz-{i}")
            identities.append(Identity(f"fuzz-{i}", key, epoch=secrets.token_hex(8)))
            lines.append(line)
        (folder / "authorized_keys").write_text("\n".join(lines) + "\n")
        pinned = _facilitator_key(folder)
        fac = FacilitatorProcess.start(
            [*JOBRELAY, "facilitator", "--log-json", "--max-frame-bytes", str(max_frame_bytes)],
            folder, procs, time.monotonic() + _START,
        )  # fmt: skip
        api = Api(fac.http_url)
        worker, _ = _start_worker(procs, folder, fac.url, ["--facilitator-key", pinned])
        jobs = _Submitter(api)
        jobs.start()
        # Warm up before the baseline: jobs submitted and polled at once, as during the attack
        # (the HTTP server's call pool starts its threads on demand).
        _wait(lambda: len(jobs.ids) >= 5 and jobs.all_done(), time.monotonic() + _START, "warm-up jobs")
        result.before = proc_stats(fac.pid)
        window = LogWindow(fac.log)
        started = time.monotonic()
        tally = asyncio.run(attack(fac.url, identities, frames, seed, max_frame_bytes, started + time_limit))
        result.seconds = time.monotonic() - started
        jobs.stop()
        result.frames, result.sessions, result.by_class = tally.frames, tally.sessions, dict(tally.by_class)
        if tally.handshake_failures:
            first = tally.handshake_failures[0]
            result.problems.append(
                f"{len(tally.handshake_failures)} connect/handshake failures, first: {first}"
            )
        result.target_alive = fac.proc.poll() is None
        with contextlib.suppress(TimeoutError):
            _wait(jobs.all_done, time.monotonic() + _START, "jobs not completed")
        result.peer_ok = jobs.all_done() and worker.poll() is None
        result.peer_detail = f"{jobs.completed()}/{len(jobs.ids)} jobs submitted during the attack completed"
        if result.target_alive:
            result.after = settle(fac.pid, result.before, time.monotonic() + _SETTLE)
        # The good worker's session and the HTTP access lines of its jobs are not hostile sessions.
        result.log_lines, result.log_top = window.summary(ignore=("worker=good", '"message": "http: '))
        result.problems += _problems_in_log(window)
        procs.stop(worker, 15.0)
        fac.stop(procs)
        result.exit_code = fac.proc.returncode
    finally:
        procs.stop_all()
    return result


class _Submitter:
    """Submits an echo job to the good worker every 0.2 s on its own thread while the attack runs."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.ids: list[str] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="submitter", daemon=True)

    def submit_one(self) -> None:
        job_id = f"good-{len(self.ids)}"
        status, doc = self.api.call(
            "POST",
            "/jobs",
            {"kind": "echo", "payload": {"n": len(self.ids)}, "job_id": job_id, "worker": "good"},
        )
        if status != 201:
            self.errors.append(f"POST /jobs -> {status} {doc}")
        self.ids.append(job_id)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10.0)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.submit_one()

    def completed(self) -> int:
        return sum(
            1
            for job_id in self.ids
            if self.api.call("GET", f"/jobs/{job_id}")[1].get("status") == "completed"
        )

    def all_done(self) -> bool:
        return not self.errors and self.completed() == len(self.ids)


# ---------------------------------------------------------------- hostile server → worker


def run_server(  # noqa: PLR0915 - one attack, start to verdict, reads best in one place
    folder: Path, frames: int, seed: int, max_frame_bytes: int, time_limit: float
) -> FuzzResult:
    result = FuzzResult(mode="worker", seed=seed)
    procs = Processes()
    _fresh(folder)
    server = HostileServer(seed, frames, max_frame_bytes)
    server.start()
    try:
        _key(folder, "good")
        flags = ["--backoff-base", "0.02", "--backoff-cap", "0.1", "--durability", "normal"]
        flags += ["--facilitator-key", public_key_hex(server.key)]
        worker, ready = _start_worker(procs, folder, server.url, flags)
        pid = int(ready["pid"])
        _wait(lambda: server.good_sessions >= 1, time.monotonic() + _START, "the worker did not connect")
        server.send_jobs(["warmup"])
        _wait(
            lambda: "completed" in server.statuses.get("warmup", []),
            time.monotonic() + _START,
            "warm-up job not completed",
        )
        # Warm up before the baseline: the health server starts its call pool's thread on demand.
        _wait(lambda: _outbox_empty(ready), time.monotonic() + _START, "warm-up outbox")
        result.before = proc_stats(pid)
        window = LogWindow(folder / "worker.log")
        started = time.monotonic()
        server.set_mode("hostile")

        def ended() -> bool:
            return server.tally.left() <= 0 or worker.poll() is not None

        _wait(
            lambda: ended() or time.monotonic() - started > time_limit, started + time_limit + 30.0, "attack"
        )
        result.seconds = time.monotonic() - started
        tally = server.tally
        result.frames, result.sessions, result.by_class = tally.frames, tally.sessions, dict(tally.by_class)
        result.target_alive = worker.poll() is None
        good_before = server.good_sessions
        server.set_mode("good")
        after_ids = [f"after-{i}" for i in range(5)]
        server.send_jobs(after_ids)

        def done() -> int:
            return sum("completed" in server.statuses.get(j, []) for j in after_ids)

        try:
            _wait(
                lambda: server.good_sessions > good_before, time.monotonic() + _START, "no good session after"
            )
            # The hostile sessions' lines end here (the good session's own lines would follow).
            result.log_lines, result.log_top = window.summary()
            _wait(lambda: done() == len(after_ids), time.monotonic() + _START, "jobs after the attack")
            _wait(lambda: _outbox_empty(ready), time.monotonic() + _START, "outbox not delivered")
            result.peer_ok = True
        except TimeoutError as exc:
            result.problems.append(str(exc))
        health = _health(ready)
        result.peer_detail = (
            f"after the attack: {done()}/{len(after_ids)} new jobs completed, outbox_depth "
            f"{health.get('outbox_depth')}; {len(server.statuses)} jobs reported statuses"
        )
        if server.errors:
            result.problems.append(f"server-side handshake errors: {server.errors[:3]}")
        if result.target_alive:
            result.after = settle(pid, result.before, time.monotonic() + _SETTLE)
        result.problems += _problems_in_log(window)
        procs.stop(worker, 15.0)
        result.exit_code = worker.returncode
    finally:
        procs.stop_all()
        server.stop()
    return result


def _health(ready: dict[str, Any]) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(f"{ready['http_url']}/healthz", timeout=5) as response:
            return dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:  # 503 while not connected: the same JSON
        return dict(json.loads(exc.read()))
    except OSError as exc:
        return {"error": str(exc)}


def _outbox_empty(ready: dict[str, Any]) -> bool:
    return _health(ready).get("outbox_depth") == 0
