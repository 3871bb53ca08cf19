"""Request and response shapes of the HTTP API (they are the OpenAPI schema at ``/docs``).

The conversions from the pipeline's dataclasses (``rag.models``) live beside the shapes,
as ``from_*`` class methods, so a route never builds a response field by field.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from rag.errors import QuestionError
from rag.models import Answer, AnswerMode, Article, Citation, Hit, RequestedAnswerMode, SkippedFile, Turn
from rag.retrieval import MAX_QUESTION_CHARS, check_question
from rag.settings import RetrievalMode
from rag.textnorm import without_surrogates

if TYPE_CHECKING:
    from rag.api.service import DocumentListing
    from rag.examples import Examples

MODEL_ID = "rag-zh"
"""The model name the OpenAI-compatible endpoints answer to."""

MAX_HISTORY_MESSAGES = 50
"""Payload limit: the most earlier messages a request may carry (a bound on the body size).

Not how many are used: the answerer reads the last ``Settings.history_turns`` of them.
"""
MAX_CHAT_MESSAGES = MAX_HISTORY_MESSAGES * 2 + 10
"""Payload limit of ``/v1/chat/completions``: history, system messages and the question."""
MAX_MESSAGE_CHARS = 20_000
"""Payload limit on one earlier message."""
MAX_TOP_K = 20
"""The most passages one answer may retrieve and cite."""
MAX_SEARCH_K = 50
"""The most chunks one ``/search`` may return."""

QUESTION_SCHEMA: dict[str, Any] = {"minLength": 1, "maxLength": MAX_QUESTION_CHARS, "pattern": r"\S"}
"""Documents the limits; :func:`valid_question` enforces them with the library's messages."""


def valid_question(value: str) -> str:
    """``rag.retrieval.check_question`` as a pydantic check: the same messages as the library's."""
    try:
        check_question(value)
    except QuestionError as exc:
        raise PydanticCustomError("value_error", str(exc)) from None
    return value


class HistoryTurn(BaseModel):
    """One earlier message of the conversation."""

    role: Literal["user", "assistant"]
    content: str = Field(max_length=MAX_MESSAGE_CHARS)


class AskRequest(BaseModel):
    """A question, with the conversation before it."""

    question: str = Field(
        description=f"The question, in Chinese (1..{MAX_QUESTION_CHARS} characters, not only whitespace).",
        json_schema_extra=QUESTION_SCHEMA,
        examples=["锦屏成立了什么联盟"],
    )
    top_k: int | None = Field(
        None,
        ge=1,
        le=MAX_TOP_K,
        description="How many passages to retrieve and cite (default: the server's RAG_TOP_K).",
    )
    history: list[HistoryTurn] = Field(
        default_factory=list,
        max_length=MAX_HISTORY_MESSAGES,
        description=(
            "Earlier messages of the conversation, oldest first (for follow-up questions); "
            "the server reads the last RAG_HISTORY_TURNS of them."
        ),
    )
    answer_mode: RequestedAnswerMode = Field(
        "auto",
        # ``mode`` was this field's name before answer and retrieval modes were told apart.
        validation_alias=AliasChoices("answer_mode", "mode"),
        description=(
            "extractive: the span the trained reader finds in the passages; "
            "llm: ask the configured LLM; auto: llm if one is configured. (Also accepted as `mode`.)"
        ),
    )

    _check_question = field_validator("question")(valid_question)

    def turns(self) -> tuple[Turn, ...]:
        """The history as the answerer takes it."""
        return tuple(Turn(role=t.role, content=t.content) for t in self.history)


class CitationOut(BaseModel):
    """A numbered passage behind the ``[n]`` markers of an answer."""

    id: int = Field(description="The n of the [n] markers in the answer.")
    article_id: str
    source: str = Field(description="The document, as its path in the docs folder.")
    title: str
    text: str = Field(description="The cited passage.")
    score: float
    start: int = Field(description="Offset of the passage in its article's text.")
    end: int
    highlight: tuple[int, int] | None = Field(
        None, description="Offsets of the supporting sentence inside `text`."
    )

    @classmethod
    def from_citation(cls, c: Citation) -> CitationOut:
        """The wire form of a pipeline citation."""
        # The wire form is flat: the chunk's fields beside the citation's own.
        return cls(id=c.id, score=c.score, highlight=c.highlight, **asdict(c.chunk))


class Timings(BaseModel):
    """Where the time of one answer went, in milliseconds."""

    retrieve: float
    answer: float
    total: float


class AskResponse(BaseModel):
    """The answer to one question, with its citations."""

    question: str
    answer: str
    answer_sentence: str
    abstained: bool
    answer_mode: AnswerMode = Field(description="Which answerer produced the answer.")
    citations: list[CitationOut]
    warnings: list[str]
    timings_ms: Timings
    confidence: float | None = Field(
        None,
        ge=0.0,
        le=1.0,
        description=(
            "0..1, how likely the reader's answer is right (from its margin over 'no answer'); "
            "null when it abstained, the LLM answered or the answer is a byline."
        ),
    )
    low_confidence: bool = Field(
        False, description="The answer's confidence is below RAG_LOW_CONFIDENCE: it is likely wrong."
    )

    @classmethod
    def from_answer(cls, answer: Answer, total_ms: float) -> AskResponse:
        """The wire form of an answer; ``total_ms`` when the answerer timed nothing."""
        t = answer.timings_ms
        return cls(
            question=answer.question,
            answer=answer.answer,
            answer_sentence=answer.answer_sentence,
            abstained=answer.abstained,
            answer_mode=answer.answer_mode,
            citations=[CitationOut.from_citation(c) for c in answer.citations],
            warnings=list(answer.warnings),
            confidence=answer.confidence,
            low_confidence=answer.low_confidence,
            timings_ms=Timings(
                retrieve=float(t.get("retrieve", 0.0)),
                answer=float(t.get("answer", 0.0)),
                total=float(t.get("total", round(total_ms, 2))),
            ),
        )


class SearchHitOut(BaseModel):
    """One ranked chunk."""

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

    @classmethod
    def from_hit(cls, h: Hit) -> SearchHitOut:
        """The wire form of a retrieved chunk."""
        c = h.chunk
        return cls(
            rank=h.rank,
            score=h.score,
            dense_score=h.dense_score,
            bm25_score=h.bm25_score,
            chunk_id=c.id,
            **asdict(c),
        )


class SearchResponse(BaseModel):
    """The chunks that best match a query."""

    query: str
    retrieval_mode: RetrievalMode
    hits: list[SearchHitOut]
    timings_ms: dict[str, float]


class DocumentSummary(BaseModel):
    """One article of the index, without its text."""

    id: str = Field(description="``source#position``.")
    source: str = Field(description="The document, as its path in the docs folder (``a/x.txt``).")
    title: str
    position: int

    @classmethod
    def from_article(cls, article: Article) -> DocumentSummary:
        """The summary of an indexed article."""
        return cls(id=article.id, source=article.source, title=article.title, position=article.position)


class DocumentOut(DocumentSummary):
    """One cleaned article."""

    kicker: str | None
    subtitle: str | None
    byline: str | None
    text: str

    @classmethod
    def from_full_article(cls, article: Article) -> DocumentOut:
        """The whole article."""
        return cls(
            **DocumentSummary.from_article(article).model_dump(),
            kicker=article.kicker,
            subtitle=article.subtitle,
            byline=article.byline,
            text=article.text,
        )


class FileSummary(BaseModel):
    """One indexed file of the docs folder."""

    source: str = Field(description="Its path in the docs folder (``a/x.txt``).")
    articles: int = Field(description="Articles cut out of it.")
    chunks: int = Field(description="Passages of it in the index.")


class SkippedOut(BaseModel):
    """A file of the docs folder that the build did not index."""

    source: str = Field(description="Its path in the docs folder.")
    reason: str = Field(description="Why, in one line, e.g. ``空文件``.")

    @classmethod
    def from_skipped(cls, skipped: SkippedFile) -> SkippedOut:
        """The response form of a skipped file."""
        return cls(source=skipped.source, reason=skipped.reason)


class DocumentList(BaseModel):
    """What the live index holds: its files, the files left out, its articles and the counts."""

    files: list[FileSummary] = Field(description="Indexed files, sorted by source.")
    skipped: list[SkippedOut] = Field(description="Files the build skipped, with why.")
    articles: list[DocumentSummary] = Field(description="Every article, in corpus order.")
    counts: dict[str, int] = Field(description="``documents``, ``articles`` and ``chunks`` in the index.")

    @classmethod
    def from_listing(cls, listing: DocumentListing) -> DocumentList:
        """The response form of :meth:`rag.api.service.Service.document_list`."""
        return cls(
            files=[FileSummary(source=f.source, articles=f.articles, chunks=f.chunks) for f in listing.files],
            skipped=[SkippedOut.from_skipped(s) for s in listing.skipped],
            articles=[DocumentSummary.from_article(a) for a in listing.articles],
            counts=listing.counts,
        )


class HealthOut(BaseModel):
    """Liveness and what is loaded."""

    status: str
    model: str
    counts: dict[str, int]
    built_at: str | None
    uploads_enabled: bool


class ReadyOut(BaseModel):
    """Readiness: whether the loaded index can answer, and what is wrong with it if not."""

    ready: bool = Field(description="True when the index is loaded and agrees with itself.")
    build: str = Field(description="The build being served (a folder name under builds/).")
    counts: dict[str, int] = Field(description="``documents``, ``articles`` and ``chunks`` in the index.")
    problems: list[str] = Field(description="Why it is not ready, one line each (empty when ready).")
    warnings: list[str] = Field(
        description="Ready, but not as built last: e.g. a corrupt newest build passed over for an older one."
    )


class UploadResult(BaseModel):
    """What an upload added."""

    source: str = Field(description="The file name it was saved under in the docs folder.")
    replaced: bool = Field(description="True when a file of that name was replaced.")
    articles: list[DocumentSummary]
    counts: dict[str, int]


class DeleteResult(BaseModel):
    """What a delete removed."""

    deleted: str = Field(description="The source file that was removed.")
    articles: list[str] = Field(description="Ids of the articles that went with it.")
    counts: dict[str, int]


class FeedbackCreated(BaseModel):
    """A stored rating."""

    id: int = Field(description="Its row in the feedback store.")
    rating: Literal["up", "down"]


class ExamplesOut(BaseModel):
    """Example questions for the chat page, drawn from the corpus being served."""

    questions: list[str]
    origin: Literal["questions.txt", "titles"] = Field(
        description="questions.txt: the docs folder's own list; titles: made from article titles."
    )

    @classmethod
    def from_examples(cls, examples: Examples) -> ExamplesOut:
        """The response form of :func:`rag.examples.example_questions`."""
        return cls(questions=list(examples.questions), origin=examples.origin)


class ErrorOut(BaseModel):
    """Every error answer: ``detail`` is a one-line message, or FastAPI's list for a 422."""

    detail: Any
    message: str = Field(description="The error on one line, naming the field or file.")


# OpenAI-compatible shapes ---------------------------------------------------------------
# Strict where OpenAI is: a mistyped or unsupported parameter is a 400 in OpenAI's error
# format (rag.api.errors), never silently ignored. A custom error's type is OpenAI's `code`.

MAX_COMPLETION_TOKENS = 131_072
"""The largest ``max_tokens``/``max_completion_tokens`` accepted (OpenAI's largest output window)."""
MAX_STOP_SEQUENCES = 4
"""OpenAI's limit on ``stop``."""


def unsupported_parameter(name: str, why: str = "this server answers from its corpus") -> PydanticCustomError:
    """The 400 of a parameter this server cannot honour (``code: unsupported_parameter``)."""
    return PydanticCustomError("unsupported_parameter", f"{name} is not supported: {why}")


def check_content(value: Any) -> Any:
    """A message's content is a string, a list of content parts or null (one clear error)."""
    if value is not None and not isinstance(value, str | list):
        raise PydanticCustomError("invalid_type", "content must be a string, a list of content parts or null")
    return value


def check_stop(value: Any) -> Any:
    """``stop``: a string or a list of at most 4 strings (one clear error, not one per union member)."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise PydanticCustomError("invalid_type", "stop must be a string or a list of strings")
    if len(value) > MAX_STOP_SEQUENCES:
        raise PydanticCustomError("invalid_value", f"stop takes at most {MAX_STOP_SEQUENCES} sequences")
    return value


class ChatContentPart(BaseModel):
    """One part of a message's content; only ``text`` parts are read."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessageIn(BaseModel):
    """A chat message as OpenAI clients send it."""

    model_config = ConfigDict(extra="allow")
    # OpenAI's roles; only user and assistant messages are read as the conversation.
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ChatContentPart] | None = Field(
        None, description=f"At most {MAX_MESSAGE_CHARS} characters of text (413 beyond)."
    )

    _check_content = field_validator("content", mode="before")(check_content)

    def text(self) -> str:
        """The message's text, its text parts joined (lone surrogates, unencodable, as U+FFFD)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return without_surrogates(self.content)
        return without_surrogates("".join(p.text or "" for p in self.content if p.type == "text"))


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options`` (only with ``stream: true``)."""

    model_config = ConfigDict(extra="allow")
    include_usage: bool = Field(
        False, strict=True, description="Send a last chunk (no choices) with the token counts before [DONE]."
    )


class ResponseFormat(BaseModel):
    """OpenAI's ``response_format``: only plain text, the answer is prose with [n] markers."""

    model_config = ConfigDict(extra="allow")
    type: str = Field(json_schema_extra={"enum": ["text"]})

    @field_validator("type")
    @classmethod
    def _text_only(cls, value: str) -> str:
        if value != "text":
            raise PydanticCustomError(
                "unsupported_value", f"response_format type {value!r} is not supported: only 'text'"
            )
        return value


IGNORED = "Accepted and not applied: the answer is read from the corpus, not sampled."


class ChatCompletionRequest(BaseModel):
    """OpenAI chat completions, plus the ``top_k`` and ``rag_mode`` extensions.

    The known OpenAI parameters are type-checked (400 when wrong); those that cannot change
    an answer read from the corpus (sampling, penalties, seed, ``max_tokens``) are accepted
    and not applied; ``n > 1``, tools, logprobs and JSON output are refused (400). Unknown
    extra parameters are accepted: clients send vendor extras.
    """

    model_config = ConfigDict(extra="allow")
    model: str = MODEL_ID
    messages: list[ChatMessageIn] = Field(
        min_length=1,
        max_length=MAX_CHAT_MESSAGES,
        description="The conversation; all contents together at most RAG_MAX_CONVERSATION_CHARS (413).",
    )
    stream: bool = Field(False, strict=True)
    stream_options: StreamOptions | None = Field(None, description="Only with `stream: true`.")
    n: int | None = Field(1, ge=1, strict=True, json_schema_extra={"maximum": 1}, description="Only 1.")
    temperature: float | None = Field(None, ge=0, le=2, strict=True, description=IGNORED)
    top_p: float | None = Field(None, ge=0, le=1, strict=True, description=IGNORED)
    presence_penalty: float | None = Field(None, ge=-2, le=2, strict=True, description=IGNORED)
    frequency_penalty: float | None = Field(None, ge=-2, le=2, strict=True, description=IGNORED)
    max_tokens: int | None = Field(
        None,
        ge=1,
        le=MAX_COMPLETION_TOKENS,
        strict=True,
        description="Accepted and not applied: an answer is a cited sentence or two, never cut short.",
    )
    max_completion_tokens: int | None = Field(
        None, ge=1, le=MAX_COMPLETION_TOKENS, strict=True, description="As `max_tokens`."
    )
    stop: str | list[str] | None = Field(None, description=f"At most {MAX_STOP_SEQUENCES}. {IGNORED}")
    seed: int | None = Field(None, strict=True, description=IGNORED)
    user: str | None = None
    logit_bias: dict[str, float] | None = Field(None, description=IGNORED)
    store: bool | None = Field(None, strict=True)
    metadata: dict[str, str] | None = None
    parallel_tool_calls: bool | None = Field(None, strict=True)
    response_format: ResponseFormat | None = None
    logprobs: bool | None = Field(None, strict=True, json_schema_extra={"enum": [False, None]})
    top_logprobs: int | None = Field(None, ge=0, le=20, strict=True, json_schema_extra={"maximum": 0})
    tools: list[Any] | None = Field(None, json_schema_extra={"maxItems": 0}, description="Not supported.")
    functions: list[Any] | None = Field(None, json_schema_extra={"maxItems": 0}, description="Not supported.")
    tool_choice: Any = Field(None, json_schema_extra={"enum": ["none", None]}, description="Not supported.")
    function_call: Any = Field(None, json_schema_extra={"enum": ["none", None]}, description="Not supported.")
    audio: Any = Field(None, json_schema_extra={"type": "null"}, description="Not supported.")
    modalities: list[Literal["text"]] | None = None
    top_k: int | None = Field(
        None, ge=1, le=MAX_TOP_K, description="Extension: passages to retrieve (default RAG_TOP_K)."
    )
    rag_mode: RequestedAnswerMode = Field(
        "auto",
        validation_alias=AliasChoices("rag_mode", "answer_mode"),
        description="Extension: the answer mode, as `answer_mode` of /ask (also accepted as `answer_mode`).",
    )

    _check_stop = field_validator("stop", mode="before")(check_stop)

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value is not None and value > 1:
            raise PydanticCustomError("unsupported_value", "n > 1 is not supported: there is one answer")
        return value

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _no_logprobs(cls, value: bool | int | None) -> bool | int | None:
        if value:
            raise unsupported_parameter("logprobs", "an extracted answer has no token probabilities")
        return value

    @field_validator("tools", "functions")
    @classmethod
    def _no_tools(cls, value: list[Any] | None) -> list[Any] | None:
        if value:
            raise unsupported_parameter("tools", "this server calls no tools")
        return value

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _no_tool_choice(cls, value: Any) -> Any:
        if value not in (None, "none"):
            raise unsupported_parameter("tool_choice", "this server calls no tools")
        return value

    @field_validator("audio")
    @classmethod
    def _no_audio(cls, value: Any) -> Any:
        if value is not None:
            raise unsupported_parameter("audio", "the answer is text")
        return value


class ChatMessageOut(BaseModel):
    """The assistant's reply."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    """The one choice of a completion."""

    index: int
    message: ChatMessageOut
    finish_reason: str


class Usage(BaseModel):
    """Token counts (the embedding model's tokenizer, or the upstream LLM's own counts)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatCompletion(BaseModel):
    """An OpenAI ``chat.completion`` with the ``citations`` extension."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    citations: list[CitationOut] = Field(description="Extension: the sources behind the [n] markers.")
    warnings: list[str] = Field(
        default_factory=list,
        description="Extension: what the reader should know, as /ask's warnings (e.g. the LLM's "
        "answer was replaced by the extractive one because it repeated a planted instruction).",
    )


class ModelCard(BaseModel):
    """An OpenAI model entry."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """The models this server offers."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


# Document jobs (uploads and deletes run as jobs; issue 13) ------------------------------

if TYPE_CHECKING:
    from rag.api.service import Job


class DocumentIndexList(DocumentList):
    """``GET /documents``: what the live index holds, and the docs folder's files it does not."""

    unindexed: list[str] = Field(
        default_factory=list,
        description=(
            "Documents in the docs folder that the index does not hold (copied in by hand, or left "
            "by an interrupted upload). Uploads and deletes never index them; `rag build` does."
        ),
    )
    unindexed_hint: str | None = Field(None, description="What to do about `unindexed`; null when empty.")

    @classmethod
    def from_listing(cls, listing: DocumentListing) -> DocumentIndexList:
        """The response form of :meth:`rag.api.service.Service.document_list`."""
        from rag.api.service import UNINDEXED_HINT

        base = DocumentList.from_listing(listing).model_dump()
        unindexed = list(listing.unindexed)
        return cls(**base, unindexed=unindexed, unindexed_hint=UNINDEXED_HINT if unindexed else None)


JobStatusName = Literal["queued", "running", "done", "failed"]


class JobOut(BaseModel):
    """One document change: queued, running, done (with what it did) or failed (with why)."""

    id: str = Field(description="Poll ``GET /documents/jobs/{id}`` until the status is done or failed.")
    kind: Literal["upload", "delete"]
    status: JobStatusName
    stage: str = Field(description="Progress: queued, indexing, loading (the new index), done, failed.")
    source: str = Field(description="The document: the name an upload is saved under, or the file deleted.")
    requested: str = Field(description="What was sent: the upload's file name, or the id to delete.")
    renamed: bool = Field(
        description="The upload is saved under another name than it was sent with (cleaned or shortened)."
    )
    created_at: str
    started_at: str | None
    finished_at: str | None
    timings_ms: dict[str, float] = Field(
        description="``queued``: time waiting for earlier jobs; ``run``: the rebuild (so far)."
    )
    upload: UploadResult | None = Field(None, description="When an upload is done: what it added.")
    delete: DeleteResult | None = Field(None, description="When a delete is done: what it removed.")
    error: str | None = Field(None, description="When failed: why, on one line.")
    error_status: int | None = Field(
        None, description="When failed: the HTTP status the error would have had (e.g. 409, 400)."
    )

    @classmethod
    def from_job(cls, job: Job) -> JobOut:
        """The wire form of a :class:`rag.api.service.Job`."""
        from rag.api.service import Deletion, Upload

        result = job.result
        upload = delete = None
        if isinstance(result, Upload):
            upload = UploadResult(
                source=result.source,
                replaced=result.replaced,
                articles=[DocumentSummary.from_article(a) for a in result.articles],
                counts=result.counts,
            )
        elif isinstance(result, Deletion):
            delete = DeleteResult(deleted=result.source, articles=result.article_ids, counts=result.counts)
        return cls(
            id=job.id,
            kind=job.kind,
            status=job.status,
            stage=job.stage,
            source=job.source,
            requested=job.requested,
            renamed=job.renamed,
            created_at=job.iso(job.created) or "",
            started_at=job.iso(job.started),
            finished_at=job.iso(job.finished),
            timings_ms=job.timings_ms(),
            upload=upload,
            delete=delete,
            error=job.error,
            error_status=job.error_status,
        )


class JobAccepted(BaseModel):
    """``202 Accepted``: the change is queued; ``Location`` names the job to poll."""

    job: JobOut
