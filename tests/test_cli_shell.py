"""The command in a shell: a reader that closes the pipe early (`| head -1`) ends it quietly with
its usual exit code, for every command that prints; mistyped flags and commands get a "did you
mean"; every --help reads as written; bash completion offers the real commands and flags."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from jobrelay.cli.main import build_parser
from jobrelay.storage import open_database
from tests.test_cli_helpers import JOBRELAY, clean_env, run_cli

pytestmark = pytest.mark.timeout(60)

COMMANDS = ["keygen", "facilitator", "worker", "submit", "jobs", "cancel", "status", "demo", "completion"]


def run_into_closed_pipe(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run ``jobrelay ARGS`` with a stdout whose reader is already gone: its first write meets a
    closed pipe, as `jobrelay ... | head -1` does once head has its line."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run(
            [*JOBRELAY, *args], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=30,
            env=clean_env(), cwd=cwd, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "args",
    [
        ["status", "--db", "w1.db", "--json"],
        ["status", "--db", "w1.db"],
        ["completion", "bash"],
        ["--help"],
        ["worker", "--help"],
        ["--version"],
        ["keygen", "--worker-id", "w9", "--key-file", "w9.key"],
    ],
    ids=" ".join,
)
def test_a_closed_stdout_ends_quietly_with_the_usual_exit_code(tmp_path: Path, args: list[str]) -> None:
    open_database(tmp_path / "w1.db").close()
    usual = run_cli(args, cwd=tmp_path) if "keygen" not in args else None
    done = run_into_closed_pipe(args, tmp_path)
    assert done.stderr == "", done.stderr  # no BrokenPipeError, no "Exception ignored"
    assert done.returncode == (usual.returncode if usual else 0)


def test_jobs_into_a_closed_pipe(tmp_path: Path) -> None:
    # A facilitator that is down: the error goes to stderr as ever, the closed stdout adds nothing.
    done = run_into_closed_pipe(["jobs", "--facilitator", "http://127.0.0.1:9", "--timeout", "0"], tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("jobrelay: error: cannot reach the facilitator"), done.stderr
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["worker", "--url", "ws://h:1", "--worker-idd", "w1"], "did you mean --worker-id for --worker-idd?"),
        (["worker", "--max-attemps=3"], "did you mean --max-attempts for --max-attemps?"),
        (["facilitator", "--htp-port", "0"], "did you mean --http-port for --htp-port?"),
        (["jobs", "--stauts", "failed", "x"], "did you mean --status for --stauts?"),
        (["workr"], "did you mean worker?"),
        (["stauts", "--db", "x"], "did you mean status?"),
    ],
)
def test_a_mistyped_flag_or_command_gets_a_did_you_mean(args: list[str], hint: str) -> None:
    done = run_cli(args)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and hint in done.stderr, done.stderr
    if args[0] in COMMANDS:  # blamed on the command typed, whose --help it points to
        assert done.stderr.startswith(f"jobrelay {args[0]}: error: unrecognized arguments: ")
        assert done.stderr.rstrip().endswith(f"(see jobrelay {args[0]} --help)")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_help_reads_as_written(command: str) -> None:
    done = run_cli([command, "--help"])
    assert done.returncode == 0
    for line in done.stdout.splitlines():
        example = re.sub(r"\s+# .*$", "", line.strip())  # (aligned comments may follow)
        if example.startswith("jobrelay "):  # an example command line: no gap from a lost newline
            assert "   " not in example, line
        if example.endswith("\\"):  # a continued example goes on, indented, on the next line
            following = done.stdout.split(line + "\n", 1)[1].splitlines()[0]
            assert following.startswith("      "), following


def test_completion_scripts_know_the_commands_and_flags() -> None:
    bash = run_cli(["completion", "bash"])
    assert bash.returncode == 0 and bash.stdout.startswith("#")
    zsh = run_cli(["completion", "zsh"])
    assert zsh.returncode == 0 and "#compdef jobrelay" in zsh.stdout
    every_flag = {
        flag
        for action in build_parser()._subparsers._group_actions[0].choices["worker"]._actions  # type: ignore[union-attr]
        for flag in action.option_strings
        if flag.startswith("--")
    }
    assert every_flag and all(flag in bash.stdout and flag in zsh.stdout for flag in every_flag)
    bad = run_cli(["completion", "fish"])
    assert bad.returncode == 2 and "invalid choice: 'fish'" in bad.stderr


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_a_command_and_a_flag(tmp_path: Path) -> None:
    script = tmp_path / "jobrelay.bash"
    script.write_text(run_cli(["completion", "bash"]).stdout)
    probe = f"""
source {script}
complete_line() {{
  COMP_LINE="$1"; read -ra COMP_WORDS <<< "$1"; [[ "$1" == *" " ]] && COMP_WORDS+=("")
  COMP_CWORD=$(( ${{#COMP_WORDS[@]}} - 1 )); COMP_POINT=${{#COMP_LINE}}; COMPREPLY=()
  _shtab_jobrelay jobrelay "${{COMP_WORDS[COMP_CWORD]}}" "${{COMP_WORDS[COMP_CWORD-1]}}"
  printf '%s\\n' "${{COMPREPLY[@]}}"
}}
complete_line "jobrelay wor"
echo ---
complete_line "jobrelay worker --worker-i"
echo ---
complete_line "jobrelay jobs --sum"
"""
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, timeout=30, check=False)
    words, flag, summary = (part.split() for part in done.stdout.split("---"))
    assert (words, flag, summary) == (["worker"], ["--worker-id"], ["--summary"]), done.stdout + done.stderr
