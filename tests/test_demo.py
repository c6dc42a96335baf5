"""scripts/demo (the README's first command) runs and checks itself: exit code 0 and its table."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from jobrelay.cli.demo import check_history
from jobrelay.storage.ledger import StatusEntry
from tests.test_cli_helpers import ROOT, clean_env


@pytest.mark.timeout(150)
def test_scripts_demo_exits_0_with_a_clean_summary() -> None:
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "demo")], cwd=ROOT, env=clean_env(), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    assert proc.returncode == 0, out
    print(out)  # the table, for the CI log
    rows = dict(re.findall(r"^  (\S.*?\S)  +(\S.*)$", out, re.M))
    assert rows["sleep jobs submitted"] == "500"
    completed = int(rows["sleep jobs completed"])
    restarted = int(rows["jobs failed: worker_restarted"].split()[0])
    assert completed + restarted == 500
    assert rows["jobs lost or duplicated"] == "0"
    # Submitted to no worker in particular, each kind went only to the worker that runs it.
    assert rows["jobs routed by kind"] == "500 sleep → demo, 50 thumbnail → demo-thumbs"
    assert rows["jobs rejected (unknown kind)"] == "0"
    sent = int(rows["status updates sent (worker db)"])
    assert rows["status updates delivered"].startswith(f"{sent}  (facilitator accepted {sent})")
    assert rows["connection cuts"] == "2" and rows["worker restarts (kill -9)"] == "1"
    assert float(rows["wall time"].split()[0]) < 60
    assert "jobrelay demo: OK" in out


def entries(*items: tuple[str, float | None] | tuple[str, float | None, str]) -> list[StatusEntry]:
    return [StatusEntry(i[0], i[2] if len(i) > 2 else "", i[1], float(n)) for n, i in enumerate(items)]  # type: ignore[misc]


def test_history_check_accepts_good_and_refuses_bad() -> None:
    full = [("accepted", None), ("running", None), ("running", 0.5), ("running", 1.0)]
    assert check_history(entries(*full, ("completed", None)), 2) == ("completed", "")
    assert check_history(entries(*full[:2], ("failed", None, "worker_restarted")), 2) == ("restarted", "")
    assert check_history(entries(("failed", None, "worker_restarted")), 2) == ("restarted", "")
    bad = [
        entries(*full),  # no end: lost
        entries(*full, ("completed", None), ("completed", None)),  # two ends
        entries(*full[:3], ("running", 0.5), ("running", 1.0), ("completed", None)),  # a repeated update
        entries(full[0], full[2], full[1], full[3], ("completed", None)),  # out of order
        entries(*full[:3], ("completed", None)),  # a missing update
        entries(*full, ("failed", None, "boom")),  # another failure
    ]
    for history in bad:
        assert check_history(history, 2)[0] == "bad", history


@pytest.mark.timeout(120)
def test_scripts_demo_celery_fans_out_survives_both_kills_and_loses_nothing() -> None:
    pytest.importorskip("celery")
    proc = subprocess.Popen(
        [str(ROOT / "scripts" / "demo"), "--celery", "--jobs", "40", "--job-seconds", "0.5"],
        cwd=ROOT, env=clean_env(), start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=100)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    print(out)  # the table, for the CI log
    assert proc.returncode == 0, out
    rows = dict(re.findall(r"^  (\S.*?\S)  +(\S.*)$", out, re.M))
    assert rows["jobs submitted"] == rows["jobs completed"] == "40"
    assert rows["jobs lost or duplicated"] == "0"
    assert int(rows["jobs retried after worker_lost"]) >= 1  # the killed pool process's job
    assert re.fullmatch(r"celery1 \d+, celery2 \d+", rows["jobs per Celery worker"])
    assert int(rows["tasks re-attached after the restart"]) >= 1
    assert "jobrelay demo --celery: OK" in out
