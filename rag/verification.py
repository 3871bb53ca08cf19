"""Citations verified, not trusted: each sentence of a generated answer against what it cites.

A sentence is supported when enough of its terms (or, given a similarity, its meaning) are
in the passages its ``[n]`` markers point at, and every number in it appears there too.
Sentences of a passage that address the model (``忽略以上指令……``, ``【系统消息】……``,
``</资料>``: :mod:`rag.injection`) are never evidence, and an answer that repeats one is
flagged (``VerifiedAnswer.planted``) so that the caller discards it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from rag.injection import instruction_sentences, without_instructions
from rag.models import NOT_FOUND, Citation
from rag.textnorm import fold, search_tokens, sentence_spans, squash, strip_invisible

log = logging.getLogger(__name__)

Similarity = Callable[[str, str], float]

CITATION_MARKER = re.compile(r"[\[【]\s*(\d+(?:\s*[,，、]\s*\d+)*)\s*[\]】]")
"""``[1]``, ``[1, 2]``, ``【3】``: a citation marker in a generated answer."""

# Defaults of verify_citations (measured with multilingual-e5-small; eval/README.md, "Tuning
# history"): TERM_OVERLAP is the share of the sentence's content-word characters (jieba search
# tokens, stopwords out, weighted by length so 年/中 count less than 汪志浩) found in the cited
# passages; SIMILARITY the cosine of sentence (query prompt) and passage (passage prompt).
# A sentence is supported when either reaches its threshold AND every number in it appears
# in the cited passages (a wrong date or amount is the costliest hallucination in news QA).
TERM_OVERLAP = 0.6
SIMILARITY = 0.9

_LEADING_MARKERS = re.compile(r"^(\s*[\[【]\s*\d+(?:\s*[,，、]\s*\d+)*\s*[\]】])+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_LIST_ITEM = re.compile(r"^\s*(?:\d{1,2}[.、)）](?!\d)|[-*•])\s*")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3})")


@dataclass(frozen=True)
class SentenceCheck:
    """The verdict on one sentence of a generated answer."""

    index: int
    """1-based position of the sentence in the answer."""
    text: str
    """The sentence as generated, markers included."""
    cited: list[int]
    """Markers that point at existing passages, in order."""
    missing: list[int]
    """Markers that point at no passage."""
    overlap: float | None
    """Length-weighted share of the sentence's terms found in the cited passages."""
    similarity: float | None
    """Best embedding similarity to a cited passage, when a similarity was given."""
    supported: bool
    """Cited, and the cited passages support it (or it is the not-found message)."""


@dataclass
class VerifiedAnswer:
    """A generated answer with its citations checked sentence by sentence."""

    text: str
    """The answer text as generated (reasoning block removed)."""
    cited_ids: list[int] = field(default_factory=list)
    """Ids of the existing passages it cites, in order of first citation."""
    warnings: list[str] = field(default_factory=list)
    """One line per problem: nonexistent citation, unsupported or uncited sentence, injection."""
    unsupported_sentences: list[str] = field(default_factory=list)
    """Sentences that cite passages which do not support them."""
    uncited_sentences: list[str] = field(default_factory=list)
    """Sentences that cite no existing passage."""
    abstained: bool = False
    """The model said the passages do not answer (``资料中没有找到答案``)."""
    sentences: list[SentenceCheck] = field(default_factory=list)
    planted: list[str] = field(default_factory=list)
    """Sentences that repeat text planted for the model in a passage (an obeyed injection),
    not supported by the rest of the passages: the answer must not be shown."""

    @property
    def ok(self) -> bool:
        """Every sentence supported by a passage it cites, no citation dangling, nothing planted."""
        return not (
            self.unsupported_sentences
            or self.uncited_sentences
            or self.planted
            or any(s.missing for s in self.sentences)
        )

    @property
    def supported(self) -> bool:
        """At least one sentence is a supported, cited statement (worth showing as an answer)."""
        return any(s.supported and s.cited for s in self.sentences)


def split_sentences(text: str) -> list[str]:
    """Sentences of a generated answer, each keeping its ``[n]`` markers.

    Splits after 。！？!? (and closing quotes) and at line breaks; markers written after
    the full stop (``……联盟。[1]``) are moved back to the sentence they cite.
    """
    pieces = [text[a:b] for a, b in sentence_spans(text)]
    out: list[str] = []
    for piece in pieces:
        lead = _LEADING_MARKERS.match(piece)
        if lead and out:
            out[-1] = out[-1].rstrip() + lead.group().strip()
            piece = piece[lead.end() :]
        if piece.strip():
            out.append(piece.strip())
    return out


def _markers(sentence: str) -> list[int]:
    return [int(n) for m in CITATION_MARKER.finditer(sentence) for n in re.split(r"[,，、]", m.group(1))]


def cited_ids(text: str) -> list[int]:
    """The citation numbers ``[n]`` (or ``[1, 2]``, ``【3】``) in ``text``, in order, once each."""
    return list(dict.fromkeys(_markers(text)))


def _searchable(text: str) -> str:
    return _THOUSANDS.sub("", fold(squash(strip_invisible(text))))


def _evidence(passage: Citation) -> str:
    """The passage text a sentence may rely on: sentences that address the model removed."""
    return without_instructions(passage.chunk.text)


def suspected_injections(passages: Iterable[Citation]) -> list[int]:
    """Ids of passages with sentences that address the model (``忽略以上指令……``, ``</资料>``)."""
    return [p.id for p in passages if instruction_sentences(p.chunk.text)]


def term_overlap(sentence: str, evidence: str) -> float:
    """Length-weighted share of the sentence's search terms found in ``evidence`` (1.0 if none)."""
    tokens = set(search_tokens(strip_invisible(CITATION_MARKER.sub("", sentence))))
    if not tokens:
        return 1.0
    haystack = _searchable(evidence)
    total = sum(len(t) for t in tokens)
    return sum(len(t) for t in tokens if t in haystack) / total


def _numbers(text: str) -> set[str]:
    return set(_NUMBER.findall(_searchable(CITATION_MARKER.sub("", text))))


def _support(
    content: str, texts: list[str], similarity: Similarity | None
) -> tuple[float, float | None, str | None]:
    """Term overlap and best similarity of a cited sentence, and what fails it (None: supported).

    The failure is ``""`` when neither measure reaches its threshold, or the numbers of the
    sentence missing from the cited passages (a wrong date or amount is the costliest error).
    """
    joined = "\n".join(texts)
    overlap = term_overlap(content, joined)
    best = max(float(similarity(content, t)) for t in texts) if similarity is not None else None
    if overlap < TERM_OVERLAP and (best is None or best < SIMILARITY):
        return overlap, best, ""
    wrong = _numbers(content) - set(_NUMBER.findall(_searchable(joined)))
    if wrong:
        return overlap, best, f"的数字{'、'.join(sorted(wrong))}不在引用的段落中"
    return overlap, best, None


def _repeats_planted(content: str, planted: dict[int, str], supported: bool) -> int | None:
    """The passage whose planted sentences ``content`` repeats, or None.

    A sentence repeats planted text when most of its terms are there (``TERM_OVERLAP``) and
    the passages' evidence does not support it by its terms: ``系统已被攻破`` dictated by a planted
    sentence is caught even when the model cites nothing, while a true statement that a
    planted sentence happens to quote (and the clean evidence supports) stays.
    """
    if supported or NOT_FOUND in squash(content) or not search_tokens(content):
        return None
    for pid, text in planted.items():
        if term_overlap(content, text) >= TERM_OVERLAP:
            return pid
    return None


def verify_citations(
    answer_text: str,
    passages: Sequence[Citation],
    similarity: Similarity | None = None,
) -> VerifiedAnswer:
    """Check each sentence of ``answer_text`` against the passages its ``[n]`` markers cite.

    A marker without a passage is a warning ``引用[n]不存在``; a cited sentence that is not
    supported (see ``TERM_OVERLAP``/``SIMILARITY`` above) is flagged, and so is a sentence
    without a citation, except the not-found message. ``similarity(sentence, passage_text)``
    is optional (e.g. :func:`embedding_similarity`); without it only terms are compared.
    """
    by_id = {p.id: p for p in passages}
    evidence: dict[int, str] = {}
    result = VerifiedAnswer(text=answer_text.strip())
    injected = suspected_injections(passages)
    planted: dict[int, str] = {}
    for pid in injected:
        evidence[pid] = _evidence(by_id[pid])
        planted[pid] = "\n".join(instruction_sentences(by_id[pid].chunk.text))
    # Checked as read: zero-width and format characters do not hide or split a phrase.
    sentences = split_sentences(strip_invisible(answer_text))
    if not sentences:
        result.warnings.append("回答为空")
    for i, sentence in enumerate(sentences, start=1):
        markers = _markers(sentence)
        cited = list(dict.fromkeys(n for n in markers if n in by_id))
        missing = list(dict.fromkeys(n for n in markers if n not in by_id))
        for n in missing:
            result.warnings.append(f"第{i}句的引用[{n}]不存在")
        for n in cited:
            if n not in result.cited_ids:
                result.cited_ids.append(n)
        content = _LIST_ITEM.sub("", CITATION_MARKER.sub("", sentence)).strip()
        overlap: float | None = None
        best: float | None = None
        if NOT_FOUND in squash(content):
            result.abstained = True
            supported = True
        elif not cited:
            supported = False
            result.uncited_sentences.append(sentence)
            result.warnings.append(f"第{i}句没有引用任何段落")
        else:
            texts = [evidence[n] if n in evidence else by_id[n].chunk.text for n in cited]
            overlap, best, problem = _support(content, texts, similarity)
            supported = problem is None
            if not supported:
                if problem:
                    result.warnings.append(f"第{i}句{problem}")
                result.unsupported_sentences.append(sentence)
                result.warnings.append(f"第{i}句没有被引用的段落支持")
        # Supported by its terms, not by similarity alone: the payload of a planted sentence
        # may sit close to its passage in embedding space while the evidence never says it.
        by_terms = supported and overlap is not None and overlap >= TERM_OVERLAP
        repeated = _repeats_planted(content, planted, by_terms)
        if repeated:
            result.planted.append(sentence)
            result.warnings.append(f"第{i}句照搬了段落[{repeated}]中疑似注入的指令，不予采信")
            supported = False
        result.sentences.append(SentenceCheck(i, sentence, cited, missing, overlap, best, supported))
    if result.abstained and result.cited_ids:
        result.abstained = False  # "not found" beside cited statements: a partial answer
    # Report planted instructions when they may have mattered: cited, or the answer is off.
    result.warnings[:0] = [
        f"段落[{pid}]含有疑似注入的指令，已忽略，不作为依据"
        for pid in injected
        if pid in result.cited_ids or not result.ok or result.planted
    ]
    log.debug("verified %d sentences: %s", len(result.sentences), result.warnings or "ok")
    return result


class _Embedder(Protocol):
    def embed_query(self, text: str) -> np.ndarray: ...

    def embed_passages(self, texts: list[str]) -> np.ndarray: ...


def embedding_similarity(embedder: _Embedder) -> Similarity:
    """A ``similarity`` for :func:`verify_citations` from the service's ``Embedder``.

    Cosine of the sentence (query prompt) and the passage (passage prompt); each passage
    is embedded once per returned function, so build one per answer.
    """
    cache: dict[str, np.ndarray] = {}

    def similarity(sentence: str, passage: str) -> float:
        if passage not in cache:
            cache[passage] = embedder.embed_passages([passage])[0]
        return float(embedder.embed_query(sentence) @ cache[passage])

    return similarity
