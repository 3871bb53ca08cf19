"""Answer a question from the retrieved passages, with citations that point at the answer.

The default path is extractive and offline: retrieve, let the trained reader
(``rag.reader``) find the answer span in the top passages, or abstain when its
"no answer" score wins. Bylines (who wrote or photographed an article) are article
metadata, not passage text, and are answered from it. When an OpenAI-compatible LLM is
configured, it answers from the same numbered passages and its citations are verified.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass

from rag.injection import instruction_spans, mask, within
from rag.llm import LLMClient, LLMError, build_messages, rewrite_question
from rag.models import (
    NOT_FOUND,
    Answer,
    AnswerMode,
    Chunk,
    Citation,
    Hit,
    RequestedAnswerMode,
    Retraction,
    Turn,
)
from rag.reader import Reader, Reading, load_settings_reader
from rag.retrieval import MAX_QUESTION_CHARS, Retriever, check_question
from rag.settings import Settings
from rag.textnorm import detection_form, fold, search_tokens, sentence_spans
from rag.verification import embedding_similarity, verify_citations

log = logging.getLogger(__name__)

__all__ = ["NOT_FOUND", "Answerer", "Passage", "confidence", "retrieval_query", "sentence_around"]

StreamEvent = str | Retraction | Answer
"""What :meth:`Answerer.answer_stream` yields: text pieces, maybe a retraction, the answer last."""
_BYLINE_QUESTION = re.compile(r"作者|通讯员|记者|署名|谁(?:写|拍|摄)|(?:拍|摄)的|拍摄|摄影")
_BYLINE_ROLE = re.compile(r"本报|通讯员|记者|摄影|摄")
MAX_BORROWED_TERMS = 24  # a question has far fewer key terms; a pasted text has thousands
CONFIDENCE_CENTER = 1.83
CONFIDENCE_SCALE = 3.19
"""``confidence(margin) = sigmoid((margin - CENTER) / SCALE)``: a logistic fit of "the answer is
mostly right" (CMRC F1 >= 0.5) on the reader's margin, measured by ``bench/confidence_margin.py``
on 1,000 CMRC 2018 train questions, each read in its gold paragraph and in a distractor (the
readings the service would answer with, margin >= ``reader_margin``; the table is at
``Settings.low_confidence``). The reader was trained on that file, so on new text it is less
sure of the same answers: on the seed questions (measured, not fitted) answers shown with a
confidence of 0.2 to 0.5 were still right about half the time. The number is conservative."""


def confidence(margin: float) -> float:
    """The reader's margin (span minus no-answer score) as a 0..1 confidence."""
    z = (margin - CONFIDENCE_CENTER) / CONFIDENCE_SCALE
    return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))


@dataclass(frozen=True)
class Passage:
    """A window of an article the reader reads: the ``hit_index``-th hit's chunk, maybe widened."""

    hit_index: int
    text: str
    start: int
    end: int
    """Offsets of ``text`` in its article."""


def retrieval_query(question: str, history: Sequence[Turn]) -> str:
    """The text to retrieve with: a follow-up borrows the key terms of the previous question.

    ``那它的会长是谁？`` alone names nothing; after a question about 大桥商会 the
    previous question's terms say what "它" is. Whether a question is a follow-up is not
    guessed from pronouns (``是哪一年建的`` and ``到目前为止一共办了几场`` have none): the
    terms are always borrowed for retrieval, while the reader reads the passages with the
    question as asked (measured: eval/README.md, "Tuning history").
    """
    if not history:
        return question
    previous = next((t.content for t in reversed(history) if t.role == "user"), "")
    if not previous:
        return question
    # Distinct terms, as many as fit: a pasted article as the previous turn must not push the
    # query past the question limit (schemathesis sent a 20,000-character turn).
    room = MAX_QUESTION_CHARS - len(question)
    borrowed: list[str] = []
    for term in dict.fromkeys(search_tokens(previous)):
        if len(borrowed) == MAX_BORROWED_TERMS:
            break
        if len(term) + 1 <= room:
            borrowed.append(term)
            room -= len(term) + 1
    return " ".join([question, *borrowed])


@dataclass(frozen=True)
class _Draft:
    """An answer before it is timed and warned about: what each answering path returns."""

    answer: str
    answer_sentence: str
    abstained: bool
    citations: tuple[Citation, ...]
    answer_mode: AnswerMode = "extractive"
    warnings: tuple[str, ...] = ()
    margin: float | None = None
    """The reader's margin for the span it answered with (None: no span was read)."""
    llm_usage: tuple[int, int] | None = None
    """``(prompt, completion)`` tokens as the LLM reported them."""


class Answerer:
    """Turns a question into an ``Answer``: retrieval, then the extractive (or LLM) answer.

    ``llm`` is the service's client, shared by the answerers it builds; without one, an
    answerer makes (and closes, see :meth:`close`) its own when ``settings`` configure one.
    """

    def __init__(
        self,
        retriever: Retriever,
        settings: Settings,
        reader: Reader | None = None,
        llm: LLMClient | None = None,
    ) -> None:
        self.retriever = retriever
        self.settings = settings
        self.reader = reader if reader is not None else load_settings_reader(settings)
        self._owns_llm = llm is None and LLMClient.configured(settings)
        self.llm = LLMClient(settings) if self._owns_llm else llm

    def close(self) -> None:
        """Close the LLM client if this answerer made it."""
        if self._owns_llm and self.llm is not None:
            self.llm.close()

    def answer(
        self,
        question: str,
        *,
        top_k: int | None = None,
        history: Sequence[Turn] = (),
        answer_mode: RequestedAnswerMode = "auto",
    ) -> Answer:
        """The answer with its citations; ``abstained`` when no passage supports one."""
        events = self.answer_stream(question, top_k=top_k, history=history, answer_mode=answer_mode)
        result = [e for e in events if isinstance(e, Answer)]
        return result[-1]

    def answer_stream(
        self,
        question: str,
        *,
        top_k: int | None = None,
        history: Sequence[Turn] = (),
        answer_mode: RequestedAnswerMode = "auto",
    ) -> Iterator[StreamEvent]:
        """Yield the answer text as it is produced, then the complete ``Answer``.

        An LLM's text streams as the model writes it; if it then fails its citation check
        (or the model fails midway), a ``Retraction`` says to drop what was shown and the
        extractive answer follows. An extractive answer arrives as one piece.
        ``top_k`` defaults to ``settings.top_k``.
        """
        question = check_question(question)
        started = time.perf_counter()
        warnings: list[str] = []
        llm = self._llm_for(answer_mode, warnings)
        query = self._query(question, history, llm, warnings)
        hits = self.retriever.search(query, k=top_k or self.settings.top_k)
        retrieved = time.perf_counter()
        draft = self.extractive(question, hits)
        if llm is not None and hits:
            draft = yield from self._llm_draft(llm, question, history, draft, warnings)
        else:
            yield draft.answer
        done = time.perf_counter()
        score = None
        if draft.margin is not None and not draft.abstained and draft.answer_mode == "extractive":
            score = round(confidence(draft.margin), 3)
        yield Answer(
            question=question,
            answer=draft.answer,
            answer_sentence=draft.answer_sentence,
            abstained=draft.abstained,
            answer_mode=draft.answer_mode,
            citations=draft.citations,
            warnings=(*warnings, *draft.warnings),
            confidence=score,
            low_confidence=score is not None and score < self.settings.low_confidence,
            llm_usage=draft.llm_usage,
            timings_ms={
                "retrieve": round((retrieved - started) * 1000, 2),
                "answer": round((done - retrieved) * 1000, 2),
                "total": round((done - started) * 1000, 2),
            },
        )

    def _llm_for(self, answer_mode: RequestedAnswerMode, warnings: list[str]) -> LLMClient | None:
        """The client to answer with, or None for the extractive answer."""
        if answer_mode == "extractive":
            return None
        if answer_mode == "llm" and self.llm is None:
            warnings.append(
                "LLM mode requested but RAG_LLM_BASE_URL/RAG_LLM_MODEL are not set; extractive answer"
            )
        return self.llm

    def _query(
        self, question: str, history: Sequence[Turn], llm: LLMClient | None, warnings: list[str]
    ) -> str:
        """What to retrieve with: the LLM's standalone rewrite of a follow-up, else borrowed terms."""
        if llm is not None and history:
            try:
                return rewrite_question(llm, question, history, max_turns=self.settings.history_turns)
            except LLMError as exc:
                warnings.append(
                    f"LLM could not rewrite the follow-up, used the previous question's terms: {exc}"
                )
        return retrieval_query(question, history)

    def _llm_draft(
        self,
        llm: LLMClient,
        question: str,
        history: Sequence[Turn],
        extractive: _Draft,
        warnings: list[str],
    ) -> Generator[StreamEvent, None, _Draft]:
        """Stream the LLM's answer from the extractive answer's passages, then verify it.

        Returns the LLM's draft when its citations hold, else (after a ``Retraction`` if
        text was shown) the extractive draft, streamed in its place.
        """
        messages = build_messages(
            question, extractive.citations, history, max_turns=self.settings.history_turns
        )
        parts: list[str] = []
        reported: dict[str, int] = {}
        try:
            for delta in llm.stream(messages, usage=reported):
                parts.append(delta)
                yield delta
        except LLMError as exc:
            return (
                yield from self._fall_back(
                    extractive, parts, f"LLM unavailable, extractive answer: {exc}", warnings
                )
            )
        similarity = embedding_similarity(self.retriever.embedder)
        verified = verify_citations("".join(parts), extractive.citations, similarity)
        if verified.planted:
            # The model obeyed text planted in a passage: none of its answer is shown.
            warnings.extend(verified.warnings)
            reason = "LLM answer repeated an instruction planted in the passages; extractive answer"
            return (yield from self._fall_back(extractive, parts, reason, warnings))
        if not (verified.supported or verified.abstained) or is_echo(verified.text, question):
            warnings.extend(verified.warnings)
            reason = "LLM answer was not supported by the passages; extractive answer"
            return (yield from self._fall_back(extractive, parts, reason, warnings))
        cited = tuple(c for c in extractive.citations if c.id in verified.cited_ids)
        return _Draft(
            answer=verified.text,
            answer_sentence=extractive.answer_sentence,
            abstained=verified.abstained,
            citations=cited or extractive.citations,
            answer_mode="llm",
            warnings=tuple(verified.warnings),
            llm_usage=(reported["prompt_tokens"], reported["completion_tokens"]) if reported else None,
        )

    @staticmethod
    def _fall_back(
        extractive: _Draft, streamed: list[str], reason: str, warnings: list[str]
    ) -> Generator[StreamEvent, None, _Draft]:
        """Replace what the LLM streamed with the extractive answer, saying why."""
        warnings.append(reason)
        if streamed:
            yield Retraction(reason)
        yield extractive.answer
        return extractive

    def extractive(self, question: str, hits: list[Hit]) -> _Draft:
        """The offline answer: a byline for who-wrote questions, else the reader's span."""
        return self._byline_answer(question, hits) or self.read(question, hits)

    def passages(self, hits: list[Hit]) -> list[Passage]:
        """What the reader reads for each hit: its chunk, widened by ``reader_context``
        characters of its article on each side (the answer may sit just past a chunk edge,
        and the sentence before often names what ``该街道`` refers to)."""
        context = self.settings.reader_context
        articles = self.retriever.index.articles
        out = []
        for i, hit in enumerate(hits[: self.settings.reader_passages]):
            chunk = hit.chunk
            article = articles.get(chunk.article_id)
            if context <= 0 or article is None:
                out.append(Passage(i, chunk.text, chunk.start, chunk.end))
                continue
            start, end = max(0, chunk.start - context), min(len(article.text), chunk.end + context)
            out.append(Passage(i, article.text[start:end], start, end))
        return out

    def read(self, question: str, hits: list[Hit]) -> _Draft:
        """The reader's answer: the best span over the top passages, or "not found".

        Each passage's best span is scored by its margin over the reader's no-answer score,
        plus ``reader_rank_weight / rank`` for the retrieval rank; the answer abstains when
        the chosen span's margin is below ``reader_margin`` (both measured with `rag eval`).
        The first citation is the passage the span was read in, its ``highlight`` the span.
        """
        passages = self.passages(hits)
        readings = self._readings(question, passages)
        weight = self.settings.reader_rank_weight
        best = max(readings, key=lambda r: r.margin + weight / (r.passage + 1), default=None)
        if best is None or best.margin < self.settings.reader_margin:
            # The nearest passages are still shown, with nothing highlighted: nothing answers.
            return _Draft(NOT_FOUND, "", True, _citations(hits, first=None))
        passage = passages[best.passage]
        chunk = hits[best.passage].chunk
        read = Chunk(chunk.article_id, chunk.source, chunk.title, passage.text, passage.start, passage.end)
        first = Citation(1, read, hits[best.passage].score, highlight=(best.start, best.end))
        citations = (first, *_citations(hits, first=best.passage)[1:])
        span = passage.text[best.start : best.end].strip()
        sentence = sentence_around(passage.text, best.start, best.end)
        return _Draft(f"{span} [1]", sentence, False, citations, margin=best.margin)

    def _readings(self, question: str, passages: list[Passage]) -> list[Reading]:
        """The reader's best span per passage, never inside a sentence that addresses the
        model, nor an echo of the question.

        Planted sentences (``rag.injection``) are blanked before reading: the reader cannot
        answer from them. A passage whose best span lies in a question-like sentence (one
        ending in ？, or holding the question itself: ``本报讯 锦屏街道网络中心的负责人是谁？``)
        or merely repeats the question is read again with those sentences blanked too; a
        span that still echoes the question is dropped. Blanking keeps the offsets.
        """
        if not passages:
            return []
        texts = [mask(p.text, instruction_spans(p.text)) for p in passages]
        readings = {r.passage: r for r in self.reader.read(question, texts)}
        again: dict[int, str] = {}
        for i, reading in readings.items():
            asked = question_spans(texts[i], question)
            if within(asked, reading.start, reading.end) or is_echo(
                texts[i][reading.start : reading.end], question
            ):
                again[i] = mask(texts[i], asked)
        if again:
            order = list(again)
            for reading in self.reader.read(question, [again[i] for i in order]):
                i = order[reading.passage]
                readings[i] = Reading(i, reading.start, reading.end, reading.score, reading.null_score)
            for i in order:
                r = readings[i]
                if is_echo(texts[i][r.start : r.end], question) or within(
                    question_spans(texts[i], question), r.start, r.end
                ):
                    del readings[i]
        return [readings[i] for i in sorted(readings)]

    def _byline_answer(self, question: str, hits: list[Hit]) -> _Draft | None:
        """Who wrote or photographed it: bylines are article metadata, not passage text.

        Only for an article the question is about (half of its other terms in the article):
        ``《红楼梦》的作者是谁`` asks for an author, but not of anything in the corpus.
        """
        if not _BYLINE_QUESTION.search(question):
            return None
        terms = [t for t in search_tokens(_BYLINE_QUESTION.sub(" ", question)) if len(t) > 1]
        articles = self.retriever.index.articles
        for i, hit in enumerate(hits):
            article = articles.get(hit.chunk.article_id)
            if article is None or not article.byline:
                continue
            body = fold(f"{article.title} {article.text}")
            if terms and sum(t in body for t in terms) < len(terms) / 2:
                continue
            names = _BYLINE_ROLE.sub("", article.byline).strip()
            sentence = f"{article.title}（{article.byline}）"
            return _Draft(f"{names} [1]", sentence, False, _citations(hits, i))
        return None


def _citations(hits: list[Hit], first: int | None) -> tuple[Citation, ...]:
    """Citations numbered from 1 in retrieval order, the passage holding the answer first."""
    order = list(range(len(hits)))
    if first is not None:
        order.remove(first)
        order.insert(0, first)
    return tuple(Citation(n, hits[i].chunk, hits[i].score) for n, i in enumerate(order, start=1))


_QUESTION_END = re.compile(r"[？?][”’」』）)\s]*$")
_NOT_CONTENT = re.compile(r"[\W_]+")


def _content(text: str) -> str:
    """Letters, digits and characters of ``text`` in detection form: what an echo compares."""
    return _NOT_CONTENT.sub("", detection_form(text))


def question_spans(text: str, question: str) -> list[tuple[int, int]]:
    """Sentences of ``text`` that are questions: ending in ？/?, or holding ``question`` itself.

    Such a sentence asks, it does not answer: the reader must not take its answer from it.
    """
    asked = _content(_QUESTION_END.sub("", question))
    out = []
    for a, b in sentence_spans(text, clauses=True):
        sentence = text[a:b]
        if _QUESTION_END.search(sentence) or (len(asked) >= 4 and asked in _content(sentence)):
            out.append((a, b))
    return out


def is_echo(answer: str, question: str) -> bool:
    """Whether ``answer`` (markers aside) only repeats the question.

    Contained in the question (``网络中心``), or the question itself with a few characters
    around it (``本报讯 锦屏街道网络中心的负责人是谁``). Characters are not counted one
    by one: a true answer is often made of the question's characters (``青山湖法治汇`` to
    ``青山湖科技城法治广场以什么基地品牌为统领``).
    """
    text = _content(re.sub(r"\[\d+\]", "", answer))
    asked = _content(_QUESTION_END.sub("", question))
    if not text or text in asked:
        return True
    return len(asked) >= 4 and asked in text and len(text) - len(asked) <= 4


def sentence_around(text: str, start: int, end: int) -> str:
    """The sentence(s) of ``text`` that hold ``text[start:end]``."""
    spans = sentence_spans(text, clauses=True) or [(0, len(text))]
    lo = next((a for a, b in spans if a <= start < b), spans[0][0])
    hi = next((b for a, b in spans if a < end <= b), spans[-1][1])
    return text[lo : max(lo, hi)].strip()
