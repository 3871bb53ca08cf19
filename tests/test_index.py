"""Index build, persistence and hybrid retrieval with the real model and real FAISS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rag.embedding import Embedder
from rag.errors import IndexError_, QuestionError
from rag.index import build_index, load_index
from rag.retrieval import Retriever
from rag.settings import Settings
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
def test_each_mode_finds_the_alliance(retriever: Retriever, mode: str, worst_rank: int) -> None:
    hits = retriever.search("锦屏成立了什么联盟", k=5, mode=mode)  # type: ignore[arg-type]
    ranks = [h.rank for h in hits if ALLIANCE in squash(h.chunk.text)]
    assert ranks and ranks[0] <= worst_rank


def test_traditional_characters_match_simplified(retriever: Retriever) -> None:
    simplified = retriever.search("锦屏成立了什么联盟", k=3)
    traditional = retriever.search("錦屏成立了什麼聯盟", k=3)
    assert [h.chunk.id for h in traditional] == [h.chunk.id for h in simplified]


def test_paraphrase_found_by_dense_retrieval(retriever: Retriever) -> None:
    hits = retriever.search("哪里在电梯里装了防止煤气罐上楼的装置", k=5, mode="hybrid")
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


def test_hnsw_past_the_threshold(embedder: Embedder, seed_settings: Settings, tmp_path: Path) -> None:
    s = seed_settings.model_copy(update={"index_dir": tmp_path / "index", "ann_threshold": 10})
    shutil.copytree(seed_settings.index_dir, s.index_dir)  # reuse the vectors: nothing to embed
    stats = build_index(s, embedder)
    assert stats.embedded == 0
    index = load_index(s, embedder)
    assert index.manifest["faiss"] == "hnsw" and "HNSW" in type(index.faiss_index).__name__
    exact = Retriever(load_index(seed_settings, embedder), embedder, seed_settings)
    approx = Retriever(index, embedder, s)
    # On a corpus this small HNSW with efSearch 128 is exact: same ranking as the flat index.
    question = "锦屏成立了什么联盟"
    assert [h.chunk.id for h in approx.search(question, k=5, mode="dense")] == [
        h.chunk.id for h in exact.search(question, k=5, mode="dense")
    ]


def test_a_killed_build_leaves_the_previous_index_loadable(
    embedder: Embedder, seed_settings: Settings, tmp_path: Path
) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(seed_settings.index_dir, index_dir)
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "seeds", docs)
    (docs / "extra.txt").write_text("新增的一篇文章。" * 400, encoding="utf-8")  # work to interrupt
    env = {"RAG_CACHE_DIR": str(seed_settings.cache_dir)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rag", "build", "--docs", str(docs), "--index", str(index_dir)],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    builds = index_dir / "builds"
    while time.monotonic() < deadline and not any(p.name.startswith(".tmp-") for p in builds.iterdir()):
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    s = seed_settings.model_copy(update={"index_dir": index_dir})
    index = load_index(s, embedder)  # the previous build, or the new one if it had finished: never half
    assert index.faiss_index.ntotal == len(index.chunks) == index.vectors.shape[0]

    # The next build clears what the killed one left (planted too, in case it had finished),
    # and leaves alone the folder of a build still running (this process).
    (builds / f".tmp-19700101T000000000000Z-{proc.pid}").mkdir(exist_ok=True)
    (index_dir / f".CURRENT.{proc.pid}").write_text("x")
    running = builds / f".tmp-19700101T000000000000Z-{os.getpid()}"
    running.mkdir()
    build_index(s.model_copy(update={"docs_dir": docs}), embedder)
    assert [p for p in builds.iterdir() if p.name.startswith(".tmp-")] == [running]
    assert not list(index_dir.glob(".CURRENT.*"))


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
        (["search", "  "], "question is empty"),
        (["ask", ""], "question is empty"),
        (["search", "问题", "--index", "/nonexistent/index"], "rag build"),
        (["build", "--docs", "/nonexistent/docs", "--index", "/tmp/never"], "does not exist"),
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args: list[str], message: str) -> None:
    result = _rag(*args)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.stderr


def test_cli_rebuild_of_unchanged_docs_reports_the_counts_and_no_debug_noise(
    seed_settings: Settings, tmp_path: Path
) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(seed_settings.index_dir, index_dir)
    env = {"RAG_CACHE_DIR": str(seed_settings.cache_dir)}
    result = _rag("build", "--docs", str(ROOT / "seeds"), "--index", str(index_dir), env=env)
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("5 documents,") and "(0 embedded, " in summary
    assert summary.endswith("nothing to embed"), summary
    assert "DEBUG" not in result.stderr + result.stdout, "bm25s' debug log leaks to the terminal"
