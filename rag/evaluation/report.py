"""The evaluation report as typed dataclasses, and the names of every metric it holds.

``to_dict()`` gives the JSON shape written to ``report.json`` (``sets.<name>.metrics.<section>``
is what the gate reads). The metric names the gate may name live here once:
:data:`RETRIEVAL_METRIC_NAMES` for every retrieval configuration, :data:`ANSWER_METRICS` (plus
one :func:`abstention_group_metric` per unanswerable group) for ``answers``,
:data:`GOLD_PARAGRAPH_METRICS` for ``answers_gold_paragraph`` and :data:`FOLLOWUP_METRICS` for
``followups``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from rag.evaluation.metrics import RETRIEVAL_METRICS, Latency
from rag.evaluation.sets import SetKind

Metrics = dict[str, float]
"""Metric name -> value (counts such as ``n`` are ints)."""

RETRIEVAL_METRIC_NAMES: tuple[str, ...] = tuple(RETRIEVAL_METRICS)
ANSWER_METRICS: tuple[str, ...] = (
    "accuracy",
    "em",
    "f1",
    "sentence_accuracy",
    "context_hit@5",
    "citation_precision",
    "citation_precision_strict",
    "abstention_precision",
    "abstention_recall",
    "wrong_abstention_rate",
)
"""The ``answers`` metrics, in table order (the abstention ones only where a set has unanswerables)."""
GOLD_PARAGRAPH_METRICS: tuple[str, ...] = ("f1", "em")
FOLLOWUP_METRICS: tuple[str, ...] = (
    "accuracy_with_history",
    "accuracy_without_history",
    "hit@5_with_history",
    "hit@5_without_history",
)
ANSWERS_SECTION = "answers"
GOLD_PARAGRAPH_SECTION = "answers_gold_paragraph"
FOLLOWUPS_SECTION = "followups"


def abstention_group_metric(qtype: str) -> str:
    """The name of one unanswerable group's abstention recall (sets with several groups)."""
    return f"abstention_recall_{qtype}"


@dataclass(frozen=True)
class IndexInfo:
    """One eval index a set was searched on."""

    dir: str
    title_context: bool
    articles: int
    chunks: int
    embedded: int
    build_seconds: float


@dataclass(frozen=True)
class RetrievalResult:
    """One retrieval configuration of a set."""

    mode: str
    variant: str
    overall: Metrics
    by_type: dict[str, Metrics]
    latency_ms: Latency
    n: int

    def to_dict(self) -> dict[str, Any]:
        """The configuration's JSON object."""
        return {
            "mode": self.mode,
            "variant": self.variant,
            "overall": self.overall,
            "by_type": self.by_type,
            "latency_ms": self.latency_ms.to_dict(),
            "n": self.n,
        }


@dataclass(frozen=True)
class AnswerCounts:
    """How many questions were asked, answered, abstained on, failed; answers per answer mode."""

    questions: int
    answerable: int
    answered: int
    unanswerable: int
    abstained_unanswerable: int
    abstained_answerable: int
    errors: int
    modes: dict[str, int]


@dataclass(frozen=True)
class GoldParagraphScore:
    """The reader's best span with each question's own paragraph given (SQuAD sets)."""

    f1: float
    em: float
    n: int

    def metrics(self) -> Metrics:
        """The gated numbers (:data:`GOLD_PARAGRAPH_METRICS`)."""
        return {"f1": self.f1, "em": self.em}


@dataclass(frozen=True)
class AnswerResult:
    """Answers of a set in its default configuration."""

    overall: Metrics
    by_type: dict[str, Metrics]
    counts: AnswerCounts
    latency_ms: dict[str, Latency]
    gold_paragraph: GoldParagraphScore | None = None

    def to_dict(self) -> dict[str, Any]:
        """The ``answers`` JSON object."""
        out: dict[str, Any] = {
            "overall": self.overall,
            "by_type": self.by_type,
            "counts": asdict(self.counts),
            "latency_ms": {stage: v.to_dict() for stage, v in self.latency_ms.items()},
        }
        if self.gold_paragraph is not None:
            out["gold_paragraph"] = asdict(self.gold_paragraph)
        return out


@dataclass(frozen=True)
class FollowupResult:
    """Follow-up questions answered with and without their conversation history."""

    accuracy_with_history: float
    accuracy_without_history: float
    hit_with_history: float
    hit_without_history: float
    n: int

    def metrics(self) -> Metrics:
        """The gated numbers, named as in :data:`FOLLOWUP_METRICS`."""
        values = (
            self.accuracy_with_history,
            self.accuracy_without_history,
            self.hit_with_history,
            self.hit_without_history,
        )
        return dict(zip(FOLLOWUP_METRICS, values, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """The ``followups`` JSON object."""
        return {**self.metrics(), "n": self.n}


@dataclass(frozen=True)
class AnswerRow:
    """One answered question in the per-question details."""

    id: str
    type: str
    question: str
    gold: list[str]
    answer: str | None
    abstained: bool
    correct: bool
    em: float
    f1: float
    citation_ok: bool | None
    context_hit: bool
    error: str | None


@dataclass(frozen=True)
class FollowupRow:
    """One follow-up: answered with its history, and what came without it."""

    with_history: AnswerRow
    answer_without_history: str | None
    correct_without_history: bool

    def to_dict(self) -> dict[str, Any]:
        """The row of the answer with history, plus the two ``*_without_history`` fields."""
        return {
            **asdict(self.with_history),
            "answer_without_history": self.answer_without_history,
            "correct_without_history": self.correct_without_history,
        }


@dataclass
class QuestionDetail:
    """One question of a set: the rank of its first relevant chunk per configuration, its answer."""

    id: str
    type: str
    question: str
    ranks: dict[str, int | None] = field(default_factory=dict)
    answer: AnswerRow | None = None

    def to_dict(self) -> dict[str, Any]:
        """One line of ``details-<set>.jsonl``."""
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "question": self.question,
            "ranks": self.ranks,
        }
        if self.answer is not None:
            out["answer"] = asdict(self.answer)
        return out


@dataclass(frozen=True)
class StageSeconds:
    """Wall time of a set's stages."""

    index: float
    retrieval: float
    answers: float | None
    total: float

    def to_dict(self) -> dict[str, float]:
        """``index``, ``retrieval``, ``answers`` (when answers ran) and ``total``."""
        out = {"index": self.index, "retrieval": self.retrieval}
        if self.answers is not None:
            out["answers"] = self.answers
        return {**out, "total": self.total}


@dataclass(frozen=True)
class SetReport:
    """Everything measured on one question set."""

    name: str
    kind: SetKind
    path: str
    limit: int | None
    traditional: bool
    questions: int
    answerable: int
    types: dict[str, int]
    indexes: list[IndexInfo]
    evidence_not_indexed: list[str]
    retrieval: dict[str, RetrievalResult]
    default_config: str | None
    answers: AnswerResult | None
    followups: FollowupResult | None
    followup_details: list[FollowupRow]
    details: list[QuestionDetail]
    seconds: StageSeconds

    def metrics(self) -> dict[str, Metrics]:
        """Section -> metric -> value: what ``thresholds.toml`` names (``[<set>.<section>]``)."""
        out: dict[str, Metrics] = {cfg: dict(r.overall) for cfg, r in self.retrieval.items()}
        if self.answers is not None:
            out[ANSWERS_SECTION] = dict(self.answers.overall)
            if self.answers.gold_paragraph is not None:
                out[GOLD_PARAGRAPH_SECTION] = self.answers.gold_paragraph.metrics()
        if self.followups is not None:
            out[FOLLOWUPS_SECTION] = self.followups.metrics()
        return out

    def to_dict(self, details: bool = False) -> dict[str, Any]:
        """The set's JSON object; per-question ``details`` only when asked (they go to their own file)."""
        out: dict[str, Any] = {
            "name": self.name,
            "kind": self.kind,
            "path": self.path,
            "limit": self.limit,
            "traditional": self.traditional,
            "questions": self.questions,
            "answerable": self.answerable,
            "types": self.types,
            "indexes": [asdict(i) for i in self.indexes],
            "evidence_not_indexed": self.evidence_not_indexed,
            "retrieval": {cfg: r.to_dict() for cfg, r in self.retrieval.items()},
            "default_config": self.default_config,
        }
        if self.answers is not None:
            out["answers"] = self.answers.to_dict()
        if self.followups is not None:
            out["followups"] = self.followups.to_dict()
            out["followup_details"] = [row.to_dict() for row in self.followup_details]
        out["metrics"] = self.metrics()
        if details:
            out["details"] = [d.to_dict() for d in self.details]
        out["seconds"] = self.seconds.to_dict()
        return out


@dataclass(frozen=True)
class ReportSettings:
    """The settings that shape the numbers, recorded with them."""

    embed_model: str
    mode: str
    """``Settings.retrieval_mode`` (the key keeps its name in the JSON)."""
    title_context: bool
    chunk_size: int
    chunk_overlap: int
    rrf_k: int
    dense_weight: float
    bm25_weight: float
    reader_backend: str
    reader_passages: int
    reader_margin: float
    reader_rank_weight: float
    llm: bool
    embed_precision: str = "fp32"
    """What the eval indexes' passages were embedded in (reports made before bf16: fp32)."""


@dataclass(frozen=True)
class ReportOptions:
    """What the run was asked to measure."""

    modes: list[str]
    k: int
    answer_top_k: int
    answers: bool
    skip_answers: list[str]
    title_comparison: bool


@dataclass(frozen=True)
class GateVerdict:
    """The gate's verdict: one line per metric out of bounds, and notes on what was skipped."""

    failures: list[str]
    notes: list[str]

    @property
    def passed(self) -> bool:
        """True when no metric is out of bounds."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """``{"passed", "failures", "notes"}``."""
        return {"passed": self.passed, "failures": self.failures, "notes": self.notes}


@dataclass(frozen=True)
class EvalReport:
    """A whole ``rag eval`` run."""

    created: str
    commit: str | None
    settings: ReportSettings
    options: ReportOptions
    sets: dict[str, SetReport]
    seconds: float

    def metrics(self) -> dict[str, dict[str, Metrics]]:
        """Set -> section -> metric -> value: what the gate compares."""
        return {name: s.metrics() for name, s in self.sets.items()}

    def to_dict(self, gate: GateVerdict | None = None, details: bool = False) -> dict[str, Any]:
        """What ``report.json`` holds (without per-question details unless asked), with the gate verdict."""
        out: dict[str, Any] = {
            "created": self.created,
            "commit": self.commit,
            "settings": asdict(self.settings),
            "options": asdict(self.options),
            "seconds": self.seconds,
            "sets": {name: s.to_dict(details) for name, s in self.sets.items()},
        }
        if gate is not None:
            out["gate"] = gate.to_dict()
        return out
