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
    StoreUnavailableError,
    UnsupportedMediaError,
)

STATUS: tuple[tuple[type[RagError], int], ...] = (
    (NotFoundError, 404),
    (ConflictError, 409),
    (PayloadTooLargeError, 413),
    (UnsupportedMediaError, 415),
    (StoreUnavailableError, 503),
)
"""HTTP status of a project error, most specific first; any other ``RagError`` is a 400."""

STORE_RETRY_AFTER_S = 5
"""``Retry-After`` of a 503 for an unreachable store (a Milvus server restarting takes seconds)."""

INTERNAL_ERROR = "internal server error; see the server log"


def one_line(message: str) -> str:
    """``message`` on one line: a multi-line detail would break log lines and client UIs."""
    return re.sub(r"\s*\n\s*", " ", message).strip()


def status_of(exc: RagError) -> int:
    """The HTTP status a project error answers with."""
    return next((status for kind, status in STATUS if isinstance(exc, kind)), 400)


def error_response(  # noqa: PLR0913  (the OpenAI fields are optional, keyword-only)
    request: Request,
    status: int,
    detail: Any,
    headers: Mapping[str, str] | None = None,
    message: str | None = None,
    *,
    param: str | None = None,
    code: str | None = None,
) -> JSONResponse:
    """The error body: ``detail``, ``message`` (one line) and, under ``/v1/``, OpenAI's ``error``.

    OpenAI clients read ``error``: ``param`` names the field (``messages.0.content``), ``code``
    is OpenAI's (``invalid_type``, ``unsupported_parameter``, ...) or null.
    """
    if message is None:
        message = detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False)
    body: dict[str, Any] = {"detail": detail, "message": one_line(message)}
    if is_openai(request):
        body["error"] = {
            "message": body["message"],
            "type": "invalid_request_error" if status < 500 else "server_error",
            "param": param,
            "code": code,
        }
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


def is_openai(request: Request) -> bool:
    """Whether the request is for the OpenAI-compatible API (``/v1/...``), which answers OpenAI's way."""
    return request.url.path.startswith("/v1/")


# Pydantic names the member of a union that failed (``content.str``, ``content.list[Part]``).
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none", "list", "dict"})

OVERSIZE = frozenset({"string_above_max_length", "context_length_exceeded"})
"""Error types (raised by the /v1 route) of a body too large to answer: a 413, not a 400."""


def field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    """``messages.2.content`` for FastAPI's ``("body", "messages", 2, "content")``."""
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


def openai_param(loc: tuple[Any, ...] | list[Any]) -> str:
    """The field path OpenAI's ``param`` gives: :func:`field_name` without pydantic's union tags."""
    kept = [p for p in loc if not (isinstance(p, str) and (p in _UNION_TAGS or "[" in p))]
    return field_name(kept)


def openai_code(error_type: str) -> str | None:
    """OpenAI's ``code`` for a pydantic error type (a custom error's type is the code itself)."""
    if error_type == "missing":
        return "missing_required_parameter"
    if error_type == "json_invalid":
        return None
    if error_type.endswith("_type") or error_type in ("invalid_type", "union_tag_invalid"):
        return "invalid_type"
    if error_type in ("unsupported_parameter", "unsupported_value") or error_type in OVERSIZE:
        return error_type
    return "invalid_value"  # out of range, not one of the choices, an unusable question


def openai_validation_error(request: Request, errors: list[dict[str, Any]]) -> JSONResponse:
    """Under ``/v1``: 400 as OpenAI answers (413 for a body too large), ``param`` naming the field.

    A failed union member (``content.str``) is dropped when a deeper error says more.
    """
    params = [openai_param(e.get("loc", ())) for e in errors]
    keep = [
        (p, e)
        for p, e in zip(params, errors, strict=True)
        if not any(q != p and q.startswith(f"{p}.") for q in params)
    ]
    seen: dict[str, dict[str, Any]] = {}
    for p, e in keep:
        seen.setdefault(f"{p}: {e.get('msg')}", e)
    param, first = keep[0]
    kind = str(first.get("type", ""))
    status = 413 if kind in OVERSIZE else 400
    if kind == "json_invalid":
        message = f"request body is not valid JSON ({first.get('msg')}); send a JSON object"
        param = "body"
    else:
        message = "; ".join(seen)
    return error_response(request, status, errors, message=message, param=param, code=openai_code(kind))


async def validation_handler(request: Request, exc: Exception) -> JSONResponse:
    """422 naming each bad field (400 for a body that is not JSON at all; under /v1 see below).

    Under ``/v1`` the answer is OpenAI's: a 400 (413 when too large) with the ``error`` object,
    from :func:`openai_validation_error`.
    """
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]
    if is_openai(request) and errors:
        return openai_validation_error(request, errors)
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
    status = status_of(exc)
    # A 503 is an outage (the Milvus server down): clients may retry, as after the limiter's 503s.
    headers = {"Retry-After": str(STORE_RETRY_AFTER_S)} if status == 503 else None
    return error_response(request, status, one_line(str(exc)), headers=headers)


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """FastAPI's and Starlette's own HTTP errors (404 route, 405, the dependencies' 401/403/415)."""
    assert isinstance(exc, StarletteHTTPException)
    detail = one_line(exc.detail) if isinstance(exc.detail, str) else exc.detail
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = allowed_methods(request) or headers.get("Allow", "")
    return error_response(request, exc.status_code, detail, headers=headers)


def allowed_methods(request: Request) -> str:
    """The documented methods of the path (OpenAPI), for a 405's ``Allow``.

    Starlette's 405 lists only the methods of the first route matched (``/documents`` is a
    GET route and a POST route): schemathesis found ``Allow: GET`` there. Hidden routes
    (``DELETE /documents``, which only answers 404) are left out, as the schema leaves them out.
    """
    path = request.url.path
    methods: list[str] = []
    for template, operations in request.app.openapi().get("paths", {}).items():
        pattern = re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            methods += [m.upper() for m in operations if m.upper() not in methods]
    return ", ".join(methods)


async def server_error_handler(request: Request, _exc: Exception) -> JSONResponse:
    """A bug: logged with its traceback by Starlette; the client learns nothing about it."""
    # Runs outside the middleware stack (in Starlette's ServerErrorMiddleware): add the headers here.
    headers = security_headers(request.url.path)
    return error_response(request, 500, INTERNAL_ERROR, headers=headers)


def add_handlers(app: FastAPI) -> None:
    """Install the handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, validation_handler)
    app.add_exception_handler(RagError, rag_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(Exception, server_error_handler)
