"""Index build, persistence and hybrid retrieval with the real model and real FAISS."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import faiss
import pytest
from bad_docs import BAD_REASONS, GOOD_NAME, GOOD_QUESTION, write_bad_docs

from rag.article_store import ArticleStore
from rag.embedding import Embedder, load_embedder
from rag.errors import IndexError_, IngestError, QuestionError
from rag.index import build_index, load_index
from rag.models import Article
from rag.onnx_query import onnx_path
from rag.retrieval import Retriever
from rag.settings import RetrievalMode, Settings
from rag.textnorm import squash

ROOT = Path(__file__).resolve().parents[1]
ALLIANCE = "协商成立“基层站所+商会企业”创新服务联盟"
ALLIANCE_TITLE = "“基层站所+商会企业”创新服务联盟助力企业发展"


@pytest.fixture(scope="module")
def retriever(seed_settings: Settings, embedder: Embedder) -> Retriever:
    return Retriever(load_index(seed_settings, embedder), embedder, seed_settings)


def _rag(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rag", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def test_alliance_question_ranks_its_chunk_first(retriever: Retriever) -> None:
    hits = retriever.search("锦屏成立了什么联盟", k=5)
    assert ALLIANCE in squash(hits[0].chunk.text)
    assert hits[0].chunk.source == "000_ed8d00c7a0348028.txt"
    assert hits[0].chunk.title == ALLIANCE_TITLE
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    assert hits[0].dense_score is not None and hits[0].bm25_score is not None


# Dense alone ranks it 4th (other 锦屏 articles come first): fusion with BM25 is what fixes it.
@pytest.mark.parametrize(("mode", "worst_rank"), [("bm25", 1), ("dense", 5)])
def test_each_mode_finds_the_alliance(retriever: Retriever, mode: RetrievalMode, worst_rank: int) -> None:
    hits = retriever.search("锦屏成立了什么联盟", k=5, retrieval_mode=mode)
    ranks = [h.rank for h in hits if ALLIANCE in squash(h.chunk.text)]
    assert ranks and ranks[0] <= worst_rank


def test_traditional_characters_match_simplified(retriever: Retriever) -> None:
    simplified = retriever.search("锦屏成立了什么联盟", k=3)
    traditional = retriever.search("錦屏成立了什麼聯盟", k=3)
    assert [h.chunk.id for h in traditional] == [h.chunk.id for h in simplified]


def test_paraphrase_found_by_dense_retrieval(retriever: Retriever) -> None:
    hits = retriever.search("哪里在电梯里装了防止煤气罐上楼的装置", k=5, retrieval_mode="hybrid")
    assert any("瓶装燃气阻止系统" in h.chunk.text for h in hits[:3])


def test_empty_question_is_refused(retriever: Retriever) -> None:
    with pytest.raises(QuestionError):
        retriever.search("   ")


def test_manifest_records_how_the_index_was_built(seed_settings: Settings, embedder: Embedder) -> None:
    index = load_index(seed_settings, embedder)
    m = index.manifest
    assert m["settings"]["embed_model"] == embedder.model_id
    assert m["settings"]["embed_fingerprint"] == embedder.fingerprint
    assert m["settings"]["dim"] == 384 == index.vectors.shape[1]
    assert m["settings"]["passage_prompt"] == "passage: " and m["settings"]["query_prompt"] == "query: "
    assert m["settings"]["chunk_size"] == seed_settings.chunk_size
    assert set(m["files"]) == {p.name for p in (ROOT / "seeds").glob("*.txt")}
    assert m["counts"]["chunks"] == len(index.chunks) == index.faiss_index.ntotal
    assert {"faiss-cpu", "sentence-transformers", "torch"} <= set(m["versions"])


def test_a_loaded_index_holds_article_ids_and_reads_each_article_from_its_file(
    seed_settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    index = load_index(seed_settings, embedder)
    written = (index.path / "articles.jsonl").read_text(encoding="utf-8").splitlines()
    expected = [Article(**json.loads(line)) for line in written]
    assert list(index.articles) == [a.id for a in expected]
    assert list(index.articles.values()) == expected
    assert index.articles.sources() == dict(Counter(a.source for a in expected))
    source = expected[-1].source
    assert index.articles.of_source(source) == sorted(
        (a for a in expected if a.source == source), key=lambda a: a.position
    )
    assert index.articles.of_source("no-such-file.txt") == [] and "no-such-file.txt#0" not in index.articles
    with pytest.raises(KeyError):
        index.articles["no-such-file.txt#0"]

    # A file changed under a loaded store is an error naming the file, never a wrong article.
    copy = tmp_path / "articles.jsonl"
    shutil.copyfile(index.path / "articles.jsonl", copy)
    store = ArticleStore(copy)
    copy.write_text("\n".join(reversed(written)) + "\n", encoding="utf-8")
    with pytest.raises(IndexError_, match="articles.jsonl 在索引载入后被改动"):
        store[expected[0].id]


def test_incremental_rebuild_and_stale_settings(
    embedder: Embedder, seed_settings: Settings, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ["000_ed8d00c7a0348028.txt", "003_55e4261343172afa.txt"]:
        shutil.copy(ROOT / "seeds" / name, docs / name)
    s = seed_settings.model_copy(update={"docs_dir": docs, "index_dir": tmp_path / "index"})
    first = build_index(s, embedder)
    assert first.embedded == first.chunks > 0

    again = build_index(s, embedder)
    assert again.embedded == 0 and again.reused == first.chunks

    (docs / "new.md").write_text(
        "# 新闻标题\n\n某县图书馆新增藏书五万册，市民可以免费借阅。\n", encoding="utf-8"
    )
    added = build_index(s, embedder)
    assert added.embedded == 1 and added.chunks == first.chunks + 1
    hits = Retriever(load_index(s, embedder), embedder, s).search("图书馆新增多少藏书", k=1)
    assert hits[0].chunk.source == "new.md"

    (docs / "new.md").write_text("# 新闻标题\n\n某县博物馆新增展品三百件。\n", encoding="utf-8")
    changed = build_index(s, embedder)
    assert changed.embedded == 1
    (docs / "new.md").unlink()
    removed = build_index(s, embedder)
    assert removed.embedded == 0 and removed.chunks == first.chunks
    assert all(c.source != "new.md" for c in load_index(s, embedder).chunks)

    other = s.model_copy(update={"chunk_size": s.chunk_size + 50})
    with pytest.raises(IndexError_, match="chunk_size.*rag build"):
        load_index(other, embedder)


def test_a_build_skips_bad_files_lists_every_one_and_indexes_the_rest(
    embedder: Embedder, seed_settings: Settings, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    docs = write_bad_docs(tmp_path / "docs")
    s = seed_settings.model_copy(update={"docs_dir": docs, "index_dir": tmp_path / "index"})
    with caplog.at_level(logging.WARNING, logger="rag.index"):
        stats = build_index(s, embedder)
    assert {f.source: f.reason for f in stats.skipped} == BAD_REASONS
    assert [f.source for f in stats.skipped] == sorted(BAD_REASONS)
    assert stats.documents == 1 and stats.chunks >= 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name, reason in BAD_REASONS.items():
        assert any(str(docs / name) in w and reason in w for w in warnings), (name, warnings)

    index = load_index(s, embedder)
    assert index.manifest["skipped"] == [{"source": n, "reason": BAD_REASONS[n]} for n in sorted(BAD_REASONS)]
    assert set(index.manifest["files"]) == {GOOD_NAME} and index.manifest["counts"]["documents"] == 1
    assert {c.source for c in index.chunks} == {GOOD_NAME}
    hits = Retriever(index, embedder, s).search(GOOD_QUESTION, k=1)
    assert hits[0].chunk.source == GOOD_NAME and "星光书屋" in hits[0].chunk.text

    # Mended, the file is indexed on the next build and no longer listed.
    (docs / "empty.txt").write_text("本报讯 某县博物馆新增展品三百件。", encoding="utf-8")
    mended = build_index(s, embedder)
    assert "empty.txt" not in {f.source for f in mended.skipped} and mended.documents == 2


def test_a_strict_build_stops_at_the_first_bad_file_and_keeps_the_live_index(
    embedder: Embedder, seed_settings: Settings, tmp_path: Path
) -> None:
    docs = write_bad_docs(tmp_path / "docs")
    s = seed_settings.model_copy(update={"docs_dir": docs, "index_dir": tmp_path / "index"})
    with pytest.raises(IngestError, match="^binary.md：不是文本文件"):  # the first in order
        build_index(s, embedder, strict=True)
    assert not (s.index_dir / "CURRENT").exists()
    (docs / "binary.md").unlink()
    with pytest.raises(IngestError, match="^empty.txt：空文件$"):
        build_index(s, embedder, strict=True)
    (docs / "empty.txt").unlink()
    stats = build_index(s, embedder, strict=True)  # an unknown type is only listed, even when strict
    assert [(f.source, f.reason) for f in stats.skipped] == [("sheet.xlsx", BAD_REASONS["sheet.xlsx"])]


def test_nothing_readable_is_an_error_listing_every_skipped_file(
    embedder: Embedder, seed_settings: Settings, tmp_path: Path
) -> None:
    docs = write_bad_docs(tmp_path / "docs")
    (docs / GOOD_NAME).unlink()
    s = seed_settings.model_copy(update={"docs_dir": docs, "index_dir": tmp_path / "index"})
    with pytest.raises(IndexError_) as exc:
        build_index(s, embedder)
    message = str(exc.value)
    assert "\n" not in message and message.startswith(f"{docs} 中没有可索引的文章")
    for name, reason in BAD_REASONS.items():
        assert f"{name}：{reason}" in message
    assert not (s.index_dir / "CURRENT").exists()


def test_index_hints_name_the_users_own_folders(
    embedder: Embedder, seed_settings: Settings, tmp_path: Path
) -> None:
    mine = seed_settings.model_copy(
        update={"docs_dir": tmp_path / "我的 稿件", "index_dir": tmp_path / "my-index"}
    )
    with pytest.raises(IndexError_) as exc:
        load_index(mine, embedder)
    assert str(exc.value) == (
        f"{tmp_path / 'my-index'} 中还没有索引；请先建立索引："
        f"rag build --docs '{tmp_path / '我的 稿件'}' --index {tmp_path / 'my-index'}"
    )
    # A stale index suggests the folder it was built from, whatever --docs says now.
    stale = seed_settings.model_copy(
        update={"chunk_size": seed_settings.chunk_size + 50, "docs_dir": Path("x")}
    )
    with pytest.raises(IndexError_) as exc:
        load_index(stale, embedder)
    assert "chunk_size" in str(exc.value)
    assert str(exc.value).endswith(f"rag build --docs {ROOT / 'seeds'} --index {seed_settings.index_dir}")


@pytest.mark.parametrize(
    ("fp16_threshold", "kind", "faiss_type"),
    [(1_000_000, "hnsw", "IndexHNSWFlat"), (10, "hnsw-fp16", "IndexHNSWSQ")],
)
def test_hnsw_past_the_threshold(
    embedder: Embedder,
    seed_settings: Settings,
    tmp_path: Path,
    fp16_threshold: int,
    kind: str,
    faiss_type: str,
) -> None:
    update = {"index_dir": tmp_path / "index", "ann_threshold": 10, "faiss_fp16_threshold": fp16_threshold}
    s = seed_settings.model_copy(update=update)
    shutil.copytree(seed_settings.index_dir, s.index_dir)  # reuse the vectors: nothing to embed
    stats = build_index(s, embedder)
    assert stats.embedded == 0
    index = load_index(s, embedder)
    assert index.manifest["faiss"] == kind and type(index.faiss_index).__name__ == faiss_type
    assert faiss.downcast_index(index.faiss_index).hnsw.efSearch == 128  # saved in the file
    exact = Retriever(load_index(seed_settings, embedder), embedder, seed_settings)
    approx = Retriever(index, embedder, s)
    # On a corpus this small HNSW with efSearch 128 is exact (and fp16's ~1e-4 error moves no
    # rank here): same ranking as the flat index.
    question = "锦屏成立了什么联盟"
    assert [h.chunk.id for h in approx.search(question, k=5, retrieval_mode="dense")] == [
        h.chunk.id for h in exact.search(question, k=5, retrieval_mode="dense")
    ]


# `rag build` in a child process that stops for good inside the write of its new build
# folder (articles, chunks, vectors and FAISS written; BM25 and manifest not), after
# touching a marker, so the test can kill it at a known point instead of racing it.
_BUILD_THAT_STALLS = """
import os, sys, time
from pathlib import Path

import rag.index
from rag.cli import app

def stall(chunks):
    Path(sys.argv[1]).write_text(str(os.getpid()))
    time.sleep(3600)
    raise SystemExit("was not killed")

rag.index.build_bm25 = stall
app(sys.argv[2:], prog_name="rag")
"""


def _wait_for(marker: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 300  # loading the model on a busy 2-core machine
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the build ended (rc {proc.returncode}) before it began writing:\n{log.read_text()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the build never began writing:\n{log.read_text()}")
        time.sleep(0.1)


def test_a_killed_build_leaves_the_previous_index_loadable(
    embedder: Embedder, seed_settings: Settings, tmp_path: Path
) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(seed_settings.index_dir, index_dir)
    live = (index_dir / "CURRENT").read_text()
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "seeds", docs)
    (docs / "extra.txt").write_text("某县图书馆新馆开放，新增藏书五万册。", encoding="utf-8")
    marker, log = tmp_path / "writing", tmp_path / "build.log"
    args = ["build", "--docs", str(docs), "--index", str(index_dir)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BUILD_THAT_STALLS, str(marker), *args],
            cwd=ROOT,
            env={**os.environ, "RAG_CACHE_DIR": str(seed_settings.cache_dir)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    _wait_for(marker, proc, log)
    builds = index_dir / "builds"
    partial = [p for p in builds.iterdir() if p.name.startswith(".tmp-")]
    proc.kill()
    assert proc.wait(timeout=60) == -signal.SIGKILL

    # It really was midway: its half-written folder is there, CURRENT still names the old build.
    assert marker.read_text() == str(proc.pid)
    assert [p.name.rsplit("-", 1)[-1] for p in partial] == [str(proc.pid)]
    assert (partial[0] / "vectors.npy").is_file() and not (partial[0] / "manifest.json").exists()
    assert (index_dir / "CURRENT").read_text() == live
    s = seed_settings.model_copy(update={"index_dir": index_dir})
    index = load_index(s, embedder)
    assert index.path.name == live and "extra.txt" not in index.manifest["files"]
    assert index.faiss_index.ntotal == len(index.chunks) == index.vectors.shape[0]

    # The next build clears what the killed one left (the pointer file planted: it died
    # before writing one), and leaves alone the folder of a build still running (this process).
    (index_dir / f".CURRENT.{proc.pid}").write_text("x")
    running = builds / f".tmp-19700101T000000000000Z-{os.getpid()}"
    running.mkdir()
    stats = build_index(s.model_copy(update={"docs_dir": docs}), embedder)
    assert [p for p in builds.iterdir() if p.name.startswith(".tmp-")] == [running]
    assert not list(index_dir.glob(".CURRENT.*"))
    assert stats.embedded >= 1 and "extra.txt" in load_index(s, embedder).manifest["files"]


def _cache_without_onnx(settings: Settings, tmp_path: Path) -> Path:
    """A cache dir sharing the converted models of ``settings`` but nothing else."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "models").symlink_to(settings.cache_dir.expanduser() / "models", target_is_directory=True)
    return cache


def test_building_an_index_leaves_the_question_encoder_to_the_first_question(
    seed_settings: Settings, tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(ROOT / "seeds" / "000_ed8d00c7a0348028.txt", docs)
    cache = _cache_without_onnx(seed_settings, tmp_path)
    s = seed_settings.model_copy(
        update={
            "docs_dir": docs,
            "index_dir": tmp_path / "index",
            "cache_dir": cache,
            "query_backend": "onnx",
        }
    )
    fresh = load_embedder(s)
    build_index(s, fresh)
    assert not (cache / "onnx").exists(), "building an index exported the question encoder"

    hits = Retriever(load_index(s, fresh), fresh, s).search("锦屏成立了什么联盟", k=1)
    assert hits[0].chunk.source == "000_ed8d00c7a0348028.txt"
    assert onnx_path(cache, fresh.fingerprint).is_file()  # made for the first question
    assert fresh.query_encoder is not None and fresh.warm_query_encoder() is fresh.query_encoder


def test_cli_search_json(seed_settings: Settings) -> None:
    env = {"RAG_CACHE_DIR": str(seed_settings.cache_dir)}
    result = _rag("search", "锦屏成立了什么联盟", "--json", "--index", str(seed_settings.index_dir), env=env)
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert set(rows[0]) == {"rank", "score", "source", "title", "text", "start", "end"}
    assert rows[0]["source"] == "000_ed8d00c7a0348028.txt" and rows[0]["title"] == ALLIANCE_TITLE
    assert ALLIANCE in squash(rows[0]["text"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["search", "  "], "问题是空的"),
        (["ask", ""], "问题是空的"),
        (
            ["search", "问题", "--index", "/nonexistent/index"],
            "/nonexistent/index 中还没有索引；请先建立索引：rag build --docs",
        ),
        (
            ["build", "--docs", "/nonexistent/docs", "--index", "/tmp/never"],
            "文档文件夹 /nonexistent/docs 不存在",
        ),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = _rag(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("错误：")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_cli_rebuild_of_unchanged_docs_reports_the_counts_no_debug_noise_no_onnx(
    seed_settings: Settings, tmp_path: Path
) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(seed_settings.index_dir, index_dir)
    cache = _cache_without_onnx(seed_settings, tmp_path)
    result = _rag(
        "build", "--docs", str(ROOT / "seeds"), "--index", str(index_dir), env={"RAG_CACHE_DIR": str(cache)}
    )
    assert result.returncode == 0, result.stderr
    assert not (cache / "onnx").exists(), "rag build exported the question encoder it never uses"
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("已建立索引：5 个文档，") and "新向量化 0 段" in summary, summary
    assert summary.endswith("没有需要重新向量化的内容"), summary
    assert "DEBUG" not in result.stderr + result.stdout, "bm25s' debug log leaks to the terminal"
