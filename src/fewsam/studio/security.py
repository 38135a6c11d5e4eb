"""Who may talk to the studio: checked on every request before any endpoint runs.

- Bound to a loopback address (the default, 127.0.0.1): only this machine can connect, and the
  Host header must name a loopback host, so a web page elsewhere cannot reach the studio by DNS
  rebinding (a name that resolves to 127.0.0.1).
- Bound to anything else (``--host 0.0.0.0``): every request must carry the random token printed
  at start, in the ``X-Fewsam-Token`` header or the ``token`` query parameter, and no other value
  in either.
- Any binding: a request that changes something and comes from another origin (a foreign page's
  form or script: its Origin names another scheme, host or port, or, without an Origin, its
  Sec-Fetch-Site says another site) is refused, and a body larger than the cap is refused from its Content-Length
  before it is read; a body sent without one (chunked) is counted as it arrives (``BodyCap``), for
  every endpoint, JSON ones included.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Awaitable, Callable
from urllib.parse import urlsplit

from fastapi import HTTPException, Request, Response
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOKEN_HEADER = "x-fewsam-token"
TOKEN_QUERY = "token"
LOOPBACK_NAMES = {"localhost", "localhost.localdomain"}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
FOREIGN_FETCH_SITES = {"cross-site", "same-site"}  # a page of another origin; "same-origin" and "none" (typed) are own


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the studio on this machine (127.0.0.0/8, ::1, localhost)."""
    name = host.strip("[]").lower()
    if name in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    """A random token for a non-loopback binding (printed at start, never written to the log)."""
    return secrets.token_urlsafe(24)


def human_size(size: int) -> str:
    """A byte count as the cap is stated to the user: MiB when it is whole MiB, else bytes."""
    return f"{size // 2**20} MiB" if size >= 2**20 and size % 2**20 == 0 else f"{size} bytes"


def upload_too_large(cap: int) -> str:
    """The refusal of a body above the cap, the same whether its Content-Length or its bytes told."""
    return f"the upload is larger than the studio's cap of {human_size(cap)}"


def host_name(header: str | None) -> str:
    """The host part of a Host header ("127.0.0.1:8765", "[::1]:8765", "localhost")."""
    if not header:
        return ""
    return (urlsplit(f"//{header}").hostname or "").lower()


class Guard:
    """The per-request checks, as a FastAPI HTTP middleware."""

    def __init__(self, bound_host: str, token: str | None, max_upload: int) -> None:
        self.loopback = is_loopback(bound_host)
        self.token = token
        self.max_upload = max_upload
        if not self.loopback and not token:
            raise ValueError(f"binding {bound_host} (not loopback) needs a token")

    async def __call__(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        refusal = self.refusal(request)
        if refusal is not None:
            return JSONResponse({"detail": refusal[1]}, status_code=refusal[0])
        return await call_next(request)

    def refusal(self, request: Request) -> tuple[int, str] | None:
        """(status, message) when the request must be refused, else None."""
        host = request.headers.get("host")
        if self.loopback and not is_loopback(host_name(host)):
            return 403, (f"this studio answers only on this machine (Host {host!r} is not a loopback name); "
                         "open the address printed at start")
        if self.token and not self._has_token(request):
            return 401, "this studio needs its token: open the address printed at start (it ends in ?token=...)"
        if request.method not in SAFE_METHODS and (foreign := _foreign_sender(request)) is not None:
            return 403, f"requests from another site ({foreign}) may not change the studio"
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_upload:
            return 413, upload_too_large(self.max_upload)
        return None

    def _has_token(self, request: Request) -> bool:
        """Whether the request gives the token, and nothing else where it gives one: every value of the
        header and of the query parameter is compared, since a server reading another one than this check
        (``?token=wrong&token=right``: the last wins in some, the first in others) would let a wrong one in."""
        given = [*request.headers.getlist(TOKEN_HEADER), *request.query_params.getlist(TOKEN_QUERY)]
        expected = (self.token or "").encode()
        return bool(given) and all(secrets.compare_digest(value.encode(), expected) for value in given)


def _foreign_sender(request: Request) -> str | None:
    """What shows that a request comes from a page of another origin, None where nothing does: an Origin
    header naming another scheme, host or port than the studio's own (an https page is another origin
    than the http studio on the same port), or, where a browser sends no Origin, a Sec-Fetch-Site header
    saying the page is of another site."""
    origin = request.headers.get("origin")
    if origin:
        parts = urlsplit(origin)
        own = (request.url.scheme, (request.headers.get("host") or "").lower())
        return None if (parts.scheme.lower(), parts.netloc.lower()) == own else origin
    fetch_site = request.headers.get("sec-fetch-site", "").lower()
    return f"Sec-Fetch-Site: {fetch_site}" if fetch_site in FOREIGN_FETCH_SITES else None


class BodyCap:
    """ASGI middleware that counts a request body as the endpoint reads it and stops at ``max_upload``
    bytes with HTTP 413: ``Guard`` can only judge a declared Content-Length, and FastAPI reads a JSON
    body whole into memory, so a chunked body would otherwise have no limit. The refusal is an
    ``HTTPException``, which FastAPI's body parsing passes on as it is (any other error there becomes
    a vague 400)."""

    def __init__(self, app: ASGIApp, max_upload: int) -> None:
        self.app = app
        self.max_upload = max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        size = 0

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            size += len(message.get("body", b""))
            if size > self.max_upload:
                raise HTTPException(413, upload_too_large(self.max_upload))
            return message

        await self.app(scope, counted, send)
