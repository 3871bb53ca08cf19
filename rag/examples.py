"""Example questions for the chat page, drawn from the corpus being served.

A newsroom can write its own: ``questions.txt`` at the top of the docs folder, one question
per line (``#`` starts a comment line); the build does not index it. Without one, questions
are made from the served articles, from different sources where there are several:

- a clause of the article that states a count (``全市建立健全网格1870个``) becomes a
  "how many" question (``全市建立健全网格多少个？``), the count being its answer;
- otherwise the article's title, as a question (``<title>？``).

Given the service's :class:`~rag.answer.Answerer`, each candidate is asked (extractively,
never the LLM) and kept only when the answer comes from that article and, for a count,
contains the count. (Not also "not ``low_confidence``": the confidence is fitted on CMRC and
is conservative on new text, and would leave a small corpus with no examples at all.)
Deterministic: the same index gives the same questions.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from rag.errors import RagError
from rag.ingest import EXAMPLES_FILE, decode
from rag.models import Article
from rag.retrieval import MAX_QUESTION_CHARS
from rag.textnorm import sentence_spans

if TYPE_CHECKING:
    from rag.answer import Answerer
    from rag.index import SearchIndex

log = logging.getLogger(__name__)

ExamplesOrigin = Literal["questions.txt", "titles"]

MEASURE_WORDS = (
    "平方公里|平方米|公里|千米|公斤|千克|公顷|分钟|小时|人次|场次|个|家|名|位|人|户|册|本|项|件|场|次|"
    "所|条|座|套|台|辆|架|艘|份|篇|期|批|株|棵|头|只|吨|亩|米|元|间|栋|张|种|支|处|天"
)
# Arabic or Chinese numerals (三十六家, 八点六公里): news copy writes both.
_CN_DIGITS = "零一二两三四五六七八九"
_COUNT = re.compile(
    rf"(\d+(?:\.\d+)?|[{_CN_DIGITS}十百千]+(?:点[{_CN_DIGITS}]+)?)(万|亿)?(余|多)?({MEASURE_WORDS})"
)
_CLAUSE_START = "，,；;：:）)"
_CLAUSE_END = "，,。；;！？!?、（("
_LEAD_IN = re.compile(
    r"^(?:而|并|且|同时|另外|此外|其中|当天|当日|日前|近日|近年来|目前|今年以来|截至目前|据悉|据了解)[，,]?"
)
MIN_QUESTION_CHARS = 6
MAX_GENERATED_CHARS = 40
MAX_TRIES_PER_QUESTION = 4
"""Candidates asked per wanted question before giving up (each costs one extractive answer)."""


@dataclass(frozen=True)
class Examples:
    """The example questions and where they came from."""

    questions: list[str]
    origin: ExamplesOrigin


@dataclass(frozen=True)
class Candidate:
    """A generated question, the article it is about, and the text its answer must contain."""

    question: str
    article_id: str
    expect: str | None = None


def read_questions_file(docs_dir: Path) -> list[str]:
    """The questions of ``<docs_dir>/questions.txt`` in order (none when it is missing or unreadable)."""
    path = docs_dir / EXAMPLES_FILE
    if not path.is_file():
        return []
    try:
        text = decode(path.read_bytes(), EXAMPLES_FILE)
    except (OSError, RagError) as exc:
        log.warning("%s 无法读取（%s）；改用从文章生成的示例问题", path, exc)
        return []
    questions: list[str] = []
    for line in text.splitlines():
        q = line.strip()
        if not q or q.startswith("#") or q in questions:
            continue
        if len(q) > MAX_QUESTION_CHARS:
            log.warning("%s：跳过超过 %d 字的问题 %s…", path, MAX_QUESTION_CHARS, q[:20])
            continue
        questions.append(q)
    return questions


def count_questions(text: str) -> list[tuple[str, str]]:
    """The clauses of ``text`` that state a count, as ``(question, the count)``, in text order.

    ``全市建立健全网格1870个`` gives ``("全市建立健全网格多少个？", "1870")``.
    """
    found: list[tuple[str, str]] = []
    for a, b in sentence_spans(text):
        sentence = text[a:b]
        for m in _COUNT.finditer(sentence):
            if m.group(1) == "一" or sentence[max(0, m.start() - 1) : m.start()] == "第":
                continue  # 一个/一次 is rarely a count; 第三次 is an ordinal
            start = max(sentence.rfind(c, 0, m.start()) for c in _CLAUSE_START) + 1
            ends = [i for i in (sentence.find(c, m.end()) for c in _CLAUSE_END) if i >= 0]
            end = min(ends, default=len(sentence))
            if start > 0 and len(sentence[start:end].strip()) < 10:  # too short alone: one more clause
                start = max(sentence.rfind(c, 0, start - 1) for c in "，,；;") + 1
            unit = (m.group(2) or "") + m.group(4)  # 1.2亿元 asks 多少亿元; 300余份 asks 多少份
            clause = sentence[start : m.start()] + "多少" + unit + sentence[m.end() : end]
            question = _LEAD_IN.sub("", re.sub(r"\s*多少\s*", "多少", clause).strip())
            if question.count("“") != question.count("”"):
                question = question.replace("“", "").replace("”", "")
            fits = MIN_QUESTION_CHARS <= len(question) <= MAX_GENERATED_CHARS
            if fits and all(q != question + "？" for q, _ in found):
                found.append((question + "？", m.group(1)))
    return found


def title_question(article: Article) -> str | None:
    """The title as a question, unless it is a caption's truncated first words or too short."""
    title = article.title.strip()
    if title.endswith("…") or len(title) < 4 or len(title) > MAX_GENERATED_CHARS:
        return None
    return title + "？"


def _by_source(index: SearchIndex) -> list[list[Article]]:
    """The index's articles grouped by source (sources sorted, articles in page order)."""
    return [index.articles.of_source(s) for s in sorted(index.articles.sources())]


def candidates(index: SearchIndex) -> Iterator[Candidate]:
    """Count questions first, then title questions; each kind taking one source after another
    (a source's candidates: its articles in page order, each article's counts in text order)."""
    groups = _by_source(index)
    count_groups = [[Candidate(q, a.id, n) for a in g for q, n in count_questions(a.text)] for g in groups]
    title_groups = [[Candidate(q, a.id) for a in g if (q := title_question(a))] for g in groups]
    for kind in (count_groups, title_groups):
        longest = max((len(g) for g in kind), default=0)
        for i in range(longest):
            for row in kind:
                if i < len(row):
                    yield row[i]


def answers(answerer: Answerer, candidate: Candidate) -> bool:
    """Whether the extractive answer to the candidate comes from its article (with its count)."""
    try:
        answer = answerer.answer(candidate.question, answer_mode="extractive")
    except RagError:
        return False
    if answer.abstained or not answer.citations:
        return False
    if answer.citations[0].chunk.article_id != candidate.article_id:
        return False
    return candidate.expect is None or candidate.expect in answer.answer


def example_questions(
    index: SearchIndex, docs_dir: Path, n: int = 4, *, answerer: Answerer | None = None
) -> Examples:
    """Up to ``n`` example questions: ``questions.txt`` when it has any, else made from the articles.

    With ``answerer``, a made-up question is kept only when it is answered from its own
    article; one source gives at most one question while other sources still have some.
    """
    written = read_questions_file(docs_dir)
    if written:
        return Examples(written[:n], "questions.txt")
    chosen: list[str] = []
    used_sources: set[str] = set()
    tries = 0
    pending: list[Candidate] = []
    for candidate in candidates(index):
        if len(chosen) >= n or tries >= n * MAX_TRIES_PER_QUESTION:
            break
        source = index.articles[candidate.article_id].source
        if source in used_sources or candidate.question in chosen:
            pending.append(candidate)  # a second question of a source waits for the others
            continue
        tries += 1
        if answerer is None or answers(answerer, candidate):
            chosen.append(candidate.question)
            used_sources.add(source)
    for candidate in pending:
        if len(chosen) >= n or tries >= n * MAX_TRIES_PER_QUESTION:
            break
        if candidate.question in chosen:
            continue
        tries += 1
        if answerer is None or answers(answerer, candidate):
            chosen.append(candidate.question)
    return Examples(chosen, "titles")
