"""The shapes that flow through the pipeline: Article -> Chunk -> Hit -> Answer."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Article:
    """One cleaned article cut out of a source page."""

    source: str
    """File name of the page it came from, e.g. ``000_ed8d00c7a0348028.txt``."""
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

    @property
    def id(self) -> str:
        return f"{self.source}#{self.position}"


@dataclass(frozen=True)
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
    """A passage that supports an answer; ``highlight`` spans the supporting sentence in ``text``."""

    id: int
    article_id: str
    source: str
    title: str
    text: str
    score: float
    start: int
    end: int
    highlight: tuple[int, int] | None = None


@dataclass
class Answer:
    """What the service answers to one question."""

    question: str
    answer: str
    answer_sentence: str
    abstained: bool
    mode: str
    citations: list[Citation] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
