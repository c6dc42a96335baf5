# The `jobrelay` command's entry point: argparse wiring and the one error boundary.
# Invariants: a UsageError becomes one line on stderr and exit 2 (never a traceback); other
# jobrelay errors one line and exit 1; only programming errors show a traceback.
from __future__ import annotations

import argparse
import difflib
import os
import re
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from jobrelay import __version__
from jobrelay.cli import cancel, client, completion, demo, events, facilitator, jobs, keygen, status, worker
from jobrelay.cli.errors import EXIT_FORCED, EXIT_RUNTIME, EXIT_USAGE, UsageError
from jobrelay.cli.output import quiet_closed_stdout
from jobrelay.cli.settings import LOG, add_flags
from jobrelay.protocol.errors import JobrelayError

__all__ = ["build_parser", "main"]

DESCRIPTION = """\
jobrelay: a durable, effectively-once job relay between long-running workers and a facilitator.

Settings come from flags, then JOBRELAY_* environment variables, then the TOML file given with
--config, then defaults. Each command's --help lists its settings and examples.
"""

EPILOG = """\
a five-minute tour (each in its own terminal, or add `&`):
  jobrelay keygen --worker-id w1 --key-file w1.key >> authorized_keys
  jobrelay facilitator --authorized-keys authorized_keys --db facilitator.db
  jobrelay worker --url ws://127.0.0.1:8765 --worker-id w1 --key-file w1.key --db w1.db
  jobrelay submit sleep --payload '{"seconds": 2}'
  jobrelay jobs --watch                 # a live table; `jobrelay events` streams what happens

shell completion: source <(jobrelay completion bash)   (or zsh; see jobrelay completion --help)

exit codes: 0 ok; 1 runtime failure; 2 bad usage or configuration; 3 the worker's authentication
was refused (see jobrelay worker --help); 130 forced stop (second signal).
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with a refusal as the command's other refusals: one line on stderr, exit 2 (the
    usage it printed first was noise in a log, and split one error over several lines)."""

    def error(self, message: str) -> NoReturn:
        choice = re.match(r"argument .*: invalid choice: '([^']*)' \(choose from (.*)\)$", message)
        if choice:  # a mistyped command: name the nearest one
            names = re.findall(r"'([^']*)'", choice.group(2))
            message += _did_you_mean(choice.group(1), names)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _did_you_mean(word: str, candidates: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f"; did you mean {close[0]}?" if close else ""


def _refuse_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, extra: list[str]) -> NoReturn:
    """Refuse arguments no parser took, from the command they were given to: its usage, and the
    nearest flag it has (argparse blames the top-level parser, whose flags are not the point)."""
    command = parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and args.command in action.choices:
            command = action.choices[args.command]
    flags = [o for a in command._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for arg in extra:
        typed = arg.split("=", 1)[0]
        close = difflib.get_close_matches(typed, flags, n=1, cutoff=0.6) if typed.startswith("-") else []
        if close:
            hints.append(f"{close[0]} for {typed}")
    said = f"; did you mean {', '.join(hints)}?" if hints else ""
    command.error(f"unrecognized arguments: {' '.join(extra)}{said}")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="jobrelay",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"jobrelay {__version__}")
    common = _Parser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("JOBRELAY_CONFIG") or None,
        help="a TOML file with [worker], [facilitator], [log] tables [env JOBRELAY_CONFIG]",
    )
    add_flags(common, LOG, title="logging")
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = parser.add_subparsers(
        dest="command", metavar="COMMAND", required=True, parser_class=_Parser
    )
    kw: dict[str, Any] = {"formatter_class": argparse.RawDescriptionHelpFormatter}
    keygen.add_parser(sub, **kw)
    facilitator.add_parser(sub, parents=[common], **kw)
    worker.add_parser(sub, parents=[common], **kw)
    client.add_parsers(sub, **kw)
    jobs.add_parser(sub, **kw)
    cancel.add_parser(sub, **kw)
    events.add_parser(sub, **kw)
    status.add_parser(sub, parents=[common], **kw)
    demo.add_parser(sub, parents=[common], **kw)
    completion.add_parser(sub, parser, **kw)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the jobrelay command; returns the exit code."""
    with quiet_closed_stdout():  # --help and --version print too
        return _run(argv)


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        _refuse_unknown(parser, args, extra)
    try:
        code: int = args.run(args)
    except UsageError as exc:
        print(f"jobrelay: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FORCED
    except JobrelayError as exc:
        print(f"jobrelay: error: {exc}", file=sys.stderr, flush=True)
        return EXIT_RUNTIME
    return code
