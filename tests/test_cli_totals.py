"""`jobrelay status` shows totals that outlive the worker process: what it published, replayed,
the duplicates it dropped and its reconnects, since its database was made (the counters of
/metrics start again at every start; these do not)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from jobrelay.facilitator import FacilitatorConfig, start_facilitator
from jobrelay.testing.proxy import TcpProxy
from tests.protocol_harness import FACILITATOR_KEY_HEX
from tests.test_cli_helpers import Service, make_key, run_cli, services, wait_until, worker_args

pytestmark = pytest.mark.timeout(90)


def totals(db: Path) -> dict[str, int]:
    done = run_cli(["status", "--db", str(db), "--json"])
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout)["database"]["totals"])


def test_totals_survive_a_restart_of_the_worker(tmp_path: Path) -> None:
    key, public = make_key(tmp_path, "w1")
    config = FacilitatorConfig(
        key=FACILITATOR_KEY_HEX, db_path=str(tmp_path / "f.db"), authorized_keys={"w1": public},
        durability="normal",
    )  # fmt: skip
    db = tmp_path / "w1.db"
    with start_facilitator(config) as fac, TcpProxy(("127.0.0.1", fac.port)) as proxy, services() as running:
        for run in (1, 2):
            (tmp_path / "w1.ready").unlink(missing_ok=True)
            worker = Service(worker_args(tmp_path, proxy.url, "w1", key), tmp_path / f"w1-{run}.log").start()
            running.append(worker)
            worker.ready(tmp_path / "w1.ready")
            job = fac.submit("echo", f"run {run}", worker="w1")
            wait_until(lambda j=job: fac.job(j).record.status == "completed", what="the job")  # type: ignore[union-attr]
            proxy.cut()  # a reconnect
            wait_until(lambda w=worker: w.text().count("connection connected") >= 2, what="connected again")
            worker.signal(signal.SIGTERM)
            assert worker.wait(20) == 0
            kept = totals(db)
            # accepted, running, completed of each job so far, and a reconnect per run: the second
            # run's process counted from 0, the database went on from the first run's totals
            assert kept["published"] >= 3 * run, kept
            assert kept["reconnects"] >= run, kept
    text = run_cli(["status", "--db", str(db)]).stdout
    assert "totals      (since the database was made)" in text and f"{kept['reconnects']} reconnects" in text
