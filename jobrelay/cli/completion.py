# `jobrelay completion bash|zsh`: a shell completion script generated from the command's own
# parser (shtab), so it can never name a flag that does not exist. Why shtab, not argcomplete:
# the script is static, so a TAB runs no Python (argcomplete imports the whole CLI on every TAB)
# and needs no global hook or marker in the entry point. Invariant: file-valued flags (every
# setting with ``path``, and --config, --token-file) complete file names.
from __future__ import annotations

import argparse
from typing import Any

import shtab

from jobrelay.cli.errors import EXIT_OK
from jobrelay.cli.registry import FACILITATOR, STATUS, WORKER

__all__ = ["SHELLS", "add_parser", "script"]

SHELLS = ("bash", "zsh")

EPILOG = """\
examples:
  # bash: for this shell, then for every new one
  source <(jobrelay completion bash)
  jobrelay completion bash > ~/.local/share/bash-completion/completions/jobrelay

  # zsh: into a folder on $fpath, then start a new shell
  jobrelay completion zsh > "${fpath[1]}/_jobrelay"
"""

_FILE_FLAGS = frozenset(
    {"--config", "--token-file"} | {s.flag for s in (*WORKER, *FACILITATOR, *STATUS) if s.path and s.flag}
)


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], root: argparse.ArgumentParser, **kw: Any
) -> None:
    p = sub.add_parser(
        "completion",
        help="print a bash or zsh completion script",
        description="Print a shell completion script for jobrelay (its commands, flags and files).",
        epilog=EPILOG,
        **kw,
    )
    p.add_argument("shell", choices=SHELLS, help="the shell to complete in")
    p.set_defaults(run=run, root=root)


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser`` for ``shell``."""
    for action in _all_actions(parser):
        if _FILE_FLAGS.intersection(action.option_strings):
            action.complete = shtab.FILE  # type: ignore[attr-defined]
    return shtab.complete(parser, shell=shell)


def run(args: argparse.Namespace) -> int:
    print(script(args.root, args.shell), end="")
    return EXIT_OK


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    actions = list(parser._actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                actions.extend(_all_actions(child))
    return actions
