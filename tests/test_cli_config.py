"""Settings: flags > JOBRELAY_* environment > TOML (--config) > defaults; one-line errors, exit 2."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from prometheus_client.core import Metric

from jobrelay.actors.config import WorkerConfig
from jobrelay.cli import main
from jobrelay.cli.errors import UsageError
from jobrelay.cli.registry import FACILITATOR, WORKER, markdown_table
from jobrelay.cli.service import start_http
from jobrelay.cli.settings import Resolved
from jobrelay.common.http import HealthReport
from jobrelay.facilitator import FacilitatorConfig
from tests.protocol_harness import FACILITATOR_PUBLIC
from tests.test_cli_helpers import ROOT, clean_env, make_key, run_cli

pytestmark = pytest.mark.timeout(30)


@pytest.fixture(autouse=True)
def no_jobrelay_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No JOBRELAY_* variables from outside. (Every in-process main() call here fails or prints
    before logs.configure(), so loguru's global sinks are never replaced by these tests.)"""
    for name in list(os.environ):
        if name.startswith("JOBRELAY_"):
            monkeypatch.delenv(name)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def worker_base(tmp_path: Path) -> list[str]:
    key, _ = make_key(tmp_path, "w1")
    return [
        "worker",
        "--key-file",
        str(key),
        "--db",
        str(tmp_path / "w1.db"),
        "--facilitator-key",
        FACILITATOR_PUBLIC,
    ]


def test_flag_beats_env_beats_toml_beats_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "worker.toml"
    toml.write_text(
        '[worker]\nurl = "ws://toml:1"\nworker_id = "from-toml"\nmax_concurrent_jobs = 3\n'
        'backoff_cap = 9.0\ndurability = "normal"\nmax_attempts = 4\n'
        '[worker.handlers]\nresize = "convert --fast"\n[log]\nlevel = "DEBUG"\n'
    )
    monkeypatch.setenv("JOBRELAY_MAX_JOBS", "5")
    monkeypatch.setenv("JOBRELAY_BACKOFF_CAP", "7")
    monkeypatch.setenv("JOBRELAY_WORKER_ID", "from-env")
    monkeypatch.setenv("JOBRELAY_LOG_JSON", "true")
    argv = [*worker_base(tmp_path), "--config", str(toml), "--max-jobs", "7", "--print-config"]
    code, out, err = run_main(argv, capsys)
    assert code == 0, err
    doc = json.loads(out)
    worker, log = doc["worker"], doc["log"]

    def seen(key: str) -> tuple[object, str]:
        return worker[key]["value"], worker[key]["source"]

    assert seen("max_concurrent_jobs") == (7, "--max-jobs")  # flag over env and TOML
    assert seen("backoff_cap") == (7.0, "JOBRELAY_BACKOFF_CAP")  # env over TOML
    assert seen("worker_id") == ("from-env", "JOBRELAY_WORKER_ID")
    assert seen("url") == ("ws://toml:1", str(toml))  # TOML over default
    assert seen("durability") == ("normal", str(toml))
    assert seen("max_attempts") == (4, str(toml))
    assert seen("handlers") == ({"resize": "convert --fast"}, str(toml))
    assert seen("backoff_base") == (0.5, "default")
    assert seen("http_port") == (None, "default")
    assert "key" not in worker  # never printed
    assert log["level"] == {"value": "DEBUG", "source": str(toml)}
    assert log["json"] == {"value": True, "source": "JOBRELAY_LOG_JSON"}


def test_facilitator_precedence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    toml = tmp_path / "f.toml"
    toml.write_text(
        '[facilitator]\ndb_path = "f.db"\nport = 1111\nheartbeat_interval = 2.0\n'
        "[facilitator.authorized_keys]\n"
    )
    monkeypatch.setenv("JOBRELAY_PORT", "2222")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(
        ["facilitator", "--config", str(toml), "--port", "3333", "--print-config"], capsys
    )
    assert code == 0, err
    fac = json.loads(out)["facilitator"]
    assert fac["port"] == {"value": 3333, "source": "--port"}
    assert fac["heartbeat_interval"] == {"value": 2.0, "source": str(toml)}
    assert fac["http_port"] == {"value": 8766, "source": "default"}
    monkeypatch.delenv("JOBRELAY_PORT")
    monkeypatch.setenv("JOBRELAY_CONFIG", str(toml))  # the file itself may come from the environment
    code, out, _ = run_main(["facilitator", "--print-config"], capsys)
    assert json.loads(out)["facilitator"]["port"] == {"value": 1111, "source": str(toml)}


BAD_WORKER = [
    # (extra argv, env, TOML text, expected stderr line)
    ([], {"JOBRELAY_URL": "http://x"}, None,
     r"worker\.url \(from JOBRELAY_URL\): expected ws://host:port or wss://host:port, got 'http://x'"),
    (["--url", "ws://h:1", "--max-jobs", "abc"], {}, None,
     r"worker\.max_concurrent_jobs \(from --max-jobs\): expected an integer, got 'abc'"),
    (["--url", "ws://h:1", "--max-jobs", "0"], {}, None,
     r"worker\.max_concurrent_jobs \(from --max-jobs\): must be ≥ 1, got 0"),
    (["--url", "ws://h:1"], {"JOBRELAY_STOP_TIMEOUT": "soon"}, None,
     r"worker\.stop_timeout \(from JOBRELAY_STOP_TIMEOUT\): expected a number, got 'soon'"),
    (["--url", "ws://h:1"], {"JOBRELAY_DURABILITY": "fast"}, None,
     r"worker\.durability \(from JOBRELAY_DURABILITY\): .*'fast'"),
    (["--url", "ws://h:1"], {}, '[worker]\nmax_concurrent_jobs = "3"\n',
     r"worker\.max_concurrent_jobs \(from .*w\.toml\): expected an integer, got '3'"),
    (["--url", "ws://h:1"], {}, "[worker]\nbogus = 1\n",
     r"worker\.bogus \(from .*w\.toml\): unknown setting"),
    (["--url", "ws://h:1"], {}, "[wrker]\nurl = 'ws://h:1'\n",
     r"wrker \(from .*w\.toml\): unknown section; expected \[worker\], \[facilitator\] or \[log\]"),
    (["--url", "ws://h:1"], {}, "[worker\n", r"--config: .*w\.toml is not valid TOML: .*"),
    (["--url", "ws://h:1", "--key-file", "/nonexistent/k"], {}, None,
     r"worker\.key_file \(from --key-file\): cannot read /nonexistent/k: No such file or directory"),
    (["--url", "ws://h:1", "--db", "/nonexistent/dir/w.db"], {}, None,
     r"worker\.db_path \(from --db\): directory /nonexistent/dir does not exist"),
    (["--url", "ws://h:1", "--handler", "resize"], {}, None,
     r"worker\.handlers \(from --handler\): expected KIND=COMMAND, got 'resize'"),
    (["--url", "ws://h:1", "--log-level", "LOUD"], {}, None,
     r"log\.level \(from --log-level\): expected one of TRACE, .*got 'LOUD'"),
    (["--url", "ws://h:1"], {"JOBRELAY_HTTP_PORT": "70000"}, None,
     r"worker\.http_port \(from JOBRELAY_HTTP_PORT\): must be 0\.\.65535, got 70000"),
    (["--url", "ws://h:1"], {}, "[worker]\nhttp_port = -1\n",
     r"worker\.http_port \(from .*w\.toml\): must be 0\.\.65535, got -1"),
    ([], {}, None, r"worker\.url: required; set --url or JOBRELAY_URL or url in \[worker\] of --config"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "env", "toml", "expected"), BAD_WORKER)
def test_bad_worker_setting_is_one_line_and_exit_2(
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
    argv = [*worker_base(tmp_path), "--worker-id", "w1", *extra]
    if toml is not None:
        (tmp_path / "w.toml").write_text(toml)
        argv += ["--config", str(tmp_path / "w.toml")]
    code, out, err = run_main([*argv, "--print-config"], capsys)
    assert code == 2, (out, err)
    assert err.count("\n") == 1, err
    assert re.fullmatch(f"jobrelay: error: {expected}\n", err), err


BAD_FACILITATOR = [
    (["--authorized-keys", "/nonexistent/keys"], {},
     r"facilitator\.authorized_keys_file \(from --authorized-keys\): cannot be read .*"),
    (["--port", "70000"], {}, r"facilitator\.port \(from --port\): must be 0\.\.65535, got 70000"),
    (["--http-port", "70000"], {},
     r"facilitator\.http_port \(from --http-port\): must be 0\.\.65535, got 70000"),
    (["--http-port", "-1"], {}, r"facilitator\.http_port \(from --http-port\): must be 0\.\.65535, got -1"),
    (["--heartbeat-interval", "9"], {"JOBRELAY_HEARTBEAT_TIMEOUT": "3"},
     r"facilitator\.heartbeat_timeout \(from JOBRELAY_HEARTBEAT_TIMEOUT\): must be > heartbeat_interval .*"),
    (["--db", "/nonexistent/f.db"], {},
     r"facilitator\.db_path \(from --db\): directory /nonexistent does not exist"),
]  # fmt: skip


@pytest.mark.parametrize(("extra", "env", "expected"), BAD_FACILITATOR)
def test_bad_facilitator_setting_is_one_line_and_exit_2(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    env: dict[str, str],
    expected: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    argv = ["facilitator", "--db", str(tmp_path / "f.db"), "--port", "0", "--http-port", "0", *extra]
    code, out, err = run_main(argv, capsys)
    assert code == 2, (out, err)
    assert err.count("\n") == 1, err
    assert re.fullmatch(f"jobrelay: error: {expected}\n", err), err


def test_bad_values_from_a_real_process_exit_2_without_traceback(tmp_path: Path) -> None:
    key, _ = make_key(tmp_path, "w1")
    env = clean_env(JOBRELAY_URL="http://x")
    result = run_cli(
        ["worker", "--worker-id", "w1", "--key-file", str(key), "--db", str(tmp_path / "w.db")], env=env
    )
    assert result.returncode == 2
    assert result.stderr == (
        "jobrelay: error: worker.url (from JOBRELAY_URL): expected ws://host:port or wss://host:port, got 'http://x'\n"
    )
    # An unusable database file (not SQLite) is refused by the library: still one line, exit 2.
    (tmp_path / "junk.db").write_bytes(b"this is not a database" * 100)
    result = run_cli(
        ["worker", "--url", "ws://127.0.0.1:9", "--worker-id", "w1", "--key-file", str(key),
         "--facilitator-key", FACILITATOR_PUBLIC, "--db", str(tmp_path / "junk.db")], env=clean_env(),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("jobrelay: error:")]
    assert len(errors) == 1 and errors[0].startswith("jobrelay: error: worker.db_path (from --db): "), (
        result.stderr
    )


def test_http_port_out_of_range_exits_2_before_anything_starts(tmp_path: Path) -> None:
    # It used to pass resolution and fail in bind() with an OverflowError traceback and exit 1,
    # after the facilitator (or worker) had started.
    result = run_cli(["facilitator", "--db", str(tmp_path / "f.db"), "--port", "0", "--http-port", "70000"])
    assert (result.returncode, result.stderr) == (
        2,
        "jobrelay: error: facilitator.http_port (from --http-port): must be 0..65535, got 70000\n",
    )
    assert not (tmp_path / "f.db").exists()  # refused before the facilitator started
    key, _ = make_key(tmp_path, "w1")
    worker = ["worker", "--url", "ws://127.0.0.1:9", "--worker-id", "w1", "--key-file", str(key),
              "--db", str(tmp_path / "w.db")]  # fmt: skip
    result = run_cli([*worker, "--http-port", "-1"])
    assert (result.returncode, result.stderr) == (
        2,
        "jobrelay: error: worker.http_port (from --http-port): must be 0..65535, got -1\n",
    )


def test_start_http_turns_a_bad_port_into_a_usage_error() -> None:
    class Source:
        def health(self) -> HealthReport:
            return HealthReport(True, "", {})

        def metrics(self) -> Iterator[Metric]:
            return iter(())

    resolved = Resolved(
        values={"http_port": 70000, "http_host": "127.0.0.1"},
        sources={"http_port": "--http-port"},
        section="worker",
    )
    with pytest.raises(UsageError, match=r"^worker\.http_port \(from --http-port\): cannot listen on "
                       r"127\.0\.0\.1:70000: .*65535"):  # fmt: skip
        start_http(Source(), resolved)


def test_every_library_config_field_is_a_setting() -> None:
    for cls, settings in ((WorkerConfig, WORKER), (FacilitatorConfig, FACILITATOR)):
        fields = {f.name for f in msgspec.structs.fields(cls)}
        assert fields == {s.key for s in settings if s.config}, cls.__name__


def test_readme_config_table_matches_the_settings() -> None:
    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- config-table:", 1)[1].split("-->", 1)[1].split("<!-- /config-table -->", 1)[0]
    assert table.strip() == markdown_table().strip()


def test_every_command_has_help_with_examples(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("keygen", "facilitator", "worker", "submit", "jobs", "status", "demo"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        out = capsys.readouterr().out
        assert "examples:" in out and f"jobrelay {command}" in out, command
