"""The `jobrelay` command with API tokens: the facilitator refuses a bad tokens file or an
unauthenticated API beyond loopback before it listens (exit 2, one line); `submit` and `jobs` send
the token from JOBRELAY_API_TOKEN or --token-file (real subprocesses on 127.0.0.1)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.protocol_harness import FACILITATOR_KEY_HEX
from tests.test_cli_helpers import Service, clean_env, run_cli, services

pytestmark = pytest.mark.timeout(60)

READ = "read-token-0123456789abcdef"
SUBMIT = "submit-token-0123456789abcdef"


def tokens_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "api_tokens"
    path.write_text(text)
    path.chmod(mode)
    return path


def facilitator_args(tmp_path: Path, *extra: str) -> list[str]:
    key = tmp_path / "facilitator.key"
    key.write_text(FACILITATOR_KEY_HEX + "\n")
    key.chmod(0o600)
    return [
        "facilitator", "--key-file", str(key), "--db", str(tmp_path / "f.db"), "--port", "0",
        "--http-port", "0", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "mode", "why"),
    [
        (f"submit {SUBMIT}\n", 0o644, "mode 644 lets group or others read it; run chmod 600"),
        (f"submit {SUBMIT}\nwrite {READ}\n", 0o600, "line 2: unknown scope 'write'"),
    ],
    ids=["world-readable", "malformed"],
)
def test_a_bad_tokens_file_is_refused_at_start(tmp_path: Path, text: str, mode: int, why: str) -> None:
    path = tokens_file(tmp_path, text, mode)
    done = run_cli(facilitator_args(tmp_path, "--api-tokens", str(path)))
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr  # one line, no traceback
    assert done.stderr.startswith("jobrelay: error: facilitator.api_tokens_file (from --api-tokens): ")
    assert why in done.stderr and SUBMIT not in done.stderr
    assert not (tmp_path / "f.db").exists()  # refused before anything started


def test_the_api_beyond_loopback_needs_tokens_or_insecure_api(tmp_path: Path) -> None:
    # --print-config: the checks run, nothing binds (the tests listen on 127.0.0.1 only).
    exposed = facilitator_args(tmp_path, "--http-host", "0.0.0.0", "--print-config")
    refused = run_cli(exposed)
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "facilitator.http_host (from --http-host): 0.0.0.0 is beyond loopback" in refused.stderr
    assert "--api-tokens" in refused.stderr and "--insecure-api" in refused.stderr
    assert run_cli([*exposed, "--insecure-api"]).returncode == 0
    path = tokens_file(tmp_path, f"submit {SUBMIT}\n")
    assert run_cli([*exposed, "--api-tokens", str(path)]).returncode == 0
    env = clean_env(JOBRELAY_HTTP_HOST="0.0.0.0", JOBRELAY_INSECURE_API="true")
    assert run_cli(facilitator_args(tmp_path, "--print-config"), env=env).returncode == 0


def test_submit_and_jobs_send_the_token(tmp_path: Path) -> None:
    path = tokens_file(tmp_path, f"read {READ}\nsubmit {SUBMIT}\n")
    with services() as running:
        fac = Service(
            [
                *facilitator_args(tmp_path, "--api-tokens", str(path)),
                "--ready-file",
                str(tmp_path / "f.ready"),
            ],
            tmp_path / "f.log",
        ).start()
        running.append(fac)
        api = fac.ready(tmp_path / "f.ready")["http_url"]
        assert "the API needs a bearer token (1 read, 1 submit tokens)" in fac.text()
        submit = ["submit", "--facilitator", api, "echo", "--payload", '{"n": 1}', "--job-id", "j1"]

        anonymous = run_cli(submit)
        assert anonymous.returncode == 2 and anonymous.stderr.count("\n") == 1, anonymous.stderr
        assert "API token is required" in anonymous.stderr and "JOBRELAY_API_TOKEN" in anonymous.stderr
        reader = run_cli(submit, env=clean_env(JOBRELAY_API_TOKEN=READ))
        assert reader.returncode == 2 and "scope is read; POST needs submit" in reader.stderr

        (tmp_path / "my.token").write_text(SUBMIT + "\n")
        submitted = run_cli([*submit, "--token-file", str(tmp_path / "my.token")])
        assert submitted.returncode == 0, submitted.stderr
        assert submitted.stdout.strip() == "j1"
        listed = run_cli(
            ["jobs", "--facilitator", api, "j1", "--json"], env=clean_env(JOBRELAY_API_TOKEN=READ)
        )
        assert listed.returncode == 0, listed.stderr
        view = json.loads(listed.stdout)
        assert view["job_id"] == "j1" and view["payload"] == {"n": 1}
        # The facilitator's own file works as a --token-file too (its first line's token).
        env = clean_env(JOBRELAY_API_TOKEN_FILE=str(path))
        assert run_cli(["jobs", "--facilitator", api], env=env).returncode == 0
        missing = run_cli([*submit, "--token-file", str(tmp_path / "nope")])
        assert missing.returncode == 2 and "cannot read" in missing.stderr
