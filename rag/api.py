"""The HTTP service: JSON API, an OpenAI-compatible chat endpoint and the chat page.

``create_app(settings)`` builds the FastAPI app. The embedding model, the index, the
retriever and the answerer are loaded once, in the app's lifespan, into a
:class:`Service` kept on ``app.state.service``; routes stay thin and call it.

Adding or removing a document rebuilds the index incrementally (unchanged chunks keep
their vectors) and swaps the in-memory :class:`Engine` in one assignment, so requests
already running finish on the old one and the next request sees the new corpus.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import shutil
import tempfile
import threading
import time
import unicodedata
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator
from starlette.datastructures import MutableHeaders, UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rag.answer import Answerer, Turn
from rag.embedding import Embedder
from rag.errors import IngestError, QuestionError, RagError
from rag.index import SearchIndex, build_index, load_index
from rag.ingest import DOC_SUFFIXES, list_documents, read_document
from rag.models import Answer, Article, Citation, Hit
from rag.reader import Reader, load_settings_reader
from rag.retrieval import MAX_QUESTION_CHARS, Retriever
from rag.settings import RetrievalMode, Settings

log = logging.getLogger(__name__)

MODEL_ID = "rag-zh"
"""The model name the OpenAI-compatible endpoints answer to."""

WEB_DIR = Path(__file__).resolve().parent.parent / "web"

EXAMPLE_QUESTIONS = (
    "锦屏成立了什么联盟",
    "芯·潮夜市大约有多少个摊位",
    "岳林街道辖区有多少家高新技术企业",
    "恒锋工具位于哪里",
)
"""Shown on the page; each is answered by a different page of the seed corpus."""

MAX_HISTORY_TURNS = 50
MAX_TURN_CHARS = 20_000
SOURCES_HEADING = "来源："

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Swagger UI is served from this process (the bundle fastapi-offline ships:
# intranets have no CDN); their pages bootstrap with an inline script, so only those get
# 'unsafe-inline', and nothing outside 'self'.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; worker-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; "
    "base-uri 'none'"
)
DOCS_STATIC = "/docs-static"
DOCS_PATHS = frozenset({"/docs", "/docs/oauth2-redirect"})
SECURITY_HEADERS = (
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("x-frame-options", "DENY"),
    ("cross-origin-opener-policy", "same-origin"),
)
UPLOAD_CONTENT_TYPES = frozenset(
    {"", "text/plain", "text/markdown", "text/x-markdown", "application/octet-stream"}
)
MULTIPART_OVERHEAD = 64 * 1024


# --------------------------------------------------------------------------------------
# Request and response shapes (they are the OpenAPI schema at /docs)


class HistoryTurn(BaseModel):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_TURN_CHARS)


def _nonblank(value: str) -> str:
    if not value.strip():
        raise ValueError("question is empty or only whitespace; ask something, e.g. 锦屏成立了什么联盟")
    if len(value.strip()) > MAX_QUESTION_CHARS:
        raise ValueError(f"question is longer than {MAX_QUESTION_CHARS} characters")
    return value


def _nonblank_query(value: str) -> str:
    if not value.strip():
        raise ValueError("q is empty or only whitespace; pass e.g. ?q=锦屏成立了什么联盟")
    return value


class AskRequest(BaseModel):
    question: str = Field(
        min_length=1,
        max_length=MAX_QUESTION_CHARS,
        description="The question, in Chinese (1..2000 characters, not only whitespace).",
        json_schema_extra={"pattern": r"\S"},
        examples=["锦屏成立了什么联盟"],
    )
    top_k: int = Field(5, ge=1, le=20, description="How many passages to retrieve and cite.")
    history: list[HistoryTurn] = Field(
        default_factory=list,
        max_length=MAX_HISTORY_TURNS,
        description="Earlier turns of the conversation, oldest first (for follow-up questions).",
    )
    mode: Literal["auto", "extractive", "llm"] = Field(
        "auto",
        description=(
            "extractive: the span the trained reader finds in the passages; "
            "llm: ask the configured LLM; auto: llm if set."
        ),
    )

    _check_question = field_validator("question")(_nonblank)


class CitationOut(BaseModel):
    id: int = Field(description="The n of the [n] markers in the answer.")
    article_id: str
    source: str
    title: str
    text: str = Field(description="The cited passage.")
    score: float
    start: int = Field(description="Offset of the passage in its article's text.")
    end: int
    highlight: tuple[int, int] | None = Field(
        None, description="Offsets of the supporting sentence inside `text`."
    )


class Timings(BaseModel):
    retrieve: float
    answer: float
    total: float


class AskResponse(BaseModel):
    question: str
    answer: str
    answer_sentence: str
    abstained: bool
    mode: str
    citations: list[CitationOut]
    warnings: list[str]
    timings_ms: Timings


class SearchHitOut(BaseModel):
    rank: int
    score: float
    dense_score: float | None
    bm25_score: float | None
    chunk_id: str
    article_id: str
    source: str
    title: str
    text: str
    start: int
    end: int


class SearchResponse(BaseModel):
    query: str
    mode: str
    hits: list[SearchHitOut]
    timings_ms: dict[str, float]


class DocumentSummary(BaseModel):
    id: str
    source: str
    title: str
    position: int


class DocumentOut(DocumentSummary):
    kicker: str | None
    subtitle: str | None
    byline: str | None
    text: str


class HealthOut(BaseModel):
    status: str
    model: str
    counts: dict[str, int]
    built_at: str | None
    uploads_enabled: bool


class UploadResult(BaseModel):
    source: str = Field(description="The file name it was saved under in the docs folder.")
    replaced: bool = Field(description="True when a file of that name was replaced.")
    articles: list[DocumentSummary]
    counts: dict[str, int]


class DeleteResult(BaseModel):
    deleted: str = Field(description="The source file that was removed.")
    articles: list[str] = Field(description="Ids of the articles that went with it.")
    counts: dict[str, int]


class ErrorOut(BaseModel):
    detail: Any


# OpenAI-compatible shapes ---------------------------------------------------------------


class ChatContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: str | list[ChatContentPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text or "" for p in self.content if p.type == "text")


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str = MODEL_ID
    messages: list[ChatMessageIn] = Field(min_length=1, max_length=MAX_HISTORY_TURNS * 2 + 10)
    stream: bool = False
    top_k: int = Field(5, ge=1, le=20, description="Extension: passages to retrieve.")
    rag_mode: Literal["auto", "extractive", "llm"] = Field("auto", description="Extension: answer mode.")


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: str


class Usage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    citations: list[CitationOut] = Field(description="Extension: the sources behind the [n] markers.")


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --------------------------------------------------------------------------------------
# The service behind the routes


@dataclass(frozen=True)
class Engine:
    """One loaded index with its retriever and answerer; replaced whole on a rebuild."""

    index: SearchIndex
    retriever: Retriever
    answerer: Answerer


class Service:
    """What the app holds for its lifetime: settings, the models and the live engine."""

    def __init__(self, settings: Settings, embedder: Embedder, engine: Engine, reader: Reader) -> None:
        self.settings = settings
        self.embedder = embedder
        self.reader = reader
        self.engine = engine
        self._write_lock = threading.Lock()

    @classmethod
    def start(cls, settings: Settings, embedder: Embedder | None = None) -> Service:
        """Load the models (the embedder unless given, the reader) and the live index."""
        if embedder is None:
            from rag.embedding import load_embedder

            embedder = load_embedder(settings)
        reader = load_settings_reader(settings)
        engine = cls._engine(settings, embedder, load_index(settings, embedder), reader)
        return cls(settings, embedder, engine, reader)

    @staticmethod
    def _engine(settings: Settings, embedder: Embedder, index: SearchIndex, reader: Reader) -> Engine:
        retriever = Retriever(index, embedder, settings)
        return Engine(index, retriever, Answerer(retriever, settings, reader=reader))

    def _rebuild(self) -> Engine:
        build_index(self.settings, self.embedder)
        index = load_index(self.settings, self.embedder)
        engine = self._engine(self.settings, self.embedder, index, self.reader)
        self.engine = engine
        return engine

    def counts(self, engine: Engine | None = None) -> dict[str, int]:
        manifest = (engine or self.engine).index.manifest
        return {k: int(v) for k, v in manifest.get("counts", {}).items()}

    def add_document(self, filename: str | None, content_type: str | None, data: bytes) -> UploadResult:
        """Check an upload, save it into the docs folder and rebuild; nothing is left half-written."""
        name = safe_filename(filename)
        media = (content_type or "").split(";")[0].strip().lower()
        if media not in UPLOAD_CONTENT_TYPES and not media.startswith("text/"):
            raise HTTPException(
                415,
                f"{name}: content type {media} is not text; upload a .txt or .md file",
            )
        limit = self.settings.max_upload_bytes
        if len(data) > limit:
            raise HTTPException(
                413,
                f"{name} is larger than the limit of {limit} bytes (RAG_MAX_UPLOAD_BYTES)",
            )
        if not data.strip():
            raise HTTPException(400, f"{name} is empty")
        docs_dir = self.settings.docs_dir
        with self._write_lock:
            staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=docs_dir))
            try:
                staged = staging / name
                staged.write_bytes(data)
                articles = read_document(staged)  # IngestError names the file
                if not articles:
                    raise IngestError(f"{name}: contains no article text")
                dest = docs_dir / name
                replaced = dest.exists()
                backup = staging / ".previous"
                if replaced:
                    shutil.copy2(dest, backup)
                staged.replace(dest)
                try:
                    engine = self._rebuild()
                except BaseException:
                    if replaced:
                        backup.replace(dest)
                    else:
                        dest.unlink(missing_ok=True)
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        summaries = [_summary(a) for a in engine.index.articles.values() if a.source == name]
        return UploadResult(
            source=name,
            replaced=replaced,
            articles=summaries,
            counts=self.counts(engine),
        )

    def delete_document(self, doc_id: str) -> DeleteResult:
        """Remove a source file (named directly or by one of its article ids) and rebuild."""
        docs_dir = self.settings.docs_dir
        with self._write_lock:
            articles = self.engine.index.articles
            source = articles[doc_id].source if doc_id in articles else doc_id
            paths = [p for p in list_documents(docs_dir) if p.name == source]
            if not paths:
                raise HTTPException(404, f"no document {doc_id!r}; GET /documents lists them")
            if len({p.name for p in list_documents(docs_dir)}) <= 1:
                raise HTTPException(409, f"{source} is the last document; the index cannot be empty")
            removed = [a.id for a in articles.values() if a.source == source]
            staging = Path(tempfile.mkdtemp(prefix=".delete-", dir=docs_dir))
            try:
                moved = [(p, staging / f"{i}{p.suffix}") for i, p in enumerate(paths)]
                for original, parked in moved:
                    original.replace(parked)
                try:
                    engine = self._rebuild()
                except BaseException:
                    for original, parked in moved:
                        parked.replace(original)
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return DeleteResult(deleted=source, articles=removed, counts=self.counts(engine))


def safe_filename(raw: str | None) -> str:
    """The upload's name reduced to a safe base name in the docs folder, suffix kept.

    Directory parts are dropped (``../../x.txt`` is saved as ``x.txt``), characters other
    than letters, digits, ``_``, ``-`` and ``.`` become ``_``, and leading dots go (no
    hidden files). Anything but ``.txt``/``.md`` is refused (415).
    """
    if not raw or not raw.strip():
        raise HTTPException(400, "the uploaded file has no name; send it as a .txt or .md file")
    name = unicodedata.normalize("NFKC", raw).replace("\x00", "")
    name = re.split(r"[/\\]", name)[-1].strip()
    suffix = Path(name).suffix.lower()
    if suffix not in DOC_SUFFIXES:
        raise HTTPException(415, f"{raw}: only .txt and .md files can be added")
    stem = re.sub(r"[^\w.-]+", "_", name[: -len(suffix)])
    stem = re.sub(r"\.{2,}", ".", stem).strip("._-")[:100]
    if not stem:
        raise HTTPException(400, f"{raw}: not a usable file name; name it like 报道.txt")
    return stem + suffix


# --------------------------------------------------------------------------------------
# Conversions


def _summary(article: Article) -> DocumentSummary:
    return DocumentSummary(
        id=article.id,
        source=article.source,
        title=article.title,
        position=article.position,
    )


def _citation(c: Citation) -> CitationOut:
    return CitationOut(
        id=c.id,
        article_id=c.article_id,
        source=c.source,
        title=c.title,
        text=c.text,
        score=c.score,
        start=c.start,
        end=c.end,
        highlight=tuple(c.highlight) if c.highlight is not None else None,  # type: ignore[arg-type]
    )


def _ask_response(answer: Answer, total_ms: float) -> AskResponse:
    t = answer.timings_ms
    return AskResponse(
        question=answer.question,
        answer=answer.answer,
        answer_sentence=answer.answer_sentence,
        abstained=answer.abstained,
        mode=answer.mode,
        citations=[_citation(c) for c in answer.citations],
        warnings=list(answer.warnings),
        timings_ms=Timings(
            retrieve=float(t.get("retrieve", 0.0)),
            answer=float(t.get("answer", 0.0)),
            total=float(t.get("total", round(total_ms, 2))),
        ),
    )


def _hit(h: Hit) -> SearchHitOut:
    c = h.chunk
    return SearchHitOut(
        rank=h.rank,
        score=h.score,
        dense_score=h.dense_score,
        bm25_score=h.bm25_score,
        chunk_id=c.id,
        article_id=c.article_id,
        source=c.source,
        title=c.title,
        text=c.text,
        start=c.start,
        end=c.end,
    )


def _turns(history: list[HistoryTurn]) -> list[Turn]:
    return [Turn(role=t.role, content=t.content) for t in history]


def sources_text(answer: Answer) -> str:
    """The "来源：" list appended to chat answers: the cited sources, or all when none is marked."""
    if answer.abstained or not answer.citations:
        return ""
    marked = {int(n) for n in re.findall(r"\[(\d+)\]", answer.answer)}
    cited = [c for c in answer.citations if c.id in marked] or answer.citations
    lines = [f"[{c.id}] {c.title}（{c.source}）" for c in cited]
    return f"\n\n{SOURCES_HEADING}\n" + "\n".join(lines)


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _error_detail(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, RagError) else "internal error while answering; see the server log"


# --------------------------------------------------------------------------------------
# Middleware and error handlers


class SecurityHeadersMiddleware:
    """Adds the content security policy and friends to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        csp = DOCS_CSP if scope["path"] in DOCS_PATHS else CSP

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["content-security-policy"] = csp
                for key, value in SECURITY_HEADERS:
                    headers[key] = value
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _error_response(
    request: Request,
    status: int,
    detail: Any,
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {"detail": detail, **extra}
    if request.url.path.startswith("/v1/"):
        # OpenAI clients read ``error.message``.
        message = extra.get("message") or (
            detail if isinstance(detail, str) else json.dumps(detail, ensure_ascii=False)
        )
        body["error"] = {
            "message": message,
            "type": "invalid_request_error",
            "param": None,
            "code": status,
        }
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


def _field_name(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "body"


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k in ("type", "loc", "msg")} for e in exc.errors()]
    if any(e.get("type") == "json_invalid" for e in errors):
        bad = next(e for e in errors if e.get("type") == "json_invalid")
        message = f"request body is not valid JSON ({bad.get('msg')}); send a JSON object"
        return _error_response(request, 400, errors, message=message)
    message = "; ".join(f"{_field_name(e.get('loc', ()))}: {e.get('msg')}" for e in errors)
    return _error_response(request, 422, errors, message=message)


async def _rag_error_handler(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, QuestionError):
        # Shaped like FastAPI's own 422 so the documented schema holds.
        detail = [{"type": "value_error", "loc": ["body", "question"], "msg": str(exc)}]
        return _error_response(request, 422, detail, message=f"question: {exc}")
    return _error_response(request, 400, str(exc))


async def _server_error_handler(request: Request, exc: Exception) -> JSONResponse:
    # Runs outside the middleware stack (in Starlette's ServerErrorMiddleware): add the headers here.
    headers = {"content-security-policy": CSP, **dict(SECURITY_HEADERS)}
    return JSONResponse({"detail": "internal server error; see the server log"}, 500, headers=headers)


async def _http_error_handler(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    return _error_response(request, exc.status_code, exc.detail, headers=exc.headers)


# --------------------------------------------------------------------------------------
# Dependencies


def get_service(request: Request) -> Service:
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
    if not secrets.compare_digest(given.encode(), token.encode()):
        raise HTTPException(
            401,
            "missing or wrong admin token; send Authorization: Bearer <RAG_ADMIN_TOKEN>",
            headers={"WWW-Authenticate": "Bearer"},
        )


_JSON_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "Malformed JSON or a user error"},
    415: {"model": ErrorOut, "description": "The body is not JSON"},
}
_ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or wrong admin token"},
    403: {"model": ErrorOut, "description": "Uploads are off (RAG_ADMIN_TOKEN unset)"},
}


# --------------------------------------------------------------------------------------
# The app


def _static_version() -> str:
    h = hashlib.sha256()
    static = WEB_DIR / "static"
    for p in sorted(static.rglob("*")) if static.is_dir() else []:
        if p.is_file():
            h.update(p.name.encode() + str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()[:10]


def _add_offline_docs(app: FastAPI) -> None:
    """``/docs`` (Swagger UI) with its JavaScript served by this app, not a CDN.

    No ``/redoc``: ReDoc always fetches its logo from its vendor's CDN.
    """
    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_STATIC, StaticFiles(directory=assets), name="docs-static")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - API",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{DOCS_STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_STATIC}/favicon.png",
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


def create_app(settings: Settings, *, embedder: Embedder | None = None) -> FastAPI:
    """The FastAPI app for ``settings``; ``embedder`` reuses an already loaded model."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.service = await run_in_threadpool(Service.start, settings, embedder)
        yield

    app = FastAPI(
        title="rag-zh",
        summary="Offline Chinese news search and question answering with citations.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served below, from local files
        redoc_url=None,
    )
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(RagError, _rag_error_handler)
    app.add_exception_handler(StarletteHTTPException, _http_error_handler)
    app.add_exception_handler(Exception, _server_error_handler)
    app.mount("/static", StaticFiles(directory=WEB_DIR / "static"), name="static")
    _add_offline_docs(app)
    templates = Jinja2Templates(directory=WEB_DIR / "templates")
    static_version = _static_version()

    # ---- pages ----------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page(request: Request) -> Response:
        return templates.TemplateResponse(
            request, "index.html", {"examples": EXAMPLE_QUESTIONS, "v": static_version}
        )

    @app.get("/read/{doc_id:path}", response_class=HTMLResponse, include_in_schema=False)
    def read_page(
        request: Request,
        service: ServiceDep,
        doc_id: str,
        start: int | None = None,
        end: int | None = None,
    ) -> Response:
        article = service.engine.index.articles.get(doc_id)
        if article is None:
            return templates.TemplateResponse(
                request,
                "missing.html",
                {"doc_id": doc_id, "v": static_version},
                status_code=404,
            )
        text = article.text
        parts = (text, "", "")
        if start is not None and end is not None and 0 <= start < end <= len(text):
            parts = (text[:start], text[start:end], text[end:])
        return templates.TemplateResponse(
            request,
            "read.html",
            {"article": article, "parts": parts, "v": static_version},
        )

    # ---- JSON API -------------------------------------------------------------------

    @app.post(
        "/ask",
        response_model=AskResponse,
        dependencies=[Depends(require_json)],
        responses=_JSON_ERRORS,
        tags=["qa"],
    )
    def ask(body: AskRequest, service: ServiceDep) -> AskResponse:
        """Answer a question from the corpus, with [n] citations pointing at the supporting sentence."""
        started = time.perf_counter()
        answer = service.engine.answerer.answer(
            body.question,
            top_k=body.top_k,
            history=_turns(body.history),
            mode=body.mode,
        )
        return _ask_response(answer, (time.perf_counter() - started) * 1000)

    @app.post(
        "/ask/stream",
        dependencies=[Depends(require_json)],
        responses={
            200: {
                "content": {"text/event-stream": {}},
                "description": "SSE: delta events, then answer",
            },
            **_JSON_ERRORS,
        },
        tags=["qa"],
    )
    def ask_stream(body: AskRequest, service: ServiceDep) -> StreamingResponse:
        """Server-sent events: ``delta`` ``{"text"}`` pieces, then one ``answer`` event (the /ask JSON),
        or an ``error`` event ``{"detail"}``."""
        answerer = service.engine.answerer

        def events() -> Iterator[str]:
            started = time.perf_counter()
            try:
                stream = answerer.answer_stream(
                    body.question,
                    top_k=body.top_k,
                    history=_turns(body.history),
                    mode=body.mode,
                )
                for event in stream:
                    if isinstance(event, str):
                        if event:
                            yield _sse("delta", {"text": event})
                    else:
                        response = _ask_response(event, (time.perf_counter() - started) * 1000)
                        yield _sse("answer", response.model_dump(mode="json"))
            except Exception as exc:
                if not isinstance(exc, RagError):
                    log.exception("answering %r failed", body.question)
                yield _sse("error", {"detail": _error_detail(exc)})

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @app.get("/search", response_model=SearchResponse, tags=["qa"])
    def search(
        service: ServiceDep,
        q: Annotated[
            str,
            Query(
                min_length=1,
                max_length=MAX_QUESTION_CHARS,
                description="The query (not only whitespace).",
                json_schema_extra={"pattern": r"\S"},
            ),
            AfterValidator(_nonblank_query),
        ],
        k: Annotated[int, Query(ge=1, le=50, description="How many chunks.")] = 5,
        mode: Annotated[
            RetrievalMode | None,
            Query(description="hybrid, dense or bm25 (default from settings)."),
        ] = None,
    ) -> SearchResponse:
        """Rank the passages that best match a query."""
        retriever = service.engine.retriever
        started = time.perf_counter()
        hits = retriever.search(q, k=k, mode=mode)
        took = round((time.perf_counter() - started) * 1000, 2)
        return SearchResponse(
            query=q.strip(),
            mode=mode or service.settings.mode,
            hits=[_hit(h) for h in hits],
            timings_ms={"total": took},
        )

    @app.get("/documents", response_model=list[DocumentSummary], tags=["documents"])
    def documents(service: ServiceDep) -> list[DocumentSummary]:
        """Every article in the index, in corpus order."""
        return [_summary(a) for a in service.engine.index.articles.values()]

    @app.get(
        "/documents/{doc_id:path}",
        response_model=DocumentOut,
        responses={404: {"model": ErrorOut, "description": "Unknown article id"}},
        tags=["documents"],
    )
    def document(doc_id: str, service: ServiceDep) -> DocumentOut:
        """One cleaned article by id (``source#position``; URL-encode the ``#`` as ``%23``)."""
        article = service.engine.index.articles.get(doc_id)
        if article is None:
            raise HTTPException(404, f"no article {doc_id!r}; GET /documents lists them")
        return DocumentOut(
            **_summary(article).model_dump(),
            kicker=article.kicker,
            subtitle=article.subtitle,
            byline=article.byline,
            text=article.text,
        )

    @app.post(
        "/documents",
        status_code=201,
        response_model=UploadResult,
        dependencies=[Depends(require_admin)],
        responses={
            **_ADMIN_ERRORS,
            400: {"model": ErrorOut, "description": "Unreadable or empty document"},
            413: {"model": ErrorOut, "description": "Larger than RAG_MAX_UPLOAD_BYTES"},
            415: {"model": ErrorOut, "description": "Not a .txt or .md text file"},
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                            "required": ["file"],
                        }
                    }
                },
            }
        },
        tags=["documents"],
    )
    async def upload(request: Request, service: ServiceDep) -> UploadResult:
        """Add (or replace) a .txt/.md document; it is indexed at once and answerable by the next request."""
        limit = service.settings.max_upload_bytes
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != "multipart/form-data":
            raise HTTPException(415, "upload the document as multipart/form-data in a field named file")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit + MULTIPART_OVERHEAD:
            raise HTTPException(
                413,
                f"upload is larger than the limit of {limit} bytes (RAG_MAX_UPLOAD_BYTES)",
            )
        async with request.form(max_files=1, max_fields=4) as form:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise HTTPException(422, "no file in the form field named file")
            data = await file.read(limit + 1)
            name, content_type = file.filename, file.content_type
        return await run_in_threadpool(service.add_document, name, content_type, data)

    @app.delete(
        "/documents/{doc_id:path}",
        response_model=DeleteResult,
        dependencies=[Depends(require_admin)],
        responses={
            **_ADMIN_ERRORS,
            404: {"model": ErrorOut, "description": "No such article or file"},
            409: {"model": ErrorOut, "description": "It is the last document"},
        },
        tags=["documents"],
    )
    def delete(doc_id: str, service: ServiceDep) -> DeleteResult:
        """Remove a source file (by file name or by one of its article ids) and re-index."""
        return service.delete_document(doc_id)

    @app.get("/healthz", response_model=HealthOut, tags=["service"])
    def healthz(service: ServiceDep) -> HealthOut:
        """Liveness and what is loaded."""
        manifest = service.engine.index.manifest
        return HealthOut(
            status="ok",
            model=service.embedder.model_id,
            counts=service.counts(),
            built_at=manifest.get("built_at"),
            uploads_enabled=bool(service.settings.admin_token),
        )

    # ---- OpenAI-compatible ----------------------------------------------------------

    @app.get("/v1/models", response_model=ModelList, tags=["openai"])
    def models(service: ServiceDep) -> ModelList:
        """The one model this server offers."""
        return ModelList(data=[_model_card(service)])

    @app.get("/v1/models/{model_id}", response_model=ModelCard, tags=["openai"])
    def model(model_id: str, service: ServiceDep) -> ModelCard:
        if model_id != MODEL_ID:
            raise HTTPException(404, f"model {model_id!r} not found; this server offers {MODEL_ID}")
        return _model_card(service)

    @app.post(
        "/v1/chat/completions",
        response_model=ChatCompletion,
        dependencies=[Depends(require_json)],
        responses={200: {"content": {"text/event-stream": {}}}, **_JSON_ERRORS},
        tags=["openai"],
    )
    def chat_completions(body: ChatCompletionRequest, service: ServiceDep) -> Response | ChatCompletion:
        """OpenAI chat completions: the last user message is the question, earlier turns the history.

        The reply text carries [n] markers and ends with a 来源： list; the extra field
        ``citations`` (in the final chunk when streaming) has the passages.
        """
        question, history = _chat_question(body)
        answerer = service.engine.answerer
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        if not body.stream:
            answer = answerer.answer(question, top_k=body.top_k, history=history, mode=body.rag_mode)
            return ChatCompletion(
                id=completion_id,
                created=created,
                model=MODEL_ID,
                choices=[
                    ChatChoice(
                        index=0,
                        message=ChatMessageOut(content=answer.answer + sources_text(answer)),
                        finish_reason="stop",
                    )
                ],
                usage=Usage(),
                citations=[_citation(c) for c in answer.citations],
            )

        def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
            data = {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL_ID,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                **extra,
            }
            return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

        def events() -> Iterator[str]:
            yield chunk({"role": "assistant", "content": ""})
            try:
                final: Answer | None = None
                for event in answerer.answer_stream(
                    question, top_k=body.top_k, history=history, mode=body.rag_mode
                ):
                    if isinstance(event, str):
                        if event:
                            yield chunk({"content": event})
                    else:
                        final = event
                if final is None:
                    raise RuntimeError("the answerer ended without an answer")
                sources = sources_text(final)
                if sources:
                    yield chunk({"content": sources})
                citations = [_citation(c).model_dump(mode="json") for c in final.citations]
                yield chunk({}, "stop", citations=citations)
            except Exception as exc:
                if not isinstance(exc, RagError):
                    log.exception("chat completion for %r failed", question)
                error = {
                    "message": _error_detail(exc),
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
                yield f"data: {json.dumps({'error': error}, ensure_ascii=False)}\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return app


def _model_card(service: Service) -> ModelCard:
    built = service.engine.index.manifest.get("built_at")
    created = 0
    if isinstance(built, str):
        from datetime import datetime

        try:
            created = int(datetime.fromisoformat(built).timestamp())
        except ValueError:
            created = 0
    return ModelCard(id=MODEL_ID, created=created, owned_by="rag-zh")


def _chat_question(body: ChatCompletionRequest) -> tuple[str, list[Turn]]:
    """The last user message is the question; earlier user/assistant messages are the history."""
    last = max((i for i, m in enumerate(body.messages) if m.role == "user"), default=None)
    if last is None:
        raise HTTPException(422, "messages: there is no message with role user to answer")
    question = body.messages[last].text()
    try:
        _nonblank(question)
    except ValueError as exc:
        raise QuestionError(f"messages[{last}].content: {exc}") from None
    history = []
    for m in body.messages[:last]:
        content = m.text()
        if m.role == "assistant":  # our own earlier replies: drop the 来源 list we appended
            content = content.split(f"\n\n{SOURCES_HEADING}\n", 1)[0]
        if m.role in ("user", "assistant") and content.strip():
            history.append(Turn(role=m.role, content=content))
    return question, history
