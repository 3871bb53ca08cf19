"""Questions: ``POST /ask``, its streamed form ``POST /ask/stream``, ``GET /search`` and ``GET /examples``."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import StreamingResponse
from pydantic import AfterValidator

from rag.answer import Answerer
from rag.api.deps import ANSWER_ERRORS, BUSY_ERRORS, ServiceDep, check_conversation_size, require_json
from rag.api.errors import one_line
from rag.api.schemas import (
    MAX_SEARCH_K,
    QUESTION_SCHEMA,
    AskRequest,
    AskResponse,
    ExamplesOut,
    SearchHitOut,
    SearchResponse,
    valid_question,
)
from rag.api.service import Service
from rag.errors import RagError
from rag.models import Answer, Retraction
from rag.settings import RetrievalMode

log = logging.getLogger(__name__)

router = APIRouter(tags=["qa"])

STREAM_FAILED = "internal error while answering; see the server log"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
"""No caching, and no buffering by a reverse proxy (nginx reads ``X-Accel-Buffering``)."""


def sse(event: str, data: Any) -> str:
    """One server-sent event."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def _elapsed_ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


@router.post(
    "/ask", response_model=AskResponse, dependencies=[Depends(require_json)], responses=ANSWER_ERRORS
)
def ask(body: AskRequest, service: ServiceDep) -> AskResponse:
    """Answer a question from the corpus, with [n] citations pointing at the supporting sentence."""
    check_size(body, service)
    started = time.perf_counter()
    answer = service.engine.answerer.answer(
        body.question, top_k=body.top_k, history=body.turns(), answer_mode=body.answer_mode
    )
    return AskResponse.from_answer(answer, _elapsed_ms(started))


def check_size(body: AskRequest, service: Service) -> None:
    """The question and its history together within ``RAG_MAX_CONVERSATION_CHARS`` (else 413)."""
    texts = [body.question, *(turn.content for turn in body.history)]
    check_conversation_size(texts, service.settings.max_conversation_chars, "history")


def ask_events(answerer: Answerer, body: AskRequest) -> Iterator[str]:
    """The SSE stream of one answer: ``delta`` pieces, maybe ``retract``, then ``answer`` or ``error``."""
    started = time.perf_counter()
    try:
        for event in answerer.answer_stream(
            body.question, top_k=body.top_k, history=body.turns(), answer_mode=body.answer_mode
        ):
            if isinstance(event, Answer):
                yield sse(
                    "answer", AskResponse.from_answer(event, _elapsed_ms(started)).model_dump(mode="json")
                )
            elif isinstance(event, Retraction):
                yield sse("retract", {"reason": one_line(event.reason)})
            elif event:
                yield sse("delta", {"text": event})
    except RagError as exc:
        yield sse("error", {"detail": one_line(str(exc))})
    # The 200 and the first events are already sent, so no exception handler can answer any
    # more: whatever fails (a bug included) can only end the stream as an error event.
    except Exception:
        log.exception("answering %r failed", body.question)
        yield sse("error", {"detail": STREAM_FAILED})


@router.post(
    "/ask/stream",
    dependencies=[Depends(require_json)],
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "SSE: delta events, then answer"},
        **ANSWER_ERRORS,
    },
)
def ask_stream(body: AskRequest, service: ServiceDep) -> StreamingResponse:
    """Server-sent events as the answer is produced.

    ``delta`` ``{"text"}`` pieces; ``retract`` ``{"reason"}`` when the text so far is to be
    dropped (an LLM answer that failed its citation check; the extractive answer follows);
    then one ``answer`` event (the /ask JSON), or an ``error`` event ``{"detail"}``.
    """
    check_size(body, service)
    # The engine is read once: a rebuild during the stream does not switch indexes midway.
    return StreamingResponse(
        ask_events(service.engine.answerer, body), media_type="text/event-stream", headers=STREAM_HEADERS
    )


Q = Annotated[
    str,
    Query(description="The query (not only whitespace).", json_schema_extra=QUESTION_SCHEMA),
    AfterValidator(valid_question),
]
K = Annotated[int | None, Query(ge=1, le=MAX_SEARCH_K, description="How many chunks (default: RAG_TOP_K).")]
Mode = Annotated[
    RetrievalMode | None, Query(description="hybrid, dense or bm25 (default: RAG_RETRIEVAL_MODE).")
]
OldMode = Annotated[RetrievalMode | None, Query(deprecated=True, description="Old name of retrieval_mode.")]


@router.get("/search", response_model=SearchResponse, responses=BUSY_ERRORS)
def search(
    service: ServiceDep, q: Q, k: K = None, retrieval_mode: Mode = None, mode: OldMode = None
) -> SearchResponse:
    """Rank the passages that best match a query."""
    chosen = retrieval_mode or mode or service.settings.retrieval_mode
    started = time.perf_counter()
    hits = service.engine.retriever.search(q, k=k, retrieval_mode=chosen)
    return SearchResponse(
        query=q.strip(),
        retrieval_mode=chosen,
        hits=[SearchHitOut.from_hit(h) for h in hits],
        timings_ms={"total": round(_elapsed_ms(started), 2)},
    )


@router.get("/examples", response_model=ExamplesOut)
def examples(service: ServiceDep) -> ExamplesOut:
    """Example questions for the corpus being served: ``questions.txt`` of the docs folder, or
    questions made from its articles that the extractive answerer answers from them."""
    return ExamplesOut.from_examples(service.examples())
