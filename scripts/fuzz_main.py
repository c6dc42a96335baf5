"""`scripts/fuzz`: fuzz jobrelay's two ends over real WebSockets with seeded garbage.

Exit code 0 when every check passed (target alive and exited 0 when stopped, well-behaved peer
served, descriptors and threads back to their baseline, no error or traceback in its log, log
lines per hostile session within the bound); 1 otherwise; 2 on bad usage.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
from pathlib import Path

from fuzz_frames import HARD, SOFT
from fuzz_measure import FuzzResult, table
from fuzz_runs import run_client, run_server

__all__ = ["check", "main"]

EPILOG = f"""\
examples:
  scripts/fuzz client --frames 1000000 --seed 7 --connections 8   # a facilitator under attack
  scripts/fuzz server --frames 1000000 --seed 7                   # a worker dialing a hostile server
  scripts/fuzz both --frames 20000 --seed 1 --json fuzz.json      # the suite's short run

frame classes: soft (must not close an open session): {", ".join(SOFT)};
hard (must be refused, then the session closes): {", ".join(HARD)}.
A seed replays the same frames (timing aside). Exit 0: every check passed; 1: a check failed.
"""


def check(result: FuzzResult, max_lines_per_session: float) -> list[str]:
    """What failed in ``result`` ([] when the run is clean)."""
    failed = list(result.problems)
    if not result.target_alive:
        failed.append("the target died during the attack")
    if result.exit_code != 0:
        failed.append(f"the target exited {result.exit_code} when stopped")
    if not result.peer_ok:
        failed.append(f"the well-behaved peer was not served: {result.peer_detail}")
    b, a = result.before, result.after
    if b is None or a is None or a.fds > b.fds + 2 or a.threads > b.threads:
        failed.append(f"descriptors/threads not back to baseline: {b} -> {a}")
    if result.lines_per_session > max_lines_per_session:
        failed.append(
            f"{result.lines_per_session:.2f} log lines per hostile session > {max_lines_per_session}"
        )
    return failed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/fuzz", description=__doc__.splitlines()[0], epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument(
        "target",
        choices=("client", "server", "both"),
        help="client: attack a facilitator; server: attack a worker",
    )
    parser.add_argument(
        "--frames", type=int, default=100_000, help="frames to send each way (default 100000)"
    )
    parser.add_argument(
        "--seed", type=int, default=None, help="seed of the generator (default: random, printed)"
    )
    parser.add_argument(
        "--connections", type=int, default=8, help="concurrent hostile client connections (default 8)"
    )
    parser.add_argument(
        "--max-frame-bytes", type=int, default=65_536, help="the targets' frame limit (default 65536)"
    )
    parser.add_argument(
        "--time-limit", type=float, default=900.0, help="seconds each attack may take at most (default 900)"
    )
    parser.add_argument(
        "--max-lines-per-session",
        type=float,
        default=5.0,
        help="log lines per hostile session allowed on average (default 5); and no message may be "
        "logged more often than there were sessions",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="keep keys, databases and logs here (default: a temp dir, removed)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON to this file")
    args = parser.parse_args(argv)
    if args.frames < 1 or args.connections < 1 or args.max_frame_bytes < 1024:
        parser.error("--frames and --connections must be ≥ 1, --max-frame-bytes ≥ 1024")
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    print(f"fuzz: seed {seed}", flush=True)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="jobrelay-fuzz-"))
    results: list[FuzzResult] = []
    try:
        if args.target in ("client", "both"):
            folder = root / "client"
            folder.mkdir(parents=True, exist_ok=True)
            results.append(
                run_client(folder, args.frames, seed, args.connections, args.max_frame_bytes, args.time_limit)
            )
        if args.target in ("server", "both"):
            folder = root / "server"
            folder.mkdir(parents=True, exist_ok=True)
            results.append(run_server(folder, args.frames, seed, args.max_frame_bytes, args.time_limit))
    finally:
        if args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(table(results))
    failures = {r.mode: check(r, args.max_lines_per_session) for r in results}
    if args.json is not None:
        doc = [{**r.to_json(), "failed": failures[r.mode]} for r in results]
        args.json.write_text(json.dumps(doc, indent=2, default=str))
    for mode, failed in failures.items():
        for text in failed:
            print(f"FAILED ({mode}): {text}")
    return 1 if any(failures.values()) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
