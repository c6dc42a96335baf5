# The watchdog every command handler runs under, as its own small Python process (standard
# library only, started with `python -I -S lifeline.py FD COMMAND...`; it never imports jobrelay).
# Invariants: the watchdog is the leader of a new session and process group, the command and
# everything it starts are members. FD is the read end of the worker's lifeline pipe, whose only
# write end is in the worker; when the worker dies, even by SIGKILL, the kernel closes it, FD reads
# EOF and the watchdog SIGKILLs the whole group, itself included. Otherwise it exits as the command
# did (the same code, or the same signal), so the worker sees the command's own end.
from __future__ import annotations

import os
import select
import signal
import sys

__all__ = ["main"]


def _ignore(signum: int, frame: object) -> None:
    """A group signal from the worker (terminate) is for the command: the watchdog stays to report."""


def _exec(argv: list[str]) -> None:
    # Caught or ignored dispositions of the watchdog (Python ignores SIGPIPE) must not reach the command.
    for sig in (signal.SIGPIPE, signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        os.write(2, f"cannot run {argv[0]!r}: {exc.strerror}\n".encode())
    os._exit(127)  # as a shell does for a command it cannot run


def main(args: list[str]) -> None:
    lifeline, argv = int(args[0]), args[1:]
    os.set_inheritable(lifeline, False)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, _ignore)
    pid = os.fork()
    if pid == 0:
        _exec(argv)
    # Hold no copy of the job's pipes: the worker must see EOF when the command closes stdout.
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    try:
        waitable: list[int] = [os.pidfd_open(pid)]
    except (AttributeError, OSError):  # kernel before 5.3: poll the child instead
        waitable = []
    while True:
        ready, _, _ = select.select([lifeline, *waitable], [], [], None if waitable else 0.1)
        if lifeline in ready:  # the worker is gone: nothing may outlive it
            os.killpg(0, signal.SIGKILL)
        if waitable and waitable[0] in ready:
            break
        if not waitable and os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            break
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


if __name__ == "__main__":
    main(sys.argv[1:])
