"""jobrelay/common/http_access.py: who may use the facilitator's HTTP API (real server, real requests).

Each attack of issue 11 point 5 is refused before any handler runs, and refused requests change
nothing: no token, an unknown token, a read token submitting or cancelling, a foreign Host (DNS
rebinding), a cross-site Origin, a non-JSON body (a cross-site text/plain POST).
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from jobrelay.common.http import HealthServer
from jobrelay.common.http_access import AccessPolicy, exposure_warning, load_api_tokens, parse_api_tokens
from jobrelay.facilitator import Facilitator, FacilitatorHealth
from jobrelay.protocol.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

READ = "r" * 8 + "EAD-token-0123456789"
SUBMIT = "s" * 8 + "UBMIT-token-0123456789"
TOKENS = parse_api_tokens(f"# scopes\nread {READ}\nsubmit {SUBMIT}\n")


class Answer:
    def __init__(self, status: int, headers: http.client.HTTPMessage, body: bytes) -> None:
        self.status, self.headers = status, headers
        self.doc: Any = (
            json.loads(body) if headers.get("Content-Type", "").startswith("application/json") else None
        )


def call(
    server: HealthServer,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    token: str | None = None,
    headers: Mapping[str, str] | None = None,
    content_type: str | None = "application/json",
) -> Answer:
    """One request with exactly the headers given (http.client adds Host unless one is given)."""
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    if body is not None and content_type is not None:
        sent["Content-Type"] = content_type
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.putrequest(method, path, skip_host="Host" in sent, skip_accept_encoding=True)
        for name, value in sent.items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(len(body or b"")))
        conn.endheaders(body)
        response = conn.getresponse()
        return Answer(response.status, response.headers, response.read())
    finally:
        conn.close()


def job(kind: str = "k", job_id: str = "j1") -> bytes:
    return json.dumps({"kind": kind, "payload": {"secret": 1}, "job_id": job_id}).encode()


@pytest.fixture
def authed(fac: Facilitator) -> Iterator[HealthServer]:
    with HealthServer(
        FacilitatorHealth(fac), access=AccessPolicy.for_bind("127.0.0.1", tokens=TOKENS)
    ) as srv:
        yield srv


@pytest.fixture
def open_local(fac: Facilitator) -> Iterator[HealthServer]:
    """The default: no tokens (loopback), Host, Origin and JSON checks still on."""
    with HealthServer(FacilitatorHealth(fac)) as srv:
        yield srv


def test_without_a_token_nothing_is_read_or_submitted(authed: HealthServer, fac: Facilitator) -> None:
    fac.submit("k", {"secret": 1}, job_id="j0")
    for method, path, body in [
        ("GET", "/jobs", None),
        ("GET", "/jobs/j0", None),
        ("GET", "/workers", None),
        ("GET", "/stats", None),
        ("POST", "/jobs", job()),
        ("POST", "/jobs/j0/cancel", b"{}"),
        ("GET", "/no-such-route", None),  # 401 before 404: the routes are not enumerable
    ]:
        answer = call(authed, method, path, body)
        assert answer.status == 401, (method, path, answer.doc)
        assert answer.headers["WWW-Authenticate"] == 'Bearer realm="jobrelay"'
        assert "token" in answer.doc["error"]
    assert [j.job_id for j in fac.jobs()] == ["j0"] and fac.jobs()[0].status != "cancelled"


def test_an_unknown_token_or_another_scheme_is_401(authed: HealthServer) -> None:
    answer = call(authed, "GET", "/jobs", token=READ + "x")
    assert answer.status == 401 and answer.doc == {"error": "unknown API token"}
    assert 'error="invalid_token"' in answer.headers["WWW-Authenticate"]
    assert call(authed, "GET", "/jobs", headers={"Authorization": f"Basic {READ}"}).status == 401
    assert call(authed, "GET", "/jobs", headers={"Authorization": "Bearer "}).status == 401


def test_a_read_token_reads_but_cannot_submit_or_cancel(authed: HealthServer, fac: Facilitator) -> None:
    fac.submit("k", {"secret": 1}, job_id="j0")
    assert call(authed, "GET", "/jobs", token=READ).status == 200
    assert call(authed, "GET", "/jobs/j0", token=READ).doc["payload"] == {"secret": 1}
    assert call(authed, "GET", "/workers", token=READ).status == 200
    for path, body in [("/jobs", job()), ("/jobs/j0/cancel", b"{}")]:
        answer = call(authed, "POST", path, body, token=READ)
        assert answer.status == 403, answer.doc
        assert answer.doc == {"error": "this token's scope is read; POST needs submit"}
        assert 'error="insufficient_scope", scope="submit"' in answer.headers["WWW-Authenticate"]
    assert [(j.job_id, j.status) for j in fac.jobs()] == [("j0", None)]  # not submitted, not cancelled


def test_a_submit_token_submits_cancels_and_reads(authed: HealthServer, fac: Facilitator) -> None:
    assert call(authed, "POST", "/jobs", job(), token=SUBMIT).status == 201
    assert call(authed, "GET", "/jobs/j1", token=SUBMIT).doc["kind"] == "k"
    cancel = call(authed, "POST", "/jobs/j1/cancel", b'{"reason": "r"}', token=SUBMIT)
    assert cancel.status == 200 and cancel.doc == {"job_id": "j1", "cancelled": True, "status": "cancelled"}
    assert fac.jobs()[0].status == "cancelled"


def test_healthz_and_metrics_are_open_by_default_and_can_be_closed(fac: Facilitator) -> None:
    policy = AccessPolicy.for_bind("127.0.0.1", tokens=TOKENS)
    with HealthServer(FacilitatorHealth(fac), access=policy) as server:
        assert call(server, "GET", "/healthz").status in (200, 503)
        assert call(server, "GET", "/metrics").status == 200
    closed = AccessPolicy.for_bind("127.0.0.1", tokens=TOKENS, public_paths=())
    with HealthServer(FacilitatorHealth(fac), access=closed) as server:
        assert call(server, "GET", "/healthz").status == 401
        assert call(server, "GET", "/metrics").status == 401
        assert call(server, "GET", "/metrics", token=READ).status == 200
    with pytest.raises(ConfigError, match="only /healthz and /metrics"):
        AccessPolicy.for_bind("127.0.0.1", public_paths=["/jobs"])


def test_a_foreign_host_is_refused_dns_rebinding(open_local: HealthServer, fac: Facilitator) -> None:
    # A page on evil.example whose name now resolves to 127.0.0.1: the browser sends its own Host.
    for host in ["evil.example", f"evil.example:{open_local.port}", "127.0.0.1.evil.example", "10.0.0.1"]:
        answer = call(open_local, "POST", "/jobs", job(), headers={"Host": host})
        assert answer.status == 421, (host, answer.doc)
        assert "is not served here" in answer.doc["error"]
        assert call(open_local, "GET", "/jobs", headers={"Host": host}).status == 421
    assert fac.jobs() == []
    for host in [f"127.0.0.1:{open_local.port}", "localhost", f"LOCALHOST:{open_local.port}", "[::1]:1"]:
        assert call(open_local, "GET", "/jobs", headers={"Host": host}).status == 200, host
    double = call(open_local, "GET", "/jobs", headers={"host": "127.0.0.1", "Host": "evil.example"})
    assert double.status == 400  # refused by aiohttp's parser itself


def test_allowed_hosts_can_be_added(fac: Facilitator) -> None:
    policy = AccessPolicy.for_bind("127.0.0.1", extra_hosts=["Relay.Example.com"])
    with HealthServer(FacilitatorHealth(fac), access=policy) as server:
        assert call(server, "GET", "/jobs", headers={"Host": "relay.example.com:8766"}).status == 200
        assert call(server, "GET", "/jobs", headers={"Host": "other.example.com"}).status == 421
    with HealthServer(
        FacilitatorHealth(fac), access=AccessPolicy.for_bind("127.0.0.1", extra_hosts="*")
    ) as server:
        assert call(server, "GET", "/jobs", headers={"Host": "other.example.com"}).status == 200


def test_a_cross_site_text_plain_post_is_refused(open_local: HealthServer, fac: Facilitator) -> None:
    # What any web page can send without a CORS preflight: a form or fetch POST, text/plain body.
    cross_site = call(
        open_local,
        "POST",
        "/jobs",
        job(),
        headers={"Origin": "https://evil.example"},
        content_type="text/plain",
    )
    assert cross_site.status == 403 and "Origin" in cross_site.doc["error"]
    for origin in ["null", "http://127.0.0.1:1"]:  # a sandboxed frame; another local port
        assert call(open_local, "POST", "/jobs", job(), headers={"Origin": origin}).status == 403
        assert call(open_local, "GET", "/jobs", headers={"Origin": origin}).status == 403
    for ctype in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]:
        answer = call(open_local, "POST", "/jobs", job(), content_type=ctype)
        assert answer.status == 415, (ctype, answer.doc)
        assert answer.doc == {"error": "request body must be JSON (Content-Type: application/json)"}
    assert fac.jobs() == []
    assert (
        call(open_local, "POST", "/jobs", job(), content_type="application/json; charset=utf-8").status == 201
    )


def test_an_allowed_origin_may_call(fac: Facilitator) -> None:
    policy = AccessPolicy.for_bind("127.0.0.1", tokens=TOKENS, origins=["https://Console.example.com/"])
    with HealthServer(FacilitatorHealth(fac), access=policy) as server:
        origin = {"Origin": "https://console.example.com"}
        assert call(server, "POST", "/jobs", job(), token=SUBMIT, headers=origin).status == 201
        assert call(server, "POST", "/jobs", job(), headers=origin).status == 401  # still needs its token


def write(tmp_path: Path, text: str, mode: int = 0o600) -> str:
    path = tmp_path / "api_tokens"
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def test_a_tokens_file_is_read_only_when_private_and_well_formed(tmp_path: Path) -> None:
    tokens = load_api_tokens(write(tmp_path, f"read {READ}  # the dashboard\n\nSUBMIT {SUBMIT}\n"))
    assert tokens.counts() == {"read": 1, "submit": 1}
    # The mode bits, not access(): the tests run as root, who may read anything.
    for mode in (0o644, 0o640, 0o604, 0o620):
        with pytest.raises(ConfigError, match=rf"mode {mode:o} lets group or others read it; run chmod 600"):
            load_api_tokens(write(tmp_path, f"read {READ}\n", mode))
    for text, why in [
        (f"admin {READ}\n", "line 1: unknown scope 'admin'"),
        (f"read {READ} extra\n", "line 1: expected '<scope> <token>'"),
        (f"# c\nread {READ}\nread short\n", "line 3: a token is 16..512 characters"),
        (f"read {READ}\nsubmit {READ}\n", "line 2: the same token is listed twice"),
        ("# nothing\n", "lists no token"),
    ]:
        with pytest.raises(ConfigError) as err:
            load_api_tokens(write(tmp_path, text))
        assert why in str(err.value) and READ not in str(err.value)  # a secret is never quoted
        assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="cannot be read"):
        load_api_tokens(str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="not a regular file"):
        load_api_tokens(str(tmp_path))


def test_serving_beyond_loopback_without_tokens_is_a_loud_warning() -> None:
    # Pure: the tests may not bind beyond 127.0.0.1; HealthServer.start logs exactly this at WARNING.
    for host in ["0.0.0.0", "::", "10.1.2.3", "relay.example.com"]:
        warning = exposure_warning("http://x", host, AccessPolicy.for_bind(host))
        assert "NO AUTHENTICATION" in warning and "api_tokens_file" in warning, host
        assert exposure_warning("http://x", host, AccessPolicy.for_bind(host, tokens=TOKENS)) == ""
    for host in ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"]:
        assert exposure_warning("http://x", host, AccessPolicy.for_bind(host)) == "", host


def test_a_refusal_is_one_log_line_without_the_token(authed: HealthServer) -> None:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{message}")
    try:
        assert call(authed, "GET", "/jobs", token=READ + "x").status == 401
        assert call(authed, "POST", "/jobs", job(), token=READ).status == 403
    finally:
        logger.remove(sink)
    http_lines = [line for line in lines if line.startswith("http: ")]
    assert [line.split(" (")[0] for line in http_lines] == [
        "http: GET /jobs -> 401",
        "http: POST /jobs -> 403",
    ]
    assert not any(READ in line for line in lines)
