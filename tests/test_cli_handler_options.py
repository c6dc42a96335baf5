"""Command handler options (`--handler-option KIND:OPTION=VALUE`, TOML handler tables): what they
configure, and one clear line with exit 2 for every bad one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobrelay.actors import CommandHandler, CommandOptions
from jobrelay.cli.handler_specs import handlers_from
from jobrelay.cli.settings import Resolved
from tests.test_cli_config import run_main, worker_base

TOML_ENCODE = """
[worker.handlers.encode]
command = "encode-job --preset fast"
resumable = true
concurrency = 2
soft_time_limit = 50
time_limit = 60.5

[worker.handlers]
thumbnail = "thumb-job"
"""


def resolved(handlers: dict[str, object], options: dict[str, str] | None = None) -> Resolved:
    return Resolved(
        values={"handlers": handlers, "handler_options": options or {}},
        sources={"handlers": "w.toml", "handler_options": "--handler-option"},
        section="worker",
    )


def test_options_from_a_toml_table_and_from_flags() -> None:
    handlers = handlers_from(
        resolved(
            {
                "encode": {"command": "encode-job --preset fast", "concurrency": 2, "resumable": True},
                "thumb": "thumb-job 'a b'",
            },
            {
                "encode:time_limit": "60",
                "thumb:concurrency": "1",
                "thumb:kill_after": "0",
                "encode:concurrency": "3",
            },
        )
    )
    encode, thumb = handlers["encode"], handlers["thumb"]
    assert isinstance(encode, CommandHandler) and isinstance(thumb, CommandHandler)
    assert encode.argv == ["encode-job", "--preset", "fast"]
    # A flag's option beats the same option in the TOML table.
    assert encode.options == CommandOptions(resumable=True, concurrency=3, time_limit=60.0)
    assert thumb.argv == ["thumb-job", "a b"]
    assert thumb.options == CommandOptions(concurrency=1, kill_after=0.0)
    assert encode.resumable and not thumb.resumable  # what the router reads after a restart
    assert "echo" in handlers and "sleep" in handlers  # the samples stay


def test_print_config_shows_a_toml_handler_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "w.toml").write_text(TOML_ENCODE)
    argv = [
        *worker_base(tmp_path),
        "--worker-id",
        "w1",
        "--url",
        "ws://h:1",
        "--config",
        str(tmp_path / "w.toml"),
    ]
    code, out, err = run_main(
        [*argv, "--handler-option", "thumbnail:concurrency=4", "--print-config"], capsys
    )
    assert code == 0, err
    assert '"command": "encode-job --preset fast"' in out
    assert '"thumbnail:concurrency": "4"' in out


OPT = r"worker\.handler_options \(from --handler-option\): "
BAD = [
    (["--handler", "enc=x", "--handler-option", "enc:speed=9"], {}, None,
     OPT + r"enc:speed: unknown option; expected one of "
     r"resumable, concurrency, soft_time_limit, time_limit, kill_after"),
    (["--handler", "enc=x", "--handler-option", "enc:concurrency=0"], {}, None,
     OPT + r"enc:concurrency: expected an integer >= 1, got '0'"),
    (["--handler", "enc=x", "--handler-option", "enc:concurrency=two"], {}, None,
     OPT + r"enc:concurrency: expected an integer >= 1, got 'two'"),
    (["--handler", "enc=x", "--handler-option", "enc:time_limit=-1"], {}, None,
     OPT + r"enc:time_limit: expected seconds > 0, got '-1'"),
    (["--handler", "enc=x", "--handler-option", "enc:time_limit=nan"], {}, None,
     OPT + r"enc:time_limit: expected seconds > 0, got 'nan'"),
    (["--handler", "enc=x", "--handler-option", "enc:resumable=maybe"], {}, None,
     OPT + r"enc:resumable: expected true or false, got 'maybe'"),
    (["--handler", "enc=x", "--handler-option", "concurrency=2"], {}, None,
     r"worker\.handler_options \(from --handler-option\): expected KIND:OPTION=VALUE, got concurrency=2"),
    (["--handler", "enc=x", "--handler-option", "enc:concurrency"], {}, None,
     r"worker\.handler_options \(from --handler-option\): expected KIND:OPTION=VALUE, got 'enc:concurrency'"),
    (["--handler-option", "enc:concurrency=2"], {}, None,
     OPT + r"enc: no command handler of that kind "
     r"\(--handler enc=\.\.\.\)"),
    (["--handler", "enc=x"], {"JOBRELAY_HANDLER_OPTIONS": "enc:soft_time_limit=9;enc:time_limit=5"}, None,
     r"worker\.handlers \(from --handler\): enc: soft_time_limit \(9\.0\) is above time_limit \(5\.0\)"),
    ([], {}, '[worker.handlers.enc]\nconcurrency = 2\n',
     r"worker\.handlers \(from .*w\.toml\): enc: a handler table needs `command = \"\.\.\.\"`"),
    ([], {}, '[worker.handlers.enc]\ncommand = "x"\nconcurrency = "2"\n',
     r"worker\.handlers \(from .*w\.toml\): enc:concurrency: expected an integer >= 1, got '2'"),
    ([], {}, '[worker.handlers.enc]\ncommand = "x"\nresumable = "yes please"\n',
     r"worker\.handlers \(from .*w\.toml\): enc:resumable: expected true or false, got 'yes please'"),
    ([], {}, '[worker.handlers]\nenc = 3\n',
     r"worker\.handlers \(from .*w\.toml\): expected a table of commands \(each a string, or a table "
     r"with `command`\), got .*"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "env", "toml", "expected"), BAD)
def test_bad_handler_option_is_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    env: dict[str, str],
    toml: str | None,
    expected: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = [*worker_base(tmp_path), "--worker-id", "w1", "--url", "ws://h:1", *extra]
    if toml is not None:
        (tmp_path / "w.toml").write_text(toml)
        argv += ["--config", str(tmp_path / "w.toml")]
    code, out, err = run_main([*argv, "--print-config"], capsys)
    assert code == 2, (out, err)
    assert err.count("\n") == 1, err
    assert re.fullmatch(f"jobrelay: error: {expected}\n", err), err
