"""The shapes that flow through the pipeline: Article -> Chunk -> Hit -> Answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

NOT_FOUND = "资料中没有找到答案"
"""The answer text when no passage answers the question (extractive and LLM alike)."""

AnswerMode = Literal["extractive", "llm"]
"""Which answerer produced an ``Answer``."""

RequestedAnswerMode = Literal["auto", "extractive", "llm"]
"""What a caller asks for: ``auto`` uses the LLM when one is configured."""


@dataclass(frozen=True, slots=True)  # slots: a loaded index holds a million chunks
class Article:
    """One cleaned article cut out of a source page."""

    source: str
    """The page it came from, as a path relative to the docs folder, e.g. ``000_ed8d00c7a0348028.txt``."""
    position: int
    """0-based order of the article in its page."""
    title: str
    """The main headline (or, for an untitled photo caption, its first words)."""
    text: str
    """Cleaned body text: paragraphs joined by ``\\n``; chunk offsets index into this."""
    byline: str | None = None
    """Reporter or photo credit, e.g. ``通讯员 葛梦园``."""
    kicker: str | None = None
    """The line printed above the headline, e.g. ``提升服务质量 打破发展瓶颈``."""
    subtitle: str | None = None
    """The line printed below it, e.g. ``——岳林街道2021年工作回眸``."""
    page: int | None = None
    """The 1-based page of the PDF or scan it came from; None for text, DOCX and HTML files
    (and for builds made before pages were recorded)."""

    @property
    def id(self) -> str:
        """``<source>#<position>``: unique in an index, stable across rebuilds."""
        return f"{self.source}#{self.position}"


@dataclass(frozen=True, slots=True)
class Chunk:
    """A citable span of an article: ``article.text[start:end] == text``."""

    article_id: str
    source: str
    title: str
    text: str
    start: int
    end: int

    @property
    def id(self) -> str:
        """``<article id>@<start>``: where the chunk begins in its article."""
        return f"{self.article_id}@{self.start}"


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk with its rank (1-based) and fused score."""

    chunk: Chunk
    rank: int
    score: float
    dense_score: float | None = None
    """Cosine similarity of question and chunk, when the dense model was asked."""
    bm25_score: float | None = None
    """BM25 score, when the chunk was among BM25's candidates."""


@dataclass(frozen=True)
class Citation:
    """A numbered passage that supports an answer.

    ``chunk`` is the passage as read: a retrieved chunk, or the reader's window around it.
    ``highlight`` is the ``(start, end)`` of the supporting span in ``chunk.text``.
    """

    id: int
    chunk: Chunk
    score: float
    highlight: tuple[int, int] | None = None


@dataclass(frozen=True)
class Turn:
    """One previous message of a conversation."""

    role: Literal["user", "assistant"]
    content: str


@dataclass(frozen=True)
class Retraction:
    """A streaming event: drop the answer text streamed so far; ``reason`` says why (one line)."""

    reason: str


@dataclass(frozen=True, kw_only=True)
class Answer:
    """What the service answers to one question."""

    question: str
    answer: str
    answer_sentence: str = ""
    abstained: bool = False
    answer_mode: AnswerMode = "extractive"
    citations: tuple[Citation, ...] = ()
    warnings: tuple[str, ...] = ()
    timings_ms: dict[str, float] = field(default_factory=dict)
    confidence: float | None = None
    """0..1, from the reader's margin (``rag.answer.confidence``); None when the answer abstained,
    the LLM answered, or it is a byline (article metadata, not read by the reader)."""
    low_confidence: bool = False
    """The reader's answer is below ``Settings.low_confidence``: likely wrong, say so."""
    llm_usage: tuple[int, int] | None = None
    """``(prompt, completion)`` tokens as the LLM reported them, when it answered and did."""


@dataclass(frozen=True)
class SkippedFile:
    """A file of the docs folder that a build did not index, and why."""

    source: str
    """Its path relative to the docs folder (``rag.ingest.document_source``)."""
    reason: str
    """One Chinese line, e.g. ``空文件`` or ``不支持的文件类型 .png；支持 .txt、.md``."""
