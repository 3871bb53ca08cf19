"""How the app is served: uvicorn with the connection limits of ``Settings`` and a redacting access log.

``rag serve`` and the tests' loopback servers both build their server with
:func:`server_config`, so what is tested is what runs. The limits (README "Limits"):

- a client has ``header_timeout`` seconds from connecting (or from the end of its previous
  response) to send a complete request line and headers, else the connection is closed:
  uvicorn itself waits forever for a half-sent request line;
- an idle kept-alive connection closes after ``keep_alive_timeout`` seconds;
- at most ``max_connections`` connections are served at once (uvicorn answers 503 beyond);
- a request line with its headers may be at most :data:`MAX_HEADER_BYTES` (h11 answers 400).
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from rag.settings import Settings

MAX_HEADER_BYTES = 64 * 1024
"""The most bytes of request line and headers h11 buffers before it answers 400."""

SECRET_PARAM = re.compile(r"(?i)\b([\w-]*(?:token|key|secret|password|passwd|auth|session)[\w-]*)=[^&\s]*")
"""Query parameters whose value must never reach a log line."""

AUTHENTICATED_PATHS = ("/documents",)
"""Routes that take the admin token: their query strings are not logged at all."""

log = logging.getLogger(__name__)


class ServerConfig(uvicorn.Config):
    """uvicorn's config plus the one limit it lacks: the time allowed to send the headers."""

    def __init__(self, app: Any, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self.header_timeout = header_timeout


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection whose request line and headers are late.

    uvicorn arms no timer before the first request, and any byte received cancels its
    keep-alive timer, so a client sending half a request line (or one byte every few
    seconds) holds the connection for ever. Here a timer starts when the connection opens
    and again after each response; it is cancelled once h11 has a complete request.
    """

    _header_timer: asyncio.TimerHandle | None = None

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        timeout = getattr(self.config, "header_timeout", None)
        if timeout:
            self._header_timer = self.loop.call_later(timeout, self._header_timeout_expired)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout_expired(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closing a connection that sent no complete request in time (RAG_HEADER_TIMEOUT)")
            self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Open the connection and start the clock for its first request's headers."""
        super().connection_made(transport)
        self._arm_header_timer()

    def data_received(self, data: bytes) -> None:
        """Feed h11; once it holds a whole request line and headers, stop the clock."""
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        """After a response, the next request's headers are due within the same time."""
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the timer with the connection."""
        self._cancel_header_timer()
        super().connection_lost(exc)


def redact_path(path: str) -> str:
    """``path`` as it may be logged: no query string on an authenticated route, no secret values."""
    route, sep, query = path.partition("?")
    if not sep:
        return path
    if route.startswith(AUTHENTICATED_PATHS):
        return f"{route}?[redacted]"
    redacted = SECRET_PARAM.sub(r"\1=[redacted]", query)
    return f"{route}?{redacted}"


class RedactingAccessFilter(logging.Filter):
    """Rewrites uvicorn's access log records so a token sent in a query string is never logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Redact the path argument (uvicorn logs ``client, method, path, version, status``)."""
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_path(args[2]), *args[3:])
        return True


def log_config() -> dict[str, Any]:
    """uvicorn's logging config with :class:`RedactingAccessFilter` on the access log."""
    config: dict[str, Any] = {**uvicorn.config.LOGGING_CONFIG}
    config["filters"] = {"redact": {"()": RedactingAccessFilter}}
    # On the logger, not a handler: every handler of the access log (a test's too) gets
    # the redacted record.
    loggers = {name: dict(logger) for name, logger in config["loggers"].items()}
    loggers["uvicorn.access"]["filters"] = ["redact"]
    config["loggers"] = loggers
    return config


WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::", "[::]"})


def served_hosts(allowed: list[str], bind_host: str) -> list[str]:
    """``allowed`` plus the names the server is reached by when bound to ``bind_host``.

    A specific address is added as is; on a wildcard address (``0.0.0.0``) the machine's
    host names and their addresses are added, as other machines of the intranet would
    use them. Any other name (a DNS alias, a reverse proxy's) goes in ``RAG_ALLOWED_HOSTS``.
    """
    extra: list[str] = []
    if bind_host in WILDCARD_ADDRESSES:
        names = {socket.gethostname(), socket.getfqdn()}
        extra.extend(sorted(names))
        for name in sorted(names):
            try:
                infos = socket.getaddrinfo(name, None)
            except OSError:
                continue
            for info in infos:
                address = str(info[4][0])
                extra.append(f"[{address}]" if ":" in address else address)
    else:
        extra.append(f"[{bind_host}]" if ":" in bind_host and not bind_host.startswith("[") else bind_host)
    return list(dict.fromkeys([*allowed, *(e.lower() for e in extra)]))


def server_config(app: Any, settings: Settings, **kwargs: Any) -> ServerConfig:
    """The uvicorn config for ``app`` with the limits of ``settings`` (``kwargs``: host, port, ...)."""
    # On SIGTERM, requests still running get as long as one answer may take, then are cut.
    kwargs.setdefault("timeout_graceful_shutdown", max(1, round(settings.request_timeout)))
    return ServerConfig(
        app,
        header_timeout=settings.header_timeout,
        http=HeaderTimeoutProtocol,
        timeout_keep_alive=max(1, round(settings.keep_alive_timeout)),
        limit_concurrency=settings.max_connections,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        log_config=log_config(),
        **kwargs,
    )
