"""The app factory: wires middleware, exception handlers, static files and the routers.

The models and the index are loaded in the lifespan into a :class:`~rag.api.service.Service`
on ``app.state.service`` (closed at shutdown); the routes stay thin and call it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.staticfiles import StaticFiles

from rag.api.errors import add_handlers
from rag.api.limits import AnswerLimiter
from rag.api.routes import documents, feedback, health, openai, pages, pages_images, questions
from rag.api.security import HostCheckMiddleware, SecurityHeadersMiddleware
from rag.api.service import Service
from rag.embedding import Embedder
from rag.index import SearchIndex
from rag.settings import Settings


def _swagger_assets() -> Path:
    import fastapi_offline

    return Path(fastapi_offline.__file__).parent / "static"


def create_app(
    settings: Settings, *, embedder: Embedder | None = None, index: SearchIndex | None = None
) -> FastAPI:
    """The FastAPI app for ``settings``; ``embedder`` and ``index`` reuse what is already loaded."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service = await run_in_threadpool(Service.start, settings, embedder, index)
        app.state.service = service
        try:
            yield
        finally:
            service.close()

    app = FastAPI(
        title="rag-zh",
        summary="Offline Chinese news search and question answering with citations.",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,  # served by the pages router, from local files
        redoc_url=None,
    )
    # Outermost last: the host check, then the security headers (on every answer, the
    # limiter's 503s included), then the limiter around the routes.
    app.add_middleware(AnswerLimiter, settings=settings)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(HostCheckMiddleware, allowed_hosts=settings.allowed_hosts)
    add_handlers(app)
    app.mount("/static", StaticFiles(directory=pages.WEB_DIR / "static"), name="static")
    app.mount(pages.DOCS_STATIC, StaticFiles(directory=_swagger_assets()), name="docs-static")
    for module in (pages, questions, documents, pages_images, feedback, health, openai):
        app.include_router(module.router)
    return app
