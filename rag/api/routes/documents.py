"""Documents: list and read the indexed articles; add and remove source files (admin token)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from rag.api.deps import ADMIN_ERRORS, ServiceDep, require_admin
from rag.api.schemas import DeleteResult, DocumentList, DocumentOut, DocumentSummary, ErrorOut, UploadResult
from rag.errors import PayloadTooLargeError

router = APIRouter()

MULTIPART_OVERHEAD = 64 * 1024
"""Room for the multipart framing around the file when the request's length is checked."""

UPLOAD_BODY = {
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
}
"""The upload's body for the OpenAPI schema (the route reads the form itself, to bound it)."""


@router.get("/documents", response_model=DocumentList, tags=["documents"])
def documents(service: ServiceDep) -> DocumentList:
    """The indexed files (with article and chunk counts), the files skipped and why, every article."""
    return DocumentList.from_listing(service.document_list())


@router.get(
    "/documents/{doc_id:path}",
    response_model=DocumentOut,
    responses={404: {"model": ErrorOut, "description": "Unknown article id"}},
    tags=["documents"],
)
def document(doc_id: str, service: ServiceDep) -> DocumentOut:
    """One cleaned article by id (``source#position``; URL-encode the ``#`` as ``%23``)."""
    return DocumentOut.from_full_article(service.article(doc_id))


@router.post(
    "/documents",
    status_code=201,
    response_model=UploadResult,
    dependencies=[Depends(require_admin)],
    responses={
        **ADMIN_ERRORS,
        400: {"model": ErrorOut, "description": "Unreadable or empty document"},
        413: {"model": ErrorOut, "description": "Larger than RAG_MAX_UPLOAD_BYTES"},
        415: {"model": ErrorOut, "description": "Not a .txt or .md text file"},
    },
    openapi_extra=UPLOAD_BODY,
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
        raise PayloadTooLargeError(f"upload is larger than the limit of {limit} bytes (RAG_MAX_UPLOAD_BYTES)")
    async with request.form(max_files=1, max_fields=4) as form:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise HTTPException(422, "no file in the form field named file")
        # One byte past the limit is enough to tell an oversized file.
        data = await file.read(limit + 1)
        name, content_type = file.filename, file.content_type
    added = await run_in_threadpool(service.add_document, name, content_type, data)
    return UploadResult(
        source=added.source,
        replaced=added.replaced,
        articles=[DocumentSummary.from_article(a) for a in added.articles],
        counts=added.counts,
    )


@router.delete(
    "/documents/{doc_id:path}",
    response_model=DeleteResult,
    dependencies=[Depends(require_admin)],
    responses={
        **ADMIN_ERRORS,
        404: {"model": ErrorOut, "description": "No such article or file"},
        409: {"model": ErrorOut, "description": "It is the last document"},
    },
    tags=["documents"],
)
def delete(doc_id: str, service: ServiceDep) -> DeleteResult:
    """Remove a source file (by its path in the docs folder or by one of its article ids) and re-index."""
    deleted = service.delete_document(doc_id)
    return DeleteResult(deleted=deleted.source, articles=deleted.article_ids, counts=deleted.counts)
