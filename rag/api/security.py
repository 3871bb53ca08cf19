"""Security headers on every response and the admin token that guards document changes."""

from __future__ import annotations

import secrets

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
"""The policy of every page but Swagger UI: nothing inline, nothing from elsewhere."""

# Swagger UI is served from this process (the bundle fastapi-offline ships: intranets have
# no CDN); its pages bootstrap with an inline script, so only they get 'unsafe-inline', and
# nothing outside 'self'.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect"})
"""The Swagger UI pages, the only ones under :data:`DOCS_CSP`."""

SECURITY_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
)


def security_headers(path: str = "") -> dict[str, str]:
    """The headers a response to ``path`` carries."""
    csp = DOCS_CSP if path in DOCS_PATHS else CSP
    return {"content-security-policy": csp, **dict(SECURITY_HEADERS)}


class SecurityHeadersMiddleware:
    """Adds the content security policy and friends to every HTTP response.

    Pure ASGI rather than ``BaseHTTPMiddleware``: that one would buffer streamed answers.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on; add the headers to the response's start message."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = security_headers(scope["path"])

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in extra.items():
                    headers[key] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def admin_token_matches(expected: str, given: str) -> bool:
    """Whether ``given`` is the admin token, compared in constant time."""
    return secrets.compare_digest(given.encode(), expected.encode())


def host_allowed(host_header: str, allowed: frozenset[str]) -> bool:
    """Whether a ``Host`` header (port and case aside) names one of the ``allowed`` hosts."""
    if "*" in allowed:
        return True
    host = host_header.strip().lower()
    if host.startswith("["):  # [::1]:8000
        host = host.split("]", 1)[0] + "]"
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".") in allowed


class HostCheckMiddleware:
    """Answers 400 to a request whose ``Host`` is not a configured one (``RAG_ALLOWED_HOSTS``).

    A page on another site can make a user's browser talk to this loopback server by
    pointing its own DNS name at 127.0.0.1 (DNS rebinding); the browser then sends that
    name as ``Host``, so only the names this server is reached by are served.
    """

    def __init__(self, app: ASGIApp, allowed_hosts: list[str]) -> None:
        self.app = app
        self.allowed = frozenset(h.strip().lower().rstrip(".") for h in allowed_hosts if h.strip())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass requests for an allowed host on; refuse the others with one JSON line."""
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == b"host"), "")
        if host_allowed(host, self.allowed):
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        shown = host[:100] or "(none)"
        message = f"Host header {shown} is not served here; add it to RAG_ALLOWED_HOSTS"
        response = JSONResponse(
            {"detail": message, "message": message}, status_code=400, headers=security_headers()
        )
        await response(scope, receive, send)
