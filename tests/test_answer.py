"""Answers from the trained reader over the real seed index: spans, citations, "not found".

The questions here are not in eval/questions.jsonl; each expected answer is the span of the
seed page that answers it.
"""

from __future__ import annotations

import pytest

from rag.answer import Answerer
from rag.embedding import Embedder
from rag.index import load_index
from rag.models import NOT_FOUND, Turn
from rag.retrieval import Retriever
from rag.settings import Settings


@pytest.fixture(scope="module")
def answerer(seed_settings: Settings, embedder: Embedder) -> Answerer:
    retriever = Retriever(load_index(seed_settings, embedder), embedder, seed_settings)
    return Answerer(retriever, seed_settings)


def _short(answer_text: str) -> str:
    return answer_text.rsplit(" [", 1)[0]


def test_answer_is_the_span_inside_its_sentence_and_its_citation(answerer: Answerer) -> None:
    answer = answerer.answer("锦屏成立了什么联盟")
    assert not answer.abstained
    short = _short(answer.answer)
    assert "基层站所+商会企业" in short and "创新服务联盟" in short
    assert len(short) < len(answer.answer_sentence) and short in answer.answer_sentence
    first = answer.citations[0]
    assert first.chunk.source.startswith("000_")
    assert first.highlight is not None
    lo, hi = first.highlight
    assert first.chunk.text[lo:hi].strip() == short, "the highlight covers the span in the cited passage"
    assert answer.answer_sentence in first.chunk.text


@pytest.mark.parametrize(
    ("question", "gold"),
    [
        ("温玉铁路全线一共有多少座隧道", "13座"),
        ("浙江大学的大学生在居敬社区发放了多少份反邪教宣传资料", "300余份"),
        ("温玉铁路一共建有多少座桥梁", "17座"),
    ],
)
def test_number_answers_keep_their_unit(answerer: Answerer, question: str, gold: str) -> None:
    answer = answerer.answer(question)
    assert not answer.abstained, question
    assert gold in _short(answer.answer) and len(_short(answer.answer)) <= len(gold) + 6, answer.answer


def test_question_the_articles_do_not_cover_abstains_with_nearest_passages(answerer: Answerer) -> None:
    answer = answerer.answer("火星探测器什么时候发射")
    assert answer.abstained
    assert answer.answer == NOT_FOUND and answer.answer_sentence == ""
    assert answer.citations, "the nearest passages are still shown for the reader to judge"
    assert all(c.highlight is None for c in answer.citations), "nothing is highlighted as an answer"


def test_reader_windows_widen_the_chunk_inside_its_article(answerer: Answerer) -> None:
    """With reader_context the reader reads past the chunk's edges, never past its article."""
    hits = answerer.retriever.search("锦屏成立了什么联盟", k=3)
    wide = Answerer(
        answerer.retriever,
        answerer.settings.model_copy(update={"reader_context": 40}),
        reader=answerer.reader,
    )
    articles = answerer.retriever.index.articles
    for passage, hit in zip(wide.passages(hits), hits, strict=True):
        article = articles[hit.chunk.article_id]
        assert article.text[passage.start : passage.end] == passage.text
        assert hit.chunk.text in passage.text
        assert passage.start == max(0, hit.chunk.start - 40)
        assert passage.end == min(len(article.text), hit.chunk.end + 40)


def test_follow_up_without_a_pronoun_retrieves_with_the_previous_question(answerer: Answerer) -> None:
    """``到目前为止一共办了几场`` names nothing: the previous question says what was held."""
    history = [Turn("user", "海宁市首期“亲清下午茶”交流活动在哪里举行？"), Turn("assistant", "求是书院。")]
    evidence = "共主办3场茶话会活动"
    alone = answerer.answer("到目前为止一共办了几场？")
    followed = answerer.answer("到目前为止一共办了几场？", history=history)
    assert not any(evidence in c.chunk.text for c in alone.citations), (
        "the question alone finds other passages"
    )
    assert any(evidence in c.chunk.text for c in followed.citations)


def test_follow_up_query_stays_within_the_question_limit() -> None:
    """A pasted article as the previous turn borrows a bounded number of terms."""
    from rag.answer import MAX_BORROWED_TERMS, retrieval_query
    from rag.retrieval import MAX_QUESTION_CHARS, check_question
    from rag.textnorm import search_tokens

    question = "那它的会长是谁？"
    huge = [Turn("user", "0" * 20_000 + "大桥商会" + "锦屏街道企业服务联盟成立大会" * 500)]
    query = retrieval_query(question, huge)
    assert check_question(query) == query and len(query) <= MAX_QUESTION_CHARS
    assert query.startswith(question) and {"大桥", "商会"} <= set(query.split())
    assert len(query.split()) <= 1 + MAX_BORROWED_TERMS
    previous = "大桥商会是和谁一起协商的？"
    normal = retrieval_query(question, [Turn("user", previous)])
    assert normal.split() == [question, *dict.fromkeys(search_tokens(previous))]
