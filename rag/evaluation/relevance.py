"""Which chunks count as "the right chunk" for a question.

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
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence

from rag.evaluation.sets import EvalQuestion
from rag.models import Chunk, Citation
from rag.textnorm import squash

PARTIAL_COVERAGE = 0.6
"""Share of an evidence quote a chunk must hold when the quote spans a chunk boundary."""


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
        chunk = citation.chunk
        if chunk.id in relevant:
            return True
        if question.paragraph is not None:
            return chunk.article_id == question.paragraph and any(
                squash(a) in squash(chunk.text) for a in question.answers
            )
        return any(covers(ev, chunk.text, self.min_coverage) for ev in question.evidence)
