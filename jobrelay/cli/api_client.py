# The HTTP client of a running facilitator's JSON API that `jobrelay submit` and `jobrelay jobs`
# use. Invariants: stdlib urllib only; a refused connection is retried until the timeout (so a
# script may start the facilitator in the background and submit at once); a submit carries its job
# id from the first attempt, so a retry of a POST the server did store is an idempotent repeat,
# never a second job.
from __future__ import annotations

import http.client
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, Final
from urllib.parse import quote, urlencode, urlsplit

from jobrelay.cli.errors import UsageError

__all__ = ["TERMINAL", "ApiError", "FacilitatorClient"]

_STREAM_SILENCE: Final = 35.0  # seconds without a line (keepalives come every 15) before giving up

TERMINAL = frozenset({"completed", "failed", "rejected", "cancelled"})


class ApiError(Exception):
    """The facilitator answered with an error status (``status``) or could not be reached (0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class FacilitatorClient:
    """A tiny client of the facilitator's JSON API."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 10.0,
        token: str | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
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
        # Told once, at the first refused connection, that the client keeps trying: a facilitator
        # that is down must not look like a client that hangs.
        self._on_retry = on_retry

    def _open(self, req: urllib.request.Request, read_timeout: float) -> Any:
        """``urlopen`` with the token, retrying a refused connection until ``self.timeout``.

        Raises:
            ApiError: an error status, or still unreachable at the timeout.
        """
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                return urllib.request.urlopen(req, timeout=read_timeout)
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
                if self._on_retry is not None:
                    self._on_retry(
                        f"jobrelay: cannot reach the facilitator at {self.base} ({reason}); "
                        f"retrying for up to {self.timeout:g} s (--timeout)"
                    )
                    self._on_retry = None
                time.sleep(0.1)

    def events(
        self, job: str | None = None, worker: str | None = None, type: str | None = None
    ) -> Iterator[dict[str, Any]]:
        """The facilitator's live events (GET /events) as they come, starting with its
        ``stream.open`` (keepalives are skipped); ends when the facilitator ends the stream.

        Raises:
            ApiError: the stream could not be opened, or broke (status 0).
        """
        query = urlencode({k: v for k, v in (("job", job), ("worker", worker), ("type", type)) if v})
        req = urllib.request.Request(f"{self.base}/events{'?' + query if query else ''}")
        # A read waits through keepalives (every 15 s): twice that is a dead facilitator.
        resp = self._open(req, max(self.timeout, _STREAM_SILENCE))
        with resp:
            try:
                for line in resp:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") != "keepalive":
                        yield event
            except (OSError, ValueError, http.client.HTTPException) as exc:
                raise ApiError(0, f"the event stream from {self.base} broke: {exc}") from None

    def request(self, method: str, path: str, body: Any = None) -> Any:
        if body is None and method != "GET":
            body = {}  # the API takes JSON bodies only, an empty one included
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        deadline = time.monotonic() + self.timeout
        while True:
            with self._open(req, max(1.0, self.timeout)) as resp:
                try:
                    return json.loads(resp.read() or b"null")
                except (ConnectionError, TimeoutError) as exc:  # cut mid-answer: ask again
                    if time.monotonic() >= deadline:
                        raise ApiError(0, f"cannot read the answer of {self.base}: {exc}") from None

    def submit(
        self,
        kind: str,
        payload: Any = None,
        *,
        job_id: str | None = None,
        worker: str | None = None,
        start_within: float | None = None,
        soft_time_limit: float | None = None,
        time_limit: float | None = None,
        retries: int = 0,
        retry_backoff: float = 0.0,
    ) -> str:
        """Submit a job; returns its id.

        Without ``job_id`` a new random id (the facilitator's form: 24 hex digits) is chosen here,
        before the first attempt: ``request`` retries after a dropped connection or a timeout, and
        the facilitator treats a known id as a repeat (same id, nothing changed), so a retry of a
        POST that was in fact stored cannot create the job twice.
        """
        if job_id is None:
            job_id = secrets.token_hex(12)
        body: dict[str, Any] = {"kind": kind, "payload": payload, "job_id": job_id, "worker": worker}
        # Only when given: a facilitator from before these options refuses fields it does not know.
        options = {
            "start_within": start_within,
            "soft_time_limit": soft_time_limit,
            "time_limit": time_limit,
            "retries": retries or None,
            "retry_backoff": retry_backoff or None,
        }
        body.update({name: value for name, value in options.items() if value is not None})
        doc = self.request("POST", "/jobs", body)
        return str(doc["job_id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.request("GET", f"/jobs/{quote(job_id, safe='')}"))

    def jobs(self, status: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        query = urlencode({k: v for k, v in (("status", status), ("limit", limit)) if v is not None})
        return list(self.request("GET", f"/jobs?{query}")["jobs"])

    def cancel(self, job_id: str, reason: str = "") -> dict[str, Any]:
        """Cancel a job: ``{"job_id", "cancelled", "status"}`` (cancelling twice is harmless)."""
        return dict(self.request("POST", f"/jobs/{quote(job_id, safe='')}/cancel", {"reason": reason}))

    def job_counts(self) -> dict[str, int]:
        """How many jobs have each last status, over every job the facilitator keeps."""
        return dict(self.request("GET", "/job-counts")["counts"])

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
