"""`jobrelay jobs --watch`, `jobrelay events`, `jobrelay jobs JOB --follow` and `submit --wait` as
real subprocesses of the CLI against a real facilitator on loopback with a real worker: on a
pseudo-terminal (python's pty module: colour, redraw in place, lines fitted to its width) and piped
(plain text, no escape codes)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import pytest
from aiohttp import web

from jobrelay.cli.api_client import FacilitatorClient
from jobrelay.cli.follow import follow
from jobrelay.common.http import HealthServer
from jobrelay.facilitator import Facilitator, FacilitatorConfig, FacilitatorHealth, start_facilitator
from jobrelay.facilitator.http_api import serve_facilitator
from tests.protocol_harness import FACILITATOR_KEY_HEX
from tests.test_cli_helpers import JOBRELAY, Service, clean_env, make_key, services, wait_until, worker_args

pytestmark = pytest.mark.timeout(90)

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
COLS = 100


class Stack(NamedTuple):
    fac: Facilitator
    api: str
    worker: Service


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    key, public = make_key(tmp_path, "w1")
    config = FacilitatorConfig(
        key=FACILITATOR_KEY_HEX, db_path=str(tmp_path / "f.db"), authorized_keys={"w1": public},
        durability="normal", stop_timeout=3.0,
    )  # fmt: skip
    with start_facilitator(config) as fac, services() as running:
        http: HealthServer = serve_facilitator(fac)
        try:
            worker = Service(worker_args(tmp_path, fac.url, "w1", key), tmp_path / "w1.log").start()
            running.append(worker)
            worker.ready(tmp_path / "w1.ready")
            wait_until(lambda: any(w.connected for w in fac.workers()), what="w1 connected")
            yield Stack(fac, http.url, worker)
        finally:
            http.stop()


@contextlib.contextmanager
def paused(worker: Service) -> Iterator[Callable[[], None]]:
    """The worker process stopped (SIGSTOP) until the callable given is called or the block ends:
    its jobs cannot move while a slow-starting CLI gets ready (its session outlives a short stop)."""
    worker.signal(signal.SIGSTOP)
    try:
        yield lambda: worker.signal(signal.SIGCONT)
    finally:
        worker.signal(signal.SIGCONT)


def progressing(stack: Stack, job_id: str) -> bool:
    view = stack.fac.job(job_id)
    return view is not None and view.record.progress is not None


def env() -> dict[str, str]:
    out = clean_env(TERM="xterm-256color")
    for name in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        out.pop(name, None)
    return out


class PtyProcess:
    """A CLI subprocess whose stdout and stderr are a pseudo-terminal COLS wide."""

    def __init__(self, args: Sequence[str]) -> None:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, COLS, 0, 0))
        self.master = master
        self.proc = subprocess.Popen(
            [*JOBRELAY, *args], stdin=slave, stdout=slave, stderr=slave, env=env(), start_new_session=True
        )
        os.close(slave)
        self.raw = b""

    def _read(self, timeout: float) -> bool:
        """Read what is there (waiting up to ``timeout``); False at the end of output."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:  # EIO: the process closed the terminal
            return False
        self.raw += chunk
        return bool(chunk)

    def read_until(self, predicate: Callable[[str], bool], timeout: float = 20.0) -> str:
        deadline = time.monotonic() + timeout
        while not predicate(self.text):
            assert time.monotonic() < deadline, f"not seen in time:\n{self.text[-3000:]}"
            if not self._read(0.1) and not predicate(self.text):
                raise AssertionError(f"ended before it was seen:\n{self.text[-3000:]}")
        return self.text

    def finish(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self._read(0.1):
            assert time.monotonic() < deadline, self.text[-3000:]
        return self.proc.wait(max(0.1, deadline - time.monotonic()))

    @property
    def text(self) -> str:
        return self.raw.decode("utf-8", "replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        os.close(self.master)


@contextlib.contextmanager
def in_pty(args: Sequence[str]) -> Iterator[PtyProcess]:
    proc = PtyProcess(args)
    try:
        yield proc
    finally:
        proc.close()


def visible_lines(raw: str) -> list[str]:
    return [ANSI.sub("", line) for line in re.split(r"\r\n|\r|\n", raw)]


def test_watch_on_a_terminal_redraws_in_place_in_colour_fitted_to_its_width(stack: Stack) -> None:
    long_detail = "the quick brown fox " * 15  # 300 characters: more than the terminal is wide
    stack.fac.submit("echo", long_detail, job_id="long-detail")
    stack.fac.submit("sleep", {"seconds": 2, "steps": 4}, job_id="sleepy")
    wait_until(lambda: progressing(stack, "sleepy"), what="sleepy running")
    args = [
        "jobs",
        "--facilitator",
        stack.api,
        "--watch",
        "--until-done",
        "--interval",
        "0.1",
        "--wait",
        "60",
    ]
    with paused(stack.worker) as resume, in_pty(args) as term:
        term.read_until(lambda text: "sleepy" in text and "long-detail" in text, timeout=30)
        resume()
        assert term.finish() == 0, term.text[-3000:]
        raw = term.text
    assert "\x1b[" in raw and re.search(r"\x1b\[[0-9;]*3[0-9]m|\x1b\[1;3[0-9]m", raw)  # colour
    assert re.search(r"\x1b\[[0-9]*A", raw) and "\x1b[2K" in raw  # cursor up + erase: redrawn in place
    lines = visible_lines(raw)
    assert max(len(line) for line in lines) <= COLS
    assert any("long-detail" in line and "…" in line for line in lines)  # the detail cut to fit
    assert any("sleepy" in line and "running" in line and "━" in line for line in lines)  # a bar
    tail = "\n".join(lines[-12:])
    assert re.search(r"sleepy\s+sleep\s+completed", tail) and "w1 connected" in tail


def test_watch_piped_prints_plain_tables_only_when_something_changed(stack: Stack) -> None:
    stack.fac.submit("sleep", {"seconds": 2, "steps": 4}, job_id="piped")
    wait_until(lambda: progressing(stack, "piped"), what="piped running")
    args = [
        "jobs",
        "--facilitator",
        stack.api,
        "--watch",
        "--until-done",
        "--interval",
        "0.1",
        "--wait",
        "60",
    ]
    with paused(stack.worker) as resume:
        proc = subprocess.Popen(
            [*JOBRELAY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
            start_new_session=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            first = [proc.stdout.readline() for _ in range(2)]  # the header and the job's row
            resume()
            rest, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
    assert proc.returncode == 0, err
    out = "".join(first) + rest
    assert "\x1b" not in out
    tables = out.count("JOB ")
    assert 2 <= tables <= 8, out  # about one per change (3 more steps, completed), not one per poll
    assert re.search(r"^piped\s+sleep\s+running\s+\[#+\.*\]\s+\d+%\s+w1", out, re.M), out
    assert re.findall(r"^piped\s+sleep\s+(\w+)", out, re.M)[-1] == "completed"


def test_events_on_a_terminal_and_piped(stack: Stack) -> None:
    bus = stack.fac.hub.events
    piped = subprocess.Popen(
        [*JOBRELAY, "events", "--facilitator", stack.api, "--json", "--job", "ev-1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env(), start_new_session=True,
    )  # fmt: skip
    lines: list[dict[str, object]] = []
    reader = threading.Thread(target=lambda: lines.extend(json.loads(raw) for raw in piped.stdout or ()))
    reader.start()
    try:
        with in_pty(["events", "--facilitator", stack.api]) as term:
            wait_until(lambda: bus.subscribers == 2, what="both subscribed")
            stack.fac.submit("echo", "hello there", job_id="ev-1")
            term.read_until(lambda text: "job.ended" in text)
            wait_until(lambda: any(e["type"] == "job.ended" for e in lines), what="piped job.ended")
            term.proc.send_signal(signal.SIGINT)  # Ctrl-C: the usual way to stop
            assert term.finish() == 0
            raw = term.text
            piped.send_signal(signal.SIGINT)
            assert piped.wait(10) == 0
    finally:
        if piped.poll() is None:
            os.killpg(piped.pid, signal.SIGKILL)
        piped.wait(5)
        reader.join(5)
    assert re.search(r"\x1b\[[0-9;]*m", raw)  # styled on a terminal
    text = "\n".join(visible_lines(raw))
    for kind in ("job.submitted", "job.routed", "job.status", "job.ended"):
        assert re.search(rf"^\d\d:\d\d:\d\d\.\d{{3}}  {re.escape(kind)}\s+job=ev-1", text, re.M), text
    assert 'status=completed detail="hello there"' in text
    types = [e["type"] for e in lines]
    assert types[:2] == ["job.submitted", "job.routed"] and types[-1] == "job.ended"
    statuses = [e["status"] for e in lines if e["type"] == "job.status"]
    assert statuses[0] == "accepted" and statuses[-1] == "completed"
    assert all(e["job_id"] == "ev-1" and e["worker"] == "w1" for e in lines[1:])


def test_follow_prints_each_status_as_it_arrives(stack: Stack) -> None:
    job_id = stack.fac.submit("sleep", {"seconds": 2, "steps": 4})
    wait_until(lambda: progressing(stack, job_id), what="the job running")
    arrivals: list[tuple[float, str]] = []
    with paused(stack.worker) as resume:
        proc = subprocess.Popen(
            [*JOBRELAY, "jobs", "--facilitator", stack.api, job_id, "--follow", "--wait", "30"],
            stdout=subprocess.PIPE, text=True, env=env(), start_new_session=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                arrivals.append((time.monotonic(), line.rstrip()))
                if "25%" in line:  # the history so far is out: let the job go on
                    resumed = time.monotonic()
                    resume()
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
    row = re.compile(r"^\d+\s+\S+\s+(\w+)\s+(\S+)")
    rows = [(at, m.groups()) for at, line in arrivals if (m := row.match(line))]
    # Every status once, in order: none lost or repeated between the history and the stream.
    steps = [("running", f"{n}%") for n in (25, 50, 75, 100)]
    assert [r for _, r in rows] == [("accepted", "-"), ("running", "-"), *steps, ("completed", "-")], arrivals
    # The last ones were printed as they came (the job needed another 1.5 s after the resume).
    assert rows[-1][0] - resumed > 0.5, arrivals
    assert arrivals[-1][1].endswith("status completed")


def test_submit_wait_shows_the_statuses_and_exits_by_the_ending(stack: Stack) -> None:
    ok = subprocess.run(
        [*JOBRELAY, "submit", "--facilitator", stack.api, "sleep", "--payload", '{"seconds": 0.4}',
         "--wait", "30"], capture_output=True, text=True, timeout=60, env=env(), check=False,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    statuses = re.findall(r"^\d+\s+\S+\s+(\w+)", ok.stdout, re.M)
    assert statuses[0] == "accepted" and statuses[-1] == "completed" and "running" in statuses
    assert ok.stdout.rstrip().endswith("status completed")
    nobody = subprocess.run(
        [*JOBRELAY, "submit", "--facilitator", stack.api, "encode", "--start-within", "0.3", "--wait", "30"],
        capture_output=True, text=True, timeout=60, env=env(), check=False,
    )  # fmt: skip
    assert nobody.returncode == 1 and re.search(r"failed\s+-\s+no_worker", nobody.stdout), nobody.stdout


def test_events_says_why_its_stream_ended(stack: Stack) -> None:
    bus = stack.fac.hub.events
    # The server stops: the stream ends with stream.closed, and `jobrelay events` with exit 0.
    own = serve_facilitator(stack.fac)
    closing = subprocess.Popen(
        [*JOBRELAY, "events", "--facilitator", own.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env(), start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: bus.subscribers == 1, what="subscribed")
        own.stop()
        out, err = closing.communicate(timeout=20)
    finally:
        own.stop()
        if closing.poll() is None:
            os.killpg(closing.pid, signal.SIGKILL)
            closing.wait(5)
    assert closing.returncode == 0 and "closed the stream" in err, (out, err)

    # A reader that falls 1,000 events behind (here: stopped with SIGSTOP) is dropped, and says so.
    slow = subprocess.Popen(
        [*JOBRELAY, "events", "--facilitator", stack.api, "--json"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env(), start_new_session=True,
    )  # fmt: skip
    try:
        wait_until(lambda: bus.subscribers == 1, what="subscribed")
        slow.send_signal(signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while bus.subscribers:
            assert time.monotonic() < deadline, "never dropped"
            for n in range(500):
                bus.publish("job.status", job_id=f"flood-{n}", detail="x" * 4000)
            time.sleep(0.01)  # lets the server's loop write what the socket takes
        slow.send_signal(signal.SIGCONT)
        out, err = slow.communicate(timeout=60)
    finally:
        if slow.poll() is None:
            os.killpg(slow.pid, signal.SIGKILL)
            slow.wait(5)
    assert slow.returncode == 1, err
    assert "dropped this stream: subscriber too slow: 1000 events behind" in err
    assert out.count("\n") >= 1000  # what it had taken in before falling behind, printed
    assert bus.dropped == 1


class _BeforeEvents(FacilitatorHealth):
    """The API of a facilitator from before GET /events."""

    def routes(self) -> list[web.AbstractRouteDef]:
        return [r for r in super().routes() if getattr(r, "path", "") != "/events"]


def test_follow_polls_a_facilitator_without_events(stack: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    with HealthServer(_BeforeEvents(stack.fac)) as old:
        assert FacilitatorClient(old.url).request("GET", "/stats")["frames_in"] >= 0
        job_id = stack.fac.submit("sleep", {"seconds": 0.3, "steps": 1})
        view = follow(FacilitatorClient(old.url), job_id, 30, as_json=False)
    assert view["status"] == "completed"
    out = capsys.readouterr().out
    assert re.findall(r"^\d+\s+\S+\s+(\w+)", out, re.M) == ["accepted", "running", "running", "completed"], (
        out
    )
    assert out.rstrip().endswith("status completed")
