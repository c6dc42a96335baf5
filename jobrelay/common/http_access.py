# Who may use the HTTP API and how: bearer tokens with scopes (read, submit), the Host and Origin a
# request may carry, and JSON-only request bodies, enforced by one aiohttp middleware before any
# handler runs. Invariants: a token is compared with every configured token in constant time
# (hmac.compare_digest, no early exit); a tokens file readable or writable by group or others, or
# malformed, is refused with one ConfigError line; GET/HEAD/OPTIONS need the read scope, every other
# method the submit scope (submit implies read); every refusal is a Refusal (a JSON 4xx, logged once
# by the server's guard). Without tokens nothing is authenticated: only a loopback bind is safe.
from __future__ import annotations

import enum
import hmac
import ipaddress
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from jobrelay.common.http_app import Refusal
from jobrelay.protocol.errors import ConfigError

__all__ = [
    "LOOPBACK_NAMES",
    "PUBLIC_PATHS",
    "AccessPolicy",
    "ApiTokens",
    "Scope",
    "access_middleware",
    "exposure_warning",
    "is_loopback",
    "load_api_tokens",
    "parse_api_tokens",
]

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
PUBLIC_PATHS = frozenset({"/healthz", "/metrics"})  # the only paths that may be served without a token
WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # bind addresses no client names in its Host header
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# RFC 6750 b64token: what may follow "Bearer " unquoted; 16+ characters so a guessable word is refused.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]{16,512}=*")
_REALM = 'Bearer realm="jobrelay"'


class Scope(enum.IntEnum):
    """What a token may do; a higher scope includes the lower ones."""

    READ = 1  # GET: jobs, payloads, workers, stats
    SUBMIT = 2  # also POST: submit and cancel jobs


@dataclass(frozen=True)
class ApiTokens:
    """The accepted tokens and their scopes (from the operator's tokens file)."""

    entries: tuple[tuple[bytes, Scope], ...]

    def scope_of(self, token: str) -> Scope | None:
        """The scope of ``token``, None if it is not one of ours. Every entry is compared (in
        constant time each), so the time taken says nothing about which prefix matched."""
        given = token.encode()
        found: Scope | None = None
        for secret, scope in self.entries:
            if hmac.compare_digest(given, secret):
                found = scope
        return found

    def counts(self) -> dict[str, int]:
        return {s.name.lower(): sum(1 for _, x in self.entries if x is s) for s in Scope}


def parse_api_tokens(text: str) -> ApiTokens:
    """Parse ``<scope> <token>`` lines (``#`` comments and blank lines ignored).

    Raises:
        ValueError: naming the first bad line (the token itself is never quoted).
    """
    entries: list[tuple[bytes, Scope]] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        if len(fields) != 2:
            raise ValueError(f"line {number}: expected '<scope> <token>' (scope read or submit)")
        name, token = fields
        try:
            scope = Scope[name.upper()]
        except KeyError:
            raise ValueError(f"line {number}: unknown scope {name[:20]!r}; expected read or submit") from None
        if not _TOKEN.fullmatch(token):
            raise ValueError(f"line {number}: a token is 16..512 characters of A-Z a-z 0-9 - . _ ~ + / (=)")
        if token in seen:
            raise ValueError(f"line {number}: the same token is listed twice")
        seen.add(token)
        entries.append((token.encode(), scope))
    if not entries:
        raise ValueError("lists no token")
    return ApiTokens(tuple(entries))


def load_api_tokens(path: str) -> ApiTokens:
    """Read and check the operator's tokens file.

    Raises:
        ConfigError: one line: the file cannot be read, is not a regular file, is readable or
            writable by group or others (the mode bits are checked, not access: root reads anything),
            or is malformed.
    """
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: not a regular file")
        if info.st_mode & 0o077:
            mode = stat.S_IMODE(info.st_mode)
            raise ConfigError(f"{path}: mode {mode:o} lets group or others read it; run chmod 600 {path}")
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        return parse_api_tokens(text)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def is_loopback(host: str) -> bool:
    """True if ``host`` (a bind address) is reachable from this machine only."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def exposure_warning(url: str, bind_host: str, policy: AccessPolicy) -> str:
    """The loud warning for an API served beyond loopback without tokens; "" when there is none."""
    if policy.tokens is not None or is_loopback(bind_host):
        return ""
    return (
        f"!!! the API on {url} has NO AUTHENTICATION and is reachable beyond this machine: anyone who "
        "reaches the port can submit, cancel and read jobs; set api_tokens_file !!!"
    )


def _host_name(header: str) -> str:
    """The name part of a Host header: ``[::1]:8766`` → ``::1``, ``Example.COM.:80`` → ``example.com``."""
    value = header.strip().lower()
    if value.startswith("["):
        value = value[1 : value.find("]")] if "]" in value else value
    elif value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


@dataclass(frozen=True)
class AccessPolicy:
    """Who may use the API.

    Attributes:
        tokens: accepted bearer tokens; None: no authentication (safe on a loopback bind only).
        hosts: names a request's Host header may carry (``*``: any); refused otherwise (421), which
            defeats DNS rebinding (a browser tricked into calling us under an attacker's name).
        origins: browser origins (``scheme://host[:port]``) allowed; a request carrying any other
            Origin is refused (403): a web page cannot use a visitor's access to this API.
        public_paths: paths served without a token (a subset of /healthz and /metrics).
    """

    tokens: ApiTokens | None = None
    hosts: frozenset[str] = LOOPBACK_NAMES
    origins: frozenset[str] = frozenset()
    public_paths: frozenset[str] = PUBLIC_PATHS

    @classmethod
    def for_bind(
        cls,
        bind_host: str,
        *,
        tokens: ApiTokens | None = None,
        extra_hosts: Iterable[str] = (),
        origins: Iterable[str] = (),
        public_paths: Iterable[str] = PUBLIC_PATHS,
    ) -> AccessPolicy:
        """The policy of a server bound to ``bind_host``: Host may name the bind address (unless a
        wildcard), localhost, 127.0.0.1, ::1, or one of ``extra_hosts``.

        Raises:
            ConfigError: a public path other than /healthz or /metrics.
        """
        public = frozenset(public_paths)
        if public - PUBLIC_PATHS:
            raise ConfigError(
                f"only /healthz and /metrics may be public, got {sorted(public - PUBLIC_PATHS)}"
            )
        hosts = set(LOOPBACK_NAMES) | {_host_name(h) for h in extra_hosts if h.strip()}
        if bind_host not in WILDCARDS:
            hosts.add(bind_host.strip("[]").lower())
        return cls(
            tokens, frozenset(hosts), frozenset(o.strip().rstrip("/").lower() for o in origins), public
        )

    def check(self, request: web.Request) -> None:
        """Refuse the request unless its Host, Origin, credentials and body type are acceptable.

        Raises:
            Refusal: 421 (Host not ours), 403 (Origin not allowed, or a
                token without the scope), 401 (no or unknown token), 415 (a body that is not JSON).
        """
        headers = request.headers
        host = headers.get("Host")  # aiohttp's parser already refused a request with two (400)
        # No Host at all: an HTTP/1.0 client, not a browser (browsers always send one); served.
        if host is not None and "*" not in self.hosts and _host_name(host) not in self.hosts:
            raise Refusal(421, f"Host {host[:100]!r} is not served here (see http_allowed_hosts)")
        origin = headers.get("Origin")
        if origin is not None and origin.strip().rstrip("/").lower() not in self.origins:
            raise Refusal(403, f"Origin {origin[:100]!r} is not allowed (see http_allowed_origins)")
        if request.path in self.public_paths and request.method in _READ_METHODS:
            return
        if self.tokens is not None:
            self._authorize(request)
        if request.method not in _READ_METHODS and request.content_type != "application/json":
            # Also refuses the bodies a cross-site form or fetch can send without a CORS preflight.
            raise Refusal(415, "request body must be JSON (Content-Type: application/json)")

    def _authorize(self, request: web.Request) -> None:
        assert self.tokens is not None
        scheme, _, credentials = request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            raise Refusal(
                401, "an API token is required (Authorization: Bearer <token>)", headers=_challenge()
            )
        granted = self.tokens.scope_of(credentials.strip())
        if granted is None:
            raise Refusal(401, "unknown API token", headers=_challenge('error="invalid_token"'))
        needed = Scope.READ if request.method in _READ_METHODS else Scope.SUBMIT
        if granted < needed:
            raise Refusal(
                403,
                f"this token's scope is {granted.name.lower()}; {request.method} needs {needed.name.lower()}",
                headers=_challenge(f'error="insufficient_scope", scope="{needed.name.lower()}"'),
            )


def _challenge(extra: str = "") -> dict[str, str]:
    return {"WWW-Authenticate": f"{_REALM}, {extra}" if extra else _REALM}


def access_middleware(policy: AccessPolicy) -> Middleware:
    """The middleware that applies ``policy`` to every request before its handler runs."""

    @web.middleware
    async def access(request: web.Request, handler: Handler) -> web.StreamResponse:
        policy.check(request)
        return await handler(request)

    return access
