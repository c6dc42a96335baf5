"""`--celery-task KIND=TASK --celery-broker URL`: kinds that run as Celery tasks, with their time
limits from `--time-limit`; one clear line with exit 2 for every bad combination."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("celery")

from jobrelay.actors.celery_backend import CeleryHandler
from jobrelay.actors.job_limits import Limits
from jobrelay.cli.handler_specs import handlers_from
from jobrelay.cli.settings import Resolved
from tests.test_cli_config import run_main, worker_base


def resolved(tasks: dict[str, str], broker: str, **more: object) -> Resolved:
    values = {"handlers": {}, "handler_options": {}, "celery_tasks": tasks, "celery_broker": broker, **more}
    return Resolved(values=values, sources=dict.fromkeys(values, "--celery-task"), section="worker")


def test_kinds_map_to_celery_tasks_with_their_time_limits() -> None:
    handlers = handlers_from(
        resolved(
            {"encode": "media.encode", "thumb": "media.thumb"},
            "redis://127.0.0.1:6379/0",
            time_limits={"encode": "50/60"},
        )
    )
    encode, thumb = handlers["encode"], handlers["thumb"]
    assert isinstance(encode, CeleryHandler) and isinstance(thumb, CeleryHandler)
    assert (encode.name, encode.time_limits) == ("media.encode", Limits(50.0, 60.0))
    assert thumb.time_limits == Limits() and thumb.backend is encode.backend
    assert encode.resumable  # re-attached after a restart, never failed as worker_restarted


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--celery-task", "encode=media.encode"], "needs --celery-broker"),
        (["--celery-task", "encode=media.encode", "--celery-broker", "amqp://h//"], "needs a Redis broker"),
        (["--celery-task", "encode=media encode", "--celery-broker", "redis://h"], "a Celery task name"),
        (
            ["--celery-task", "encode=m.e", "--handler", "encode=cat", "--celery-broker", "redis://h"],
            "also a command handler",
        ),
    ],
)
def test_a_bad_celery_setting_is_one_line_and_exit_2(
    flags: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*worker_base(tmp_path), "--url", "ws://127.0.0.1:1", "--worker-id", "w1", *flags]
    code, _, err = run_main(argv, capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
