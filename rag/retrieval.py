"""Find the passages for a question: dense (FAISS), BM25 (jieba), or both fused by RRF."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rag.embedding import Embedder, load_embedder
from rag.errors import QuestionError
from rag.index import SearchIndex, load_index, require_index
from rag.models import Hit
from rag.settings import RetrievalMode, Settings
from rag.textnorm import fold, search_tokens, without_surrogates

MAX_QUESTION_CHARS = 2000


@dataclass(frozen=True)
class Ranking:
    """One retriever's ranked chunk positions with their raw scores."""

    ids: list[int]
    scores: list[float]


def check_question(question: str) -> str:
    """The question stripped; an empty or overlong one is a ``QuestionError``."""
    stripped = question.strip()
    if not stripped:
        raise QuestionError("问题是空的；请输入一个问题，例如：锦屏成立了什么联盟")
    if len(stripped) > MAX_QUESTION_CHARS:
        raise QuestionError(f"问题有 {len(stripped)} 个字，超过了 {MAX_QUESTION_CHARS} 字的上限；请缩短问题")
    if without_surrogates(stripped) != stripped:
        raise QuestionError("问题含有无效的字符（孤立的 UTF-16 代理项，如 \\ud800）；请检查客户端的编码")
    return stripped


class Retriever:
    """Searches one loaded index with one embedder; cheap to call, safe to share between threads."""

    def __init__(self, index: SearchIndex, embedder: Embedder, settings: Settings) -> None:
        self.index = index
        self.embedder = embedder
        self.settings = settings
        self._vocab = index.bm25.vocab_dict

    @classmethod
    def open(cls, settings: Settings) -> Retriever:
        """Load the embedding model and the live index described by ``settings``."""
        require_index(settings)  # fail before the slow model load
        embedder = load_embedder(settings)
        return cls(load_index(settings, embedder), embedder, settings)

    def embed(self, question: str) -> np.ndarray:
        """The question's normalized query embedding."""
        return self.embedder.embed_query(fold(question)).astype(np.float32)

    def dense(self, query: np.ndarray, depth: int) -> Ranking:
        """Top ``depth`` chunks by cosine similarity to the query embedding."""
        if not len(self.index):
            return Ranking([], [])
        if self.index.store is not None:  # RAG_BACKEND=milvus: the build's collection answers
            return Ranking(*self.index.store.dense(query, min(depth, len(self.index))))
        scores, ids = self.index.faiss_index.search(query[None, :], min(depth, len(self.index)))
        keep = ids[0] >= 0
        return Ranking(ids[0][keep].tolist(), scores[0][keep].tolist())

    def bm25(self, question: str, depth: int) -> Ranking:
        """Top ``depth`` chunks by BM25 over jieba tokens; chunks sharing no term are left out."""
        tokens = [t for t in search_tokens(question) if t in self._vocab]
        terms = dict.fromkeys(tokens)
        if len(terms) > self.settings.max_query_terms:
            # A bound on the work of one query (RAG_MAX_QUERY_TERMS): the first terms are kept.
            kept = set(list(terms)[: self.settings.max_query_terms])
            tokens = [t for t in tokens if t in kept]
        if not tokens or not len(self.index):
            return Ranking([], [])
        if self.index.store is not None:
            # The same terms, each once, in order: the collection's jieba analyzer cuts them again
            # (a term gives itself and its sub-words, which search mode had given too).
            return Ranking(*self.index.store.bm25(" ".join(dict.fromkeys(tokens)), depth))
        scores = self.index.bm25.get_scores(tokens)
        depth = min(depth, len(scores))
        top = np.argpartition(-scores, depth - 1)[:depth]
        top = top[np.argsort(-scores[top], kind="stable")]
        top = top[scores[top] > 0]
        return Ranking(top.tolist(), scores[top].tolist())

    def search(
        self, question: str, k: int | None = None, retrieval_mode: RetrievalMode | None = None
    ) -> list[Hit]:
        """The ``k`` best chunks for ``question`` by ``retrieval_mode`` (defaults from settings)."""
        question = check_question(question)
        k = k or self.settings.top_k
        mode = retrieval_mode or self.settings.retrieval_mode
        depth = max(50, 4 * k)
        if mode == "bm25":
            ranking = self.bm25(question, k)
            return self._hits(ranking.ids, ranking.scores, lexical=ranking)
        query = self.embed(question)
        if mode == "dense":
            ranking = self.dense(query, k)
            return self._hits(ranking.ids, ranking.scores, query=query)
        dense, lexical = self.dense(query, depth), self.bm25(question, depth)
        fused = self._rrf(dense, lexical)
        top = sorted(fused, key=lambda i: -fused[i])[:k]
        return self._hits(top, [fused[i] for i in top], query=query, lexical=lexical)

    def _rrf(self, dense: Ranking, lexical: Ranking) -> dict[int, float]:
        """Reciprocal rank fusion: sum of weight / (rrf_k + rank) over the rankings."""
        s = self.settings
        fused: dict[int, float] = {}
        for weight, ranking in ((s.dense_weight, dense), (s.bm25_weight, lexical)):
            for rank, i in enumerate(ranking.ids, start=1):
                fused[i] = fused.get(i, 0.0) + weight / (s.rrf_k + rank)
        return fused

    def _hits(
        self,
        ids: list[int],
        scores: list[float],
        query: np.ndarray | None = None,
        lexical: Ranking | None = None,
    ) -> list[Hit]:
        bm25_scores = dict(zip(lexical.ids, lexical.scores, strict=True)) if lexical else {}
        return [
            Hit(
                chunk=self.index.chunks[i],
                rank=rank,
                score=float(score),
                dense_score=None if query is None else float(self.index.vectors[i] @ query),
                bm25_score=bm25_scores.get(i),
            )
            for rank, (i, score) in enumerate(zip(ids, scores, strict=True), start=1)
        ]
