"""Metric functions: CMRC 2018 answer scores, ranx retrieval metrics, abstention, latency.

Answer metrics follow the CMRC 2018 official evaluation script (see :func:`cmrc_f1`).
``recall@k`` is "at least one relevant chunk in the top k" (ranx ``hit_rate@k``, a.k.a.
success@k): one question has several relevant chunks when chunks overlap, and finding one of
them is what answering needs. ``mrr@10`` and ``ndcg@10`` are ranx's own.
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from rag.textnorm import nfkc

T = TypeVar("T")

RETRIEVAL_K = 10
"""Depth of every retrieval metric (and of the searches that feed them)."""
RECALL_KS = (1, 3, 5, 10)
RETRIEVAL_METRICS: dict[str, str] = {
    **{f"recall@{k}": f"hit_rate@{k}" for k in RECALL_KS},
    "mrr@10": "mrr@10",
    "ndcg@10": "ndcg@10",
}
"""Report name -> ranx metric name."""
MISSING_DOC = "__evidence_not_in_index__"
"""Stand-in relevant document for a question whose evidence no chunk holds: counts as a miss."""
NOTHING_RETRIEVED = "__nothing_retrieved__"

_CITATION = re.compile(r"\s*\[(\d+(?:\s*[,，、]\s*\d+)*)\]")
_CMRC_TOKENS = re.compile(
    r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]|[^\s\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]+"
)
# The official script strips these symbols too (they are not Unicode punctuation).
_EXTRA_STRIP = frozenset("^`~+=")


def strip_citations(answer: str) -> str:
    """The answer text without ``[1]``/``[1,2]`` citation markers."""
    return _CITATION.sub("", answer).strip()


def _stripped(ch: str) -> bool:
    return ch in _EXTRA_STRIP or unicodedata.category(ch).startswith("P")


def cmrc_normalize(text: str) -> str:
    """CMRC 2018 normalization: lower case, punctuation (Chinese and English) and whitespace removed.

    NFKC is applied first so that full-width and half-width forms compare equal (the
    documents are NFKC-normalized at ingestion, gold answers are not).
    """
    return "".join(ch for ch in nfkc(text).lower() if not (ch.isspace() or _stripped(ch)))


def cmrc_tokens(text: str) -> list[str]:
    """CMRC 2018 ``mixed_segmentation``: each CJK character is a token, other runs are words.

    The official script word-tokenizes non-CJK runs with NLTK; after punctuation removal that
    amounts to splitting them at whitespace, which is what this does.
    """
    spaced = "".join(" " if _stripped(ch) else ch for ch in nfkc(text).lower())
    return _CMRC_TOKENS.findall(spaced)


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


@dataclass(frozen=True)
class Latency:
    """p50 and p95 of latencies in ms (linear interpolation), with the count."""

    p50: float
    p95: float
    n: int

    def to_dict(self) -> dict[str, float]:
        """``{"p50", "p95", "n"}``, as the report JSON holds it."""
        return {"p50": self.p50, "p95": self.p95, "n": self.n}


def percentiles(values: Sequence[float]) -> Latency:
    """p50 and p95 (linear interpolation) of latencies in ms, with the count."""
    if not values:
        return Latency(0.0, 0.0, 0)
    arr = np.asarray(values, dtype=float)
    return Latency(
        p50=round(float(np.percentile(arr, 50)), 2),
        p95=round(float(np.percentile(arr, 95)), 2),
        n=len(values),
    )


def mean(values: Iterable[float]) -> float:
    """The arithmetic mean; 0.0 of nothing."""
    vals = list(values)
    return float(sum(vals) / len(vals)) if vals else 0.0


def retrieval_metrics(
    relevant: dict[str, set[str]], ranked: dict[str, list[str]]
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """ranx metrics over the questions of ``relevant``: the means and the per-question scores.

    A question with no relevant chunk in the index gets a stand-in relevant id that is never
    retrieved, so it counts as a miss rather than disappearing from the mean. ranx is given
    plain dicts (same queries, same order): its ``Qrels``/``Run`` objects cost much more
    numba compilation per process (see eval/README.md, "Tuning history").
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
