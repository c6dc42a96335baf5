"""docs/container's Containerfile and compose.yaml stay honest: every `jobrelay` command they run
parses as that command (flags that exist, values of the right form), every path they build from
exists, and the worker dials the facilitator service on the port it listens on. No docker here:
the files are parsed, not built."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobrelay.cli.main import build_parser
from tests.test_cli_helpers import ROOT

DOCS = ROOT / "docs" / "container"


def instructions() -> list[tuple[str, str]]:
    """The Containerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = (DOCS / "Containerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((DOCS / "compose.yaml").read_text()))


def jobrelay_commands(argv: list[str]) -> list[list[str]]:
    """The `jobrelay` invocations in an exec-form command: itself, or each simple command of an
    `sh -c` script (split at ; && || { } and redirections)."""
    if argv[:2] == ["sh", "-c"]:
        lexer = shlex.shlex(argv[2], posix=True, punctuation_chars=";&|{}<>")
        lexer.whitespace_split = True
        found: list[list[str]] = []
        current: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set(";&|{}<>"):
                if current:
                    found.append(current)
                current = [] if token not in (">", "<", ">>") else ["<redirect>"]
            elif current == ["<redirect>"]:
                current = []  # the redirection's target
            else:
                current.append(token)
        return [c[1:] if c[0] == "exec" else c for c in found if c and c[0] in ("jobrelay", "exec")]
    return [argv] if argv and argv[0] == "jobrelay" else []


def assert_parses(args: list[str]) -> None:
    """``jobrelay ARGS`` is a command line the CLI accepts (``--help`` exits 0)."""
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit as exc:
        assert exc.code == 0 and "--help" in args, f"jobrelay {shlex.join(args)} is refused"
        return
    assert callable(parsed.run)


def test_the_containerfile_builds_from_the_repository_and_runs_jobrelay(
    capsys: pytest.CaptureFixture[str],
) -> None:
    steps = instructions()
    keywords = [k for k, _ in steps]
    assert keywords[0] == "FROM" and "python:3.11" in steps[0][1]
    for keyword, args in steps:
        if keyword == "COPY":
            source = args.split()[0]
            assert (ROOT / source / "setup.cfg").exists(), "COPY must bring the whole project"
    entrypoint = json.loads(dict(steps)["ENTRYPOINT"])
    assert entrypoint == ["jobrelay"]
    assert_parses(json.loads(dict(steps)["CMD"]))
    capsys.readouterr()
    assert any("pip install" in args and "/src" in args for k, args in steps if k == "RUN")


def test_every_compose_command_is_a_jobrelay_command_that_parses() -> None:
    services = compose()["services"]
    assert {"facilitator", "worker"} <= set(services)
    checked = []
    for name, service in services.items():
        if "build" in service:
            assert (DOCS / service["build"]["context"] / service["build"]["dockerfile"]).exists(), name
        entry = service.get("entrypoint", ["jobrelay"])
        argv = [*entry, *service.get("command", [])]
        health = service.get("healthcheck", {}).get("test", [])
        for command in [argv, health[1:] if health[:1] == ["CMD"] else []]:
            for args in jobrelay_commands(command):
                assert args[0] == "jobrelay"
                assert_parses(args[1:])
                checked.append((name, args[1]))
    assert ("facilitator", "facilitator") in checked and ("worker", "worker") in checked
    assert ("keys", "keygen") in checked and ("worker", "status") in checked


def test_the_worker_dials_the_facilitator_service_where_it_listens() -> None:
    services = compose()["services"]
    fac = build_parser().parse_args(services["facilitator"]["command"])
    (worker_args,) = jobrelay_commands(["sh", "-c", services["worker"]["command"][0]])
    worker = build_parser().parse_args(worker_args[1:])
    port = getattr(fac, "facilitator__port", None) or "8765"
    assert worker.worker__url == f"ws://facilitator:{port}"
    assert getattr(fac, "facilitator__host", None) == "0.0.0.0"
    health = services["worker"]["healthcheck"]["test"]
    assert health[health.index("--http-port") + 1] == worker.worker__http_port
    assert health[health.index("--db") + 1] == worker.worker__db_path
    # Every volume a service mounts is declared.
    volumes = set(compose()["volumes"])
    for service in services.values():
        for mount in service.get("volumes", []):
            assert Path(mount.split(":")[0]).name in volumes or mount.startswith(("/", "."))
