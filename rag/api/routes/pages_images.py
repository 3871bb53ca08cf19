"""Page images: ``GET /page-images/{n}?source=...`` answers the PNG of page ``n`` of a scan or PDF.

Only a source the live index holds is served, looked up by name, never a path taken from
the request (as :meth:`~rag.api.service.Service.submit_delete` does): ``../x.pdf`` is no
indexed document, so nothing outside the docs folder can be reached. ``highlight`` (a
cited passage) draws a frame around the OCR lines that hold it.

The path is outside ``/documents/``: ``/documents/{doc_id:path}`` would swallow any
``/documents/<source>/pages/<n>``.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from rag.api.deps import ServiceDep
from rag.api.schemas import ErrorOut
from rag.errors import NotFoundError
from rag.ocr import IMAGE_SUFFIXES, OcrError, find_lines, highlight, ocr_image, page_image

log = logging.getLogger(__name__)

router = APIRouter()

PAGED_SUFFIXES = (".pdf", *IMAGE_SUFFIXES)
"""Sources that have page images: PDFs and scans."""
MAX_HIGHLIGHT_CHARS = 2000


@router.get(
    "/page-images/{number}",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The page as PNG (PDF pages at 300 dpi)"},
        404: {"model": ErrorOut, "description": "No such indexed PDF or image, or no such page"},
    },
    tags=["documents"],
)
def page_png(
    service: ServiceDep,
    number: Annotated[int, Path(ge=1, le=100_000, description="1-based page number")],
    source: Annotated[str, Query(max_length=1000, description="The file's path in the docs folder")],
    highlight_text: Annotated[
        str | None,
        Query(alias="highlight", max_length=MAX_HIGHLIGHT_CHARS, description="Frame the lines holding it"),
    ] = None,
) -> Response:
    """Page ``number`` of an indexed PDF or image as PNG, optionally with a passage framed."""
    engine = service.engine
    path = service.settings.docs_dir / source
    if (
        source not in service.indexed_sources(engine)
        or not source.lower().endswith(PAGED_SUFFIXES)
        or not path.is_file()
    ):
        raise NotFoundError(f"no indexed PDF or image {source!r}; GET /documents lists them")
    try:
        png = page_image(path.read_bytes(), path.suffix, number)
    except OcrError as exc:
        raise NotFoundError(f"{source}：{exc}") from None
    if highlight_text and highlight_text.strip():
        # OCR of the rendered page gives the boxes (a PDF's text layer is not consulted).
        lines = find_lines(ocr_image(png), highlight_text)
        if lines:
            png = highlight(png, [line.box for line in lines])
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=300"})
