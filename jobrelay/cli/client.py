# `jobrelay submit` and `jobrelay jobs`: clients of a running facilitator's HTTP API.
# Invariants: stdlib urllib only; a refused connection is retried until --timeout (so a script
# may start the facilitator in the background and submit at once); a submit carries its job id from
# the first attempt, so a retry of a POST the server did store is an idempotent repeat, never a
# second job; user errors exit 2, an unreachable facilitator or a server error exits 1, each with
# one line on stderr.
from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

from jobrelay.cli.argtypes import count, seconds
from jobrelay.cli.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, UsageError

__all__ = [
    "TERMINAL",
    "ApiError",
    "FacilitatorClient",
    "add_common",
    "add_parsers",
    "api_failure",
    "api_token",
]

TERMINAL = frozenset({"completed", "failed", "rejected", "cancelled"})

SUBMIT_EPILOG = """\
examples:
  # submit a `sleep` job (built into `jobrelay worker`) to any connected worker; prints its id
  jobrelay submit --facilitator http://127.0.0.1:8766 sleep --payload '{"seconds": 2}'

  # to one worker, with your own id (submitting the same id again changes nothing)
  jobrelay submit --facilitator http://127.0.0.1:8766 echo --payload '"hi"' --worker w1 --job-id order-17

  # submit and wait for the terminal status (exit 1 unless it completed)
  jobrelay submit sleep --payload 1 --wait 30

The facilitator URL can also come from JOBRELAY_FACILITATOR. A facilitator started with
--api-tokens needs a token: JOBRELAY_API_TOKEN=<token>, or --token-file FILE (or
JOBRELAY_API_TOKEN_FILE) naming a file that holds it; `submit` needs a token of scope submit.
"""

JOBS_EPILOG = """\
examples:
  jobrelay jobs --facilitator http://127.0.0.1:8766                 # newest jobs first
  jobrelay jobs --status failed                                    # only failed ones
  jobrelay jobs 5f0c...e1                                          # one job's status history
  jobrelay jobs 5f0c...e1 --wait 30                                # wait for its terminal status
  jobrelay jobs --workers                                          # the workers the facilitator knows
  jobrelay jobs --json                                             # machine-readable

Exit codes: 0 ok; 1 facilitator unreachable, job unknown, or (with --wait) not completed in time
or ended other than completed; 2 bad arguments, or a missing, unknown or insufficient API token.
"""


class ApiError(Exception):
    """The facilitator answered with an error status (``status``) or could not be reached (0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FacilitatorClient:
    """A tiny client of the facilitator's JSON API."""

    def __init__(self, base_url: str, *, timeout: float = 10.0, token: str | None = None) -> None:
        try:
            parts = urlsplit(base_url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not 0..65535
        except ValueError:  # e.g. "http://[::1" (an unclosed IPv6 address)
            parts = None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise UsageError(f"client.facilitator: expected http://host:port, got {base_url!r}")
        self.base = base_url.rstrip("/")
        self.timeout = timeout
        self.token = token

    def request(self, method: str, path: str, body: Any = None) -> Any:
        if body is None and method != "GET":
            body = {}  # the API takes JSON bodies only, an empty one included
        data = None if body is None else json.dumps(body).encode()
        deadline = time.monotonic() + self.timeout
        while True:
            req = urllib.request.Request(self.base + path, data=data, method=method)
            if data is not None:
                req.add_header("Content-Type", "application/json")
            if self.token:
                req.add_header("Authorization", f"Bearer {self.token}")
            try:
                with urllib.request.urlopen(req, timeout=max(1.0, self.timeout)) as resp:
                    return json.loads(resp.read() or b"null")
            except urllib.error.HTTPError as exc:
                try:
                    message = json.loads(exc.read()).get("error", exc.reason)
                except (ValueError, AttributeError):
                    message = exc.reason
                raise ApiError(exc.code, str(message)) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                reason = getattr(exc, "reason", exc)
                if time.monotonic() >= deadline:
                    raise ApiError(0, f"cannot reach the facilitator at {self.base}: {reason}") from None
                time.sleep(0.1)

    def submit(
        self, kind: str, payload: Any = None, *, job_id: str | None = None, worker: str | None = None
    ) -> str:
        """Submit a job; returns its id.

        Without ``job_id`` a new random id (the facilitator's form: 24 hex digits) is chosen here,
        before the first attempt: ``request`` retries after a dropped connection or a timeout, and
        the facilitator treats a known id as a repeat (same id, nothing changed), so a retry of a
        POST that was in fact stored cannot create the job twice.
        """
        if job_id is None:
            job_id = secrets.token_hex(12)
        doc = self.request(
            "POST", "/jobs", {"kind": kind, "payload": payload, "job_id": job_id, "worker": worker}
        )
        return str(doc["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/jobs/{quote(job_id, safe='')}"))

    def jobs(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = urlencode({k: v for k, v in (("status", status), ("limit", limit)) if v is not None})
        return list(self.request("GET", f"/jobs?{query}")["jobs"])

    def cancel(self, job_id: str, reason: str = "") -> dict[str, Any]:
        """Cancel a job: ``{"job_id", "cancelled", "status"}`` (cancelling twice is harmless)."""
        return dict(self.request("POST", f"/jobs/{quote(job_id, safe='')}/cancel", {"reason": reason}))

    def workers(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/workers")["workers"])

    def wait(self, job_id: str, timeout: float) -> dict[str, Any]:
        """Poll until the job has a terminal status or ``timeout`` passes; returns the last view."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.job(job_id)
            if view.get("status") in TERMINAL or time.monotonic() >= deadline:
                return view
            time.sleep(0.1)


def add_common(p: argparse.ArgumentParser) -> None:
    """The flags every API command has: --facilitator, --timeout, --token-file, --json."""
    p.add_argument(
        "--facilitator",
        default=os.environ.get("JOBRELAY_FACILITATOR") or "http://127.0.0.1:8766",
        help="the facilitator's HTTP API (default: $JOBRELAY_FACILITATOR or http://127.0.0.1:8766)",
    )
    p.add_argument(
        "--timeout", type=seconds, default=10.0, help="seconds to keep retrying an unreachable facilitator"
    )
    p.add_argument(
        "--token-file",
        metavar="FILE",
        default=os.environ.get("JOBRELAY_API_TOKEN_FILE") or None,
        help="file holding the API token (its first line: the token, or `<scope> <token>`); "
        "default: $JOBRELAY_API_TOKEN, else $JOBRELAY_API_TOKEN_FILE",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")


def api_token(token_file: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The API token: ``token_file``'s first non-comment line (its last field, so a line of the
    facilitator's tokens file works too), else $JOBRELAY_API_TOKEN, else None. Never a flag with the
    token itself: command lines are visible to every user of the machine (ps).

    Raises:
        UsageError: the file cannot be read or holds no token.
    """
    env = os.environ if env is None else env
    if not token_file:
        return env.get("JOBRELAY_API_TOKEN", "").strip() or None
    try:
        text = Path(token_file).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        why = getattr(exc, "strerror", None) or exc
        raise UsageError(f"client.token_file (from --token-file): cannot read {token_file}: {why}") from None
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if fields:
            return fields[-1]
    raise UsageError(f"client.token_file (from --token-file): {token_file} holds no token")


def _client(args: argparse.Namespace) -> FacilitatorClient:
    return FacilitatorClient(args.facilitator, timeout=args.timeout, token=api_token(args.token_file))


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser], **kw: Any) -> None:
    p = sub.add_parser(
        "submit",
        help="submit a job to a running facilitator",
        epilog=SUBMIT_EPILOG,
        description="Submit a job through a running facilitator's HTTP API; prints the job id.",
        **kw,
    )
    add_common(p)
    p.add_argument("kind", help="the job kind (a handler name on the worker, e.g. sleep or echo)")
    p.add_argument("--payload", default=None, help="the job's input as JSON (default: null)")
    p.add_argument("--worker", default=None, help="send it to this worker only")
    p.add_argument("--job-id", default=None, help="the job's id (default: a new random id)")
    p.add_argument(
        "--wait", type=seconds, default=None, metavar="SECONDS", help="wait for the terminal status"
    )
    p.set_defaults(run=run_submit)

    p = sub.add_parser(
        "jobs",
        help="list jobs, or show one job's status history",
        epilog=JOBS_EPILOG,
        description="List a running facilitator's jobs, or show one job's status history.",
        **kw,
    )
    add_common(p)
    p.add_argument("job_id", nargs="?", help="show this job's status history")
    p.add_argument("--status", default=None, help="only jobs whose last status is this")
    p.add_argument("--limit", type=count(0, 10_000), default=50, help="at most this many jobs (default 50)")
    p.add_argument(
        "--wait",
        type=seconds,
        default=None,
        metavar="SECONDS",
        help="with JOB_ID: wait for its terminal status",
    )
    p.add_argument("--workers", action="store_true", help="list workers instead of jobs")
    p.set_defaults(run=run_jobs)


def run_submit(args: argparse.Namespace) -> int:
    payload: Any = None
    if args.payload is not None:
        try:
            payload = json.loads(args.payload)
        except ValueError as exc:
            raise UsageError(f"submit.payload (from --payload): not JSON: {exc}") from None
    client = _client(args)
    try:
        job_id = client.submit(args.kind, payload, job_id=args.job_id, worker=args.worker)
        if args.wait is None:
            print(json.dumps({"job_id": job_id}) if args.json else job_id)
            return EXIT_OK
        view = client.wait(job_id, args.wait)
    except ApiError as exc:
        return api_failure(exc)
    _print_job(view, as_json=args.json)
    return EXIT_OK if view.get("status") == "completed" else EXIT_RUNTIME


def run_jobs(args: argparse.Namespace) -> int:
    client = _client(args)
    try:
        if args.workers:
            workers = client.workers()
            if args.json:
                print(json.dumps(workers, indent=2))
            else:
                _table(
                    ["WORKER", "CONNECTED", "DRAINING", "OUTBOX", "UNFINISHED", "LAST CONTACT"],
                    [
                        [
                            w["worker_id"],
                            w["connected"],
                            w["draining"],
                            w["outbox_depth"],
                            w["outstanding_jobs"],
                            _ago(w["last_contact"]),
                        ]
                        for w in workers
                    ],
                )
            return EXIT_OK
        if args.job_id:
            view = client.wait(args.job_id, args.wait) if args.wait is not None else client.job(args.job_id)
            _print_job(view, as_json=args.json)
            if args.wait is not None and view.get("status") != "completed":
                return EXIT_RUNTIME
            return EXIT_OK
        jobs = client.jobs(args.status, args.limit)
    except ApiError as exc:
        return api_failure(exc)
    if args.json:
        print(json.dumps(jobs, indent=2))
    else:
        _table(
            ["JOB", "KIND", "STATUS", "WORKER", "PROGRESS", "UPDATED", "DETAIL"],
            [
                [
                    j["job_id"],
                    j["kind"],
                    j["status"] or "queued",
                    j["peer"] or "-",
                    _pct(j["progress"]),
                    _ago(j["updated_at"]),
                    (j["detail"] or "")[:40],
                ]
                for j in jobs
            ],
        )
    return EXIT_OK


def api_failure(exc: ApiError) -> int:
    """Print the API error; its exit code (2 for a refused request or token, else 1)."""
    hint = " (set JOBRELAY_API_TOKEN or --token-file)" if exc.status == 401 else ""
    print(f"jobrelay: error: {exc}{hint}", file=sys.stderr)
    # 413: job too large; 401/403: the token is missing, unknown or of too small a scope
    return EXIT_USAGE if exc.status in (400, 401, 403, 413) else EXIT_RUNTIME


def _print_job(view: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(view, indent=2))
        return
    print(
        f"job {view['job_id']}  kind {view['kind']}  worker {view['peer'] or '-'}  "
        f"status {view['status'] or 'queued'}"
    )
    print(f"payload {json.dumps(view.get('payload'))}")
    _table(
        ["#", "AT", "STATUS", "PROGRESS", "DETAIL"],
        [
            [
                n,
                time.strftime("%H:%M:%S", time.localtime(e["at"])) + f".{int(e['at'] % 1 * 1000):03d}",
                e["status"],
                _pct(e["progress"]),
                e["detail"],
            ]
            for n, e in enumerate(view["history"], 1)
        ],
    )


def _pct(progress: float | None) -> str:
    return "-" if progress is None else f"{progress * 100:.0f}%"


def _ago(at: float | None) -> str:
    if not at:
        return "-"
    return f"{max(0.0, time.time() - at):.1f}s ago"


def _table(headers: list[str], rows: list[list[Any]]) -> None:
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for row in cells:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    if not rows:
        print("(none)")
