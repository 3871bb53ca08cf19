"""Index faults: builds restricted to some sources, corrupt or missing index files, the build lock.

Every kind of corruption a tester found (truncated, empty, garbled, missing, swapped files)
is written into a real build; loading must fall back to the previous good build, or raise
one line naming the bad file when there is none, and ``rag build`` must repair it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from corpora import write_docs
from typer.testing import CliRunner

import rag.index
from rag.cli import app
from rag.embedding import Embedder
from rag.errors import CorruptIndexError, IndexError_
from rag.index import _build_locked, build_index, build_lock, load_index, verify_loaded
from rag.settings import Settings

DOCS = {
    "a.txt": "青石岭村建成乡村图书馆\n\n本报讯 日前，青石岭村建成了一座名为“星光书屋”的乡村图书馆。\n",
    "b.txt": "锦屏街道成立创新服务联盟\n\n本报讯 锦屏街道协商成立“基层站所+商会企业”创新服务联盟。\n",
    "sub/c.md": "# 东湖公园完成改造\n\n东湖公园历时半年完成改造，新增步道三公里，于本月重新向市民开放。\n",
}


def _settings(settings: Settings, root: Path, files: dict[str, str] = DOCS) -> Settings:
    docs = write_docs(root / "docs", files)
    return settings.model_copy(update={"docs_dir": docs, "index_dir": root / "index"})


def test_only_indexes_the_named_sources(settings: Settings, embedder: Embedder, tmp_path: Path) -> None:
    s = _settings(settings, tmp_path, {**DOCS, "photo.png": "x", "empty.txt": ""})
    stats = build_index(s, embedder, only={"a.txt", "sub/c.md", "missing.txt"})
    index = load_index(s, embedder)
    assert {c.source for c in index.chunks} == {"a.txt", "sub/c.md"}
    assert set(index.manifest["files"]) == {"a.txt", "sub/c.md"}
    assert stats.documents == 2 and stats.skipped == ()  # files outside `only` are not listed
    stats = build_index(s, embedder, only=["empty.txt", "b.txt"])
    assert [item.source for item in stats.skipped] == ["empty.txt"]
    assert {c.source for c in load_index(s, embedder).chunks} == {"b.txt"}
    assert stats.embedded >= 1  # b.txt was never embedded before
    with pytest.raises(IndexError_, match="没有可索引"):
        build_index(s, embedder, only=["photo.png"])


# ---- corrupt or missing index files ----

KINDS = {
    # kind: (the file the error must name, how to damage the live build)
    "faiss truncated": ("faiss.index", lambda b, big: _cut(b / "faiss.index", 0.5)),
    "faiss empty": ("faiss.index", lambda b, big: (b / "faiss.index").write_bytes(b"")),
    "faiss from a bigger build": ("faiss.index", lambda b, big: shutil.copy(big / "faiss.index", b)),
    "manifest garbled": ("manifest.json", lambda b, big: (b / "manifest.json").write_bytes(os.urandom(300))),
    "manifest truncated": ("manifest.json", lambda b, big: _cut(b / "manifest.json", 0.5)),
    "vectors missing": ("vectors.npy", lambda b, big: (b / "vectors.npy").unlink()),
    "vectors wrong shape": ("vectors.npy", lambda b, big: _reshape_vectors(b / "vectors.npy")),
    "chunks truncated": ("chunks.jsonl", lambda b, big: _cut(b / "chunks.jsonl", 0.6)),
    "chunks cut at a line": ("chunks.jsonl", lambda b, big: _drop_last_line(b / "chunks.jsonl")),
    "articles bad": ("articles.jsonl", lambda b, big: (b / "articles.jsonl").write_text("不是 JSON\n{\n")),
    "bm25 missing": ("bm25", lambda b, big: shutil.rmtree(b / "bm25")),
    "bm25 file truncated": (
        "bm25/data.csc.index.npy",
        lambda b, big: _cut(b / "bm25/data.csc.index.npy", 0.5),
    ),
    "CURRENT binary": (
        "CURRENT",
        lambda b, big: (b.parent.parent / "CURRENT").write_bytes(b"\x89\xff\x00\x13"),
    ),
    "CURRENT names a missing build": (
        "CURRENT",
        lambda b, big: (b.parent.parent / "CURRENT").write_text("20990101T000000000000Z"),
    ),
}
POINTER_KINDS = {"CURRENT binary", "CURRENT names a missing build"}
"""These damage no build: the builds themselves stay good, so even a lone build still loads."""
AGREEMENT_KINDS = ("faiss from a bigger build", "vectors wrong shape", "chunks cut at a line")
"""The kinds that once loaded and then failed every /ask: caught by agreement alone, too."""


def _cut(path: Path, fraction: float) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def _drop_last_line(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    path.write_text("".join(lines[:-1]), encoding="utf-8")


def _reshape_vectors(path: Path) -> None:
    vectors = np.load(path)
    np.save(path, np.ascontiguousarray(vectors[:, : vectors.shape[1] // 2]))


@dataclass
class Indexes:
    """Built once per module; every test damages a copy."""

    two: Path
    """An index of DOCS with an older good build (of DOCS without sub/c.md) beside the live one."""
    one: Path
    """The same live build, alone."""
    bigger: Path
    """A build of more documents, whose faiss.index is swapped in."""
    docs: Path


@pytest.fixture(scope="module")
def indexes(settings: Settings, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory) -> Indexes:
    root = tmp_path_factory.mktemp("faults")
    older = {k: v for k, v in DOCS.items() if k != "sub/c.md"}
    s = _settings(settings, root, older)
    build_index(s, embedder)
    write_docs(s.docs_dir, DOCS)
    build_index(s, embedder)
    one = root / "one"
    build_index(s.model_copy(update={"index_dir": one}), embedder)
    big = _settings(
        settings, root / "big", {**DOCS, **{f"more{i}.txt": DOCS["b.txt"] * (i + 2) for i in range(3)}}
    )
    build_index(big, embedder)
    return Indexes(two=s.index_dir, one=one, bigger=load_index(big, embedder).path, docs=s.docs_dir)


def _damaged(indexes: Indexes, which: Path, kind: str, tmp_path: Path, settings: Settings) -> Settings:
    """A copy of ``which`` with its live build damaged as ``kind`` says."""
    copy = tmp_path / which.name
    shutil.copytree(which, copy)
    live = copy / "builds" / (copy / "CURRENT").read_text()
    KINDS[kind][1](live, indexes.bigger)
    return settings.model_copy(update={"docs_dir": indexes.docs, "index_dir": copy})


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_damaged_build_falls_back_fails_in_one_line_and_is_rebuilt(
    kind: str, indexes: Indexes, settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    bad_file = KINDS[kind][0]
    clean = load_index(settings.model_copy(update={"index_dir": indexes.one}), embedder)

    # With an older good build: it is served, and the fallback is visible.
    s = _damaged(indexes, indexes.two, kind, tmp_path / "two", settings)
    index = load_index(s, embedder)
    builds = sorted(p.name for p in (s.index_dir / "builds").iterdir())
    expected = builds[-1] if kind in POINTER_KINDS else builds[0]
    assert index.path.name == expected and len(builds) == 2
    assert index.fallback_from is not None and bad_file in index.fallback_from
    assert index.warnings and verify_loaded(index) == []

    # Alone: one line naming the file and the rebuild command (a bad CURRENT spares the build).
    s = _damaged(indexes, indexes.one, kind, tmp_path / "one", settings)
    if kind in POINTER_KINDS:
        assert load_index(s, embedder).fallback_from.startswith(str(s.index_dir / "CURRENT"))
    else:
        with pytest.raises(CorruptIndexError) as caught:
            load_index(s, embedder)
        message = str(caught.value)
        assert "\n" not in message and bad_file in message, message
        assert f"rag build --docs {indexes.docs} --index {s.index_dir}" in message

    # The next build repairs it and equals a clean build.
    build_index(s, embedder)
    mended = load_index(s, embedder)
    assert mended.fallback_from is None and verify_loaded(mended) == []
    assert mended.chunks == clean.chunks and mended.articles == clean.articles
    assert np.allclose(mended.vectors, clean.vectors, atol=1e-6)
    assert mended.manifest["files"] == clean.manifest["files"]
    assert mended.bm25.vocab_dict == clean.bm25.vocab_dict


@pytest.mark.parametrize("kind", AGREEMENT_KINDS)
def test_parts_that_disagree_are_caught_without_checksums(
    kind: str, indexes: Indexes, settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    s = _damaged(indexes, indexes.one, kind, tmp_path, settings)
    live = s.index_dir / "builds" / (s.index_dir / "CURRENT").read_text()
    manifest = json.loads((live / "manifest.json").read_text(encoding="utf-8"))
    del manifest["integrity"]  # as a build made before sizes and checksums were recorded
    (live / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(CorruptIndexError, match=KINDS[kind][0]):
        load_index(s, embedder)


def test_verify_loaded_reports_an_index_changed_after_loading(
    indexes: Indexes, settings: Settings, embedder: Embedder
) -> None:
    index = load_index(settings.model_copy(update={"index_dir": indexes.one}), embedder)
    assert verify_loaded(index) == [] and index.fallback_from is None and index.warnings == []
    index.chunks.pop()
    problems = verify_loaded(index)
    assert any("vectors.npy" in p for p in problems) and any("faiss.index" in p for p in problems)


def test_pruning_keeps_the_newest_good_build(
    indexes: Indexes, settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    s = _damaged(indexes, indexes.two, "faiss truncated", tmp_path, settings)
    good, bad = sorted(p.name for p in (s.index_dir / "builds").iterdir())
    build_index(s, embedder)
    left = sorted(p.name for p in (s.index_dir / "builds").iterdir())
    assert left[0] == good and bad not in left and len(left) == 2  # the damaged one went, the good stayed


def _cli(args: list[str], s: Settings) -> tuple[int, str]:
    result = CliRunner().invoke(app, args, env={"RAG_CACHE_DIR": str(s.cache_dir)})
    return result.exit_code, result.stderr


def test_commands_on_a_corrupt_index_exit_2_with_one_line(
    indexes: Indexes, settings: Settings, tmp_path: Path
) -> None:
    s = _damaged(indexes, indexes.one, "vectors wrong shape", tmp_path, settings)
    index = ["--index", str(s.index_dir)]
    for args in (
        ["search", "图书馆", *index],
        ["ask", "图书馆叫什么", *index],
        ["serve", "--port", "0", *index],
    ):
        code, output = _cli(args, s)
        lines = [line for line in output.splitlines() if line.startswith("错误：")]
        assert code == 2 and len(lines) == 1, output
        assert "vectors.npy" in lines[0] and "rag build" in lines[0] and "Traceback" not in output
    # The real console script, stderr a pipe (where a Rich traceback used to appear).
    proc = subprocess.run(
        [sys.executable, "-m", "rag", "serve", "--port", "0", "--docs", str(indexes.docs), *index],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "RAG_CACHE_DIR": str(s.cache_dir)},
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("错误：")]
    assert len(errors) == 1 and "vectors.npy" in errors[0] and "Traceback" not in proc.stderr
    # `rag build` repairs it.
    code, output = _cli(["build", "--docs", str(indexes.docs), *index], s)
    assert code == 0 and "Traceback" not in output, output


# ---- incremental rebuilds and the build lock ----


def test_an_upload_like_rebuild_parses_and_tokenizes_only_the_new_file(
    settings: Settings, embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _settings(settings, tmp_path)
    build_index(s, embedder)
    parsed: list[str] = []
    tokenized: list[str] = []
    real_parse, real_tokens = rag.index.parse_document, rag.index.chunk_tokens
    monkeypatch.setattr(
        rag.index, "parse_document", lambda data, src: parsed.append(src) or real_parse(data, src)
    )
    monkeypatch.setattr(rag.index, "chunk_tokens", lambda c: tokenized.append(c.source) or real_tokens(c))
    write_docs(s.docs_dir, {"new.txt": "西河大桥通车\n\n本报讯 西河大桥昨日正式通车，全长八百米。\n"})
    stats = build_index(s, embedder)
    assert parsed == ["new.txt"] and set(tokenized) == {"new.txt"} and stats.embedded == len(tokenized)
    incremental = load_index(s, embedder)
    assert verify_loaded(incremental) == []

    # The same as building from nothing (the reused parts were not stale).
    clean_settings = s.model_copy(update={"index_dir": tmp_path / "clean"})
    monkeypatch.undo()
    build_index(clean_settings, embedder)
    clean = load_index(clean_settings, embedder)
    assert incremental.chunks == clean.chunks and incremental.articles == clean.articles
    assert incremental.bm25.vocab_dict == clean.bm25.vocab_dict
    # Equal to the passage precision's rounding: in bf16 a vector's last bits depend on the batch
    # it was embedded in (its padded length), and the two builds batch differently (measured:
    # cosine >= 0.99998); in fp32 the difference is float noise.
    if embedder.passage_precision == "bf16":
        cosines = np.sum(np.asarray(incremental.vectors) * np.asarray(clean.vectors), axis=1)
        assert cosines.min() > 0.9999, cosines
    else:
        assert np.allclose(incremental.vectors, clean.vectors, atol=1e-6)
    q = incremental.bm25.get_tokens_ids(["大桥"])
    assert incremental.bm25.get_scores(q).tolist() == clean.bm25.get_scores(q).tolist()


def test_a_second_build_waits_for_the_first_and_embeds_nothing_again(
    settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    s = _settings(settings, tmp_path)
    log_path = tmp_path / "second.log"
    with build_lock(s.index_dir), log_path.open("w") as log_file:  # this test plays the first build
        second = subprocess.Popen(
            [sys.executable, "-m", "rag", "build", "--docs", str(s.docs_dir), "--index", str(s.index_dir)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "RAG_CACHE_DIR": str(s.cache_dir)},
        )
        deadline = time.monotonic() + 240  # the child loads the model first
        while "等它完成后再继续" not in log_path.read_text(encoding="utf-8"):
            assert second.poll() is None, log_path.read_text(encoding="utf-8")
            assert time.monotonic() < deadline, log_path.read_text(encoding="utf-8")
            time.sleep(0.2)
        first = _build_locked(s, embedder, None, (False, False, None))
        time.sleep(0.5)
        assert second.poll() is None  # still waiting while the first build holds the lock
    assert second.wait(timeout=240) == 0, log_path.read_text(encoding="utf-8")
    output = log_path.read_text(encoding="utf-8")
    assert first.embedded == first.chunks > 0
    assert f"新向量化 0 段，沿用 {first.chunks} 段" in output, output
