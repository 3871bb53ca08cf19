"""Example questions: made from the served corpus (seeds/ and a corpus written here) or questions.txt.

Every generated question is checked with the real answerer: answered, from a different source
each, by the article it was made from.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from corpora import indexed_corpus
from fake_llm import LoopbackServer
from fastapi.testclient import TestClient

from rag.answer import Answerer
from rag.api import create_app
from rag.embedding import Embedder
from rag.examples import count_questions, example_questions, read_questions_file
from rag.index import load_index
from rag.retrieval import Retriever
from rag.settings import Settings

SEEDS_DIR = Path(__file__).resolve().parent.parent / "seeds"
OLD_SEED_EXAMPLES = {
    "锦屏成立了什么联盟",
    "芯·潮夜市大约有多少个摊位",
    "岳林街道辖区有多少家高新技术企业",
    "恒锋工具位于哪里",
}

# A small corpus that is not the seeds: four papers, four sources, one with no count at all.
CORPUS = {
    "青石岭日报.txt": (
        "青石岭村建成“星光书屋”乡村图书馆\n\n"
        "本报讯（通讯员 林晓雨）日前，青石岭村建成了一座名为“星光书屋”的乡村图书馆，"
        "馆内共有藏书8600册，每天向村民免费开放。村党支部书记周海涛说，书屋今后还将开设少儿阅读课堂。\n"
    ),
    "柳塘晚报.md": (
        "# 柳塘河新桥正式通车\n\n"
        "本报讯（记者 陈一鸣）10月18日，横跨柳塘河的新桥正式通车。新桥全长426米，双向四车道，"
        "总投资1.2亿元。大桥通车后，两岸居民往返的时间由原来的40分钟缩短到5分钟。\n"
    ),
    "芦花镇/周报.txt": (
        "芦花镇夜市开市\n\n"
        "本报讯 芦花镇夜市于本周六晚正式开市，夜市设有摊位120个，主要经营小吃、文创和农特产品。"
        "开市当晚，夜市共吸引游客约1.5万人次，镇里还组织了民乐演出。\n"
    ),
    "东湖教育.txt": (
        "东湖小学开设围棋课程\n\n"
        "本报讯（通讯员 赵晴）东湖小学本学期开设了围棋课程，由市围棋协会的教练每周到校授课。"
        "校长孙立新表示，学校希望通过围棋培养学生的专注力和耐心。\n"
    ),
}


# ---- generation and parsing, no model -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "question", "count"),
    [
        ("全市建立健全网格1870个，覆盖所有村社。", "全市建立健全网格多少个？", "1870"),
        ("日前，馆内共有藏书8600册。", "馆内共有藏书多少册？", "8600"),
        ("新桥全长426米，双向四车道。", "新桥全长多少米？", "426"),
        ("该项目总投资1.2亿元。", "该项目总投资多少亿元？", "1.2"),
        ("街道领导干部到村上党课 19次。", "街道领导干部到村上党课多少次？", "19"),
        ("共发放反邪教宣传资料300余份。", "共发放反邪教宣传资料多少份？", "300"),
        ("本届活动共有三十六家茶企参展。", "本届活动共有多少家茶企参展？", "三十六"),
        ("大桥全长八点六公里，设计时速一百公里。", "大桥全长多少公里？", "八点六"),
    ],
)
def test_a_clause_with_a_count_becomes_a_how_many_question(text: str, question: str, count: str) -> None:
    assert count_questions(text)[0] == (question, count)


def test_every_count_of_an_article_is_a_candidate() -> None:
    text = "新桥全长426米，双向四车道。两岸居民往返的时间由原来的40分钟缩短到5分钟。"
    assert count_questions(text) == [
        ("新桥全长多少米？", "426"),
        ("两岸居民往返的时间由原来的多少分钟缩短到5分钟？", "40"),
        ("两岸居民往返的时间由原来的40分钟缩短到多少分钟？", "5"),
    ]


@pytest.mark.parametrize(
    "text",
    ["2021年工作回眸。", "东湖小学开设了围棋课程。", "共3个。", "这是一个重要的开始。", "第三次举办。"],
)
def test_no_count_question_without_a_usable_count(text: str) -> None:
    assert count_questions(text) == []


def test_questions_file_lines_comments_and_encoding(tmp_path: Path) -> None:
    assert read_questions_file(tmp_path) == []
    text = "# 本报的示例问题\n\n新桥全长多少米？\n  夜市有多少个摊位？  \n新桥全长多少米？\n#注释\n"
    (tmp_path / "questions.txt").write_bytes(text.encode("gb18030"))
    assert read_questions_file(tmp_path) == ["新桥全长多少米？", "夜市有多少个摊位？"]
    (tmp_path / "questions.txt").write_bytes(b"\x00\x01binary")
    assert read_questions_file(tmp_path) == []  # unreadable: the generated questions are used


# ---- the real answerer over seeds/ -------------------------------------------------------------


def check_answered(answerer: Answerer, questions: list[str], sources: set[str]) -> None:
    """Each question answered (not abstained) from its own source, all sources different."""
    cited = []
    for q in questions:
        answer = answerer.answer(q, answer_mode="extractive")
        assert not answer.abstained, q
        cited.append(answer.citations[0].chunk.source)
    assert len(set(cited)) == len(cited), cited
    assert set(cited) <= sources


def test_seed_examples_are_answered_from_four_sources(seed_settings: Settings, embedder: Embedder) -> None:
    index = load_index(seed_settings, embedder)
    answerer = Answerer(Retriever(index, embedder, seed_settings), seed_settings)
    examples = example_questions(index, SEEDS_DIR, answerer=answerer)
    assert examples.origin == "titles"
    assert len(examples.questions) == 4
    assert example_questions(index, SEEDS_DIR, answerer=answerer) == examples  # deterministic
    check_answered(answerer, examples.questions, {a.source for a in index.articles.values()})


# ---- a corpus that is not the seeds, served live ------------------------------------------------


@pytest.fixture(scope="session")
def corpus_settings(
    settings: Settings, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    return indexed_corpus(settings, embedder, tmp_path_factory.mktemp("corpus"), CORPUS)


@pytest.fixture(scope="session")
def corpus_server(corpus_settings: Settings, embedder: Embedder) -> Iterator[str]:
    """A real uvicorn server over :data:`CORPUS` (like conftest's ``live_server`` over seeds/)."""
    with LoopbackServer(create_app(corpus_settings, embedder=embedder), name="corpus") as server:
        yield server.url


@pytest.mark.integration
def test_examples_come_from_the_served_corpus(corpus_server: str, corpus_settings: Settings) -> None:
    with httpx.Client(base_url=corpus_server, timeout=120) as client:
        r = client.get("/examples")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["origin"] == "titles"
        questions = body["questions"]
        assert 3 <= len(questions) <= 4
        assert not set(questions) & OLD_SEED_EXAMPLES
        assert "馆内共有藏书多少册？" in questions
        cited = []
        for q in questions:
            answer = client.post("/ask", json={"question": q}).json()
            assert not answer["abstained"], (q, answer)
            cited.append(answer["citations"][0]["source"])
        # One question a source while other sources still have one that answers (东湖教育 has
        # no count and its title alone may not make an answerable question).
        assert len(set(cited)) >= 3 and len(set(cited[:3])) == 3
        assert set(cited) <= set(CORPUS)
        library = client.post("/ask", json={"question": "馆内共有藏书多少册？"}).json()
        assert "8600" in library["answer"]
        page = client.get("/").text
        assert all(q in page for q in questions)


def test_questions_file_wins(settings: Settings, embedder: Embedder, tmp_path: Path) -> None:
    written = [
        "新桥全长多少米？",
        "夜市设有多少个摊位？",
        "星光书屋有多少册藏书？",
        "谁在东湖小学教围棋？",
        "第五个",
    ]
    questions = "# 编辑部写的示例问题\n" + "\n".join(written) + "\n"
    own = indexed_corpus(settings, embedder, tmp_path, {**CORPUS, "questions.txt": questions})
    with TestClient(create_app(own, embedder=embedder)) as client:
        body = client.get("/examples").json()
        assert body == {"questions": written[:4], "origin": "questions.txt"}
        assert all(q in client.get("/").text for q in written[:4])
        listed = client.get("/documents").json()
        assert "questions.txt" not in {f["source"] for f in listed["files"]}
        assert "questions.txt" not in {s["source"] for s in listed["skipped"]}
