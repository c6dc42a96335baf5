"""The brokers scripts/bench_peers.py measures jobrelay beside: Debian's mosquitto, nats-server and
rabbitmq-server, each started on free loopback ports with its state in a temporary directory and
stopped by the PIDs this module started (never by name).

`missing_debs()` says which packages lack their binary; `install_debs()` installs them with
apt-get (root only), as does running this file (.ci/run does). A broker is a context manager:
`with Mosquitto(tmp) as port: ...`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

# package → the binary the bench runs
DEBS = {
    "mosquitto": "/usr/sbin/mosquitto",
    "nats-server": "/usr/sbin/nats-server",
    "rabbitmq-server": "/usr/lib/rabbitmq/bin/rabbitmq-server",
}
EPMD = "/usr/bin/epmd"  # comes with rabbitmq-server's erlang-base


class BrokerError(RuntimeError):
    """A broker did not start (the message carries the tail of its log)."""


def missing_debs() -> list[str]:
    return [pkg for pkg, binary in DEBS.items() if not os.access(binary, os.X_OK)]


def install_debs(packages: list[str]) -> None:
    """apt-get update once, then install `packages` (services are not started: the brokers this
    bench needs run from a temporary directory, not as system services)."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BrokerError(f"missing {' '.join(packages)}: run apt-get install {' '.join(packages)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env, stdout=subprocess.DEVNULL)
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages],
        check=True, env=env, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def free_port() -> int:
    """A loopback port nobody listens on now (the broker binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM, then SIGKILL to its process group after `timeout` (it was started in a session
    of its own, so the group is its own: helpers it forked go too)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # whatever of the group is left
    proc.wait(10)


class Broker:
    """Start on enter (returns the client port once it accepts connections), stop on exit."""

    name = ""
    start_timeout = 30.0

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp / self.name
        self.dir.mkdir()
        self.log = self.dir / "log.txt"
        self.port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []

    def command(self) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def spawn(self, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                argv, cwd=self.dir, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        self.procs.append(proc)
        return proc

    def __enter__(self) -> int:
        try:
            argv, env = self.command()
            self.wait_listening(self.spawn(argv, env), self.port, self.start_timeout)
        except BaseException:
            self.stop_all()
            raise
        return self.port

    def wait_listening(self, proc: subprocess.Popen[bytes], port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not accepts(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BrokerError(f"{self.name} did not start: {self.log_tail()}")
            time.sleep(0.05)  # polling a port with a deadline

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        for proc in reversed(self.procs):  # the broker before the helper it needs (epmd)
            stop(proc)
        self.procs.clear()

    def log_tail(self) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return " | ".join(lines[-5:]) or "(no output)"


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


class Mosquitto(Broker):
    name = "mosquitto"

    def command(self) -> tuple[list[str], dict[str, str]]:
        conf = self.dir / "mosquitto.conf"
        # `user root` keeps it from switching to the mosquitto user, who could not write here.
        conf.write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser root\n"
            f"persistence true\npersistence_location {self.dir}/\nlog_dest stdout\n"
        )
        return [DEBS["mosquitto"], "-c", str(conf)], {}


class Nats(Broker):
    name = "nats-server"

    def command(self) -> tuple[list[str], dict[str, str]]:
        store = self.dir / "jetstream"
        return [DEBS["nats-server"], "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(store)], {}


class RabbitMQ(Broker):
    """rabbitmq-server with its own epmd: Erlang would otherwise start a shared epmd daemon on
    port 4369 that outlives the bench; this one runs in the foreground on a free port."""

    name = "rabbitmq"
    start_timeout = 90.0  # a cold Erlang boot on a loaded 2-core machine takes 10-20 s

    def command(self) -> tuple[list[str], dict[str, str]]:
        epmd_port = free_port()
        erl = {"ERL_EPMD_PORT": str(epmd_port), "ERL_EPMD_ADDRESS": "127.0.0.1"}
        epmd = self.spawn([EPMD, "-port", str(epmd_port), "-address", "127.0.0.1"], erl)
        self.wait_listening(epmd, epmd_port, 10)
        (self.dir / "enabled_plugins").write_text("[].\n")
        (self.dir / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{self.port}\n")
        env = {
            **erl,
            "HOME": str(self.dir),  # the Erlang cookie goes here
            "RABBITMQ_NODENAME": f"bench{os.getpid()}x{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(self.dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.dir / "log"),
            "RABBITMQ_LOGS": "-",
            "RABBITMQ_CONFIG_FILE": str(self.dir / "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.dir / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(self.dir / "rabbitmq-env.conf"),  # not /etc's
            "RABBITMQ_PID_FILE": str(self.dir / "pid"),
        }
        # This script keeps the VM as its child and stops it cleanly on SIGTERM.
        return [DEBS["rabbitmq-server"]], env


if __name__ == "__main__":
    # `scripts/bench_brokers.py`: install the missing packages (.ci/run does, so that
    # tests/test_bench_peers.py runs in CI instead of being skipped).
    if missing := missing_debs():
        print(f"==> installing {' '.join(missing)} (Debian packages for tests/test_bench_peers.py)")
        try:
            install_debs(missing)
        except (BrokerError, subprocess.CalledProcessError) as e:
            raise SystemExit(f"==> not installed: {e}") from None
