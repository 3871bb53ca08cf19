"""The eval harness: metric functions against hand-computed cases, then one run through the real index."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rag.embedding import Embedder
from rag.errors import RagError
from rag.evaluation.command import EvalCommand, collect_sets, parse_limits
from rag.evaluation.gate import DEFAULT_THRESHOLDS, GATE_TABLE, Thresholds, check_gate, parse_thresholds
from rag.evaluation.metrics import (
    RETRIEVAL_METRICS,
    AbstentionStats,
    Latency,
    answer_contains,
    cmrc_em,
    cmrc_f1,
    cmrc_normalize,
    cmrc_tokens,
    longest_common_substring,
    percentiles,
    retrieval_metrics,
    strip_citations,
)
from rag.evaluation.pipeline import EvalOptions, run_evaluation
from rag.evaluation.relevance import RelevanceJudge, covers
from rag.evaluation.render import render_html, write_reports
from rag.evaluation.report import (
    ANSWER_METRICS,
    ANSWERS_SECTION,
    FOLLOWUP_METRICS,
    FOLLOWUPS_SECTION,
    GOLD_PARAGRAPH_METRICS,
    GOLD_PARAGRAPH_SECTION,
    RETRIEVAL_METRIC_NAMES,
    EvalReport,
    abstention_group_metric,
)
from rag.evaluation.runs import answer_metrics, score_answer
from rag.evaluation.sets import (
    DEFAULT_FOLLOWUPS,
    DEFAULT_SET,
    EvalQuestion,
    is_traditional,
    load_jsonl_set,
    load_questions,
    load_squad_set,
    set_name,
)
from rag.models import Answer, Chunk, Citation
from rag.settings import Settings
from rag.verification import cited_ids

# --------------------------------------------------------------------------------------
# CMRC 2018 normalization, EM and F1 (values computed by hand)
# --------------------------------------------------------------------------------------


def test_cmrc_normalize_strips_punctuation_whitespace_and_case() -> None:
    assert cmrc_normalize("“红动锦屏”。 ") == "红动锦屏"
    assert cmrc_normalize("Hello, World!") == "helloworld"
    assert cmrc_normalize("ＡＢＣ　１２３") == "abc123"  # full width folded by NFKC
    assert cmrc_normalize("基层站所+商会企业") == "基层站所商会企业"  # the official list strips + too
    assert cmrc_normalize("《党性党风教育年》——活动") == "党性党风教育年活动"


def test_cmrc_tokens_are_cjk_characters_and_words() -> None:
    assert cmrc_tokens("2021年 iPhone 12发布。") == ["2021", "年", "iphone", "12", "发", "布"]
    assert cmrc_tokens("“红动锦屏”") == ["红", "动", "锦", "屏"]


def test_longest_common_substring() -> None:
    assert longest_common_substring("abcde", "xbcdy") == 3
    assert longest_common_substring("abc", "") == 0
    assert longest_common_substring(["施", "军", "瑶"], ["书", "记", "施", "军", "瑶"]) == 3


def test_cmrc_f1_exact_after_normalization() -> None:
    assert cmrc_f1("基层站所+商会企业创新服务联盟", ["“基层站所+商会企业”创新服务联盟"]) == 1.0
    assert cmrc_em("基层站所+商会企业创新服务联盟", ["“基层站所+商会企业”创新服务联盟"]) == 1.0


def test_cmrc_f1_longer_prediction() -> None:
    # 11 prediction tokens, 6 gold tokens, common run 6: P = 6/11, R = 1, F1 = 12/17.
    assert cmrc_f1("锦屏成立了创新服务联盟", ["创新服务联盟"]) == pytest.approx(12 / 17)
    assert cmrc_em("锦屏成立了创新服务联盟", ["创新服务联盟"]) == 0.0


def test_cmrc_f1_uses_longest_common_substring_not_bag_of_characters() -> None:
    # Same five characters, but the longest common run is 施军瑶 (3): P = R = 3/5, F1 = 0.6.
    # A SQuAD-style bag-of-characters F1 would give 1.0 here.
    assert cmrc_f1("施军瑶书记", ["书记施军瑶"]) == pytest.approx(0.6)


def test_cmrc_f1_max_over_gold_answers() -> None:
    # Prediction tokens: 共 有 789 家 企 业 (6).
    # "789家" -> 2 tokens, common 2: P = 1/3, R = 1, F1 = 0.5; "789" -> F1 = 2/7. Max: 0.5.
    assert cmrc_f1("共有789家企业", ["789家", "789"]) == pytest.approx(0.5)
    assert cmrc_f1("共有789家企业", ["789"]) == pytest.approx(2 / 7)


def test_cmrc_f1_english_words_are_tokens() -> None:
    # [iphone, 12, pro] vs [iphone, 12]: P = 2/3, R = 1, F1 = 0.8.
    assert cmrc_f1("iPhone 12 Pro", ["iphone 12"]) == pytest.approx(0.8)


def test_cmrc_f1_and_em_of_nothing() -> None:
    assert cmrc_f1("", ["汪志浩"]) == 0.0
    assert cmrc_f1("施军瑶", ["汪志浩"]) == 0.0
    assert cmrc_em("", ["汪志浩"]) == 0.0


def test_answer_contains() -> None:
    assert answer_contains("锦屏成立了“基层站所+商会企业”创新服务联盟。", ["基层站所+商会企业"])
    assert answer_contains("共有 789 家", ["789家"])  # whitespace from the layout does not matter
    assert not answer_contains("共有789家", ["", "790家"])  # an empty gold never matches


def test_citation_markers() -> None:
    assert strip_citations("汪志浩 [1]") == "汪志浩"
    assert strip_citations("答案是A[1]。另见[2][3]") == "答案是A。另见"
    assert cited_ids("答案是A[1]。另见[2][3][1]") == [1, 2, 3]
    assert cited_ids("见[1, 2]和[4]") == [1, 2, 4]
    assert cited_ids("没有引用") == []


# --------------------------------------------------------------------------------------
# Relevance
# --------------------------------------------------------------------------------------

EVIDENCE = "一二三四五六七八九十"  # 10 characters: 60 % is 6


def test_covers_whole_and_partial_evidence() -> None:
    assert covers(EVIDENCE, f"前文{EVIDENCE}后文")
    assert covers("一二三 四五", "前文一二三四五。")  # whitespace is squashed away
    assert covers(EVIDENCE, "前文一二三四五六七")  # 7 of 10 at a chunk end
    assert covers(EVIDENCE, "五六七八九十后文")  # exactly 6 of 10
    assert not covers(EVIDENCE, "六七八九十后文")  # 5 of 10
    assert not covers(EVIDENCE, "一二三X四五六")  # two short pieces
    assert not covers("", "anything")


def _chunk(article: str, source: str, start: int, text: str) -> Chunk:
    return Chunk(article_id=article, source=source, title="t", text=text, start=start, end=start + len(text))


def test_relevance_prefers_chunks_with_the_whole_evidence() -> None:
    chunks = [
        _chunk("a.txt#0", "a.txt", 0, "开头。一二三四五六七"),  # 7/10 of the evidence
        _chunk("a.txt#0", "a.txt", 6, "一二三四五六七八九十。结尾"),  # all of it
        _chunk("b.txt#0", "b.txt", 0, "一二三四五六七八"),
    ]
    judge = RelevanceJudge(chunks)
    assert judge.for_evidence([EVIDENCE], "a.txt") == {"a.txt#0@6"}


def test_relevance_across_a_chunk_boundary_stays_in_the_source() -> None:
    chunks = [
        _chunk("a.txt#0", "a.txt", 0, "开头。一二三四五六七"),  # 7/10
        _chunk("a.txt#0", "a.txt", 8, "六七八九十。结尾"),  # 5/10: not enough
        _chunk("b.txt#0", "b.txt", 0, "一二三四五六七八"),  # 8/10, but another page
    ]
    judge = RelevanceJudge(chunks)
    assert judge.for_evidence([EVIDENCE], "a.txt") == {"a.txt#0@0"}
    # Multi-passage: a chunk holding the extra quote is relevant too.
    assert judge.for_evidence([EVIDENCE, "结尾"], "a.txt") == {"a.txt#0@0", "a.txt#0@8"}


def test_squad_relevance_is_the_paragraph_chunk_with_the_answer() -> None:
    chunks = [
        _chunk("P#0", "P", 0, "北京是中国的首都。"),
        _chunk("P#0", "P", 9, "上海是最大的城市。"),
        _chunk("Q#0", "Q", 0, "上海在长江口。"),
    ]
    judge = RelevanceJudge(chunks)
    assert judge.for_answers(["上海"], "P#0") == {"P#0@9"}
    # No chunk of the paragraph holds the answer (cut by a boundary): the whole paragraph counts.
    assert judge.for_answers(["广州"], "P#0") == {"P#0@0", "P#0@9"}
    assert judge.for_paragraph("P#0") == {"P#0@0", "P#0@9"}
    unanswerable = EvalQuestion(id="u", question="?", answers=(), type="unanswerable")
    assert judge.relevant(unanswerable) == set()


def test_abstention_counting() -> None:
    pairs = [(False, True)] * 3 + [(False, False)] + [(True, True)] + [(True, False)] * 15
    stats = AbstentionStats.count(pairs)
    assert (stats.true_positive, stats.false_positive, stats.unanswerable, stats.answerable) == (3, 1, 4, 16)
    assert stats.precision == pytest.approx(0.75)
    assert stats.recall == pytest.approx(0.75)
    assert stats.wrong_rate == pytest.approx(1 / 16)
    nothing = AbstentionStats.count([(True, False), (False, False)])
    assert (nothing.precision, nothing.recall, nothing.wrong_rate) == (0.0, 0.0, 0.0)


GOOD = _chunk("a.txt#0", "a.txt", 0, "大桥商会会长汪志浩表示，联盟的成立是创新举措。")
OTHER = _chunk("a.txt#1", "a.txt", 0, "区政协委员汪志浩表示，将深入学习。")
WHO = EvalQuestion(
    id="q",
    question="大桥商会会长是谁",
    answers=("汪志浩",),
    type="person",
    evidence=("大桥商会会长汪志浩表示",),
)


def _answer(question: str, text: str, abstained: bool = False) -> Answer:
    cites = (Citation(id=1, chunk=OTHER, score=1.0), Citation(id=2, chunk=GOOD, score=0.5))
    return Answer(question=question, answer=text, answer_sentence="…", abstained=abstained, citations=cites)


def test_score_answer_checks_the_cited_passage() -> None:
    judge = RelevanceJudge([GOOD, OTHER])
    rel = judge.relevant(WHO)
    assert rel == {"a.txt#0@0"}

    right = score_answer(WHO, _answer(WHO.question, "汪志浩 [2]"), judge, rel)
    assert (right.correct, right.em, right.f1, right.citation_ok, right.context_hit) == (
        True,
        1.0,
        1.0,
        True,
        True,
    )

    # No marker: the first citation is the one that counts, and it lacks the evidence.
    unmarked = score_answer(WHO, _answer(WHO.question, "汪志浩"), judge, rel)
    assert unmarked.correct and unmarked.citation_ok is False

    # A marker of a passage that does not exist is not a good citation.
    missing = score_answer(WHO, _answer(WHO.question, "汪志浩 [7]"), judge, rel)
    assert missing.citation_ok is False

    abstained = score_answer(WHO, _answer(WHO.question, "资料中没有找到答案", abstained=True), judge, rel)
    assert (abstained.correct, abstained.f1, abstained.citation_ok, abstained.abstained) == (
        False,
        0.0,
        None,
        True,
    )


def test_answer_metrics_by_hand() -> None:
    judge = RelevanceJudge([GOOD, OTHER])
    rel = judge.relevant(WHO)
    near = EvalQuestion(id="n", question="大桥商会哪年成立", answers=(), type="unanswerable")
    away = EvalQuestion(id="o", question="珠峰多高", answers=(), type="off_topic")
    scored = [
        score_answer(WHO, _answer(WHO.question, "汪志浩 [2]"), judge, rel),  # right, F1 1
        # 会长汪志浩: 5 tokens, common run 3: P = 3/5, R = 1, F1 = 0.75; cites passage 1 only.
        score_answer(WHO, _answer(WHO.question, "会长汪志浩"), judge, rel),
        score_answer(WHO, _answer(WHO.question, "…", abstained=True), judge, rel),  # wrong abstention
        score_answer(near, _answer(near.question, "…", abstained=True), judge, set()),
        score_answer(near, _answer(near.question, "1998年"), judge, set()),
        score_answer(away, _answer(away.question, "…", abstained=True), judge, set()),
    ]
    result = answer_metrics(scored)
    overall = result.overall
    assert overall["accuracy"] == round(2 / 3, 4)
    assert overall["em"] == round(1 / 3, 4)
    assert overall["f1"] == round((1.0 + 0.75) / 3, 4)
    assert overall["context_hit@5"] == 1.0  # passage 2 holds the evidence every time
    assert overall["citation_precision"] == 0.5  # of the two answered: [2] yes, passage 1 no
    assert overall["wrong_abstention_rate"] == round(1 / 3, 4)
    assert overall["abstention_precision"] == round(2 / 3, 4)  # 3 abstentions, 2 on unanswerables
    assert overall["abstention_recall"] == round(2 / 3, 4)
    assert overall[abstention_group_metric("unanswerable")] == 0.5
    assert overall[abstention_group_metric("off_topic")] == 1.0
    groups = {abstention_group_metric(t) for t in ("unanswerable", "off_topic")}
    assert set(overall) == set(ANSWER_METRICS) | groups  # the one list of names is complete
    assert result.by_type["person"] == {
        "accuracy": round(2 / 3, 4),
        "em": round(1 / 3, 4),
        "f1": round(1.75 / 3, 4),
        "abstained": round(1 / 3, 4),
        "n": 3,
    }
    assert result.by_type["off_topic"] == {"abstained": 1.0, "n": 1}
    counts = result.counts
    assert (counts.questions, counts.answerable, counts.answered, counts.unanswerable) == (6, 3, 2, 3)
    assert (counts.abstained_unanswerable, counts.abstained_answerable, counts.errors) == (2, 1, 0)
    assert counts.modes == {"extractive": 6}


def test_retrieval_metrics_with_ranx() -> None:
    relevant = {"q1": {"a"}, "q2": {"c", "d"}, "q3": set()}
    ranked = {"q1": ["x", "a"], "q2": ["c"], "q3": ["y"]}
    overall, per_query = retrieval_metrics(relevant, ranked)
    assert overall["recall@1"] == pytest.approx(1 / 3, abs=1e-4)  # only q2 at rank 1
    assert overall["recall@3"] == pytest.approx(2 / 3, abs=1e-4)  # q3's evidence is in no chunk
    assert overall["mrr@10"] == pytest.approx((0.5 + 1.0 + 0.0) / 3, abs=1e-4)
    # nDCG: q1 1/log2(3) = 0.6309; q2 1 / (1 + 1/log2(3)) = 0.6131; q3 0.
    assert overall["ndcg@10"] == pytest.approx((0.63093 + 0.61315) / 3, abs=1e-4)
    assert per_query["q2"]["recall@1"] == 1.0
    assert set(overall) == set(RETRIEVAL_METRICS)


def test_percentiles() -> None:
    assert percentiles([10.0, 20.0, 30.0, 40.0, 50.0]) == Latency(p50=30.0, p95=48.0, n=5)
    assert percentiles([]) == Latency(p50=0.0, p95=0.0, n=0)


# --------------------------------------------------------------------------------------
# Gate, options, loading
# --------------------------------------------------------------------------------------


def test_check_gate() -> None:
    measured = {
        "seed": {
            "hybrid": {"recall@5": 0.97, "mrr@10": 0.96},
            "answers": {"wrong_abstention_rate": 0.08, "accuracy": 0.9},
        }
    }
    thresholds = parse_thresholds(
        {
            GATE_TABLE: {"skip_answers": ["drcd"]},
            "seed": {
                "hybrid": {"recall@5": 0.98, "mrr@10": 0.95, "recal@5": 0.1},
                "answers": {"wrong_abstention_rate": {"max": 0.05}, "accuracy": {"min": 0.85}},
                "followups": {"accuracy_with_history": 0.5},
            },
            "cmrc2018": {"bm25": {"recall@1": 0.9}},
        }
    )
    verdict = check_gate(measured, thresholds)
    assert verdict.failures == [
        "seed.hybrid recall@5 = 0.9700 < minimum 0.98",
        "seed.hybrid recal@5: not in the report (renamed or misspelled?)",
        "seed.answers wrong_abstention_rate = 0.0800 > maximum 0.05",
    ]
    assert verdict.notes == [
        "seed.followups: not measured in this run, skipped",
        "cmrc2018: not run, skipped",
    ]
    assert not verdict.passed
    ok = check_gate(measured, parse_thresholds({"seed": {"hybrid": {"recall@5": 0.97}}}))
    assert ok.passed and ok.notes == []


@pytest.mark.parametrize(
    "data",
    [
        {"seed": {"hybrid": {"recall@5": "0.9"}}},  # a string is no bound
        {"seed": {"hybrid": {"recall@5": {"minimum": 0.9}}}},  # a misspelled bound must not pass
        {"seed": {"hybrid": 0.9}},
        {GATE_TABLE: {"limit": {"drcd": 0}}},
        {GATE_TABLE: {"skip_answers": "drcd"}},
    ],
)
def test_malformed_thresholds_are_refused(data: dict[str, object]) -> None:
    with pytest.raises(RagError):
        parse_thresholds(data)


def test_parse_limits() -> None:
    assert parse_limits([]) == (None, {})
    assert parse_limits(["300"]) == (300, {})
    assert parse_limits(["drcd=300", "5"]) == (5, {"drcd": 300})
    with pytest.raises(RagError):
        parse_limits(["many"])
    with pytest.raises(RagError):
        parse_limits(["drcd=0"])


def test_thresholds_file_names_known_metrics() -> None:
    raw = tomllib.loads(DEFAULT_THRESHOLDS.read_text(encoding="utf-8"))
    thresholds = parse_thresholds(raw)
    gate = raw.get(GATE_TABLE, {})
    assert thresholds.limits == gate.get("limit", {})
    assert thresholds.skip_answers == frozenset(gate.get("skip_answers", []))
    # Recall per unanswerable group: one per type of the seed set's unanswerable questions.
    groups = {q.type for q in load_questions(DEFAULT_SET) if not q.answerable}
    known = {
        ANSWERS_SECTION: set(ANSWER_METRICS) | {abstention_group_metric(t) for t in groups},
        GOLD_PARAGRAPH_SECTION: set(GOLD_PARAGRAPH_METRICS),
        FOLLOWUPS_SECTION: set(FOLLOWUP_METRICS),
    }
    for set_key, sections in thresholds.bounds.items():
        for section, metrics in sections.items():
            names = known.get(section, set(RETRIEVAL_METRIC_NAMES))
            for metric, bound in metrics.items():
                assert metric in names, f"{set_key}.{section}: unknown metric {metric}"
                for value in (bound.min, bound.max):
                    assert value is None or 0.0 <= value <= 1.0, f"{set_key}.{section} {metric}"


def test_set_names() -> None:
    assert set_name(DEFAULT_SET) == "seed"
    assert set_name(Path("../shared/bench/cmrc2018/cmrc2018_trial.json")) == "cmrc2018"
    assert set_name(Path("DRCD_dev.json")) == "drcd"
    assert set_name(Path("my-questions.jsonl")) == "my_questions"


def test_load_squad_set(tmp_path: Path) -> None:
    data = {
        "version": "1",
        "data": [
            {
                "title": "臺北",
                "id": "1",
                "paragraphs": [
                    {
                        "id": "1-1",
                        "context": "臺北是臺灣的首都。",
                        "qas": [
                            {"id": "1-1-1", "question": "臺灣的首都是哪裡？", "answers": [{"text": "臺北"}]},
                            {"id": "1-1-2", "question": " ", "answers": [{"text": "臺北"}]},
                        ],
                    },
                    {
                        "id": "1-2",
                        "context": "高雄是港口城市。",
                        "qas": [
                            {"id": "1-2-1", "question": "哪個是港口城市？", "answers": [{"text": "高雄"}]}
                        ],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "DRCD_dev.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    full = load_squad_set(path)
    assert full.name == "drcd" and full.kind == "squad" and full.traditional
    assert [a.id for a in full.articles or []] == ["臺北#0", "臺北#1"]
    assert [(q.id, q.paragraph, q.answers) for q in full.questions] == [  # the empty question is left out
        ("1-1-1", "臺北#0", ("臺北",)),
        ("1-2-1", "臺北#1", ("高雄",)),
    ]
    subset = load_squad_set(path, limit=1)
    assert len(subset.articles or []) == 1 and [q.id for q in subset.questions] == ["1-1-1"]
    assert not is_traditional(["北京是首都吗", "上海在哪里"])


def test_load_seed_set_has_followups() -> None:
    seed = load_jsonl_set(DEFAULT_SET, limit=10)
    assert seed.name == "seed" and len(seed.questions) == 10
    assert seed.followups and all(q.history for q in seed.followups)


def test_gate_in_ci_refuses_to_skip_a_missing_benchmark(tmp_path: Path) -> None:
    """Locally the external sets are optional; in CI their thresholds must not pass unmeasured."""
    cmd = EvalCommand(gate=True, bench_dir=tmp_path / "no-bench")
    assert [s.name for s in collect_sets(cmd)] == ["seed"]
    with pytest.raises(RagError, match=r"cmrc2018.*not found.*CI must measure it"):
        collect_sets(replace(cmd, ci=True))
    assert [s.name for s in collect_sets(EvalCommand(bench_dir=tmp_path / "no-bench", ci=True))] == ["seed"]


# --------------------------------------------------------------------------------------
# End to end: ten seed questions through the real index (built once into tmp)
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eval-index")


@pytest.fixture(scope="module")
def seed_report(settings: Settings, embedder: Embedder, eval_cache: Path) -> EvalReport:
    seed = load_jsonl_set(DEFAULT_SET, limit=10)
    options = EvalOptions(modes=("bm25",), title_comparison=False, cache_root=eval_cache)
    return run_evaluation([seed], settings, options, embedder=embedder)


def test_harness_end_to_end(seed_report: EvalReport) -> None:
    seed = seed_report.sets["seed"]
    questions = load_questions(DEFAULT_SET, limit=10)
    answerable = [q for q in questions if q.answerable]
    assert (seed.questions, seed.answerable) == (10, len(answerable))
    assert [d.id for d in seed.details] == [q.id for q in questions]
    bm25 = seed.retrieval["bm25"]
    assert bm25.n == len(answerable)
    # The means agree with the per-question ranks (rank None: not in the top 10).
    ranks = [d.ranks["bm25"] for d in seed.details if d.id in {q.id for q in answerable}]
    for k in (1, 5, 10):
        hits = sum(1 for r in ranks if r is not None and r <= k)
        assert bm25.overall[f"recall@{k}"] == pytest.approx(hits / len(ranks), abs=1e-4)
    mrr = sum(1 / r for r in ranks if r is not None) / len(ranks)
    assert bm25.overall["mrr@10"] == pytest.approx(mrr, abs=1e-4)
    assert sum(int(v["n"]) for v in bm25.by_type.values()) == len(answerable)

    answers = seed.answers
    assert answers is not None and answers.counts.questions == 10
    assert set(answers.latency_ms) >= {"retrieve", "answer", "total"}
    # Each detail row is the CMRC score of what was answered; the overall F1 is their mean.
    rows = [d.answer for d in seed.details if d.answer is not None and d.answer.gold]
    for row in rows:
        expected = 0.0 if row.abstained else cmrc_f1(strip_citations(row.answer or ""), row.gold)
        assert row.f1 == round(expected, 4), row.id
    assert answers.overall["f1"] == pytest.approx(sum(r.f1 for r in rows) / len(rows), abs=1e-3)

    followups = seed.followups
    assert followups is not None
    assert followups.n == len(load_questions(DEFAULT_FOLLOWUPS))
    assert [r.with_history.id for r in seed.followup_details] == [
        q.id for q in load_questions(DEFAULT_FOLLOWUPS)
    ]


def test_reports_are_written(seed_report: EvalReport, tmp_path: Path) -> None:
    target = write_reports(seed_report, tmp_path, check_gate(seed_report.metrics(), Thresholds()))
    for name in ("report.json", "report.md", "report.html", "details-seed.jsonl", "plots/seed_retrieval.png"):
        assert (target / name).is_file(), name
        assert (tmp_path / "latest" / name).is_file(), name
    saved = json.loads((target / "report.json").read_text(encoding="utf-8"))
    seed = seed_report.sets["seed"]
    assert saved["sets"]["seed"]["metrics"]["bm25"] == seed.retrieval["bm25"].overall
    assert saved["sets"]["seed"]["metrics"] == seed.metrics()
    assert "details" not in saved["sets"]["seed"]
    assert saved["gate"] == {"passed": True, "failures": [], "notes": []}
    details = (target / "details-seed.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["id"] for line in details] == [d.id for d in seed.details]
    markdown = (target / "report.md").read_text(encoding="utf-8")
    assert "### Retrieval" in markdown and "![seed_retrieval.png](plots/seed_retrieval.png)" in markdown
    page = (target / "report.html").read_text(encoding="utf-8")
    assert "<img alt='seed_retrieval.png'" in page and "<caption>Retrieval</caption>" in page
    assert "<h2>Gate: <span class='pass'>passed</span></h2>" in page


def test_html_report_escapes_text(seed_report: EvalReport) -> None:
    page = render_html(replace(seed_report, commit="<b>dirty</b>"), {})
    assert "&lt;b&gt;dirty&lt;/b&gt;" in page and "<b>dirty</b>" not in page


def test_cli_gate_exit_codes(seed_report: EvalReport, eval_cache: Path, tmp_path: Path) -> None:
    from rag.cli import app

    recall = seed_report.sets["seed"].retrieval["bm25"].overall["recall@10"]
    args = ["eval", "--limit", "10", "--mode", "bm25", "--no-title", "--no-answers", "--out", str(tmp_path)]

    passing = tmp_path / "pass.toml"
    passing.write_text(f'[seed.bm25]\n"recall@10" = {recall - 0.01:.4f}\n', encoding="utf-8")
    result = CliRunner().invoke(
        app,
        [
            *args,
            "--eval-cache",
            str(eval_cache),
            "--gate",
            "--thresholds",
            str(passing),
            "--set",
            str(DEFAULT_SET),
        ],
    )
    assert result.exit_code == 0, result.output

    failing = tmp_path / "fail.toml"
    failing.write_text('[seed.bm25]\n"recall@10" = 1.01\n"mrr@10" = 0.0\n', encoding="utf-8")
    result = CliRunner().invoke(
        app,
        [*args, "--gate", "--thresholds", str(failing), "--set", str(DEFAULT_SET)],
        env={"RAG_EVAL_CACHE_DIR": str(eval_cache)},  # the index built above: nothing to embed
    )
    assert result.exit_code == 1
    fails = [line for line in result.output.splitlines() if line.startswith("gate: FAIL ")]
    assert fails == [f"gate: FAIL seed.bm25 recall@10 = {recall:.4f} < minimum 1.01"]
