"""The evaluation harness: retrieval and answer quality on question sets, reports and a CI gate.

A question set is either the hand-built JSONL set over the seed pages (``eval/questions.jsonl``)
or a SQuAD-format reading-comprehension file (CMRC 2018, DRCD) whose paragraphs become the
documents of a separate index. Every question goes through the same code the service runs:
:meth:`rag.retrieval.Retriever.search` for retrieval and :meth:`rag.answer.Answerer.answer`
for answers.

Relevance (what counts as "the right chunk")
--------------------------------------------
* Hand-built sets: a chunk is relevant when it contains the evidence quote (compared after
  :func:`rag.textnorm.squash`, so print-layout spaces and full-width forms do not matter).
  When no chunk of the index contains the whole quote -- it spans a chunk boundary -- the
  chunks of the question's source page whose longest common substring with the quote covers
  at least :data:`PARTIAL_COVERAGE` (60 %) of it are relevant instead. ``evidence_extra``
  quotes (multi-passage questions) are judged the same way; a chunk holding any of them is
  relevant.
* SQuAD sets: a chunk is relevant when it belongs to the question's paragraph and contains a
  gold answer text. If no chunk of the paragraph contains one (the answer was cut by a chunk
  boundary), every chunk of the paragraph is relevant. Matching is by text, never by
  ``answer_start`` (some CMRC offsets are wrong).

Retrieval metrics are computed with ``ranx``. ``recall@k`` is "at least one relevant chunk in
the top k" (ranx ``hit_rate@k``, a.k.a. success@k): one question has several relevant chunks
when chunks overlap, and finding one of them is what answering needs. ``mrr@10`` and
``ndcg@10`` are ranx's own. Unanswerable questions are left out of retrieval metrics.

Answer metrics follow the CMRC 2018 official evaluation script (see :func:`cmrc_f1`).
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import logging
import math
import os
import re
import shutil
import subprocess
import time
import tomllib
import unicodedata
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import numpy as np

from rag.answer import Answerer, Turn
from rag.embedding import Embedder, load_embedder
from rag.errors import RagError
from rag.index import build_index, load_index
from rag.models import Answer, Article, Chunk, Citation
from rag.reader import Reader
from rag.retrieval import Retriever
from rag.settings import RetrievalMode, Settings
from rag.textnorm import fold, nfkc, squash

log = logging.getLogger(__name__)

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SET = REPO_ROOT / "eval" / "questions.jsonl"
DEFAULT_FOLLOWUPS = REPO_ROOT / "eval" / "followups.jsonl"
DEFAULT_THRESHOLDS = REPO_ROOT / "eval" / "thresholds.toml"
DEFAULT_REPORTS = REPO_ROOT / "eval" / "reports"
BENCH_DIR_ENV = "RAG_EVAL_BENCH_DIR"
EVAL_CACHE_ENV = "RAG_EVAL_CACHE_DIR"
STANDARD_BENCH: dict[str, str] = {
    "cmrc2018": "cmrc2018/cmrc2018_trial.json",
    "drcd": "drcd/DRCD_dev.json",
}
"""The external sets ``--bench`` runs, relative to the bench dir."""

ALL_MODES: tuple[RetrievalMode, ...] = ("bm25", "dense", "hybrid")
RETRIEVAL_K = 10
ANSWER_TOP_K = 5
RECALL_KS = (1, 3, 5, 10)
RETRIEVAL_METRICS: dict[str, str] = {
    **{f"recall@{k}": f"hit_rate@{k}" for k in RECALL_KS},
    "mrr@10": "mrr@10",
    "ndcg@10": "ndcg@10",
}
"""Report name -> ranx metric name."""
PARTIAL_COVERAGE = 0.6
"""Share of an evidence quote a chunk must hold when the quote spans a chunk boundary."""
UNANSWERABLE = "unanswerable"
GATE_TABLE = "gate"
"""Table of ``thresholds.toml`` that configures the CI run instead of naming a set."""
MISSING_DOC = "__evidence_not_in_index__"
"""Stand-in relevant document for a question whose evidence no chunk holds: counts as a miss."""
NOTHING_RETRIEVED = "__nothing_retrieved__"
TRADITIONAL_SHARE = 0.3
"""A SQuAD set whose questions change under t2s this often is traditional Chinese."""

SetKind = Literal["jsonl", "squad"]


# --------------------------------------------------------------------------------------
# Question sets
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalQuestion:
    """One question with its gold answers and what a relevant passage must contain."""

    id: str
    question: str
    answers: tuple[str, ...]
    type: str
    source: str = ""
    """Seed file the evidence comes from (hand-built sets)."""
    evidence: tuple[str, ...] = ()
    """Verbatim supporting quotes (``evidence`` then ``evidence_extra``); SQuAD: the gold answers."""
    paragraph: str | None = None
    """Article id of the question's paragraph (SQuAD sets)."""
    history: tuple[Turn, ...] = ()

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


@dataclass
class EvalSet:
    """A named question set and, for SQuAD files, the paragraphs to index."""

    name: str
    kind: SetKind
    path: Path
    questions: list[EvalQuestion]
    articles: list[Article] | None = None
    """Documents to index (SQuAD); ``None`` means the configured docs folder."""
    followups: list[EvalQuestion] = field(default_factory=list)
    traditional: bool = False
    limit: int | None = None


def set_name(path: Path) -> str:
    """Short name of a set for reports and thresholds: ``seed``, ``cmrc2018``, ``drcd``..."""
    if path.resolve() == DEFAULT_SET.resolve():
        return "seed"
    stem = path.stem.lower()
    stem = re.sub(r"[_\-.](trial|dev|test|train|validation|val)$", "", stem)
    return re.sub(r"[^a-z0-9_]+", "_", stem).strip("_") or "set"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise RagError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
    return rows


def _question_from_row(row: dict[str, Any], path: Path) -> EvalQuestion:
    try:
        extra = row.get("evidence_extra") or []
        if isinstance(extra, str):
            extra = [extra]
        evidence = tuple(e for e in [row.get("evidence") or "", *extra] if e)
        history = tuple(Turn(role=t["role"], content=t["content"]) for t in row.get("history") or [])
        return EvalQuestion(
            id=str(row["id"]),
            question=str(row["question"]),
            answers=tuple(str(a) for a in row.get("answers") or []),
            type=str(row.get("type") or "question"),
            source=str(row.get("source") or ""),
            evidence=evidence,
            history=history,
        )
    except (KeyError, TypeError) as exc:
        raise RagError(f"{path}: question {row.get('id', '?')} lacks {exc}") from None


def load_questions(path: Path, limit: int | None = None) -> list[EvalQuestion]:
    """Questions of a JSONL file (``id, question, answers, source, evidence, type``), first ``limit``."""
    if not path.is_file():
        raise RagError(f"question set {path} not found")
    rows = _read_jsonl(path)
    if limit is not None:
        rows = rows[:limit]
    return [_question_from_row(row, path) for row in rows]


def load_jsonl_set(
    path: Path,
    limit: int | None = None,
    followups: Path | None = None,
    name: str | None = None,
) -> EvalSet:
    """A hand-built set over the docs folder; the default set also gets ``eval/followups.jsonl``."""
    if followups is None and path.resolve() == DEFAULT_SET.resolve() and DEFAULT_FOLLOWUPS.is_file():
        followups = DEFAULT_FOLLOWUPS
    return EvalSet(
        name=name or set_name(path),
        kind="jsonl",
        path=path,
        questions=load_questions(path, limit),
        followups=load_questions(followups) if followups is not None else [],
        limit=limit,
    )


def is_traditional(texts: Sequence[str], share: float = TRADITIONAL_SHARE) -> bool:
    """True when at least ``share`` of the texts change under traditional-to-simplified conversion."""
    if not texts:
        return False
    changed = sum(1 for t in texts if fold(t) != nfkc(t).lower())
    return changed / len(texts) >= share


def load_squad_set(path: Path, limit: int | None = None, name: str | None = None) -> EvalSet:
    """A SQuAD-format file: each paragraph becomes an article, each question keeps its paragraph.

    ``limit`` keeps the first ``limit`` paragraphs (in file order) with all their questions, a
    deterministic subset. Paragraph text is kept as published (retrieval folds it anyway;
    gold answers are matched after ``squash``/CMRC normalization, which apply NFKC).
    """
    if not path.is_file():
        raise RagError(f"SQuAD file {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RagError(f"{path} is not a SQuAD JSON file ({exc})") from None
    articles: list[Article] = []
    questions: list[EvalQuestion] = []
    seen: set[str] = set()
    empty = 0
    for d, entry in enumerate(data):
        title = str(entry.get("title") or "").strip()
        for i, para in enumerate(entry.get("paragraphs") or []):
            if limit is not None and len(articles) >= limit:
                break
            source = title or str(para.get("id") or entry.get("id") or f"doc{d}")
            if f"{source}#{i}" in seen:  # two entries with one title: keep article ids unique
                source = f"{source}~{d}"
            article = Article(
                source=source,
                position=i,
                title=title or source,
                text=str(para["context"]).strip(),
            )
            seen.add(article.id)
            articles.append(article)
            for qa in para.get("qas") or []:
                if not str(qa.get("question") or "").strip():
                    empty += 1  # a couple of CMRC questions are empty strings: nothing to ask
                    continue
                answers = tuple(
                    dict.fromkeys(str(a["text"]) for a in qa.get("answers") or [] if a.get("text"))
                )
                questions.append(
                    EvalQuestion(
                        id=str(qa["id"]),
                        question=str(qa["question"]),
                        answers=answers,
                        type="squad" if answers else UNANSWERABLE,
                        source=article.source,
                        evidence=answers,
                        paragraph=article.id,
                    )
                )
    if empty:
        log.info("%s: %d empty questions left out", path.name, empty)
    return EvalSet(
        name=name or set_name(path),
        kind="squad",
        path=path,
        questions=questions,
        articles=articles,
        traditional=is_traditional([q.question for q in questions]),
        limit=limit,
    )


def resolve_bench_dir(bench_dir: Path | None = None) -> Path:
    """``--bench-dir``, else ``$RAG_EVAL_BENCH_DIR``, else ``<repo>/../shared/bench``."""
    if bench_dir is not None:
        return bench_dir
    env = os.environ.get(BENCH_DIR_ENV)
    return Path(env) if env else REPO_ROOT.parent / "shared" / "bench"


def resolve_squad_path(path: Path, bench_dir: Path) -> Path | None:
    """The file as given, else relative to the bench dir, else a standard set's name; ``None`` if absent."""
    candidates = [path, bench_dir / path]
    if str(path) in STANDARD_BENCH:
        candidates.append(bench_dir / STANDARD_BENCH[str(path)])
    return next((p for p in candidates if p.is_file()), None)


# --------------------------------------------------------------------------------------
# Metric functions
# --------------------------------------------------------------------------------------

_CITATION = re.compile(r"\s*\[(\d+(?:\s*[,，、]\s*\d+)*)\]")
_CJK_CHAR = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_CMRC_TOKENS = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+"
)
# The official script strips these symbols too (they are not Unicode punctuation).
_EXTRA_STRIP = frozenset("^`~+=")


def strip_citations(answer: str) -> str:
    """The answer text without ``[1]``/``[1,2]`` citation markers."""
    return _CITATION.sub("", answer).strip()


def cited_ids(answer: str) -> list[int]:
    """Citation numbers referenced by ``[n]`` markers, in order, without repeats."""
    ids: list[int] = []
    for group in _CITATION.findall(answer):
        for part in re.split(r"[,，、]", group):
            n = int(part.strip())
            if n not in ids:
                ids.append(n)
    return ids


def cmrc_normalize(text: str) -> str:
    """CMRC 2018 normalization: lower case, punctuation (Chinese and English) and whitespace removed.

    NFKC is applied first so that full-width and half-width forms compare equal (the
    documents are NFKC-normalized at ingestion, gold answers are not).
    """
    out = []
    for ch in nfkc(text).lower():
        if ch.isspace() or ch in _EXTRA_STRIP or unicodedata.category(ch).startswith("P"):
            continue
        out.append(ch)
    return "".join(out)


def cmrc_tokens(text: str) -> list[str]:
    """CMRC 2018 ``mixed_segmentation``: each CJK character is a token, other runs are words.

    The official script word-tokenizes non-CJK runs with NLTK; after punctuation removal that
    amounts to splitting them at whitespace, which is what this does.
    """
    out = []
    for ch in nfkc(text).lower():
        if ch in _EXTRA_STRIP or unicodedata.category(ch).startswith("P"):
            out.append(" ")
        else:
            out.append(ch)
    return _CMRC_TOKENS.findall("".join(out))


def longest_common_substring(a: Sequence[T], b: Sequence[T]) -> int:
    """Length of the longest common contiguous run of ``a`` and ``b`` (dynamic programming)."""
    if not a or not b:
        return 0
    best = 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0] * (len(b) + 1)
        for j, y in enumerate(b, 1):
            if x == y:
                cur[j] = prev[j - 1] + 1
                best = max(best, cur[j])
        prev = cur
    return best


def cmrc_f1(prediction: str, golds: Iterable[str]) -> float:
    """Character-level F1 as the official CMRC 2018 script computes it, max over gold answers.

    ``calc_f1_score`` in ``cmrc2018_evaluate.py`` (github.com/ymcui/cmrc2018, ``squad-style-data``)
    segments both strings with ``mixed_segmentation(..., rm_punc=True)`` and takes the
    *longest common substring* (``find_lcs``) of the two token lists as the overlap:
    precision = lcs / len(prediction), recall = lcs / len(gold), F1 their harmonic mean.
    It is not SQuAD's bag-of-tokens overlap.
    """
    pred = cmrc_tokens(prediction)
    best = 0.0
    for gold in golds:
        ref = cmrc_tokens(gold)
        lcs = longest_common_substring(ref, pred)
        if lcs == 0:
            continue
        precision, recall = lcs / len(pred), lcs / len(ref)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def cmrc_em(prediction: str, golds: Iterable[str]) -> float:
    """Exact match after :func:`cmrc_normalize` (``calc_em_score`` of the CMRC 2018 script)."""
    pred = cmrc_normalize(prediction)
    return float(any(cmrc_normalize(g) == pred for g in golds))


def answer_contains(prediction: str, golds: Iterable[str]) -> bool:
    """Accuracy: some gold answer, normalized, is contained in the normalized prediction."""
    pred = cmrc_normalize(prediction)
    return any((g := cmrc_normalize(gold)) and g in pred for gold in golds)


def covers(evidence: str, text: str, min_coverage: float = PARTIAL_COVERAGE) -> bool:
    """True when ``text`` holds the whole evidence, or a common substring of >= ``min_coverage`` of it.

    Both are compared after :func:`squash`. This is exact for the threshold (it checks every
    substring of the required length), with no dynamic programming.
    """
    ev, tx = squash(evidence), squash(text)
    if not ev:
        return False
    if ev in tx:
        return True
    need = max(1, math.ceil(min_coverage * len(ev)))
    return any(ev[i : i + need] in tx for i in range(len(ev) - need + 1))


def evidence_coverage(evidence: str, text: str) -> float:
    """Share of the (squashed) evidence that its longest common substring with ``text`` covers."""
    ev, tx = squash(evidence), squash(text)
    return longest_common_substring(ev, tx) / len(ev) if ev else 0.0


class RelevanceJudge:
    """Which chunks of an index are relevant to a question (rules in the module docstring)."""

    def __init__(self, chunks: Sequence[Chunk], min_coverage: float = PARTIAL_COVERAGE) -> None:
        self.chunks = list(chunks)
        self.min_coverage = min_coverage
        self._squashed = [squash(c.text) for c in self.chunks]
        self._by_article: dict[str, list[int]] = defaultdict(list)
        self._by_source: dict[str, list[int]] = defaultdict(list)
        for i, c in enumerate(self.chunks):
            self._by_article[c.article_id].append(i)
            self._by_source[c.source].append(i)
        self._ids = {c.id for c in self.chunks}

    def has_chunk(self, chunk_id: str) -> bool:
        return chunk_id in self._ids

    def for_evidence(self, evidence: Iterable[str], source: str = "") -> set[str]:
        """Chunks containing an evidence quote; if none holds a quote whole, those covering most of it."""
        relevant: set[str] = set()
        for quote in evidence:
            ev = squash(quote)
            if not ev:
                continue
            whole = {self.chunks[i].id for i, tx in enumerate(self._squashed) if ev in tx}
            if whole:
                relevant |= whole
                continue
            pool = self._by_source.get(source, []) if source else range(len(self.chunks))
            relevant |= {self.chunks[i].id for i in pool if covers(ev, self._squashed[i], self.min_coverage)}
        return relevant

    def for_answers(self, answers: Iterable[str], article_id: str) -> set[str]:
        """Chunks of the paragraph that contain a gold answer; all its chunks if none does."""
        golds = [g for g in (squash(a) for a in answers) if g]
        own = self._by_article.get(article_id, [])
        hit = {self.chunks[i].id for i in own if any(g in self._squashed[i] for g in golds)}
        return hit or {self.chunks[i].id for i in own}

    def for_paragraph(self, article_id: str) -> set[str]:
        """Every chunk of a paragraph (paragraph-level relevance)."""
        return {self.chunks[i].id for i in self._by_article.get(article_id, [])}

    def relevant(self, question: EvalQuestion) -> set[str]:
        """The relevant chunk ids of a question (empty for unanswerable ones)."""
        if not question.answerable:
            return set()
        if question.paragraph is not None:
            return self.for_answers(question.answers, question.paragraph)
        return self.for_evidence(question.evidence, question.source)

    def citation_relevant(self, citation: Citation, question: EvalQuestion, relevant: set[str]) -> bool:
        """A cited passage is relevant when it is a relevant chunk, or its text holds the evidence."""
        if f"{citation.article_id}@{citation.start}" in relevant:
            return True
        if question.paragraph is not None:
            return citation.article_id == question.paragraph and any(
                squash(a) in squash(citation.text) for a in question.answers
            )
        return any(covers(ev, citation.text, self.min_coverage) for ev in question.evidence)


@dataclass(frozen=True)
class AbstentionStats:
    """Abstention as a classifier of unanswerable questions (``abstained`` is the positive)."""

    true_positive: int
    """Unanswerable and abstained."""
    false_positive: int
    """Answerable but abstained: a wrong abstention."""
    unanswerable: int
    answerable: int

    @classmethod
    def count(cls, pairs: Iterable[tuple[bool, bool]]) -> AbstentionStats:
        """From ``(answerable, abstained)`` pairs."""
        tp = fp = unans = ans = 0
        for answerable, abstained in pairs:
            if answerable:
                ans += 1
                fp += abstained
            else:
                unans += 1
                tp += abstained
        return cls(tp, fp, unans, ans)

    @property
    def precision(self) -> float:
        """Share of abstentions that were right; 0.0 when nothing was abstained."""
        total = self.true_positive + self.false_positive
        return self.true_positive / total if total else 0.0

    @property
    def recall(self) -> float:
        """Share of unanswerable questions abstained on."""
        return self.true_positive / self.unanswerable if self.unanswerable else 0.0

    @property
    def wrong_rate(self) -> float:
        """Share of answerable questions abstained on."""
        return self.false_positive / self.answerable if self.answerable else 0.0


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50 and p95 (linear interpolation) of latencies in ms, with the count."""
    if not values:
        return {"p50": 0.0, "p95": 0.0, "n": 0}
    arr = np.asarray(values, dtype=float)
    return {
        "p50": round(float(np.percentile(arr, 50)), 2),
        "p95": round(float(np.percentile(arr, 95)), 2),
        "n": len(values),
    }


def _mean(values: Iterable[float]) -> float:
    vals = list(values)
    return float(sum(vals) / len(vals)) if vals else 0.0


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
        self._vectors: dict[str, tuple[np.ndarray, float]] = {}
        self.reused_ms = 0.0
        self.computed = 0
        self.reused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._embedder, name)

    def embed_query(self, text: str) -> np.ndarray:
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
    k: int = RETRIEVAL_K,
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
            hits = retriever.search(text, k=k, mode=mode)
        except RagError as exc:
            log.warning("%s: %s: %s", config, q.id, exc)
            hits = []
        elapsed = (time.perf_counter() - started) * 1000
        latencies.append(elapsed + (cache.reused_ms if cache is not None else 0.0))
        ranked[q.id] = [h.chunk.id for h in hits]
    return RetrievalRun(config=config, mode=mode, ranked=ranked, latency_ms=latencies)


def retrieval_metrics(
    relevant: dict[str, set[str]], ranked: dict[str, list[str]]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """ranx metrics over the questions of ``relevant``: the means and the per-question scores.

    A question with no relevant chunk in the index gets a stand-in relevant id that is never
    retrieved, so it counts as a miss rather than disappearing from the mean. ranx is given
    plain dicts (same queries, same order): building its ``Qrels``/``Run`` objects costs ~40 s
    of uncached numba compilation per process, the dict path ~5 s.
    """
    from ranx import evaluate as ranx_evaluate

    if not relevant:
        return {name: 0.0 for name in RETRIEVAL_METRICS}, {}
    qids = list(relevant)
    qrels = {qid: {doc: 1 for doc in relevant[qid]} or {MISSING_DOC: 1} for qid in qids}
    # Scores from ranks, so ranx sees exactly the service's order (fused scores can tie);
    # an empty result list gets one stand-in that is never relevant.
    run: dict[str, dict[str, float]] = {}
    for qid in qids:
        docs = ranked.get(qid) or [NOTHING_RETRIEVED]
        run[qid] = {doc: float(len(docs) - r) for r, doc in enumerate(docs)}
    with warnings.catch_warnings():  # numba's type-safety chatter from ranx's compiled metrics
        warnings.simplefilter("ignore")
        scores = ranx_evaluate(qrels, run, list(RETRIEVAL_METRICS.values()), return_mean=False)
    assert isinstance(scores, dict)
    per_query: dict[str, dict[str, float]] = {qid: {} for qid in qids}
    overall: dict[str, float] = {}
    for name, ranx_name in RETRIEVAL_METRICS.items():
        values = np.asarray(scores[ranx_name], dtype=float)
        for qid, value in zip(qids, values, strict=True):
            per_query[qid][name] = float(value)
        overall[name] = round(float(values.mean()), 4)
    return overall, per_query


def first_relevant_rank(ranked: Sequence[str], relevant: set[str]) -> int | None:
    """1-based rank of the first relevant chunk, ``None`` when none was retrieved."""
    return next((r for r, doc in enumerate(ranked, 1) if doc in relevant), None)


def _by_type(
    questions: Sequence[EvalQuestion], per_query: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for q in questions:
        if q.id in per_query:
            groups[q.type].append(per_query[q.id])
    out = {}
    for qtype in sorted(groups):
        rows = groups[qtype]
        out[qtype] = {name: round(_mean(r[name] for r in rows), 4) for name in RETRIEVAL_METRICS}
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
        return self.answer is None or self.answer.abstained

    def row(self) -> dict[str, Any]:
        a = self.answer
        return {
            "id": self.question.id,
            "type": self.question.type,
            "question": self.question.question,
            "gold": list(self.question.answers),
            "answer": a.answer if a else None,
            "abstained": self.abstained,
            "correct": self.correct,
            "em": self.em,
            "f1": round(self.f1, 4),
            "citation_ok": self.citation_ok,
            "context_hit": self.context_hit,
            "error": self.error,
        }


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
    top_k: int = ANSWER_TOP_K,
    use_history: bool = True,
) -> list[ScoredAnswer]:
    """Answer every question through :meth:`Answerer.answer` and score it."""
    out = []
    for q in questions:
        history = list(q.history) if use_history and q.history else None
        try:
            answer: Answer | None = answerer.answer(q.question, top_k=top_k, history=history)
            error = None
        except RagError as exc:
            log.warning("answer %s: %s", q.id, exc)
            answer, error = None, str(exc)
        rel = relevant.get(q.id)
        if rel is None:
            rel = judge.relevant(q)
        scored = score_answer(q, answer, judge, rel)
        scored.error = error
        out.append(scored)
    return out


def answer_metrics(scored: Sequence[ScoredAnswer]) -> dict[str, Any]:
    """Answer metrics overall and per type, with abstention counts and stage latencies."""
    answerable = [s for s in scored if s.question.answerable]
    answered = [s for s in answerable if not s.abstained]
    stats = AbstentionStats.count((s.question.answerable, s.abstained) for s in scored)
    overall: dict[str, float] = {
        "accuracy": round(_mean(float(s.correct) for s in answerable), 4),
        "em": round(_mean(s.em for s in answerable), 4),
        "f1": round(_mean(s.f1 for s in answerable), 4),
        "sentence_accuracy": round(_mean(float(s.sentence_correct) for s in answerable), 4),
        "context_hit@5": round(_mean(float(s.context_hit) for s in answerable), 4),
        "citation_precision": round(_mean(float(bool(s.citation_ok)) for s in answered), 4),
        "citation_precision_strict": round(_mean(float(bool(s.citation_all_ok)) for s in answered), 4),
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
                overall[f"abstention_recall_{qtype}"] = round(_mean(float(s.abstained) for s in group), 4)
    by_type: dict[str, dict[str, float]] = {}
    for qtype in sorted({s.question.type for s in scored}):
        group = [s for s in scored if s.question.type == qtype]
        if not group[0].question.answerable:
            by_type[qtype] = {
                "abstained": round(_mean(float(s.abstained) for s in group), 4),
                "n": len(group),
            }
            continue
        by_type[qtype] = {
            "accuracy": round(_mean(float(s.correct) for s in group), 4),
            "em": round(_mean(s.em for s in group), 4),
            "f1": round(_mean(s.f1 for s in group), 4),
            "abstained": round(_mean(float(s.abstained) for s in group), 4),
            "n": len(group),
        }
    timings: dict[str, list[float]] = defaultdict(list)
    for s in scored:
        if s.answer is not None:
            for stage, ms in s.answer.timings_ms.items():
                timings[stage].append(float(ms))
    return {
        "overall": overall,
        "by_type": by_type,
        "counts": {
            "questions": len(scored),
            "answerable": len(answerable),
            "answered": len(answered),
            "unanswerable": stats.unanswerable,
            "abstained_unanswerable": stats.true_positive,
            "abstained_answerable": stats.false_positive,
            "errors": sum(1 for s in scored if s.error),
            "modes": dict(Counter(s.answer.mode for s in scored if s.answer is not None)),
        },
        "latency_ms": {stage: percentiles(vals) for stage, vals in timings.items()},
    }


def reader_on_paragraphs(reader: Reader, eval_set: EvalSet) -> dict[str, float]:
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
    return {"f1": round(_mean(f1s), 4), "em": round(_mean(ems), 4), "n": len(f1s)}


def followup_metrics(
    with_history: Sequence[ScoredAnswer], without: Sequence[ScoredAnswer]
) -> dict[str, float]:
    """Accuracy and hit@5 (a returned passage holds the evidence), with and without the history."""
    return {
        "accuracy_with_history": round(_mean(float(s.correct) for s in with_history), 4),
        "accuracy_without_history": round(_mean(float(s.correct) for s in without), 4),
        "hit@5_with_history": round(_mean(float(s.context_hit) for s in with_history), 4),
        "hit@5_without_history": round(_mean(float(s.context_hit) for s in without), 4),
        "n": len(with_history),
    }


# --------------------------------------------------------------------------------------
# Indexes
# --------------------------------------------------------------------------------------


def eval_cache_root(settings: Settings, cache_root: Path | None = None) -> Path:
    """Where eval indexes are kept: ``$RAG_EVAL_CACHE_DIR`` or ``<cache_dir>/eval-index``."""
    if cache_root is not None:
        return cache_root
    env = os.environ.get(EVAL_CACHE_ENV)
    return Path(env) if env else settings.cache_dir / "eval-index"


def index_settings_hash(settings: Settings, extra: str = "") -> str:
    """Short hash of every setting that changes what an index contains."""
    fields = {
        name: getattr(settings, name)
        for name in (
            "embed_model",
            "query_prompt",
            "passage_prompt",
            "title_context",
            "chunk_size",
            "chunk_overlap",
            "ann_threshold",
        )
    }
    fields["extra"] = extra
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _docs_dir(settings: Settings) -> Path:
    docs = settings.docs_dir
    if not docs.is_absolute() and not docs.exists() and (REPO_ROOT / docs).exists():
        docs = REPO_ROOT / docs
    return docs.resolve()


def open_retriever(
    eval_set: EvalSet, settings: Settings, embedder: Embedder, cache_root: Path
) -> tuple[Retriever, Settings, dict[str, Any]]:
    """Build (incrementally) and load the eval index of a set under ``cache_root``."""
    docs = _docs_dir(settings)
    extra = str(docs) if eval_set.articles is None else ""
    limit = f"-n{eval_set.limit}" if eval_set.limit is not None and eval_set.articles is not None else ""
    key = index_settings_hash(settings, extra)
    index_dir = cache_root / f"{eval_set.name}{limit}-{key}"
    s = settings.model_copy(update={"index_dir": index_dir, "docs_dir": docs})
    stats = build_index(s, embedder, articles=eval_set.articles)
    log.info(
        "%s index (title_context=%s) in %s: %d chunks, %d embedded, %d reused, %.1f s",
        eval_set.name,
        s.title_context,
        index_dir,
        stats.chunks,
        stats.embedded,
        stats.reused,
        stats.seconds,
    )
    info = {
        "dir": str(index_dir),
        "title_context": s.title_context,
        "articles": stats.articles,
        "chunks": stats.chunks,
        "embedded": stats.embedded,
        "build_seconds": round(stats.seconds, 1),
    }
    return Retriever(load_index(s, embedder), embedder, s), s, info


# --------------------------------------------------------------------------------------
# Running a set
# --------------------------------------------------------------------------------------


@dataclass
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
    k: int = RETRIEVAL_K
    answer_top_k: int = ANSWER_TOP_K
    cache_root: Path | None = None


def _title_suffix(title_context: bool) -> str:
    return "title" if title_context else "notitle"


def evaluate_set(
    eval_set: EvalSet, settings: Settings, embedder: Embedder, options: EvalOptions
) -> dict[str, Any]:
    """Retrieval for every configuration, answers for the default one; the set's report section."""
    started = time.perf_counter()
    cache_root = eval_cache_root(settings, options.cache_root)
    retriever, base_settings, index_info = open_retriever(eval_set, settings, embedder, cache_root)
    judge = RelevanceJudge(retriever.index.chunks)
    answerable = [q for q in eval_set.questions if q.answerable]
    relevant = {q.id: judge.relevant(q) for q in answerable}
    not_indexed = sorted(qid for qid, docs in relevant.items() if not docs)
    if not_indexed:
        log.warning(
            "%s: no chunk holds the evidence of %s",
            eval_set.name,
            ", ".join(not_indexed),
        )
    indexes = [index_info]
    seconds: dict[str, float] = {"index": round(time.perf_counter() - started, 1)}

    runs: list[RetrievalRun] = []
    t0 = time.perf_counter()
    cache = QueryCache(embedder)
    searcher = Retriever(retriever.index, cast(Embedder, cache), retriever.settings)
    for mode in options.modes:
        runs.append(run_retrieval(searcher, answerable, mode, mode, options.k))
        log.info("%s/%s: %d questions searched", eval_set.name, mode, len(answerable))
    simplified = eval_set.traditional if options.simplified is None else options.simplified
    if simplified and eval_set.kind == "squad":
        for mode in options.modes:
            run = run_retrieval(searcher, answerable, mode, f"{mode}_simplified", options.k, transform=fold)
            run.variant = "simplified"
            runs.append(run)
            log.info("%s/%s: %d questions searched", eval_set.name, run.config, len(answerable))
    judgments: dict[str, dict[str, set[str]]] = {"default": relevant}
    title_modes = [m for m in options.modes if m != "bm25"]
    if options.title_comparison and eval_set.kind == "jsonl" and title_modes:
        flipped = settings.model_copy(update={"title_context": not settings.title_context})
        suffix = _title_suffix(flipped.title_context)
        t_started = time.perf_counter()
        alt, _, alt_info = open_retriever(eval_set, flipped, embedder, cache_root)
        seconds["index"] += round(time.perf_counter() - t_started, 1)
        t0 += time.perf_counter() - t_started
        indexes.append(alt_info)
        alt_judge = RelevanceJudge(alt.index.chunks)
        judgments[suffix] = {q.id: alt_judge.relevant(q) for q in answerable}  # same chunks, normally
        alt_searcher = Retriever(alt.index, cast(Embedder, cache), alt.settings)
        for mode in title_modes:
            run = run_retrieval(alt_searcher, answerable, mode, f"{mode}_{suffix}", options.k)
            run.variant = suffix
            runs.append(run)
            log.info("%s/%s: %d questions searched", eval_set.name, run.config, len(answerable))
    seconds["retrieval"] = round(time.perf_counter() - t0, 1)
    log.info(
        "%s: %d query embeddings computed, %d reused across configurations",
        eval_set.name,
        cache.computed,
        cache.reused,
    )

    retrieval: dict[str, Any] = {}
    details: dict[str, dict[str, Any]] = {
        q.id: {"id": q.id, "type": q.type, "question": q.question, "ranks": {}} for q in eval_set.questions
    }
    # SQuAD: also judge at paragraph level (any chunk of the question's paragraph), the
    # granularity of the published BM25 reference points.
    paragraph = (
        {q.id: judge.for_paragraph(q.paragraph) for q in answerable if q.paragraph is not None}
        if eval_set.kind == "squad"
        else {}
    )
    for run in runs:
        rel = judgments.get(run.variant, relevant)
        overall, per_query = retrieval_metrics(rel, run.ranked)
        retrieval[run.config] = {
            "mode": run.mode,
            "variant": run.variant or "default",
            "overall": overall,
            "by_type": _by_type(answerable, per_query) if eval_set.kind == "jsonl" else {},
            "latency_ms": percentiles(run.latency_ms),
            "n": len(rel),
        }
        for qid, docs in run.ranked.items():
            details[qid]["ranks"][run.config] = first_relevant_rank(docs, rel.get(qid, set()))
        if paragraph:
            p_overall, _ = retrieval_metrics(paragraph, run.ranked)
            retrieval[f"{run.config}_paragraph"] = {
                **retrieval[run.config],
                "variant": f"{run.variant or 'default'}+paragraph",
                "overall": p_overall,
            }

    metrics: dict[str, dict[str, float]] = {cfg: dict(r["overall"]) for cfg, r in retrieval.items()}
    section: dict[str, Any] = {
        "name": eval_set.name,
        "kind": eval_set.kind,
        "path": str(eval_set.path),
        "limit": eval_set.limit,
        "traditional": eval_set.traditional,
        "questions": len(eval_set.questions),
        "answerable": len(answerable),
        "types": dict(Counter(q.type for q in eval_set.questions)),
        "indexes": indexes,
        "evidence_not_indexed": not_indexed,
        "retrieval": retrieval,
        "default_config": base_settings.mode
        if base_settings.mode in retrieval
        else next(iter(retrieval), None),
    }

    if options.answers and eval_set.name not in options.skip_answers:
        t1 = time.perf_counter()
        answerer = Answerer(retriever, base_settings)
        scored = run_answers(answerer, eval_set.questions, judge, relevant, options.answer_top_k)
        section["answers"] = answer_metrics(scored)
        metrics["answers"] = dict(section["answers"]["overall"])
        for s in scored:
            details[s.question.id]["answer"] = s.row()
        log.info("%s: %d questions answered", eval_set.name, len(scored))
        if eval_set.kind == "squad" and answerer.reader is not None:
            given = reader_on_paragraphs(answerer.reader, eval_set)
            section["answers"]["gold_paragraph"] = given
            metrics["answers_gold_paragraph"] = {k: v for k, v in given.items() if k != "n"}
            log.info("%s: reader with the gold paragraph given: F1 %.3f", eval_set.name, given["f1"])
        if eval_set.followups:
            fq = eval_set.followups
            frel = {q.id: judge.relevant(q) for q in fq}
            with_h = run_answers(answerer, fq, judge, frel, options.answer_top_k, use_history=True)
            without = run_answers(answerer, fq, judge, frel, options.answer_top_k, use_history=False)
            section["followups"] = followup_metrics(with_h, without)
            section["followup_details"] = [
                {
                    **a.row(),
                    "answer_without_history": b.row()["answer"],
                    "correct_without_history": b.correct,
                }
                for a, b in zip(with_h, without, strict=True)
            ]
            metrics["followups"] = {k: v for k, v in section["followups"].items() if k != "n"}
        seconds["answers"] = round(time.perf_counter() - t1, 1)
    section["metrics"] = metrics
    section["details"] = list(details.values())
    seconds["total"] = round(time.perf_counter() - started, 1)
    section["seconds"] = seconds
    return section


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


def run_evaluation(
    sets: Sequence[EvalSet],
    settings: Settings,
    options: EvalOptions | None = None,
    embedder: Embedder | None = None,
) -> dict[str, Any]:
    """Evaluate every set; the whole report as a JSON-ready dict."""
    options = options or EvalOptions()
    started = time.perf_counter()
    embedder = embedder or load_embedder(settings)
    report: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "settings": {
            "embed_model": embedder.model_id,
            "mode": settings.mode,
            "title_context": settings.title_context,
            "chunk_size": settings.chunk_size,
            "chunk_overlap": settings.chunk_overlap,
            "rrf_k": settings.rrf_k,
            "dense_weight": settings.dense_weight,
            "bm25_weight": settings.bm25_weight,
            "reader_backend": settings.reader_backend,
            "reader_passages": settings.reader_passages,
            "reader_margin": settings.reader_margin,
            "reader_rank_weight": settings.reader_rank_weight,
            "llm": bool(settings.llm_base_url),
        },
        "options": {
            "modes": list(options.modes),
            "k": options.k,
            "answer_top_k": options.answer_top_k,
            "answers": options.answers,
            "skip_answers": sorted(options.skip_answers),
            "title_comparison": options.title_comparison,
        },
        "sets": {},
    }
    for eval_set in sets:
        log.info("evaluating %s (%d questions)", eval_set.name, len(eval_set.questions))
        report["sets"][eval_set.name] = evaluate_set(eval_set, settings, embedder, options)
    report["seconds"] = round(time.perf_counter() - started, 1)
    return report


# --------------------------------------------------------------------------------------
# Gate
# --------------------------------------------------------------------------------------


def load_thresholds(path: Path) -> dict[str, Any]:
    """Parse ``thresholds.toml``: ``[set.section]`` tables of ``"metric" = minimum`` or ``{max = x}``."""
    if not path.is_file():
        raise RagError(f"thresholds file {path} not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RagError(f"{path}: {exc}") from None


def check_gate(report: dict[str, Any], thresholds: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Compare the report with the thresholds: (one line per failed metric, notes on what was skipped).

    A plain number is a minimum; ``{min = x}`` / ``{max = x}`` give either bound. A section of a
    set or configuration that this run did not measure is skipped with a note; a metric missing
    from a measured section fails (a renamed or misspelled metric must not pass silently).
    """
    failures: list[str] = []
    notes: list[str] = []
    sets = report.get("sets", {})
    for set_key, sections in thresholds.items():
        if set_key == GATE_TABLE or not isinstance(sections, dict):
            continue
        if set_key not in sets:
            notes.append(f"{set_key}: not run, skipped")
            continue
        measured_sections = sets[set_key].get("metrics", {})
        for section_key, limits in sections.items():
            if not isinstance(limits, dict):
                continue
            measured = measured_sections.get(section_key)
            if measured is None:
                notes.append(f"{set_key}.{section_key}: not measured in this run, skipped")
                continue
            for metric, bound in limits.items():
                where = f"{set_key}.{section_key} {metric}"
                lo = (
                    bound
                    if isinstance(bound, int | float)
                    else bound.get("min")
                    if isinstance(bound, dict)
                    else None
                )
                hi = bound.get("max") if isinstance(bound, dict) else None
                value = measured.get(metric)
                if value is None:
                    failures.append(f"{where}: not in the report (renamed or misspelled?)")
                    continue
                if lo is not None and value < lo:
                    failures.append(f"{where} = {value:.4f} < minimum {lo}")
                if hi is not None and value > hi:
                    failures.append(f"{where} = {value:.4f} > maximum {hi}")
    return failures, notes


# --------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------

_RETRIEVAL_COLUMNS = list(RETRIEVAL_METRICS)
_ANSWER_COLUMNS = [
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
]


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _ms(value: float) -> str:
    return f"{value:.1f}"


def report_tables(
    section: dict[str, Any],
) -> list[tuple[str, list[str], list[list[str]]]]:
    """The tables of one set's section as ``(caption, headers, rows)``, shared by every format."""
    tables = []
    retrieval = section.get("retrieval", {})
    if retrieval:
        rows = [
            [
                cfg,
                *(_fmt(r["overall"].get(m)) for m in _RETRIEVAL_COLUMNS),
                _ms(r["latency_ms"]["p50"]),
                _ms(r["latency_ms"]["p95"]),
            ]
            for cfg, r in retrieval.items()
        ]
        tables.append(("Retrieval", ["config", *_RETRIEVAL_COLUMNS, "p50 ms", "p95 ms"], rows))
        default = section.get("default_config")
        by_type = retrieval.get(default, {}).get("by_type") if default else None
        if by_type:
            rows = [
                [t, str(int(v["n"])), *(_fmt(v.get(m)) for m in _RETRIEVAL_COLUMNS)]
                for t, v in by_type.items()
            ]
            tables.append(
                (
                    f"Retrieval by question type ({default})",
                    ["type", "n", *_RETRIEVAL_COLUMNS],
                    rows,
                )
            )
    answers = section.get("answers")
    if answers:
        cols = [c for c in _ANSWER_COLUMNS if c in answers["overall"]]
        tables.append(
            (
                "Answers (default configuration)",
                cols,
                [[_fmt(answers["overall"][c]) for c in cols]],
            )
        )
        rows = [
            [
                t,
                str(int(v["n"])),
                *(_fmt(v.get(m)) for m in ("accuracy", "em", "f1", "abstained")),
            ]
            for t, v in answers["by_type"].items()
        ]
        if len(rows) > 1:
            tables.append(
                (
                    "Answers by question type",
                    ["type", "n", "accuracy", "em", "f1", "abstained"],
                    rows,
                )
            )
        lat = answers.get("latency_ms", {})
        if lat:
            rows = [[stage, _ms(v["p50"]), _ms(v["p95"])] for stage, v in lat.items()]
            tables.append(("Answer latency per stage (ms)", ["stage", "p50", "p95"], rows))
    followups = section.get("followups")
    if followups:
        rows = [
            [
                "with history",
                _fmt(followups["accuracy_with_history"]),
                _fmt(followups["hit@5_with_history"]),
            ],
            [
                "without history",
                _fmt(followups["accuracy_without_history"]),
                _fmt(followups["hit@5_without_history"]),
            ],
        ]
        tables.append((f"Follow-ups ({followups['n']} pairs)", ["", "accuracy", "hit@5"], rows))
    return tables


def _misses(section: dict[str, Any], limit: int = 25) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    default = section.get("default_config")
    retrieval_misses = [
        d
        for d in section.get("details", [])
        if default in d["ranks"] and (d["ranks"][default] is None or d["ranks"][default] > 5)
    ][:limit]
    answer_misses = [
        d["answer"]
        for d in section.get("details", [])
        if "answer" in d
        and (
            (d["answer"]["gold"] and not d["answer"]["correct"])
            or (not d["answer"]["gold"] and not d["answer"]["abstained"])
        )
    ][:limit]
    return retrieval_misses, answer_misses


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|").replace("\n", " ")

    lines = [
        "| " + " | ".join(esc(h) for h in headers) + " |",
        "|" + "---|" * len(headers),
    ]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _set_heading(name: str, section: dict[str, Any]) -> str:
    bits = [f"{section['questions']} questions ({section['answerable']} answerable)"]
    if section.get("limit") is not None:
        bits.append(f"limit {section['limit']}")
    if section.get("traditional"):
        bits.append("traditional Chinese")
    chunks = section["indexes"][0]["chunks"] if section.get("indexes") else "?"
    bits.append(f"{chunks} chunks")
    bits.append(f"{section['seconds']['total']} s")
    return f"{name}: " + ", ".join(bits)


def render_markdown(
    report: dict[str, Any],
    gate: tuple[list[str], list[str]] | None = None,
    plots: Iterable[str] = (),
) -> str:
    """The report as Markdown (plots referenced as files in ``plots/``)."""
    out = [
        "# Evaluation report",
        "",
        f"- created: {report['created']}, commit: {report.get('commit') or '?'}, total {report['seconds']} s",
        f"- settings: {json.dumps(report['settings'], ensure_ascii=False)}",
        "- recall@k = at least one relevant chunk in the top k (ranx hit_rate@k); "
        "answers scored with the CMRC 2018 normalization",
        "",
    ]
    if gate is not None:
        failures, notes = gate
        out += ["## Gate", "", "**FAILED**" if failures else "**passed**", ""]
        out += [f"- {line}" for line in failures + notes]
        out.append("")
    for name, section in report["sets"].items():
        out += [f"## {_set_heading(name, section)}", ""]
        for caption, headers, rows in report_tables(section):
            out += [f"### {caption}", "", _md_table(headers, rows), ""]
        for plot in plots:
            if plot.startswith(f"{name}_"):
                out += [f"![{plot}](plots/{plot})", ""]
        r_miss, a_miss = _misses(section)
        if r_miss:
            out += [
                f"### Retrieval misses ({section.get('default_config')}, not in top 5; first {len(r_miss)})",
                "",
            ]
            default = section.get("default_config")
            out += [
                f"- `{d['id']}` [{d['type']}] {d['question']} — rank {d['ranks'].get(default)}"
                for d in r_miss
            ]
            out.append("")
        if a_miss:
            out += [f"### Answer misses (first {len(a_miss)})", ""]
            for a in a_miss:
                gold = "/".join(a["gold"]) or "(unanswerable)"
                got = (a["answer"] or "")[:80]
                out.append(f"- `{a['id']}` [{a['type']}] {a['question']} — gold {gold}; got: {got}")
            out.append("")
    return "\n".join(out)


_CSS = (
    "body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px}"
    "table{border-collapse:collapse;margin:1em 0}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
    "td:first-child,th:first-child{text-align:left}"
    "caption{font-weight:bold;text-align:left;padding:4px 0}"
    ".fail{color:#b00}.pass{color:#070}img{max-width:100%}"
)


def _html_table(caption: str, headers: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return (
        f"<table><caption>{html.escape(caption)}</caption>"
        f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def render_html(
    report: dict[str, Any],
    plots: dict[str, bytes],
    gate: tuple[list[str], list[str]] | None = None,
) -> str:
    """A self-contained HTML report: tables and the PNG plots embedded as base64."""
    parts = [
        "<!doctype html><html lang='zh'><head><meta charset='utf-8'><title>rag eval report</title><style>",
        _CSS,
        "</style></head><body><h1>Evaluation report</h1>",
        (
            f"<p>created {html.escape(report['created'])}, "
            f"commit {html.escape(report.get('commit') or '?')}, total {report['seconds']} s</p>"
        ),
        f"<p><code>{html.escape(json.dumps(report['settings'], ensure_ascii=False))}</code></p>",
        (
            "<p>recall@k: at least one relevant chunk in the top k (ranx hit_rate@k). "
            "Answers: gold contained in the answer (accuracy), exact match and character F1 "
            "with the CMRC 2018 normalization.</p>"
        ),
    ]
    if gate is not None:
        failures, notes = gate
        status = "<span class='fail'>FAILED</span>" if failures else "<span class='pass'>passed</span>"
        parts.append(f"<h2>Gate: {status}</h2><ul>")
        parts += [f"<li class='fail'>{html.escape(x)}</li>" for x in failures]
        parts += [f"<li>{html.escape(x)}</li>" for x in notes]
        parts.append("</ul>")
    for name, section in report["sets"].items():
        parts.append(f"<h2>{html.escape(_set_heading(name, section))}</h2>")
        for caption, headers, rows in report_tables(section):
            parts.append(_html_table(caption, headers, rows))
        for plot, png in plots.items():
            if plot.startswith(f"{name}_"):
                data = base64.b64encode(png).decode()
                parts.append(f"<p><img alt='{html.escape(plot)}' src='data:image/png;base64,{data}'></p>")
        r_miss, a_miss = _misses(section)
        if r_miss:
            rows = [
                [
                    d["id"],
                    d["type"],
                    d["question"],
                    _fmt(d["ranks"].get(section.get("default_config"))),
                ]
                for d in r_miss
            ]
            parts.append(
                _html_table(
                    "Retrieval misses (not in top 5)",
                    ["id", "type", "question", "rank"],
                    rows,
                )
            )
        if a_miss:
            rows = [
                [
                    a["id"],
                    a["type"],
                    a["question"],
                    "/".join(a["gold"]),
                    (a["answer"] or "")[:120],
                ]
                for a in a_miss
            ]
            parts.append(_html_table("Answer misses", ["id", "type", "question", "gold", "answer"], rows))
    parts.append("</body></html>")
    return "\n".join(parts)


def make_plots(report: dict[str, Any]) -> dict[str, bytes]:
    """PNG plots per set: metrics per configuration, recall@k curves, per-type scores, latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def png(fig: Any) -> bytes:
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=90)
        plt.close(fig)
        return buf.getvalue()

    plots: dict[str, bytes] = {}
    for name, section in report["sets"].items():
        retrieval = section.get("retrieval", {})
        if not retrieval:
            continue
        configs = list(retrieval)
        metrics = ["recall@1", "recall@5", "mrr@10", "ndcg@10"]
        fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(configs)), 3.6))
        width = 0.8 / len(metrics)
        x = np.arange(len(configs))
        for j, m in enumerate(metrics):
            ax.bar(
                x + j * width,
                [retrieval[c]["overall"][m] for c in configs],
                width,
                label=m,
            )
        ax.set_xticks(x + width * (len(metrics) - 1) / 2, configs, rotation=20)
        ax.set_ylim(0, 1.2)
        ax.set_title(f"{name}: retrieval by configuration")
        ax.legend(loc="upper center", ncol=len(metrics), fontsize=8)
        plots[f"{name}_retrieval.png"] = png(fig)

        fig, ax = plt.subplots(figsize=(6, 3.6))
        for c in configs:
            ax.plot(
                RECALL_KS,
                [retrieval[c]["overall"][f"recall@{k}"] for k in RECALL_KS],
                marker="o",
                label=c,
            )
        ax.set_xticks(RECALL_KS)
        ax.set_xlabel("k")
        ax.set_ylabel("recall@k")
        ax.set_title(f"{name}: recall@k")
        ax.legend(fontsize=8)
        plots[f"{name}_recall_at_k.png"] = png(fig)

        default = section.get("default_config")
        by_type = retrieval.get(default, {}).get("by_type") if default else None
        answers = section.get("answers")
        if by_type:
            types = list(by_type)
            fig, ax = plt.subplots(figsize=(7, 0.35 * len(types) + 1.5))
            y = np.arange(len(types))
            ax.barh(
                y - 0.2,
                [by_type[t]["recall@5"] for t in types],
                0.4,
                label=f"recall@5 ({default})",
            )
            if answers:
                ax.barh(
                    y + 0.2,
                    [answers["by_type"].get(t, {}).get("accuracy", 0.0) for t in types],
                    0.4,
                    label="answer accuracy",
                )
            ax.set_yticks(y, types)
            ax.set_xlim(0, 1.05)
            ax.set_title(f"{name}: by question type")
            ax.legend(fontsize=8, loc="lower right")
            plots[f"{name}_types.png"] = png(fig)

        searched = [c for c in configs if not c.endswith("_paragraph")]  # same searches, judged again
        labels = [f"search:{c}" for c in searched]
        p50 = [retrieval[c]["latency_ms"]["p50"] for c in searched]
        p95 = [retrieval[c]["latency_ms"]["p95"] for c in searched]
        if answers:
            for stage, v in answers.get("latency_ms", {}).items():
                labels.append(f"answer:{stage}")
                p50.append(v["p50"])
                p95.append(v["p95"])
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(labels)), 3.4))
        x = np.arange(len(labels))
        ax.bar(x - 0.2, p50, 0.4, label="p50")
        ax.bar(x + 0.2, p95, 0.4, label="p95")
        ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel("ms")
        ax.set_title(f"{name}: latency")
        ax.legend(fontsize=8)
        plots[f"{name}_latency.png"] = png(fig)
    return plots


def summary(report: dict[str, Any], gate: tuple[list[str], list[str]] | None = None) -> dict[str, Any]:
    """The report without per-question details, with the gate verdict: what ``report.json`` holds."""
    out = {k: v for k, v in report.items() if k != "sets"}
    out["sets"] = {name: {k: v for k, v in s.items() if k != "details"} for name, s in report["sets"].items()}
    if gate is not None:
        out["gate"] = {"passed": not gate[0], "failures": gate[0], "notes": gate[1]}
    return out


def write_reports(
    report: dict[str, Any],
    out_dir: Path,
    gate: tuple[list[str], list[str]] | None = None,
) -> Path:
    """Write JSON, Markdown, HTML, plots and per-question details to ``out_dir/<stamp>/`` and ``latest/``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = out_dir / stamp
    n = 1
    while target.exists():
        target = out_dir / f"{stamp}-{n}"
        n += 1
    (target / "plots").mkdir(parents=True)
    plots = make_plots(report)
    for plot, data in plots.items():
        (target / "plots" / plot).write_bytes(data)
    (target / "report.json").write_text(
        json.dumps(summary(report, gate), ensure_ascii=False, indent=1), encoding="utf-8"
    )
    for name, section in report["sets"].items():
        with (target / f"details-{name}.jsonl").open("w", encoding="utf-8") as f:
            for row in section.get("details", []):
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    (target / "report.md").write_text(render_markdown(report, gate, plots), encoding="utf-8")
    (target / "report.html").write_text(render_html(report, plots, gate), encoding="utf-8")
    latest = out_dir / "latest"
    tmp = out_dir / f".latest-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(target, tmp)
    shutil.rmtree(latest, ignore_errors=True)
    tmp.rename(latest)
    log.info("reports written to %s (and %s)", target, latest)
    return target


_SHORT = {f"recall@{k}": f"R@{k}" for k in RECALL_KS} | {"mrr@10": "MRR@10", "ndcg@10": "nDCG@10"}


def print_summary(
    report: dict[str, Any],
    gate: tuple[list[str], list[str]] | None = None,
    stderr: bool = False,
) -> None:
    """The summary tables on the terminal (rich)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    width = shutil.get_terminal_size((120, 24)).columns
    console = Console(stderr=stderr, width=max(width, 110))
    for name, section in report["sets"].items():
        console.rule(_set_heading(name, section))
        for caption, headers, rows in report_tables(section):
            if caption.startswith(("Retrieval by question type", "Answers by")):
                continue  # in the reports; the terminal keeps to the headline tables
            if len(rows) == 1 and len(headers) > 4:  # one wide row reads better as a column
                headers, rows = ["metric", "value"], [[h, v] for h, v in zip(headers, rows[0], strict=True)]
            table = Table(title=caption, title_justify="left", box=box.SIMPLE)
            for h in headers:
                left = h in ("config", "stage", "metric", "")
                table.add_column(_SHORT.get(h, h), justify="left" if left else "right")
            for row in rows:
                table.add_row(*row)
            console.print(table)
    if gate is not None:
        failures, notes = gate
        for note in notes:
            console.print(f"[dim]gate: {note}[/dim]")
        console.print(
            f"[red]gate: failed, {len(failures)} metric(s) out of bounds[/red]"
            if failures
            else "[green]gate: passed[/green]"
        )


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def parse_limits(values: Sequence[str]) -> tuple[int | None, dict[str, int]]:
    """``--limit N`` (every set) and ``--limit NAME=N`` (one set)."""
    default: int | None = None
    per_set: dict[str, int] = {}
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            n = int(number)
        except ValueError:
            raise RagError(f"--limit {value}: expected N or NAME=N, e.g. --limit drcd=300") from None
        if n < 1:
            raise RagError(f"--limit {value}: must be at least 1")
        if name:
            per_set[name] = n
        else:
            default = n
    return default, per_set


@dataclass
class EvalCommand:
    """Everything ``rag eval`` was asked to do."""

    sets: list[Path] = field(default_factory=list)
    squad: list[Path] = field(default_factory=list)
    bench: bool = False
    bench_dir: Path | None = None
    mode: str = "all"
    gate: bool = False
    thresholds: Path = DEFAULT_THRESHOLDS
    as_json: bool = False
    out: Path | None = None
    answers: bool = True
    skip_answers: list[str] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)
    simplified: bool | None = None
    title_comparison: bool = True
    report: bool = True


def gate_run_config(thresholds: dict[str, Any]) -> tuple[dict[str, int], set[str]]:
    """The ``[gate]`` table of the thresholds: per-set ``limit`` and ``skip_answers`` of the CI run.

    The thresholds were measured under these conditions, so ``--gate`` runs under them too
    (command-line ``--limit``/``--skip-answers`` still win).
    """
    cfg = thresholds.get(GATE_TABLE, {})
    limits = cfg.get("limit", {})
    skip = cfg.get("skip_answers", [])
    if not isinstance(limits, dict) or not all(isinstance(v, int) and v > 0 for v in limits.values()):
        raise RagError(f"[{GATE_TABLE}] limit must be a table of set = positive integer, e.g. {{drcd = 300}}")
    if not isinstance(skip, list):
        raise RagError(f"[{GATE_TABLE}] skip_answers must be a list of set names")
    return {str(k): int(v) for k, v in limits.items()}, {str(x) for x in skip}


def collect_sets(cmd: EvalCommand, gate_limits: dict[str, int] | None = None) -> list[EvalSet]:
    """Load the requested sets; external files that are absent are skipped with a warning
    (a ``RagError`` for ``--gate`` under ``CI=true``).

    No ``--set``/``--squad``: the seed set, plus the standard external sets with ``--bench``
    or ``--gate`` (the CI run).
    """
    default_limit, per_set = parse_limits(cmd.limits)
    limits = {**(gate_limits or {}), **per_set}

    def limit_for(name: str) -> int | None:
        return limits.get(name, default_limit)

    bench_dir = resolve_bench_dir(cmd.bench_dir)
    explicit = bool(cmd.sets or cmd.squad)
    jsonl = list(cmd.sets) or ([] if cmd.squad else [DEFAULT_SET])
    squad: list[Path] = list(cmd.squad)
    if cmd.bench or (cmd.gate and not explicit):
        squad += [Path(rel) for rel in STANDARD_BENCH.values() if Path(rel) not in squad]
    out = [load_jsonl_set(p, limit_for(set_name(p))) for p in jsonl]
    for path in squad:
        found = resolve_squad_path(path, bench_dir)
        if found is None and cmd.gate and os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            # On a laptop the gate can run on the seeds alone; in CI a missing benchmark would
            # let the CMRC and DRCD thresholds pass unmeasured.
            raise RagError(
                f"external set {path} not found under {bench_dir}; CI must measure it: "
                f"put the benchmarks there or set --bench-dir / ${BENCH_DIR_ENV}"
            )
        if found is None:
            log.warning(
                "external set %s not found under %s (set --bench-dir or $%s): skipped",
                path,
                bench_dir,
                BENCH_DIR_ENV,
            )
            continue
        out.append(load_squad_set(found, limit_for(set_name(found))))
    if not out:
        raise RagError("nothing to evaluate: no question set was found")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise RagError(f"two sets share a name: {', '.join(names)}")
    return out


def run_command(
    cmd: EvalCommand, settings: Settings
) -> tuple[dict[str, Any], tuple[list[str], list[str]] | None, Path | None]:
    """Run ``rag eval``: the report, the gate verdict (when asked) and where the reports went."""
    modes: tuple[RetrievalMode, ...]
    if cmd.mode == "all":
        modes = ALL_MODES
    elif cmd.mode in ALL_MODES:
        modes = (cast(RetrievalMode, cmd.mode),)
    else:
        raise RagError(f"--mode {cmd.mode}: expected hybrid, dense, bm25 or all")
    thresholds = load_thresholds(cmd.thresholds) if cmd.gate else None
    gate_limits, gate_skip = gate_run_config(thresholds) if thresholds is not None else ({}, set())
    sets = collect_sets(cmd, gate_limits)
    options = EvalOptions(
        modes=modes,
        answers=cmd.answers,
        skip_answers=frozenset(cmd.skip_answers) | gate_skip,
        title_comparison=cmd.title_comparison,
        simplified=cmd.simplified,
    )
    report = run_evaluation(sets, settings, options)
    gate = check_gate(report, thresholds) if thresholds is not None else None
    target = write_reports(report, cmd.out or DEFAULT_REPORTS, gate) if cmd.report else None
    return report, gate, target
