"""The chaos schedule: which fault, when, for how long, on which worker, all drawn from one seeded
random.Random, so a seed names a run; and the code that makes each fault happen.

Faults (network ones through the worker's TcpProxy; ``target`` -1 means every worker's link):
  cut          sever the links (FIN both ways)
  rst          reset the links (RST, unsent bytes discarded)
  blackhole    forward nothing, close nothing, longer than the heartbeat deadline
  refuse       reset the links, then reset every new connection for a while
  latency      hold every chunk 20-200 ms for a while
  split        forward every chunk in 1-64 byte pieces for a while
  worker-kill  SIGKILL a worker's process group, start it again
  worker-term  SIGTERM a worker (it must drain and exit 0 in time), start it again
  fac-kill     SIGKILL the facilitator, start it again (same database, new port)
  fac-term     SIGTERM the facilitator (exit 0 in time), start it again

Invariant: the schedule depends on the seed and the arguments only; how long each fault takes to
apply (restarts) only shifts the later ones, never changes them.
"""

from __future__ import annotations

import random
import signal
import threading
from dataclasses import dataclass

from chaos_procs import Cluster, Timing

__all__ = ["KINDS", "Fault", "apply", "heal", "make_schedule"]

# kind → weight in the draw
KINDS: dict[str, float] = {
    "cut": 3.0,
    "rst": 3.0,
    "blackhole": 2.0,
    "refuse": 1.0,
    "latency": 1.5,
    "split": 1.5,
    "worker-kill": 1.5,
    "worker-term": 1.0,
    "fac-kill": 1.0,
    "fac-term": 0.7,
}


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the run started
    kind: str
    target: int  # worker index; -1 for every worker (network faults only)
    seconds: float = 0.0  # how long a windowed fault lasts
    amount: float = 0.0  # latency in seconds, or split size in bytes

    def describe(self) -> str:
        where = "all links" if self.target < 0 else f"w{self.target}"
        if self.kind.startswith("fac"):
            where = "the facilitator"  # (target is drawn anyway, so schedules stay comparable)
        extra = f" {self.seconds:.1f}s" if self.seconds else ""
        if self.kind == "latency":
            extra += f" +{self.amount * 1000:.0f}ms"
        elif self.kind == "split":
            extra += f" {self.amount:.0f}B pieces"
        return f"{self.kind} {where}{extra}"


def make_schedule(seed: int, duration: float, workers: int, timing: Timing) -> list[Fault]:
    """Faults from 2 s after the start until ``duration``, one at a time with gaps of 0.3-1.5 s."""
    rng = random.Random(seed)
    kinds, weights = list(KINDS), list(KINDS.values())
    faults: list[Fault] = []
    at = 2.0
    while True:
        kind = rng.choices(kinds, weights)[0]
        network = not kind.startswith(("worker", "fac"))
        target = -1 if network and rng.random() < 0.25 else rng.randrange(workers)
        seconds = amount = 0.0
        if kind == "blackhole":
            seconds = timing.heartbeat_timeout + rng.uniform(0.5, 2.0)
        elif kind == "refuse":
            seconds = rng.uniform(1.0, 3.0)
        elif kind == "latency":
            seconds, amount = rng.uniform(2.0, 5.0), rng.uniform(0.02, 0.2)
        elif kind == "split":
            seconds, amount = rng.uniform(2.0, 5.0), float(rng.randint(1, 64))
        if at + seconds > duration:
            return faults
        faults.append(Fault(round(at, 2), kind, target, round(seconds, 2), round(amount, 3)))
        at += seconds + rng.uniform(0.3, 1.5)


def apply(fault: Fault, cluster: Cluster, stop: threading.Event, deadline: float) -> None:
    """Make ``fault`` happen, wait out its window (waking early if ``stop`` is set), then heal it.

    Raises:
        RuntimeError: a restarted process did not come back before ``deadline``.
    """
    links = cluster.members if fault.target < 0 else [cluster.members[fault.target]]
    match fault.kind:
        case "cut" | "rst":
            for member in links:
                member.proxy.cut(rst=fault.kind == "rst")
        case "worker-kill" | "worker-term":
            sig = signal.SIGKILL if fault.kind == "worker-kill" else signal.SIGTERM
            cluster.kill_worker(links[0], sig, deadline)
        case "fac-kill" | "fac-term":
            cluster.kill_facilitator(signal.SIGKILL if fault.kind == "fac-kill" else signal.SIGTERM, deadline)
        case _:
            for member in links:
                if fault.kind == "blackhole":
                    member.proxy.stall()
                elif fault.kind == "refuse":
                    member.proxy.cut(rst=True)
                    member.proxy.refuse()
                elif fault.kind == "latency":
                    member.proxy.delay(fault.amount)
                else:
                    member.proxy.split(int(fault.amount))
            try:
                stop.wait(fault.seconds)  # the fault's window
            finally:
                heal(cluster)


def heal(cluster: Cluster) -> None:
    """End every windowed fault on every link."""
    for member in cluster.members:
        member.proxy.stall(False)
        member.proxy.refuse(False)
        member.proxy.delay(0.0)
        member.proxy.split(0)
