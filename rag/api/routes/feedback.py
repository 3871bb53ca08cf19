"""Feedback: readers rate answers (``POST /feedback``); the newsroom exports them (``GET /feedback``)."""

from __future__ import annotations

import io
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from rag.api.deps import ADMIN_ERRORS, JSON_ERRORS, ServiceDep, require_admin, require_json
from rag.api.schemas import FeedbackCreated
from rag.feedback import Feedback

router = APIRouter(tags=["feedback"])

EXPORT_OFF = (
    "导出反馈需要管理员令牌，而服务器未设置 RAG_ADMIN_TOKEN；"
    "请设置后重启服务，或在服务器上运行 rag feedback-export"
)
_bearer = HTTPBearer(auto_error=False, description="RAG_ADMIN_TOKEN")


def require_export_admin(
    service: ServiceDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """The admin token, as for documents; with none set, the 403 says how to export instead."""
    try:
        require_admin(service, credentials)
    except HTTPException as exc:
        if exc.status_code == 403:
            raise HTTPException(403, EXPORT_OFF) from None
        raise


@router.post(
    "/feedback",
    status_code=201,
    response_model=FeedbackCreated,
    dependencies=[Depends(require_json)],
    responses=JSON_ERRORS,
)
def add_feedback(body: Feedback, service: ServiceDep) -> FeedbackCreated:
    """Store a thumbs up or down on an answer, with the question, the answer and its citations."""
    return FeedbackCreated(id=service.feedback.add(body), rating=body.rating)


@router.get(
    "/feedback",
    dependencies=[Depends(require_export_admin)],
    responses={
        200: {"content": {"application/x-ndjson": {}}, "description": "One JSON object per rating"},
        **ADMIN_ERRORS,
    },
)
def export_feedback(service: ServiceDep) -> Response:
    """Every rating, oldest first, as JSON Lines (admin token): ``id``, ``created_at``, the rest as posted."""
    out = io.StringIO()
    service.feedback.export_jsonl(out)
    return Response(
        out.getvalue(),
        media_type="application/x-ndjson",
        headers={"Content-Disposition": "attachment; filename=feedback.jsonl"},
    )
