"""Service health: liveness (``GET /healthz``) and readiness (``GET /readyz``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from rag import milvus_store
from rag.api.deps import ServiceDep
from rag.api.schemas import HealthOut, ReadyOut
from rag.index import verify_loaded

router = APIRouter(tags=["service"])


@router.get("/healthz", response_model=HealthOut)
def healthz(service: ServiceDep) -> HealthOut:
    """Liveness and what is loaded."""
    return HealthOut(
        status="ok",
        model=service.embedder.model_id,
        counts=service.counts(),
        built_at=service.engine.index.manifest.get("built_at"),
        uploads_enabled=bool(service.settings.admin_token),
    )


@router.get(
    "/readyz",
    response_model=ReadyOut,
    responses={503: {"model": ReadyOut, "description": "Not ready: the problems say why"}},
)
def readyz(service: ServiceDep) -> JSONResponse:
    """Readiness: 200 when the served index agrees with itself (FAISS, vectors, chunks, articles
    and BM25 all of one size), 503 with the problems otherwise; ``warnings`` tells a fallback.

    With ``RAG_BACKEND=milvus`` the collection is asked again on every call: the server answers,
    the collection exists and holds the rows the manifest records (it can be dropped, or the
    server stopped, behind the service's back)."""
    index = service.engine.index
    problems = verify_loaded(index)
    if not index.path.is_dir():
        problems.append(f"{index.path} 已不在磁盘上；请重建索引：rag build")
    problems += milvus_store.problems(index.store, index.manifest)
    body = ReadyOut(
        ready=not problems,
        build=index.path.name,
        counts=service.counts(),
        problems=problems,
        warnings=list(index.warnings),
    )
    return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)
