"""The extractive answerer over the real seed index: short answers, sentence answers, abstention."""

from __future__ import annotations

import pytest

from rag.answer import NOT_FOUND, Answerer
from rag.embedding import Embedder
from rag.index import load_index
from rag.retrieval import Retriever
from rag.settings import Settings


@pytest.fixture(scope="module")
def answerer(seed_settings: Settings, embedder: Embedder) -> Answerer:
    retriever = Retriever(load_index(seed_settings, embedder), embedder, seed_settings)
    return Answerer(retriever, seed_settings)


def _highlighted(answer_text: str, citation_text: str, highlight: tuple[int, int] | None) -> str:
    assert highlight is not None, f"no highlight for {answer_text!r}"
    return citation_text[highlight[0] : highlight[1]]


def test_typed_question_gets_the_short_answer_inside_its_sentence(answerer: Answerer) -> None:
    answer = answerer.answer("锦屏成立了什么联盟")
    assert not answer.abstained
    assert "基层站所+商会企业" in answer.answer
    short = answer.answer.rsplit(" [", 1)[0]
    assert len(short) < len(answer.answer_sentence), "a short answer, not the sentence"
    assert short in answer.answer_sentence
    first = answer.citations[0]
    assert first.source.startswith("000_")
    assert _highlighted(answer.answer, first.text, first.highlight).strip() == answer.answer_sentence


def test_question_without_a_typed_span_is_answered_by_its_sentence(answerer: Answerer) -> None:
    """怎样/什么方式 questions have no span type: the supporting sentence is the answer."""
    answer = answerer.answer("锦屏街道打算通过什么方式解决企业成长中的困难")
    assert not answer.abstained
    assert answer.answer.rsplit(" [", 1)[0] == answer.answer_sentence
    assert "定期协商机制" in answer.answer


def test_question_the_articles_do_not_cover_abstains_with_nearest_passages(answerer: Answerer) -> None:
    answer = answerer.answer("火星探测器什么时候发射")
    assert answer.abstained
    assert answer.answer == NOT_FOUND and answer.answer_sentence == ""
    assert answer.citations, "the nearest passages are still shown for the reader to judge"


def test_follow_up_without_a_pronoun_retrieves_with_the_previous_question(answerer: Answerer) -> None:
    """``到目前为止一共办了几场`` names nothing: the previous question says what was held."""
    from rag.answer import Turn

    history = [Turn("user", "海宁市首期“亲清下午茶”交流活动在哪里举行？"), Turn("assistant", "求是书院。")]
    evidence = "共主办3场茶话会活动"
    alone = answerer.answer("到目前为止一共办了几场？")
    followed = answerer.answer("到目前为止一共办了几场？", history=history)
    assert not any(evidence in c.text for c in alone.citations), "the question alone finds other passages"
    assert any(evidence in c.text for c in followed.citations)


def test_follow_up_query_stays_within_the_question_limit() -> None:
    """A pasted article as the previous turn borrows a bounded number of terms."""
    from rag.answer import MAX_BORROWED_TERMS, Turn, retrieval_query
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


def test_place_answer_keeps_the_whole_address(answerer: Answerer) -> None:
    """Adjacent place names are one answer: 海盐县 + 武原街道, not 武原街道 alone."""
    from rag.extract import candidate_spans

    text = "恒锋工具位于海盐县武原街道，是一家上市公司。"
    spans = {text[a:b] for a, b in candidate_spans("place", text)}
    assert {"海盐县", "武原街道", "海盐县武原街道"} <= spans
    answer = answerer.answer("恒锋工具位于哪里")
    assert answer.answer.startswith("海盐县武原街道"), answer.answer


def test_number_answer_is_in_the_measure_word_asked_for(answerer: Answerer) -> None:
    """多少名 wants 名: the sentence also counts 网格1870个 and 微网格6380个."""
    from rag.extract import analyse

    assert analyse("临海市新增了多少名专属网格员").unit == "名"
    assert analyse("每餐收费多少钱").unit == "元"
    assert analyse("胡斌律师从几个方面讲解").unit == "个"
    assert analyse("天凝镇雪菜的年产量有多少").unit == ""
    answer = answerer.answer("临海市新增了多少名专属网格员")
    assert answer.answer.startswith("452名"), answer.answer
    assert "6380个" in answer.answer_sentence


def test_name_question_ending_in_its_question_word_wants_that_kind_of_name(answerer: Answerer) -> None:
    """恒锋工具的党建品牌叫什么: a quoted name ending in 品牌, not another quoted term nearby."""
    answer = answerer.answer("恒锋工具的党建品牌叫什么")
    assert "锋领" in answer.answer and "揭榜挂帅" not in answer.answer, answer.answer


def test_numbers_keep_their_approximation_and_unit() -> None:
    from rag.extract import NUMBER

    text = "夜市有近300个摊位，提供2000余个岗位，年产量约5万吨，占地1万平方米。"
    assert [m.group() for m in NUMBER.finditer(text)] == ["近300个", "2000余个", "约5万吨", "1万平方米"]
