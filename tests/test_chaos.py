"""scripts/chaos: the checker catches each kind of violation (so a pass means something), the
schedule is a function of the seed, and a 60 s run with at least 20 faults (cuts, resets,
blackholes past the heartbeat deadline, SIGKILL/SIGTERM restarts of every process) ends with
nothing lost, duplicated or reordered and every job ended exactly once."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
sys.path.insert(0, str(SCRIPTS))

from chaos_check import check_job, parse_records  # noqa: E402
from chaos_faults import KINDS, make_schedule  # noqa: E402
from chaos_procs import Timing  # noqa: E402


def entry(status: str, detail: str = "") -> dict[str, Any]:
    return {"status": status, "detail": detail, "progress": None, "at": 0.0}


def good(steps: int) -> list[dict[str, Any]]:
    body = [entry("accepted"), entry("running")]
    body += [entry("running", f"step {i}/{steps}") for i in range(1, steps + 1)]
    return [*body, entry("completed", f"{steps} steps")]


def test_a_complete_history_passes() -> None:
    assert check_job("j", 3, good(3), recorded=[1, 2, 3]).ok


def test_an_interrupted_job_may_end_early_and_hold_one_unrecorded_update() -> None:
    # killed after step 2 was accepted but before the handler wrote it down
    history = [*good(3)[:4], entry("failed", "worker_restarted")]
    assert check_job("j", 3, history, recorded=[1]).ok


def test_a_recorded_update_missing_at_the_facilitator_is_lost() -> None:
    history = [*good(3)[:3], entry("failed", "worker_restarted")]
    result = check_job("j", 3, history, recorded=[1, 2])
    assert result.lost == 1 and not result.ok


def test_a_gap_and_a_completed_job_without_all_steps_are_lost() -> None:
    history = good(3)
    del history[3]  # step 2
    assert check_job("j", 3, history, recorded=[]).lost == 1


def test_duplicates_are_counted() -> None:
    history = good(2)
    history.insert(3, history[2])
    assert check_job("j", 2, history, recorded=[1, 2]).duplicated == 1
    two_endings = [*good(2), entry("failed", "worker_restarted")]
    assert check_job("j", 2, two_endings, recorded=[1, 2]).duplicated == 1


def test_reordering_is_counted() -> None:
    history = good(3)
    history[3], history[4] = history[4], history[3]
    assert check_job("j", 3, history, recorded=[1, 2, 3]).reordered == 1


def test_a_job_without_an_ending_is_unfinished() -> None:
    assert check_job("j", 2, good(2)[:-1], recorded=[1, 2]).unfinished == 1


def test_a_job_handed_back_by_a_draining_worker_is_checked_from_its_last_hand_out() -> None:
    history = [entry("accepted"), entry("released", "worker draining"), *good(2)]
    assert check_job("j", 2, history, recorded=[1, 2]).ok
    started_then_released = [entry("accepted"), entry("running"), entry("released"), *good(2)]
    assert check_job("j", 2, started_then_released, recorded=[1, 2]).unexpected == 1


def test_torn_record_lines_are_counted() -> None:
    records, torn = parse_records(['{"job": "a", "step": 1}', '{"job": "a", "st', '{"job": "a", "step": 2}'])
    assert records == {"a": [1, 2]} and torn == 1


def test_the_schedule_is_a_function_of_the_seed() -> None:
    first = make_schedule(7, 60, 2, Timing())
    assert first == make_schedule(7, 60, 2, Timing())
    assert first != make_schedule(8, 60, 2, Timing())
    assert len(first) >= 20
    blackholes = [f for f in first if f.kind == "blackhole"]
    assert all(f.seconds > Timing().heartbeat_timeout for f in blackholes)


@pytest.mark.timeout(600)
def test_a_60_second_chaos_run_loses_nothing() -> None:
    proc = subprocess.run(
        [str(SCRIPTS / "chaos"), "--duration", "60", "--seed", "2", "--workers", "2", "--rate", "3"],
        capture_output=True,
        text=True,
        timeout=540,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    table = dict(re.findall(r"^(\S.*?)\s{2,}(\S.*)$", out, re.MULTILINE))
    assert int(table["faults (total)"]) >= 20, out
    streams, clean = "worker streams: sent != accepted", "unclean stops (SIGTERM: exit != 0 or late)"
    for row in ("lost", "duplicated", "reordered", "jobs unfinished", streams, clean):
        assert table[row] == "0", out
    assert int(table["jobs submitted"]) > 100
    assert int(table["updates accepted by worker handlers"]) > 0
    kinds = {name.removeprefix("faults: ") for name in table if name.startswith("faults: ")}
    assert kinds == set(KINDS), out  # seed 2's schedule has every kind of fault
    assert "chaos: OK (seed 2)" in out


def test_the_soak_verdict_flags_what_grows() -> None:
    from soak_run import Series, verdict

    steady = Series("w0", [(m, 60.0, 9, 9) for m in range(6)])
    assert verdict(steady, rss_mib=20) == "flat"
    leaking = Series("w0", [(m, 60.0 + 20 * m, 9 + 5 * m, 9) for m in range(6)])
    assert verdict(leaking, rss_mib=20) == "GROWING: descriptors, RSS"
    assert leaking.slope(2) == pytest.approx(300.0)  # 5 descriptors a minute
