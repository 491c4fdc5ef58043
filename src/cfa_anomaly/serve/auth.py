"""Who may call the service: a bearer token on every endpoint but /health and the page's shell (GET /).

A service bound to a loopback address (127.0.0.0/8, ::1, localhost) needs no token unless one is given; on
any other address it needs one, from --token-file, from the environment variable CFA_SERVE_TOKEN, or made
at start (secrets.token_urlsafe) and printed once to stderr. Tokens are compared in constant time.
"""

from __future__ import annotations

import hmac
import ipaddress
import re
import secrets
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse

from cfa_anomaly.config import ConfigError
from cfa_anomaly.serve.errors import ServeError
from cfa_anomaly.serve.limits import ASGIApp, Receive, Send, drain_body

TOKEN_ENV = "CFA_SERVE_TOKEN"
OPEN_ROUTES = {("GET", "/"), ("HEAD", "/"), ("GET", "/health"), ("HEAD", "/health")}
OPEN_PATHS = "/health and the page (GET /)"
TOKEN_CHARACTERS = re.compile(r"[\x21-\x7e]+")  # visible ASCII: what an Authorization header carries as is
UNAUTHORISED_DRAIN = 1 << 20  # body bytes read and dropped before a 401, so the client sees the answer


def is_loopback(host: str) -> bool:
    """Whether a bind address serves this machine only: 127.0.0.0/8, ::1 or 'localhost'."""
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


@dataclass(frozen=True)
class Access:
    """The token the service asks for (None: open to whoever reaches it) and where it came from."""

    token: str | None
    source: str  # "--token-file PATH", "CFA_SERVE_TOKEN", "generated", or "loopback" (no token)
    generated: bool = False

    def statement(self, host: str) -> str:
        """One line for the startup log: what is protected and how."""
        if self.token is None:
            return (f"no token: {host} is a loopback address, so only this machine reaches the service "
                    f"(--token-file or {TOKEN_ENV} would ask for one)")
        return f"bearer token ({self.source}) required on every endpoint except {OPEN_PATHS}"


def checked_token(text: str, origin: str) -> str:
    """A token read from origin, stripped of surrounding whitespace; empty or odd characters are errors."""
    token = text.strip()
    if not token:
        raise ConfigError(f"{origin} is empty: put the token in it (e.g. python -c 'import secrets; "
                          "print(secrets.token_urlsafe(32))')")
    if not TOKEN_CHARACTERS.fullmatch(token):
        raise ConfigError(f"the token in {origin} has spaces or characters outside visible ASCII; an "
                          "Authorization header cannot carry them")
    return token


def resolve_access(host: str, token_file: str | Path | None, environ: Mapping[str, str]) -> Access:
    """The service's token: --token-file, else CFA_SERVE_TOKEN, else generated for a non-loopback host."""
    if token_file is not None:
        path = Path(token_file)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"--token-file {path}: cannot read it ({err})") from err
        return Access(checked_token(text, f"--token-file {path}"), f"--token-file {path}")
    if TOKEN_ENV in environ:
        return Access(checked_token(environ[TOKEN_ENV], f"the environment variable {TOKEN_ENV}"), TOKEN_ENV)
    if is_loopback(host):
        return Access(None, "loopback")
    return Access(secrets.token_urlsafe(32), "generated", generated=True)


def _presented_token(scope: MutableMapping[str, Any]) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    for key, value in scope.get("headers", []):
        if key == b"authorization":
            scheme, _, token = bytes(value).strip().partition(b" ")
            return token.strip() if scheme.lower() == b"bearer" else None
    return None


class BearerAuth:
    """ASGI middleware: a request outside OPEN_ROUTES without the right bearer token gets a JSON 401."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = None if token is None else token.encode("ascii")

    async def __call__(self, scope: MutableMapping[str, Any], receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or self.token is None
                or (scope.get("method"), scope.get("path")) in OPEN_ROUTES):
            await self.app(scope, receive, send)
            return
        presented = _presented_token(scope)
        if presented is not None and hmac.compare_digest(presented, self.token):
            await self.app(scope, receive, send)
            return
        if presented is None:
            reason = "this service needs a token: send the header `Authorization: Bearer <token>`"
            challenge = 'Bearer realm="cfa serve"'
        else:
            reason = "the bearer token is wrong"
            challenge = 'Bearer realm="cfa serve", error="invalid_token"'
        await drain_body(receive, UNAUTHORISED_DRAIN)
        error = ServeError("unauthorized", reason)
        response = JSONResponse(error.to_dict(), status_code=error.status,
                                headers={"WWW-Authenticate": challenge})
        await response(scope, receive, send)
