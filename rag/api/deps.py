"""Route dependencies: the service, JSON-only bodies and the admin token."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rag.api.schemas import ErrorOut
from rag.api.security import admin_token_matches
from rag.api.service import Service
from rag.errors import PayloadTooLargeError


def get_service(request: Request) -> Service:
    """The service the lifespan loaded."""
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]
_bearer = HTTPBearer(auto_error=False, description="RAG_ADMIN_TOKEN")


def require_json(request: Request) -> None:
    """JSON endpoints refuse form posts and plain text with a 415 that says what to send."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise HTTPException(
            415,
            f"Content-Type {media or '(empty)'} is not supported; "
            "send JSON with Content-Type: application/json",
        )


def require_admin(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Uploads and deletes: off (403) without RAG_ADMIN_TOKEN, else the bearer token must match (401)."""
    token = service.settings.admin_token
    if not token:
        raise HTTPException(
            403,
            "adding and removing documents is off; start the server with RAG_ADMIN_TOKEN set",
        )
    given = credentials.credentials if credentials is not None else ""
    if not admin_token_matches(token, given):
        raise HTTPException(
            401,
            "missing or wrong admin token; send Authorization: Bearer <RAG_ADMIN_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )


JSON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Malformed JSON or a user error"},
    415: {"model": ErrorOut, "description": "The body is not JSON"},
}
"""The documented errors of a route with ``require_json``."""

BUSY_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorOut,
        "description": "Busy (answer queue full or waited too long) or the answer took too long; "
        "see Retry-After",
    },
}
"""The documented error of a route the answer limiter guards (``rag.api.limits``)."""

ANSWER_ERRORS: dict[int | str, dict[str, Any]] = {
    **JSON_ERRORS,
    413: {"model": ErrorOut, "description": "The messages are longer than RAG_MAX_CONVERSATION_CHARS"},
    **BUSY_ERRORS,
}
"""The documented errors of the answering routes (JSON bodies, size bound, answer limiter)."""

ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong admin token"},
    403: {"model": ErrorOut, "description": "Uploads are off (RAG_ADMIN_TOKEN unset)"},
}
"""The documented errors of a route with ``require_admin``."""


def check_conversation_size(texts: Iterable[str], limit: int, field: str) -> None:
    """413 when the messages of one request hold more than ``limit`` characters together.

    Each message has its own cap in the schema; this bounds their sum
    (``RAG_MAX_CONVERSATION_CHARS``), the text one request makes the server read.
    """
    total = sum(len(t) for t in texts)
    if total > limit:
        raise PayloadTooLargeError(
            f"{field}: {total} characters in all, over the limit of {limit} "
            "(RAG_MAX_CONVERSATION_CHARS); send fewer or shorter messages"
        )
