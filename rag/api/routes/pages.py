"""HTML pages: the chat page, an article's read page and the offline API docs (Swagger UI).

The templates and static files ship inside the package (``rag/web``), so an installed
(non-editable) package serves the page too.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates

from rag.api.deps import ServiceDep
from rag.ingest import DOC_SUFFIXES
from rag.models import NOT_FOUND
from rag.retrieval import MAX_QUESTION_CHARS

WEB_DIR = Path(str(resources.files("rag") / "web"))
"""The package's web files: ``templates/`` and ``static/``."""
DOCS_STATIC = "/docs-static"
"""Where Swagger UI's own JavaScript and CSS are served (from fastapi-offline, not a CDN)."""

templates = Jinja2Templates(directory=WEB_DIR / "templates")
router = APIRouter(include_in_schema=False)


@cache
def static_version() -> str:
    """A fingerprint of the static files, appended to their URLs so browsers refetch changed ones."""
    h = hashlib.sha256()
    static = WEB_DIR / "static"
    for p in sorted(static.rglob("*")) if static.is_dir() else []:
        if p.is_file():
            h.update(p.name.encode() + str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()[:10]


@router.get("/", response_class=HTMLResponse)
def chat_page(request: Request, service: ServiceDep) -> Response:
    """The chat page; the numbers and texts the script needs come from the server, as data attributes.

    The example questions are the served corpus's own (``GET /examples``), so they answer
    whatever documents are loaded; the script refreshes them after an upload or a delete.
    """
    settings = service.settings
    config = {
        "not_found": NOT_FOUND,
        "history_turns": settings.history_turns,
        "top_k": settings.top_k,
        "max_question_chars": MAX_QUESTION_CHARS,
        "doc_types": ",".join(DOC_SUFFIXES),
        "doc_types_text": "、".join(DOC_SUFFIXES),
        "max_upload_bytes": settings.max_upload_bytes,
        "uploads_enabled": bool(settings.admin_token),
    }
    examples = service.examples().questions
    context: dict[str, object] = {"examples": examples, "config": config, "v": static_version()}
    return templates.TemplateResponse(request, "index.html", context)


@router.get("/read/{doc_id:path}", response_class=HTMLResponse)
def read_page(
    request: Request, service: ServiceDep, doc_id: str, start: int | None = None, end: int | None = None
) -> Response:
    """One article, the span ``start:end`` (a cited sentence) marked."""
    article = service.engine.index.articles.get(doc_id)
    if article is None:
        context: dict[str, object] = {"doc_id": doc_id, "v": static_version()}
        return templates.TemplateResponse(request, "missing.html", context, status_code=404)
    text = article.text
    parts = (text, "", "")
    if start is not None and end is not None and 0 <= start < end <= len(text):
        parts = (text[:start], text[start:end], text[end:])
    context = {"article": article, "parts": parts, "v": static_version()}
    return templates.TemplateResponse(request, "read.html", context)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI, its assets served by this app (no ``/redoc``: ReDoc fetches its logo from a CDN)."""
    app = request.app
    return get_swagger_ui_html(
        openapi_url=app.openapi_url or "/openapi.json",
        title=f"{app.title} - API",
        oauth2_redirect_url="/docs/oauth2-redirect",
        swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_STATIC}/favicon.png",
    )


@router.get("/docs/oauth2-redirect")
def swagger_ui_redirect() -> HTMLResponse:
    """Swagger UI's OAuth2 redirect page."""
    return get_swagger_ui_oauth2_redirect_html()
