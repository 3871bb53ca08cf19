"""Exception handlers: every error is JSON with a one-line ``detail``; a 4xx names the field or file.

The project's errors (``rag.errors``) carry no HTTP status; :data:`STATUS` maps them.
Under ``/v1/`` the body also has OpenAI's ``error`` object, which OpenAI clients read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag.api.security import security_headers
from rag.errors import (
    ConflictError,
    NotFoundError,
    PayloadTooLargeError,
    QuestionError,
    RagError,
    UnsupportedMediaError,
)

STATUS: tuple[tuple[type[RagError], int], ...] = (
    (NotFoundError, 404),
    (ConflictError, 409),
    (PayloadTooLargeError, 413),
    (UnsupportedMediaError, 415),
)
"""HTTP status of a project error, most specific first; any other ``RagError`` is a 400."""

INTERNAL_ERROR = "internal server error; see the server log"


def one_line(message: str) -> str:
    """``message`` on one line: a multi-line detail would break log lines and client UIs."""
    return re.sub(r"\s*\n\s*", " ", message).strip()


def status_of(exc: RagError) -> int:
    """The HTTP status a project error answers with."""
    return next((status for kind, status in STATUS if isinstance(exc, kind)), 400)


def error_response(
    request: Request,
    status: int,
    detail: Any,
    headers: Mapping[str, str] | None = None,
    message: str | None = None,
) -> JSONResponse:
    """The error body: ``detail``, ``message`` (one line) and, under ``/v1/``, OpenAI's ``error``."""
    if message is None:
        message = detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False)
    body: dict[str, Any] = {"detail": detail, "message": one_line(message)}
    if request.url.path.startswith("/v1/"):
        body["error"] = {
            "message": body["message"],
            "type": "invalid_request_error",
            "param": None,
            "code": status,
        }
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


def field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """``messages.2.content`` for FastAPI's ``("body", "messages", 2, "content")``."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def validation_handler(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field (400 for a body that is not JSON at all)."""
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]
    bad_json = next((e for e in errors if e.get("type") == "json_invalid"), None)
    if bad_json is not None:
        message = f"request body is not valid JSON ({bad_json.get('msg')}); send a JSON object"
        return error_response(request, 400, errors, message=message)
    message = "; ".join(f"{field_name(e.get('loc', ()))}: {e.get('msg')}" for e in errors)
    return error_response(request, 422, errors, message=message)


def question_error(message: str, loc: tuple[str | int, ...] = ("body", "question")) -> RequestValidationError:
    """A ``QuestionError`` as FastAPI's own 422, so the documented schema holds."""
    return RequestValidationError([{"type": "value_error", "loc": loc, "msg": one_line(message)}])


async def rag_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """A project error: its message, with the status :data:`STATUS` gives it."""
    assert isinstance(exc, RagError)
    if isinstance(exc, QuestionError):
        return await validation_handler(request, question_error(str(exc)))
    return error_response(request, status_of(exc), one_line(str(exc)))


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """FastAPI's and Starlette's own HTTP errors (404 route, 405, the dependencies' 401/403/415)."""
    assert isinstance(exc, StarletteHTTPException)
    detail = one_line(exc.detail) if isinstance(exc.detail, str) else exc.detail
    return error_response(request, exc.status_code, detail, headers=exc.headers)


async def server_error_handler(request: Request, _exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback by Starlette; the client learns nothing about it."""
    # Runs outside the middleware stack (in Starlette's ServerErrorMiddleware): add the headers here.
    headers = security_headers(request.url.path)
    return JSONResponse({"detail": INTERNAL_ERROR}, 500, headers=headers)


def add_handlers(app: FastAPI) -> None:
    """Install the handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(RagError, rag_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, server_error_handler)
