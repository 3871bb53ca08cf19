"""Documents: list and read the indexed articles; add and remove source files (admin token).

Adding and removing are jobs: ``POST /documents`` and ``DELETE /documents/{id}`` check the
request at once and answer ``202`` with the queued job (and ``Location``); ``GET
/documents/jobs/{id}`` says how it went. The index is rebuilt by the service's worker
thread while queries keep answering from the current one.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from python_multipart.multipart import DEFAULT_MAX_HEADER_SIZE
from starlette.convertors import Convertor, register_url_convertor
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from rag.api.deps import ADMIN_ERRORS, ServiceDep, require_admin
from rag.api.schemas import DocumentIndexList, DocumentOut, ErrorOut, JobAccepted, JobOut
from rag.api.service import Job
from rag.errors import NotFoundError, PayloadTooLargeError

router = APIRouter()

MULTIPART_OVERHEAD = 64 * 1024
"""Room for the multipart framing around the file when the request's length is checked."""
MULTIPART_HEADER_LIMIT = DEFAULT_MAX_HEADER_SIZE
"""The longest header line of one form part (python-multipart's default, used by Starlette)."""


class JobIdConvertor(Convertor[str]):
    """A job id: 32 hex digits (``uuid4().hex``).

    Never a document id (those end in ``.txt``/``.md`` or ``#n``), so
    ``/documents/jobs/<id>`` cannot shadow an article of a ``jobs/`` subfolder: any other
    ``/documents/jobs/...`` path falls through to the document route.
    """

    regex = "[0-9a-f]{32}"

    def convert(self, value: str) -> str:
        """The id as matched."""
        return value

    def to_string(self, value: str) -> str:
        """The id in a URL."""
        return value


register_url_convertor("jobid", JobIdConvertor())

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

ACCEPTED = {
    "description": "Queued: poll the job (``Location``) until it is done or failed",
    "headers": {"Location": {"description": "/documents/jobs/{id}", "schema": {"type": "string"}}},
}
"""The documented ``202`` of the routes that queue a job."""


def multipart_error(exc: StarletteHTTPException) -> StarletteHTTPException:
    """Starlette's 400 for a form it cannot parse, saying why when the reason is a long file name.

    python-multipart refuses a part header line over its limit (4,224 bytes): the
    ``Content-Disposition`` line carries the file name, so a 5,000-character name lands here
    as "Invalid multipart data." with the cause only in the exception chain.
    """
    cause = exc.__context__.__cause__ if exc.__context__ is not None else None
    if cause is not None and "header size" in str(cause):
        return HTTPException(
            400,
            f"a header of the upload (its file name) is longer than the {MULTIPART_HEADER_LIMIT} bytes "
            "a form part may have; shorten the file name",
        )
    return exc


def accepted(job: Job, response: Response) -> JobAccepted:
    """The 202 body for a queued job, with ``Location`` set to where it is polled."""
    response.headers["Location"] = f"/documents/jobs/{job.id}"
    return JobAccepted(job=JobOut.from_job(job))


@router.get("/documents", response_model=DocumentIndexList, tags=["documents"])
def documents(service: ServiceDep) -> DocumentIndexList:
    """The indexed files (with counts), the files skipped and why, every article, and unindexed files."""
    return DocumentIndexList.from_listing(service.document_list())


@router.get(
    "/documents/jobs/{job_id:jobid}",
    response_model=JobOut,
    responses={404: {"model": ErrorOut, "description": "Unknown job (the last 100 are kept)"}},
    tags=["documents"],
)
def job(job_id: str, service: ServiceDep) -> JobOut:
    """An upload's or delete's job: queued, running, done (what it did) or failed (why, and its status)."""
    return JobOut.from_job(service.job(job_id))


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
    status_code=202,
    response_model=JobAccepted,
    dependencies=[Depends(require_admin)],
    responses={
        **ADMIN_ERRORS,
        202: ACCEPTED,
        400: {"model": ErrorOut, "description": "Unreadable or empty document, or not a usable file name"},
        413: {"model": ErrorOut, "description": "Larger than RAG_MAX_UPLOAD_BYTES"},
        415: {"model": ErrorOut, "description": "Not a .txt or .md text file"},
        422: {"model": ErrorOut, "description": "No file in the form field named file"},
    },
    openapi_extra=UPLOAD_BODY,
    tags=["documents"],
)
async def upload(request: Request, response: Response, service: ServiceDep) -> JobAccepted:
    """Add (or replace) a document (text, PDF, Word, web page, image): checked at once, indexed by a job.

    The document is answerable once ``GET /documents/jobs/{id}`` says ``done``; the job's
    ``source`` is the name it is saved under (cleaned, and shortened past 200 UTF-8 bytes).
    """
    limit = service.settings.max_upload_bytes
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media != "multipart/form-data":
        raise HTTPException(415, "upload the document as multipart/form-data in a field named file")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit + MULTIPART_OVERHEAD:
        raise PayloadTooLargeError(f"upload is larger than the limit of {limit} bytes (RAG_MAX_UPLOAD_BYTES)")
    try:
        form = await request.form(max_files=1, max_fields=4)
    except StarletteHTTPException as exc:  # Starlette's own, not FastAPI's subclass
        raise multipart_error(exc) from None
    try:
        file = form.get("file")
        if not isinstance(file, UploadFile):
            raise HTTPException(422, "no file in the form field named file")
        # One byte past the limit is enough to tell an oversized file.
        data = await file.read(limit + 1)
        name, content_type = file.filename, file.content_type
    finally:
        await form.close()
    queued = await run_in_threadpool(service.submit_upload, name, content_type, data)
    return accepted(queued, response)


@router.delete(
    "/documents/{doc_id:path}",
    status_code=202,
    response_model=JobAccepted,
    dependencies=[Depends(require_admin)],
    responses={
        **ADMIN_ERRORS,
        202: ACCEPTED,
        404: {"model": ErrorOut, "description": "No such article or file"},
        409: {"model": ErrorOut, "description": "It is the last document"},
    },
    tags=["documents"],
)
def delete(doc_id: str, response: Response, service: ServiceDep) -> JobAccepted:
    """Remove a source file (by its path in the docs folder or one of its article ids): a job (202)."""
    return accepted(service.submit_delete(doc_id), response)


@router.delete("/documents", dependencies=[Depends(require_admin)], include_in_schema=False)
def delete_no_id() -> None:
    """``DELETE /documents/.``: clients drop the ``/.`` (RFC 3986 dot segments); still an unknown id.

    Without this route the request would meet the list's ``GET``/``POST`` and answer 405.
    """
    raise NotFoundError("no document ''; GET /documents lists them")
