"""OpenAI-compatible endpoints: ``/v1/models`` and ``/v1/chat/completions`` (JSON or SSE).

Any OpenAI client (the ``openai`` SDK, chat UIs that take a base URL) can ask the corpus:
the last user message is the question, earlier user/assistant messages are the history.
The reply carries [n] markers and ends with a 来源： list; the extension field
``citations`` (in the final chunk when streaming) has the passages. ``usage`` counts
tokens with the embedding model's tokenizer (see :func:`usage`); a stream sends it in a
last chunk when asked with ``stream_options: {"include_usage": true}``.
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse

from rag.answer import Answerer
from rag.api.deps import JSON_ERRORS, ServiceDep, require_json
from rag.api.errors import one_line, question_error
from rag.api.routes.questions import STREAM_FAILED, STREAM_HEADERS
from rag.api.schemas import (
    MAX_MESSAGE_CHARS,
    MODEL_ID,
    ChatChoice,
    ChatCompletion,
    ChatCompletionRequest,
    ChatMessageOut,
    CitationOut,
    ErrorOut,
    ModelCard,
    ModelList,
    Usage,
)
from rag.api.service import Service
from rag.embedding import Embedder
from rag.errors import NotFoundError, QuestionError, RagError
from rag.models import Answer, Retraction, Turn
from rag.retrieval import check_question
from rag.settings import Settings

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"])

SOURCES_HEADING = "来源："
CONVERSATION_ROLES: dict[str, Literal["user", "assistant"]] = {"user": "user", "assistant": "assistant"}


def sources_text(answer: Answer) -> str:
    """The "来源：" list appended to chat answers: the cited sources, or all when none is marked."""
    if answer.abstained or not answer.citations:
        return ""
    marked = {int(n) for n in re.findall(r"\[(\d+)\]", answer.answer)}
    cited = [c for c in answer.citations if c.id in marked] or list(answer.citations)
    lines = [f"[{c.id}] {c.chunk.title}（{c.chunk.source}）" for c in cited]
    return f"\n\n{SOURCES_HEADING}\n" + "\n".join(lines)


def retraction_text(reason: str) -> str:
    """What a chat stream sends for a retraction: it cannot take text back, so it says why."""
    return f"\n\n（{one_line(reason)}）\n\n"


def check_request(body: ChatCompletionRequest, settings: Settings) -> None:
    """What the schema cannot say: ``stream_options`` needs ``stream``, and what one request may cost.

    Each message is at most ``MAX_MESSAGE_CHARS`` (as ``/ask`` history), all of them together
    at most ``RAG_MAX_CONVERSATION_CHARS``: the previous user turn goes through jieba, whose
    HMM step is quadratic on long unknown runs (100,000 characters cost 44 s of a core). 413.
    """
    if body.stream_options is not None and not body.stream:
        raise invalid(
            "invalid_value", ("stream_options",), "stream_options is only allowed with stream: true"
        )
    total = 0
    for i, m in enumerate(body.messages):
        size = len(m.text())
        total += size
        if size > MAX_MESSAGE_CHARS:
            msg = f"a message is at most {MAX_MESSAGE_CHARS} characters, this one has {size}"
            raise invalid("string_above_max_length", ("messages", i, "content"), msg)
    limit = settings.max_conversation_chars
    if total > limit:
        msg = (
            f"all messages together are at most {limit} characters (RAG_MAX_CONVERSATION_CHARS), "
            f"these have {total}; send fewer or shorter earlier messages"
        )
        raise invalid("context_length_exceeded", ("messages",), msg)


def invalid(kind: str, loc: tuple[str | int, ...], msg: str) -> RequestValidationError:
    """A bad request body field as FastAPI's own error; ``kind`` becomes OpenAI's ``code``."""
    return RequestValidationError([{"type": kind, "loc": ("body", *loc), "msg": msg}])


def chat_question(body: ChatCompletionRequest) -> tuple[str, tuple[Turn, ...]]:
    """The last user message is the question; earlier user/assistant messages are the history.

    An unusable question is a 400 naming the message (``messages.3.content``), with the
    message of ``rag.retrieval.check_question``.
    """
    last = max((i for i, m in enumerate(body.messages) if m.role == "user"), default=None)
    if last is None:
        detail = {
            "type": "value_error",
            "loc": ("body", "messages"),
            "msg": "there is no message with role user to answer",
        }
        raise RequestValidationError([detail])
    question = body.messages[last].text()
    try:
        check_question(question)
    except QuestionError as exc:
        raise question_error(str(exc), loc=("body", "messages", last, "content")) from None
    history: list[Turn] = []
    for m in body.messages[:last]:
        content = m.text()
        if m.role == "assistant":  # our own earlier replies: drop the 来源 list we appended
            content = content.split(f"\n\n{SOURCES_HEADING}\n", 1)[0]
        role = CONVERSATION_ROLES.get(m.role)  # system and tool messages are no history
        if role is not None and content.strip():
            history.append(Turn(role=role, content=content))
    return question, tuple(history)


def usage(
    embedder: Embedder, settings: Settings, body: ChatCompletionRequest, answer: Answer, content: str
) -> Usage:
    """Token counts of one completion: the LLM's own when it answered and reported them, else
    counted with the embedding model's tokenizer (the reader's too): ``prompt_tokens`` for the
    messages and the passages the answer was read from (the reader's ``RAG_READER_PASSAGES``,
    or every passage the LLM was given), ``completion_tokens`` for the reply ``content``.

    Each text is counted as the model reads it: with its prompt, and up to its window (512).
    """
    if answer.llm_usage is not None:
        prompt, completion = answer.llm_usage
        return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)
    read = answer.citations if answer.answer_mode == "llm" else answer.citations[: settings.reader_passages]
    messages = [text for m in body.messages if (text := m.text()).strip()]
    prompt = embedder.count_tokens(messages, query=True) + embedder.count_tokens([c.chunk.text for c in read])
    completion = embedder.count_tokens([content])
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


def model_card(service: Service) -> ModelCard:
    """The one model, dated by the index build."""
    built = service.engine.index.manifest.get("built_at")
    created = 0
    if isinstance(built, str):
        try:
            created = int(datetime.fromisoformat(built).timestamp())
        except ValueError:
            created = 0
    return ModelCard(id=MODEL_ID, created=created, owned_by="rag-zh")


@router.get("/models", response_model=ModelList)
def models(service: ServiceDep) -> ModelList:
    """The one model this server offers."""
    return ModelList(data=[model_card(service)])


@router.get(
    "/models/{model_id}",
    response_model=ModelCard,
    responses={404: {"model": ErrorOut, "description": "Not a model this server offers"}},
)
def model(model_id: str, service: ServiceDep) -> ModelCard:
    """The model, if ``model_id`` names it."""
    if model_id != MODEL_ID:
        raise NotFoundError(f"model {model_id!r} not found; this server offers {MODEL_ID}")
    return model_card(service)


class ChatStream:
    """The ``chat.completion.chunk`` SSE stream of one answer, ending in ``data: [DONE]``."""

    def __init__(
        self, service: Service, answerer: Answerer, body: ChatCompletionRequest, question: str
    ) -> None:
        self.service = service
        self.answerer = answerer
        self.body = body
        self.question = question
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
        """One chunk as an SSE ``data:`` line."""
        data = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": MODEL_ID,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            **extra,
        }
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def error(self, message: str) -> str:
        """The error object OpenAI streams end with when the server fails midway."""
        error = {"message": message, "type": "server_error", "param": None, "code": None}
        return f"data: {json.dumps({'error': error}, ensure_ascii=False)}\n\n"

    def events(self, history: tuple[Turn, ...]) -> Iterator[str]:
        """Role, content pieces as they are produced, the 来源 list, the citations; then [DONE]."""
        yield self.chunk({"role": "assistant", "content": ""})
        try:
            yield from self._answer(history)
        except RagError as exc:
            yield self.error(one_line(str(exc)))
        # The 200 is sent: any failure (a bug included) can only end the stream as an error chunk.
        except Exception:
            log.exception("chat completion for %r failed", self.question)
            yield self.error(STREAM_FAILED)
        yield "data: [DONE]\n\n"

    def _answer(self, history: tuple[Turn, ...]) -> Iterator[str]:
        final: Answer | None = None
        streamed: list[str] = []
        for event in self.answerer.answer_stream(
            self.question, top_k=self.body.top_k, history=history, answer_mode=self.body.rag_mode
        ):
            if isinstance(event, Answer):
                final = event
            elif isinstance(event, Retraction):
                streamed.append(retraction_text(event.reason))
                yield self.chunk({"content": streamed[-1]})
            elif event:
                streamed.append(event)
                yield self.chunk({"content": event})
        if final is None:
            raise RuntimeError("the answerer ended without an answer")
        sources = sources_text(final)
        if sources:
            streamed.append(sources)
            yield self.chunk({"content": sources})
        citations = [CitationOut.from_citation(c).model_dump(mode="json") for c in final.citations]
        yield self.chunk({}, "stop", citations=citations, warnings=list(final.warnings))
        options = self.body.stream_options
        if options is not None and options.include_usage:
            # OpenAI's last chunk: no choices, the counts of the whole reply as streamed.
            counted = usage(self.service.embedder, self.service.settings, self.body, final, "".join(streamed))
            yield self.usage_chunk(counted)

    def usage_chunk(self, counted: Usage) -> str:
        """The ``include_usage`` chunk: empty ``choices`` and the ``usage`` object."""
        data = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": MODEL_ID,
            "choices": [],
            "usage": counted.model_dump(),
        }
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


@router.post(
    "/chat/completions",
    response_model=ChatCompletion,
    dependencies=[Depends(require_json)],
    responses={
        200: {"content": {"text/event-stream": {}}},
        **JSON_ERRORS,
        400: {"model": ErrorOut, "description": "A mistyped or unsupported parameter (OpenAI's `error`)"},
        413: {"model": ErrorOut, "description": "A message or all of them too long"},
    },
)
def chat_completions(body: ChatCompletionRequest, service: ServiceDep) -> Response | ChatCompletion:
    """OpenAI chat completions over the corpus; ``stream: true`` streams as the answer is produced.

    Errors are OpenAI's: 400 (413 when too long) with ``error: {message, type, param, code}``.
    """
    check_request(body, service.settings)
    question, history = chat_question(body)
    answerer = service.engine.answerer
    if body.stream:
        stream = ChatStream(service, answerer, body, question)
        return StreamingResponse(
            stream.events(history), media_type="text/event-stream", headers=STREAM_HEADERS
        )
    answer = answerer.answer(question, top_k=body.top_k, history=history, answer_mode=body.rag_mode)
    content = answer.answer + sources_text(answer)
    message = ChatMessageOut(content=content)
    return ChatCompletion(
        id=f"chatcmpl-{uuid.uuid4().hex}",
        created=int(time.time()),
        model=MODEL_ID,
        choices=[ChatChoice(index=0, message=message, finish_reason="stop")],
        usage=usage(service.embedder, service.settings, body, answer, content),
        citations=[CitationOut.from_citation(c) for c in answer.citations],
        warnings=list(answer.warnings),
    )
