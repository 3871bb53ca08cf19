"""The ``rag`` command as a user meets it: Chinese one-line errors, skipped files, cited passages, progress.

Real components throughout: typer's CliRunner over the real app for the quick checks, and
``python -m rag`` subprocesses (stderr a pipe, as in ``make run | cat``) for builds, answers
and the server.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from bad_docs import BAD_REASONS, GOOD_NAME, GOOD_QUESTION, write_bad_docs
from typer.testing import CliRunner

from rag.cli import answer_lines, app
from rag.embedding import Embedder
from rag.models import NOT_FOUND, Answer, Chunk, Citation
from rag.settings import Settings
from rag.verification import cited_ids

ROOT = Path(__file__).resolve().parent.parent
ALLIANCE_QUESTION = "锦屏成立了什么联盟"


def _rag(*args: str, cache: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rag", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "RAG_CACHE_DIR": str(cache)},
    )


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("错误：")]


# ---- errors a user can fix: one Chinese line, exit 2, their own paths ----


def test_missing_docs_folder_is_one_chinese_line_naming_it(tmp_path: Path) -> None:
    docs = tmp_path / "我的稿件"
    result = CliRunner().invoke(app, ["build", "--docs", str(docs), "--index", str(tmp_path / "idx")])
    assert result.exit_code == 2
    lines = _error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert f"文档文件夹 {docs} 不存在" in lines[0] and "--docs" in lines[0]
    assert "error:" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "idx").exists()


def test_docs_pointing_at_a_file_says_so_and_names_its_folder(tmp_path: Path) -> None:
    article = tmp_path / "稿件" / "一篇.txt"
    article.parent.mkdir()
    article.write_text("标题\n\n正文。\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["build", "--docs", str(article), "--index", str(tmp_path / "idx")])
    assert result.exit_code == 2
    lines = _error_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert f"{article} 是一个文件" in lines[0] and f"--docs {article.parent}" in lines[0]
    assert "不存在" not in lines[0]


def test_empty_question_is_a_chinese_error() -> None:
    result = CliRunner().invoke(app, ["search", "   "])
    assert result.exit_code == 2
    assert _error_lines(result.stderr) == ["错误：问题是空的；请输入一个问题，例如：锦屏成立了什么联盟"]


def test_missing_index_names_the_users_own_folders(tmp_path: Path) -> None:
    index = tmp_path / "没有的索引"
    result = CliRunner().invoke(app, ["ask", "问题", "--index", str(index)], env={"RAG_DOCS_DIR": "稿件"})
    assert result.exit_code == 2
    lines = _error_lines(result.stderr)
    command = f"rag build --docs {shlex.quote('稿件')} --index {shlex.quote(str(index))}"
    assert len(lines) == 1 and command in lines[0], result.stderr


# ---- a build that survives bad files ----


@pytest.mark.slow
def test_build_lists_every_skipped_file_with_its_reason_and_strict_stops_at_the_first(
    settings: Settings, tmp_path: Path
) -> None:
    docs = write_bad_docs(tmp_path / "docs")
    index = tmp_path / "index"

    strict = _rag("build", "--docs", str(docs), "--index", str(index), "--strict", cache=settings.cache_dir)
    assert strict.returncode == 2, strict.stderr
    lines = _error_lines(strict.stderr)
    first = sorted(n for n in BAD_REASONS if not n.endswith(".png"))[0]  # binary.md: read before empty.txt
    assert len(lines) == 1 and f"{docs / first}：{BAD_REASONS[first]}" in lines[0], strict.stderr
    assert "--strict" in lines[0]
    assert not (index / "CURRENT").exists()

    result = _rag("build", "--docs", str(docs), "--index", str(index), cache=settings.cache_dir)
    assert result.returncode == 0, result.stderr
    out = result.stdout.splitlines()
    assert out[0].startswith("已建立索引：1 个文档，1 篇文章，"), result.stdout
    assert out[1] == f"跳过 {len(BAD_REASONS)} 个文件（未建索引，{docs} 中）："
    assert out[2:] == [f"  {name}：{reason}" for name, reason in sorted(BAD_REASONS.items())]
    manifest_files = json.loads(
        (index / "builds" / (index / "CURRENT").read_text().strip() / "manifest.json").read_text()
    )["files"]
    assert list(manifest_files) == [GOOD_NAME]
    # Progress on a pipe: plain lines, no bar, no English log prefixes.
    assert re.search(r"^向量化 1 段", result.stderr, re.M) and "向量化完成：1 段" in result.stderr
    assert "WARNING" not in result.stderr and "INFO" not in result.stderr

    found = _rag("ask", GOOD_QUESTION, "--index", str(index), cache=settings.cache_dir)
    assert found.returncode == 0, found.stderr
    assert "星光书屋" in found.stdout.splitlines()[0]


# ---- rag ask: the answer, its sentence, only the passages it cites ----


def _citation(n: int, text: str) -> Citation:
    chunk = Chunk(f"doc{n}.txt#0", f"doc{n}.txt", f"标题{n}", text, 0, len(text))
    return Citation(n, chunk, 0.5)


def test_answer_lines_show_only_cited_passages_and_nearest_ones_as_not_sources() -> None:
    citations = tuple(_citation(n, f"第{n}段的正文。") for n in (1, 2, 3))
    answer = Answer(question="问", answer="答案 [2]", answer_sentence="第2段的正文。", citations=citations)
    lines = "\n".join(answer_lines(answer))
    assert "[2] 标题2（doc2.txt）" in lines and "依据：第2段的正文。" in lines
    assert "标题1" not in lines and "标题3" not in lines and "引用的段落：" in lines
    assert cited_ids("甲 [1, 3]，乙【2】[3]") == [1, 3, 2]
    assert "把握" not in lines  # no confidence given: none shown

    doubtful = Answer(
        question="问", answer="答案 [1]", citations=citations, confidence=0.234, low_confidence=True
    )
    assert "把握：23%，把握不大，请核对引用的段落" in answer_lines(doubtful)
    sure = Answer(question="问", answer="答案 [1]", citations=citations, confidence=0.9)
    assert "把握：90%" in answer_lines(sure)

    nothing = Answer(question="问", answer=NOT_FOUND, abstained=True, citations=citations)
    lines = "\n".join(answer_lines(nothing))
    assert "没有段落回答这个问题" in lines and "引用的段落" not in lines and "[1]" not in lines
    assert lines.count("· 标题") == 2 and "标题3" not in lines


def test_ask_prints_the_answer_its_sentence_and_only_the_passages_it_cites(seed_settings: Settings) -> None:
    index, cache = str(seed_settings.index_dir), seed_settings.cache_dir
    as_json = _rag("ask", ALLIANCE_QUESTION, "--index", index, "--json", cache=cache)
    assert as_json.returncode == 0, as_json.stderr
    answer = json.loads(as_json.stdout)
    assert len(answer["citations"]) >= 3  # retrieved: more passages than the answer cites

    text = _rag("ask", ALLIANCE_QUESTION, "--index", index, cache=cache)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == answer["answer"] and "[1]" in lines[0]
    assert lines[1] == f"依据：{answer['answer_sentence']}"
    shown = [int(m.group(1)) for m in re.finditer(r"^\[(\d+)\] ", text.stdout, re.M)]
    assert shown == cited_ids(answer["answer"]) == [1]
    first = answer["citations"][0]["chunk"]
    assert f"[1] {first['title']}（{first['source']}）" in text.stdout
    others = {c["chunk"]["title"] for c in answer["citations"][1:]} - {first["title"]}
    assert not any(title in text.stdout for title in others)

    nothing = _rag("ask", "火星探测器什么时候发射", "--index", index, cache=cache)
    assert nothing.returncode == 0, nothing.stderr
    assert nothing.stdout.splitlines()[0] == NOT_FOUND
    assert "没有段落回答这个问题" in nothing.stdout and "引用的段落" not in nothing.stdout
    assert 1 <= len(re.findall(r"^· ", nothing.stdout, re.M)) <= 2


# ---- rag serve: says when it is actually listening ----


@pytest.mark.slow
@pytest.mark.integration
def test_serve_says_ready_with_its_url_once_it_listens(seed_settings: Settings, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    args = ["serve", "--port", "0", "--index", str(seed_settings.index_dir), "--docs", str(ROOT / "seeds")]
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rag", *args],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=err,
            env={**os.environ, "RAG_CACHE_DIR": str(seed_settings.cache_dir)},
        )
    try:
        deadline = time.monotonic() + 300
        while not (ready := re.search(r"^已就绪：(http://127\.0\.0\.1:(\d+)/)", log.read_text(), re.M)):
            assert proc.poll() is None, f"rag serve ended (rc {proc.returncode}):\n{log.read_text()}"
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        url = ready.group(1)
        assert int(ready.group(2)) > 0  # the port it really got, not the 0 it was given
        with urllib.request.urlopen(f"{url}healthz", timeout=30) as health:  # listening the moment it says so
            assert health.status == 200
        before = log.read_text().split("已就绪：")[0]
        assert "正在启动服务" in before
        assert "还没有索引" not in before and "torch" not in before  # the index exists: no build, no torch
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


@pytest.mark.integration
def test_serve_hands_the_index_it_checked_to_the_service(
    seed_settings: Settings, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``rag serve`` loads the index once: the copy it loaded to check it is the one served (at a
    million chunks a second load is seconds and, until the first is freed, twice the memory)."""
    import httpx
    from fake_llm import LoopbackServer

    from rag import cli
    from rag.api import create_app
    from rag.api import service as service_module
    from rag.index import require_index

    checked = cli._ensure_index(seed_settings, embedder)
    assert checked is not None and checked.path == require_index(seed_settings)
    monkeypatch.setattr(service_module, "load_index", lambda *_: pytest.fail("the index was loaded again"))
    app_ = create_app(seed_settings, embedder=embedder, index=checked)
    with LoopbackServer(app_, settings=seed_settings) as web:
        ready = httpx.get(f"{web.url}/readyz", timeout=60)
        assert ready.status_code == 200 and ready.json()["build"] == checked.path.name
        hits = httpx.get(f"{web.url}/search", params={"q": "锦屏成立了什么联盟"}, timeout=60).json()["hits"]
        assert hits and hits[0]["source"] in {c.source for c in checked.chunks}


# ---- rag feedback-export ----


def test_feedback_export_writes_every_rating_as_one_json_line(tmp_path: Path) -> None:
    from rag.feedback import Feedback, FeedbackStore, feedback_path

    index = tmp_path / "index"
    index.mkdir()
    runner = CliRunner()
    empty = runner.invoke(app, ["feedback-export", "--index", str(index)])
    assert empty.exit_code == 0 and empty.stdout == "" and "还没有反馈" in empty.stderr
    assert not feedback_path(Settings(index_dir=index)).exists(), "exporting nothing created the store"

    store = FeedbackStore(feedback_path(Settings(index_dir=index)))
    store.add(
        Feedback(rating="up", question="锦屏成立了什么联盟", answer="创新服务联盟 [1]", citations=["a.txt#0"])
    )
    store.add(Feedback(rating="down", question="谁写的", answer=NOT_FOUND, comment="应该能答"))
    store.close()

    out = runner.invoke(app, ["feedback-export", "--index", str(index)])
    assert out.exit_code == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["rating"], r["question"]) for r in rows] == [("up", "锦屏成立了什么联盟"), ("down", "谁写的")]
    assert rows[0]["citations"] == ["a.txt#0"] and rows[1]["comment"] == "应该能答"
    assert "锦屏" in out.stdout, "Chinese is written as is, not \\u-escaped"

    target = tmp_path / "反馈.jsonl"
    to_file = runner.invoke(app, ["feedback-export", "--index", str(index), "--out", str(target)])
    assert to_file.exit_code == 0 and to_file.stdout == ""
    assert target.read_text(encoding="utf-8") == out.stdout
    assert f"已导出 2 条反馈到 {target}" in to_file.stderr

    missing = runner.invoke(app, ["feedback-export", "--index", str(tmp_path / "没有")])
    assert missing.exit_code == 2 and len(_error_lines(missing.stderr)) == 1
