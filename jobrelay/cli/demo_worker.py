# The demo's worker: a real `jobrelay worker` subprocess (so the demo can SIGKILL it), started
# against the demo's facilitator, its Prometheus counters scraped per incarnation (a killed
# process takes its memory with it), stopped with SIGTERM.
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

__all__ = ["WORKER_ID", "DemoFailed", "WorkerProcess"]

WORKER_ID = "demo"


@dataclass
class WorkerProcess:
    """The worker subprocess: start, scrape, kill -9, stop."""

    tmp: Path
    url: str
    max_jobs: int
    facilitator_key: str
    proc: subprocess.Popen[bytes] | None = None
    http_url: str = ""
    incarnation: int = 0
    counters: dict[int, dict[str, float]] = field(default_factory=dict)
    extra: list[str] = field(default_factory=list)  # more `jobrelay worker` flags

    def start(self, deadline: float) -> None:
        ready = self.tmp / "worker-ready.json"
        ready.unlink(missing_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("JOBRELAY_")}
        env["PYTHONUNBUFFERED"] = "1"
        argv = [
            sys.executable, "-m", "jobrelay", "worker",
            "--url", self.url, "--worker-id", WORKER_ID, "--facilitator-key", self.facilitator_key,
            "--key-file", str(self.tmp / "demo.key"), "--db", str(self.tmp / "worker.db"),
            "--max-jobs", str(self.max_jobs), "--backoff-base", "0.05", "--backoff-cap", "0.5",
            "--stop-timeout", "5", "--http-port", "0", "--ready-file", str(ready), "--log-json",
            *self.extra,
        ]  # fmt: skip
        with (self.tmp / "worker.log").open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
        self.incarnation += 1
        while not ready.exists():
            if self.proc.poll() is not None:
                raise DemoFailed(
                    f"the worker exited with {self.proc.returncode}; see {self.tmp / 'worker.log'}"
                )
            if time.monotonic() > deadline:
                raise DemoFailed("the worker did not start in time")
            time.sleep(0.02)
        self.http_url = json.loads(ready.read_text())["http_url"]

    def scrape(self) -> None:
        """Remember this incarnation's counters (a killed process takes its memory with it)."""
        with contextlib.suppress(OSError, ValueError):
            with urllib.request.urlopen(self.http_url + "/metrics", timeout=1.0) as resp:
                text = resp.read().decode()
            counters: dict[str, float] = {}
            for family in text_string_to_metric_families(text):
                if family.type == "counter":
                    for sample in family.samples:
                        if sample.name.endswith("_total"):
                            counters[sample.name] = counters.get(sample.name, 0.0) + sample.value
            self.counters[self.incarnation] = counters

    def total(self, name: str) -> int:
        return int(sum(c.get(f"jobrelay_worker_{name}_total", 0.0) for c in self.counters.values()))

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)

    def stop(self, timeout: float) -> int | None:
        """SIGTERM and wait; returns the exit code (None if it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None


class DemoFailed(Exception):
    pass
