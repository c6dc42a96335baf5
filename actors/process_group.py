# Signalling a command handler's whole process group. A command is started in its own session
# (start_new_session=True), so its pid is also its process group id: signalling the group reaches
# every child it forked too, which signalling the pid alone would leave running.
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any

__all__ = ["kill_group", "signal_group"]


def signal_group(proc: subprocess.Popen[Any], sig: signal.Signals) -> bool:
    """Send ``sig`` to the process group led by ``proc``; False when the group is already gone."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return False
    return True


def kill_group(proc: subprocess.Popen[Any], *, reap_within: float) -> None:
    """SIGKILL the whole group of ``proc`` and reap its leader within ``reap_within`` seconds."""
    signal_group(proc, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL cannot be ignored: rare
        proc.wait(reap_within)
