"""One set end to end (index, every retrieval configuration, answers), and a whole run.

Retrieval runs for every requested mode on the index built with the current settings; a
traditional-Chinese SQuAD set is also asked in simplified characters, and a hand-built set
is also searched on an index built with ``title_context`` flipped. Answers run once, in the
default configuration. Unanswerable questions are left out of retrieval metrics.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

from rag.answer import Answerer
from rag.embedding import Embedder, load_embedder
from rag.evaluation.indexes import OpenedIndex, default_cache_root, open_retriever
from rag.evaluation.metrics import RETRIEVAL_K, first_relevant_rank, percentiles, retrieval_metrics
from rag.evaluation.relevance import RelevanceJudge
from rag.evaluation.report import (
    AnswerResult,
    EvalReport,
    FollowupResult,
    FollowupRow,
    IndexInfo,
    QuestionDetail,
    ReportOptions,
    ReportSettings,
    RetrievalResult,
    SetReport,
    StageSeconds,
)
from rag.evaluation.runs import (
    QueryCache,
    RetrievalRun,
    answer_metrics,
    followup_metrics,
    followup_rows,
    reader_on_paragraphs,
    retrieval_by_type,
    run_answers,
    run_retrieval,
)
from rag.evaluation.sets import REPO_ROOT, EvalQuestion, EvalSet
from rag.progress import step
from rag.retrieval import Retriever
from rag.settings import RetrievalMode, Settings
from rag.textnorm import fold

log = logging.getLogger(__name__)

ALL_MODES: tuple[RetrievalMode, ...] = ("bm25", "dense", "hybrid")


@dataclass(frozen=True)
class EvalOptions:
    """What to run on each set."""

    modes: tuple[RetrievalMode, ...] = ALL_MODES
    answers: bool = True
    skip_answers: frozenset[str] = frozenset()
    """Set names whose answers are not evaluated (e.g. ``drcd``)."""
    title_comparison: bool = True
    """Hand-built sets: also run dense/hybrid on an index built with the other ``title_context``."""
    simplified: bool | None = None
    """SQuAD sets: also ask every question in simplified characters (``None``: when traditional)."""
    cache_root: Path | None = None
    """Where the eval indexes are cached; ``None``: :func:`default_cache_root`."""


@dataclass
class _SetRun:
    """A set with its default index opened and its questions judged."""

    eval_set: EvalSet
    settings: Settings
    embedder: Embedder
    cache_root: Path
    base: OpenedIndex
    judge: RelevanceJudge
    answerable: list[EvalQuestion]
    relevant: dict[str, set[str]]
    indexes: list[IndexInfo] = field(default_factory=list)
    index_seconds: float = 0.0
    search_seconds: float = 0.0


@dataclass
class _Answered:
    answers: AnswerResult
    followups: FollowupResult | None
    followup_rows: list[FollowupRow]
    seconds: float


def _open_set(eval_set: EvalSet, settings: Settings, embedder: Embedder, cache_root: Path) -> _SetRun:
    started = time.perf_counter()
    base = open_retriever(eval_set, settings, embedder, cache_root)
    judge = RelevanceJudge(base.retriever.index.chunks)
    answerable = [q for q in eval_set.questions if q.answerable]
    relevant = {q.id: judge.relevant(q) for q in answerable}
    not_indexed = sorted(qid for qid, docs in relevant.items() if not docs)
    if not_indexed:
        log.warning("%s: no chunk holds the evidence of %s", eval_set.name, ", ".join(not_indexed))
    run = _SetRun(eval_set, settings, embedder, cache_root, base, judge, answerable, relevant)
    run.indexes.append(base.info)
    run.index_seconds = round(time.perf_counter() - started, 1)
    return run


def _search_modes(
    run: _SetRun,
    searcher: Retriever,
    modes: Sequence[RetrievalMode],
    variant: str = "",
    transform: Callable[[str], str] | None = None,
) -> list[RetrievalRun]:
    out = []
    for mode in modes:
        config = f"{mode}_{variant}" if variant else mode
        result = run_retrieval(searcher, run.answerable, mode, config, transform=transform)
        result.variant = variant
        out.append(result)
        log.info("%s/%s: %d questions searched", run.eval_set.name, config, len(run.answerable))
    return out


def _title_runs(
    run: _SetRun, cache: QueryCache, modes: Sequence[RetrievalMode]
) -> tuple[list[RetrievalRun], dict[str, set[str]], float]:
    """Searches on an index built with ``title_context`` flipped, its judgments, its build time."""
    flipped = run.settings.model_copy(update={"title_context": not run.settings.title_context})
    suffix = "title" if flipped.title_context else "notitle"
    started = time.perf_counter()
    alt = open_retriever(run.eval_set, flipped, run.embedder, run.cache_root)
    build_seconds = time.perf_counter() - started
    run.indexes.append(alt.info)
    run.index_seconds += round(build_seconds, 1)
    alt_judge = RelevanceJudge(alt.retriever.index.chunks)
    judged = {q.id: alt_judge.relevant(q) for q in run.answerable}  # same chunks, normally
    searcher = Retriever(alt.retriever.index, cast(Embedder, cache), alt.retriever.settings)
    return _search_modes(run, searcher, modes, suffix), judged, build_seconds


def _search(run: _SetRun, options: EvalOptions) -> tuple[list[RetrievalRun], dict[str, dict[str, set[str]]]]:
    """Every retrieval configuration of the set, with the relevance judgments per variant."""
    started = time.perf_counter()
    cache = QueryCache(run.embedder)
    base = run.base.retriever
    searcher = Retriever(base.index, cast(Embedder, cache), base.settings)
    runs = _search_modes(run, searcher, options.modes)
    simplified = run.eval_set.traditional if options.simplified is None else options.simplified
    if simplified and run.eval_set.kind == "squad":
        runs += _search_modes(run, searcher, options.modes, "simplified", transform=fold)
    judgments = {"default": run.relevant}
    title_modes = [m for m in options.modes if m != "bm25"]  # BM25 always indexes the title
    building = 0.0
    if options.title_comparison and run.eval_set.kind == "jsonl" and title_modes:
        title, judged, building = _title_runs(run, cache, title_modes)
        runs += title
        judgments[title[0].variant] = judged
    run.search_seconds = round(time.perf_counter() - started - building, 1)
    log.info(
        "%s: %d query embeddings computed, %d reused across configurations",
        run.eval_set.name,
        cache.computed,
        cache.reused,
    )
    return runs, judgments


def _score_retrieval(
    run: _SetRun, runs: Sequence[RetrievalRun], judgments: dict[str, dict[str, set[str]]]
) -> tuple[dict[str, RetrievalResult], dict[str, QuestionDetail]]:
    """The metrics of every configuration, and each question's first relevant rank in each."""
    eval_set = run.eval_set
    details = {q.id: QuestionDetail(id=q.id, type=q.type, question=q.question) for q in eval_set.questions}
    # SQuAD: also judge at paragraph level (any chunk of the question's paragraph), the
    # granularity of the published BM25 reference points.
    paragraph = (
        {q.id: run.judge.for_paragraph(q.paragraph) for q in run.answerable if q.paragraph is not None}
        if eval_set.kind == "squad"
        else {}
    )
    retrieval: dict[str, RetrievalResult] = {}
    for r in runs:
        rel = judgments.get(r.variant, run.relevant)
        overall, per_query = retrieval_metrics(rel, r.ranked)
        result = RetrievalResult(
            mode=r.mode,
            variant=r.variant or "default",
            overall=overall,
            by_type=retrieval_by_type(run.answerable, per_query) if eval_set.kind == "jsonl" else {},
            latency_ms=percentiles(r.latency_ms),
            n=len(rel),
        )
        retrieval[r.config] = result
        for qid, docs in r.ranked.items():
            details[qid].ranks[r.config] = first_relevant_rank(docs, rel.get(qid, set()))
        if paragraph:
            p_overall, _ = retrieval_metrics(paragraph, r.ranked)
            retrieval[f"{r.config}_paragraph"] = replace(
                result, variant=f"{r.variant or 'default'}+paragraph", overall=p_overall
            )
    return retrieval, details


def _answer(run: _SetRun, answerer: Answerer, details: dict[str, QuestionDetail]) -> _Answered:
    """Answers in the default configuration, the reader on gold paragraphs, the follow-ups."""
    started = time.perf_counter()
    eval_set = run.eval_set
    scored = run_answers(answerer, eval_set.questions, run.judge, run.relevant)
    answers = answer_metrics(scored)
    for s in scored:
        details[s.question.id].answer = s.row()
    log.info("%s: %d questions answered", eval_set.name, len(scored))
    if eval_set.kind == "squad" and answerer.reader is not None:
        given = reader_on_paragraphs(answerer.reader, eval_set)
        answers = replace(answers, gold_paragraph=given)
        log.info("%s: reader with the gold paragraph given: F1 %.3f", eval_set.name, given.f1)
    followups, rows = None, []
    if eval_set.followups:
        fq = eval_set.followups
        frel = {q.id: run.judge.relevant(q) for q in fq}
        with_h = run_answers(answerer, fq, run.judge, frel, use_history=True)
        without = run_answers(answerer, fq, run.judge, frel, use_history=False)
        followups, rows = followup_metrics(with_h, without), followup_rows(with_h, without)
    return _Answered(answers, followups, rows, round(time.perf_counter() - started, 1))


def evaluate_set(
    eval_set: EvalSet, settings: Settings, embedder: Embedder, options: EvalOptions
) -> SetReport:
    """Retrieval for every configuration, answers for the default one: the set's report."""
    started = time.perf_counter()
    cache_root = options.cache_root or default_cache_root(settings)
    # Progress lines (rag.progress: the CLI shows them) so a CI log is never silent for
    # minutes: the answers of the gate's DRCD subset alone take several.
    name = eval_set.name
    with step("%s：建立或复用评测索引……", name, done=f"{name}：索引就绪"):
        run = _open_set(eval_set, settings, embedder, cache_root)
    with step("%s：检索 %d 个问题……", name, len(run.answerable), done=f"{name}：检索完成"):
        runs, judgments = _search(run, options)
    retrieval, details = _score_retrieval(run, runs, judgments)
    answered: _Answered | None = None
    if options.answers and eval_set.name not in options.skip_answers:
        answerer = Answerer(run.base.retriever, run.base.settings)
        try:
            with step("%s：回答 %d 个问题……", name, len(eval_set.questions), done=f"{name}：回答完成"):
                answered = _answer(run, answerer, details)
        finally:
            answerer.close()
    mode = run.base.settings.retrieval_mode
    return SetReport(
        name=eval_set.name,
        kind=eval_set.kind,
        path=str(eval_set.path),
        limit=eval_set.limit,
        traditional=eval_set.traditional,
        questions=len(eval_set.questions),
        answerable=len(run.answerable),
        types=dict(Counter(q.type for q in eval_set.questions)),
        indexes=run.indexes,
        evidence_not_indexed=sorted(qid for qid, docs in run.relevant.items() if not docs),
        retrieval=retrieval,
        default_config=mode if mode in retrieval else next(iter(retrieval), None),
        answers=answered.answers if answered else None,
        followups=answered.followups if answered else None,
        followup_details=answered.followup_rows if answered else [],
        details=list(details.values()),
        seconds=StageSeconds(
            index=run.index_seconds,
            retrieval=run.search_seconds,
            answers=answered.seconds if answered else None,
            total=round(time.perf_counter() - started, 1),
        ),
    )


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _report_settings(settings: Settings, embedder: Embedder) -> ReportSettings:
    return ReportSettings(
        embed_model=embedder.model_id,
        mode=settings.retrieval_mode,
        title_context=settings.title_context,
        chunk_size=settings.chunk_size,
        chunk_overlap=settings.chunk_overlap,
        rrf_k=settings.rrf_k,
        dense_weight=settings.dense_weight,
        bm25_weight=settings.bm25_weight,
        reader_backend=settings.reader_backend,
        reader_passages=settings.reader_passages,
        reader_margin=settings.reader_margin,
        reader_rank_weight=settings.reader_rank_weight,
        llm=bool(settings.llm_base_url),
        embed_precision=embedder.passage_precision,
    )


def run_evaluation(
    sets: Sequence[EvalSet],
    settings: Settings,
    options: EvalOptions | None = None,
    embedder: Embedder | None = None,
) -> EvalReport:
    """Evaluate every set: the whole report."""
    options = options or EvalOptions()
    started = time.perf_counter()
    embedder = embedder or load_embedder(settings)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    commit = _git_commit()
    sections: dict[str, SetReport] = {}
    for eval_set in sets:
        log.info("evaluating %s (%d questions)", eval_set.name, len(eval_set.questions))
        sections[eval_set.name] = evaluate_set(eval_set, settings, embedder, options)
    return EvalReport(
        created=created,
        commit=commit,
        settings=_report_settings(settings, embedder),
        options=ReportOptions(
            modes=list(options.modes),
            k=RETRIEVAL_K,
            answer_top_k=settings.top_k,
            answers=options.answers,
            skip_answers=sorted(options.skip_answers),
            title_comparison=options.title_comparison,
        ),
        sets=sections,
        seconds=round(time.perf_counter() - started, 1),
    )
