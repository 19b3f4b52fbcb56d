"""What every router of the API shares: its context (settings, sessions, backends), the bearer token,
and the rules that keep a local app local.

- Host allow-list (`LocalOnly`): a request must name this server: a loopback name or address, the bound
  address, or, bound to every interface, an IP address or this machine's own name. A page whose DNS name
  was rebound to 127.0.0.1 sends its own name as Host and is answered 421 before any endpoint runs.
- Request bodies are capped (`MAX_BODY_BYTES`, 413): the API takes small JSON, never uploads.
- A state-changing request's Origin, when a browser sends one, must itself be an allowed host (not
  merely equal Host, which a rebound page controls).
- Beyond localhost, PLANNER_API_TOKEN guards every data endpoint (`authorize`).
"""
from __future__ import annotations

import hmac
import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import sessionmaker

from planner.config import Settings

OPEN_PATHS = {"/", "/health", "/docs", "/openapi.json", "/docs/oauth2-redirect"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
WILDCARD = {"0.0.0.0", "::", ""}
MAX_BODY_BYTES = 64 * 1024  # the largest request (POST /plan) is a few hundred bytes of JSON


@dataclass
class ApiContext:
    """One app's settings and database; the backends that read logs and cancel are built on first use."""

    settings: Settings
    sessions: sessionmaker
    host: str  # the address the server is bound to
    roots: tuple[Path, ...]  # where POST /plan may read local inputs: the project, the runs dir
    given_backends: dict | None = None
    _backends: dict = field(default_factory=dict)

    def backends(self) -> dict:
        if not self._backends:
            from planner.run.launching import build_backends

            self._backends.update(self.given_backends or build_backends(self.settings))
        return self._backends


def context(request: Request) -> ApiContext:
    return request.app.state.context


Context = Annotated[ApiContext, Depends(context)]


# ------------------------------------------------------------------------------------ the Host rule

def host_name(header: str) -> str:
    """The name in a Host header or an Origin's authority, without port or brackets, lower case."""
    name = urlsplit(f"//{header}").hostname if header else None
    return (name or "").rstrip(".").lower()


def allowed_host(name: str, bound: str) -> bool:
    """Whether `name` (a Host header's name) is this server. Loopback names and addresses always are
    (`*.localhost` resolves to loopback, RFC 6761 §6.3); so is the bound address; bound to every
    interface, any IP address (a DNS-rebinding page always sends its own DNS name) and this machine's
    own names are too."""
    if not name:
        return False
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    if name in LOOPBACK or name.endswith(".localhost") or (address is not None and address.is_loopback):
        return True
    bound = host_name(bound) if bound not in WILDCARD else bound
    if name == bound:
        return True
    if bound in WILDCARD:
        return address is not None or name in {socket.gethostname().lower(), socket.getfqdn().lower()}
    return False


class LocalOnly:
    """ASGI middleware: the Host allow-list (421) and the request body cap (413), before any endpoint."""

    def __init__(self, app, bound: str, max_body: int = MAX_BODY_BYTES):
        self.app, self.bound, self.max_body = app, bound, max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        name = host_name(headers.get("host", ""))
        if not allowed_host(name, self.bound):
            return await _plain(send, 421, f"this server does not answer for host {name or '(none)'!r}; "
                                           "use http://127.0.0.1 or the address `planner serve --host` binds")
        length = headers.get("content-length")
        if length is not None and (not length.isdecimal() or int(length) > self.max_body):
            return await _plain(send, 413, f"request body over {self.max_body} bytes")
        received = 0

        async def bounded_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(413, f"request body over {self.max_body} bytes")
            return message

        return await self.app(scope, bounded_receive, send)


async def _plain(send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------------ dependencies

def authorize(request: Request, ctx: Context) -> None:
    """Beyond localhost every data endpoint wants `Authorization: Bearer <PLANNER_API_TOKEN>`."""
    token = ctx.settings.api_token
    if token is None or request.url.path in OPEN_PATHS or request.url.path.startswith("/static/"):
        return
    # bytes, not str: compare_digest refuses non-ASCII str (a 500); headers arrive as latin-1
    given = request.headers.get("Authorization", "").encode("latin-1", "replace")
    expected = f"Bearer {token.get_secret_value()}".encode()
    if not hmac.compare_digest(given, expected):
        raise HTTPException(401, "missing or wrong bearer token")


def same_origin(request: Request, ctx: Context) -> None:
    """A browser's state-changing request must come from a page of this server: its Origin's host must be
    an allowed host itself (comparing it with Host proves nothing after a DNS rebind)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return  # not a browser (curl, scripts): the token, where set, is their check
    parts = urlsplit(origin)
    if origin == "null" or parts.scheme not in ("http", "https") or not allowed_host(host_name(parts.netloc),
                                                                                     ctx.host):
        raise HTTPException(403, "cross-origin request refused")
