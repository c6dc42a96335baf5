"""docs/openapi.yaml describes the facilitator's HTTP API as served: every route the aiohttp
application has is in it and nothing else, and real answers of a running facilitator (with a
worker, on loopback) validate against its schemas (openapi-core), the /events stream's lines
included. openapi-core rather than schemathesis: schemathesis 4 brings ~30 packages and a pytest
plugin loaded into every run of the suite, and its generated cases would need the never-ending
/events excluded; what this test needs is the real answers checked against the schemas."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from openapi_core import Config, OpenAPI
from openapi_core.testing import MockRequest, MockResponse
from prometheus_client import CollectorRegistry

from jobrelay.actors.worker import Worker
from jobrelay.common.http import HealthServer
from jobrelay.common.http_access import AccessPolicy, parse_api_tokens
from jobrelay.common.http_app import make_app
from jobrelay.facilitator import Facilitator, FacilitatorHealth
from jobrelay.testing.proxy import TcpProxy
from tests.test_cli_helpers import ROOT, wait_until
from tests.test_health import system  # noqa: F401 - a fixture used below

pytestmark = pytest.mark.timeout(60)

SPEC_PATH = ROOT / "docs" / "openapi.yaml"
NDJSON = "application/x-ndjson"
READ = "r" * 32


def spec() -> OpenAPI:
    config = Config(extra_media_type_deserializers={NDJSON: json.loads})
    return OpenAPI.from_file_path(str(SPEC_PATH), config=config)


def spec_routes() -> set[tuple[str, str]]:
    doc = yaml.safe_load(Path(SPEC_PATH).read_text())
    methods = {"get", "post", "put", "patch", "delete"}
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m in methods}


def test_every_served_route_is_described_and_nothing_else(
    system: tuple[Facilitator, TcpProxy, Worker],  # noqa: F811
) -> None:
    fac, _proxy, _worker = system
    with ThreadPoolExecutor(1) as pool:
        app = make_app(FacilitatorHealth(fac), CollectorRegistry(), pool, 10.0)
        served = {
            (route.method, route.resource.canonical)
            for route in app.router.routes()
            if route.method != "HEAD" and route.resource is not None  # HEAD: aiohttp's, per GET
        }
    assert served == spec_routes()


class Api:
    """Calls a live server and validates each answer against the spec."""

    def __init__(self, base: str, openapi: OpenAPI, token: str | None = None) -> None:
        self.base, self.openapi, self.token = base, openapi, token
        self.checked: set[tuple[str, str, int]] = set()

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        pattern: str,
        content_type: str = "application/json",
    ) -> tuple[int, Any]:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type)
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as resp:
                raw, status, ctype = resp.read(), resp.status, resp.headers["Content-Type"]
        except urllib.error.HTTPError as exc:
            raw, status, ctype = exc.read(), exc.code, exc.headers["Content-Type"]
        mime = ctype.split(";")[0]
        query = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(path).query))
        mock_request = MockRequest(
            self.base, method.lower(), urllib.parse.urlsplit(path).path, path_pattern=pattern, args=query,
            data=data, content_type=content_type,
        )  # fmt: skip
        self.openapi.validate_response(mock_request, MockResponse(raw, status_code=status, content_type=mime))
        self.checked.add((method, pattern, status))
        return status, json.loads(raw) if mime == "application/json" else raw.decode()


def test_live_answers_validate_against_the_spec(
    system: tuple[Facilitator, TcpProxy, Worker],  # noqa: F811
) -> None:
    fac, _proxy, _worker = system
    openapi = spec()
    with HealthServer(FacilitatorHealth(fac)) as server:
        api = Api(server.url, openapi)
        status, doc = api.call("POST", "/jobs", {"kind": "sleep", "payload": {"seconds": 0.2, "steps": 2}},
                               pattern="/jobs")  # fmt: skip
        assert status == 201
        job_id = doc["job_id"]
        wait_until(lambda: fac.job(job_id).status == "completed")  # type: ignore[union-attr]
        queued = api.call("POST", "/jobs", {"kind": "nobody-runs-this", "job_id": "q1"}, pattern="/jobs")
        assert queued == (201, {"job_id": "q1"})

        assert api.call("GET", "/jobs", pattern="/jobs")[0] == 200
        assert api.call("GET", "/jobs?status=completed&limit=5", pattern="/jobs")[0] == 200
        status, view = api.call("GET", f"/jobs/{job_id}", pattern="/jobs/{job_id}")
        assert status == 200 and [e["status"] for e in view["history"]][-1] == "completed"
        assert api.call("GET", "/jobs/q1", pattern="/jobs/{job_id}")[1]["status"] is None  # queued
        assert api.call("POST", "/jobs/q1/cancel", {"reason": "test"}, pattern="/jobs/{job_id}/cancel") == (
            200,
            {"job_id": "q1", "cancelled": True, "status": "cancelled"},
        )
        assert api.call("GET", "/workers", pattern="/workers")[1]["workers"][0]["worker_id"] == "w1"
        assert api.call("GET", "/stats", pattern="/stats")[0] == 200
        status, counts = api.call("GET", "/job-counts", pattern="/job-counts")
        assert status == 200 and counts["counts"]["completed"] >= 1 and counts["total"] >= 2
        assert api.call("GET", "/healthz", pattern="/healthz")[0] == 200
        assert api.call("GET", "/metrics", pattern="/metrics")[0] == 200
        # Refusals are described too.
        assert api.call("POST", "/jobs", {"kind": "x", "colour": "red"}, pattern="/jobs")[0] == 400
        assert api.call("POST", "/jobs", b"kind=x", pattern="/jobs", content_type="text/plain")[0] == 415
        assert api.call("GET", "/jobs?limit=x", pattern="/jobs")[0] == 400
        assert api.call("GET", "/jobs/unknown", pattern="/jobs/{job_id}")[0] == 404
        assert api.call("POST", "/jobs/unknown/cancel", {}, pattern="/jobs/{job_id}/cancel")[0] == 404
        assert api.call("GET", "/events?colour=red", pattern="/events")[0] == 400

        # The stream: each line validates as an Event (the spec's schema for application/x-ndjson).
        lines = []
        with urllib.request.urlopen(server.url + "/events", timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith(NDJSON)
            lines.append(resp.readline())
            fac.submit("sleep", {"seconds": 0.1}, job_id="streamed")
            while b'"job.ended"' not in lines[-1]:
                lines.append(resp.readline())
        for line in lines:
            request = MockRequest(server.url, "get", "/events", path_pattern="/events")
            openapi.validate_response(request, MockResponse(line, status_code=200, content_type=NDJSON))
        types = [json.loads(line)["type"] for line in lines]
        assert types[0] == "stream.open" and types[-1] == "job.ended"
        assert {"job.submitted", "job.routed", "job.status"} <= set(types)

    with HealthServer(
        FacilitatorHealth(fac),
        access=AccessPolicy.for_bind("127.0.0.1", tokens=parse_api_tokens(f"read {READ}\n")),
    ) as guarded:
        anonymous = Api(guarded.url, openapi)
        assert anonymous.call("GET", "/workers", pattern="/workers")[0] == 401
        reader = Api(guarded.url, openapi, token=READ)
        assert reader.call("POST", "/jobs", {"kind": "echo"}, pattern="/jobs")[0] == 403
        assert reader.call("GET", "/stats", pattern="/stats")[0] == 200
