"""Service health: ``GET /healthz``."""

from __future__ import annotations

from fastapi import APIRouter

from rag.api.deps import ServiceDep
from rag.api.schemas import HealthOut

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
