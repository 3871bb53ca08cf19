"""Route dependencies: the service, JSON-only bodies and the admin token."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rag.api.schemas import ErrorOut
from rag.api.security import admin_token_matches
from rag.api.service import Service


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

ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong admin token"},
    403: {"model": ErrorOut, "description": "Uploads are off (RAG_ADMIN_TOKEN unset)"},
}
"""The documented errors of a route with ``require_admin``."""
