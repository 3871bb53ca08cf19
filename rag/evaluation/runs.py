"""Running questions through the service's code and scoring what comes back.

Retrieval goes through :meth:`rag.retrieval.Retriever.search`, answers through
:meth:`rag.answer.Answerer.answer`, exactly as the service calls them.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rag.answer import Answerer
from rag.embedding import Embedder, Float32Array
from rag.errors import RagError
from rag.evaluation.metrics import (
    RETRIEVAL_K,
    RETRIEVAL_METRICS,
    AbstentionStats,
    answer_contains,
    cmrc_em,
    cmrc_f1,
    mean,
    percentiles,
    strip_citations,
)
from rag.evaluation.relevance import RelevanceJudge
from rag.evaluation.report import (
    AnswerCounts,
    AnswerResult,
    AnswerRow,
    FollowupResult,
    FollowupRow,
    GoldParagraphScore,
    Metrics,
    abstention_group_metric,
)
from rag.evaluation.sets import EvalQuestion, EvalSet
from rag.models import Answer, Turn
from rag.reader import Reader
from rag.retrieval import Retriever
from rag.settings import RetrievalMode
from rag.verification import cited_ids

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------
# Retrieval
# --------------------------------------------------------------------------------------


@dataclass
class RetrievalRun:
    """The ranked chunk ids per question for one configuration, with search latencies."""

    config: str
    mode: RetrievalMode
    ranked: dict[str, list[str]]
    latency_ms: list[float]
    variant: str = ""


class QueryCache:
    """An :class:`Embedder` stand-in that computes each distinct query embedding once.

    Every retrieval configuration of a set asks the same questions, and dense and hybrid
    search embed them the same way (the query does not depend on ``title_context``, and a
    traditional question folds to its simplified form), so the eval reuses the vector.
    ``Retriever.search`` still runs in full. What a reused vector originally cost is kept
    so that search latencies can include it (``reused_ms``). Answers do not use it.
    """

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self._vectors: dict[str, tuple[Float32Array, float]] = {}
        self.reused_ms = 0.0
        self.computed = 0
        self.reused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)

    def embed_query(self, text: str) -> Float32Array:
        """The query embedding, computed on first use of ``text``."""
        cached = self._vectors.get(text)
        if cached is not None:
            self.reused += 1
            self.reused_ms += cached[1]
            return cached[0].copy()
        started = time.perf_counter()
        vector = self._embedder.embed_query(text)
        self._vectors[text] = (vector.copy(), (time.perf_counter() - started) * 1000)
        self.computed += 1
        return vector


def run_retrieval(
    retriever: Retriever,
    questions: Sequence[EvalQuestion],
    mode: RetrievalMode,
    config: str,
    transform: Callable[[str], str] | None = None,
) -> RetrievalRun:
    """Search every question (optionally transformed, e.g. to simplified) and time each call.

    With a :class:`QueryCache` as the retriever's embedder, a reused query embedding's
    original cost is added to the measured time, so latencies stay those of a real search.
    """
    cache = retriever.embedder if isinstance(retriever.embedder, QueryCache) else None
    ranked: dict[str, list[str]] = {}
    latencies: list[float] = []
    for q in questions:
        text = transform(q.question) if transform else q.question
        if cache is not None:
            cache.reused_ms = 0.0
        started = time.perf_counter()
        try:
            hits = retriever.search(text, k=RETRIEVAL_K, retrieval_mode=mode)
        except RagError as exc:
            log.warning("%s: %s: %s", config, q.id, exc)
            hits = []
        elapsed = (time.perf_counter() - started) * 1000
        latencies.append(elapsed + (cache.reused_ms if cache is not None else 0.0))
        ranked[q.id] = [h.chunk.id for h in hits]
    return RetrievalRun(config=config, mode=mode, ranked=ranked, latency_ms=latencies)


def retrieval_by_type(
    questions: Sequence[EvalQuestion], per_query: dict[str, dict[str, float]]
) -> dict[str, Metrics]:
    """The per-question retrieval scores averaged per question type, with each type's count."""
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for q in questions:
        if q.id in per_query:
            groups[q.type].append(per_query[q.id])
    out = {}
    for qtype in sorted(groups):
        rows = groups[qtype]
        out[qtype] = {name: round(mean(r[name] for r in rows), 4) for name in RETRIEVAL_METRICS}
        out[qtype]["n"] = len(rows)
    return out


# --------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------


@dataclass
class ScoredAnswer:
    """One answered question with its scores."""

    question: EvalQuestion
    answer: Answer | None
    error: str | None = None
    correct: bool = False
    em: float = 0.0
    f1: float = 0.0
    sentence_correct: bool = False
    context_hit: bool = False
    """Some returned passage holds the evidence (retrieval hit@top_k of the answer's own search)."""
    citation_ok: bool | None = None
    """The cited passage(s) hold the evidence (answered, answerable questions only)."""
    citation_all_ok: bool | None = None

    @property
    def abstained(self) -> bool:
        """No answer (an error) or an abstention."""
        return self.answer is None or self.answer.abstained

    def row(self) -> AnswerRow:
        """The question's line in the per-question details."""
        a = self.answer
        return AnswerRow(
            id=self.question.id,
            type=self.question.type,
            question=self.question.question,
            gold=list(self.question.answers),
            answer=a.answer if a else None,
            abstained=self.abstained,
            correct=self.correct,
            em=self.em,
            f1=round(self.f1, 4),
            citation_ok=self.citation_ok,
            context_hit=self.context_hit,
            error=self.error,
        )


def score_answer(
    question: EvalQuestion,
    answer: Answer | None,
    judge: RelevanceJudge,
    relevant: set[str],
) -> ScoredAnswer:
    """Accuracy, EM and F1 (citation markers stripped), citation and context checks."""
    scored = ScoredAnswer(question=question, answer=answer)
    if answer is None or not question.answerable:
        return scored
    scored.context_hit = any(judge.citation_relevant(c, question, relevant) for c in answer.citations)
    if answer.abstained:
        return scored
    text = strip_citations(answer.answer)
    scored.correct = answer_contains(text, question.answers)
    scored.em = cmrc_em(text, question.answers)
    scored.f1 = cmrc_f1(text, question.answers)
    scored.sentence_correct = answer_contains(answer.answer_sentence or text, question.answers)
    by_id = {c.id: c for c in answer.citations}
    # No marker: the first citation is the one the answer rests on.
    cited = [by_id.get(n) for n in (cited_ids(answer.answer) or [1])]
    verdicts = [c is not None and judge.citation_relevant(c, question, relevant) for c in cited]
    scored.citation_ok = any(verdicts)
    scored.citation_all_ok = all(verdicts)
    return scored


def run_answers(
    answerer: Answerer,
    questions: Sequence[EvalQuestion],
    judge: RelevanceJudge,
    relevant: dict[str, set[str]],
    use_history: bool = True,
) -> list[ScoredAnswer]:
    """Answer every question through :meth:`Answerer.answer` (``settings.top_k`` passages) and score it."""
    out = []
    for q in questions:
        history: tuple[Turn, ...] = q.history if use_history else ()
        error = None
        answer: Answer | None = None
        try:
            answer = answerer.answer(q.question, history=history)
        except RagError as exc:
            log.warning("answer %s: %s", q.id, exc)
            error = str(exc)
        rel = relevant.get(q.id)
        scored = score_answer(q, answer, judge, judge.relevant(q) if rel is None else rel)
        scored.error = error
        out.append(scored)
    return out


def _overall_answers(scored: Sequence[ScoredAnswer], stats: AbstentionStats) -> Metrics:
    answerable = [s for s in scored if s.question.answerable]
    answered = [s for s in answerable if not s.abstained]
    overall: Metrics = {
        "accuracy": round(mean(float(s.correct) for s in answerable), 4),
        "em": round(mean(s.em for s in answerable), 4),
        "f1": round(mean(s.f1 for s in answerable), 4),
        "sentence_accuracy": round(mean(float(s.sentence_correct) for s in answerable), 4),
        "context_hit@5": round(mean(float(s.context_hit) for s in answerable), 4),
        "citation_precision": round(mean(float(bool(s.citation_ok)) for s in answered), 4),
        "citation_precision_strict": round(mean(float(bool(s.citation_all_ok)) for s in answered), 4),
        "wrong_abstention_rate": round(stats.wrong_rate, 4),
    }
    if stats.unanswerable:
        overall["abstention_precision"] = round(stats.precision, 4)
        overall["abstention_recall"] = round(stats.recall, 4)
        # Near misses (an entity of the corpus, a detail it lacks) and off-topic questions
        # are different problems: report each group's recall where the set has both.
        groups = {s.question.type for s in scored if not s.question.answerable}
        if len(groups) > 1:
            for qtype in sorted(groups):
                group = [s for s in scored if s.question.type == qtype]
                overall[abstention_group_metric(qtype)] = round(mean(float(s.abstained) for s in group), 4)
    return overall


def _answers_by_type(scored: Sequence[ScoredAnswer]) -> dict[str, Metrics]:
    by_type: dict[str, Metrics] = {}
    for qtype in sorted({s.question.type for s in scored}):
        group = [s for s in scored if s.question.type == qtype]
        abstained = round(mean(float(s.abstained) for s in group), 4)
        if not group[0].question.answerable:
            by_type[qtype] = {"abstained": abstained, "n": len(group)}
            continue
        by_type[qtype] = {
            "accuracy": round(mean(float(s.correct) for s in group), 4),
            "em": round(mean(s.em for s in group), 4),
            "f1": round(mean(s.f1 for s in group), 4),
            "abstained": abstained,
            "n": len(group),
        }
    return by_type


def answer_metrics(scored: Sequence[ScoredAnswer]) -> AnswerResult:
    """Answer metrics overall and per type, with abstention counts and stage latencies."""
    stats = AbstentionStats.count((s.question.answerable, s.abstained) for s in scored)
    timings: dict[str, list[float]] = defaultdict(list)
    for s in scored:
        if s.answer is not None:
            for stage, ms in s.answer.timings_ms.items():
                timings[stage].append(float(ms))
    answerable = [s for s in scored if s.question.answerable]
    counts = AnswerCounts(
        questions=len(scored),
        answerable=len(answerable),
        answered=sum(1 for s in answerable if not s.abstained),
        unanswerable=stats.unanswerable,
        abstained_unanswerable=stats.true_positive,
        abstained_answerable=stats.false_positive,
        errors=sum(1 for s in scored if s.error),
        modes=dict(Counter(s.answer.answer_mode for s in scored if s.answer is not None)),
    )
    return AnswerResult(
        overall=_overall_answers(scored, stats),
        by_type=_answers_by_type(scored),
        counts=counts,
        latency_ms={stage: percentiles(vals) for stage, vals in timings.items()},
    )


def reader_on_paragraphs(reader: Reader, eval_set: EvalSet) -> GoldParagraphScore:
    """F1/EM of the reader's best span with each question's gold paragraph given (SQuAD sets).

    No retrieval and no abstention: this separates the reader from the retrieval in front
    of it, which the end-to-end answer metrics measure together.
    """
    texts = {a.id: a.text for a in eval_set.articles or []}
    f1s: list[float] = []
    ems: list[float] = []
    for q in eval_set.questions:
        if not q.answerable or q.paragraph not in texts:
            continue
        context = texts[q.paragraph]
        readings = reader.read(q.question, [context])
        best = max(readings, key=lambda r: r.score) if readings else None
        pred = context[best.start : best.end] if best else ""
        f1s.append(cmrc_f1(pred, q.answers))
        ems.append(cmrc_em(pred, q.answers))
    return GoldParagraphScore(f1=round(mean(f1s), 4), em=round(mean(ems), 4), n=len(f1s))


def followup_metrics(with_history: Sequence[ScoredAnswer], without: Sequence[ScoredAnswer]) -> FollowupResult:
    """Accuracy and hit@5 (a returned passage holds the evidence), with and without the history."""
    return FollowupResult(
        accuracy_with_history=round(mean(float(s.correct) for s in with_history), 4),
        accuracy_without_history=round(mean(float(s.correct) for s in without), 4),
        hit_with_history=round(mean(float(s.context_hit) for s in with_history), 4),
        hit_without_history=round(mean(float(s.context_hit) for s in without), 4),
        n=len(with_history),
    )


def followup_rows(with_history: Sequence[ScoredAnswer], without: Sequence[ScoredAnswer]) -> list[FollowupRow]:
    """Each follow-up's detail row with history, beside its answer without history."""
    return [
        FollowupRow(
            with_history=a.row(),
            answer_without_history=b.answer.answer if b.answer else None,
            correct_without_history=b.correct,
        )
        for a, b in zip(with_history, without, strict=True)
    ]
