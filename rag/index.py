"""Build, persist and load the search index: chunks, FAISS vectors and BM25.

Layout of ``index_dir``::

    CURRENT                 name of the live build (replaced atomically)
    builds/<stamp>/         one complete build
        manifest.json       model, prompts, chunking, per-file hashes, skipped files, counts, versions
        articles.jsonl      cleaned articles (for reading a citation in context)
        chunks.jsonl        chunks, in vector order
        vectors.npy         normalized embeddings, float32 [n, dim]
        faiss.index         FAISS inner-product index over the vectors
        bm25/               bm25s index over jieba tokens

A build is written completely into a fresh folder before ``CURRENT`` is switched to it,
so a build killed midway leaves the previous index loadable. A rebuild reuses the
vectors of every file whose content hash is unchanged.

A file that cannot be used (binary, undecodable, empty, of an unknown type) is skipped
and listed with its reason; ``build_index(strict=True)`` stops at the first unreadable one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import shutil
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import bm25s
import faiss
import numpy as np
import numpy.typing as npt

from rag.chunking import chunk_articles
from rag.embedding import Embedder
from rag.errors import IndexError_
from rag.ingest import (
    DocumentError,
    document_source,
    no_articles_message,
    parse_document,
    read_bytes,
    scan_documents,
)
from rag.models import Article, Chunk, SkippedFile
from rag.settings import Settings
from rag.textnorm import fold, search_tokens

Float32Array = npt.NDArray[np.float32]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_LIBRARIES = ("sentence-transformers", "transformers", "torch", "faiss-cpu", "bm25s", "jieba", "opencc")


@dataclass
class BuildStats:
    """What a build did, for the CLI's closing line and the benchmark."""

    documents: int
    articles: int
    chunks: int
    embedded: int
    reused: int
    tokens: int
    seconds: float
    embed_seconds: float
    skipped: tuple[SkippedFile, ...] = ()
    """Files of the docs folder that were not indexed, with why, sorted by source."""

    @property
    def tokens_per_second(self) -> float:
        """Embedding throughput of the build (0 when nothing was embedded)."""
        return self.tokens / self.embed_seconds if self.embed_seconds > 0 else 0.0


@dataclass
class SearchIndex:
    """A loaded build: everything retrieval needs, in memory."""

    path: Path
    manifest: dict[str, Any]
    articles: dict[str, Article]
    chunks: list[Chunk]
    vectors: Float32Array
    faiss_index: faiss.Index
    bm25: bm25s.BM25

    def __len__(self) -> int:
        return len(self.chunks)


def embedding_input(chunk: Chunk, title_context: bool) -> str:
    """The text embedded for a chunk: folded, optionally prefixed by its article title."""
    text = f"{chunk.title}\n{chunk.text}" if title_context else chunk.text
    return fold(text)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _chunk_key(chunk: Chunk, title_context: bool) -> str:
    return _sha256(embedding_input(chunk, title_context).encode())


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in _LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def settings_fingerprint(settings: Settings, embedder: Embedder) -> dict[str, Any]:
    """The manifest fields that must match for an index to be usable as is.

    Stored as the manifest's ``settings``; :func:`load_index` refuses a build whose
    fields differ, and a rebuild reuses old vectors only when all of them match.
    """
    return {
        "format": FORMAT_VERSION,
        "embed_model": embedder.model_id,
        "embed_fingerprint": embedder.fingerprint,
        "dim": embedder.dim,
        "query_prompt": embedder.query_prompt,
        "passage_prompt": embedder.passage_prompt,
        "title_context": settings.title_context,
        "chunk_size": settings.chunk_size,
        "chunk_overlap": settings.chunk_overlap,
    }


def _quiet_bm25s() -> None:
    """Undo bm25s' import-time ``setLevel(DEBUG)`` on its logger; its warnings still show.

    Without this, "Building index from tokens" was printed on every ``rag build`` and
    ``rag search``. Done where bm25s is used rather than when this module is imported,
    so importing the index module changes no logging configuration.
    """
    logging.getLogger("bm25s").setLevel(logging.WARNING)


def build_faiss(vectors: Float32Array, ann_threshold: int) -> faiss.Index:
    """Exact inner-product search for small corpora, HNSW from ``ann_threshold`` vectors on."""
    dim = vectors.shape[1] if vectors.ndim == 2 and vectors.size else 1
    index: faiss.Index
    if len(vectors) >= ann_threshold:
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        index.hnsw.efSearch = 128
    else:
        index = faiss.IndexFlatIP(dim)
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def build_bm25(chunks: list[Chunk]) -> bm25s.BM25:
    """BM25 over jieba search-mode tokens of each chunk (title included: headlines are words readers use)."""
    corpus = [search_tokens(f"{c.title}\n{c.text}") or ["∅"] for c in chunks]
    _quiet_bm25s()
    bm25 = bm25s.BM25()
    bm25.index(corpus, show_progress=False)
    return bm25


def _current_build(index_dir: Path) -> Path | None:
    pointer = index_dir / "CURRENT"
    if not pointer.is_file():
        return None
    build = index_dir / "builds" / pointer.read_text().strip()
    return build if (build / "manifest.json").is_file() else None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def _rebuild_command(settings: Settings, docs_dir: Path | str | None = None) -> str:
    """The command that (re)builds this index: the user's own folders, quoted for a shell.

    ``docs_dir`` (the folder a stale build was made from) wins over ``settings.docs_dir``.
    """
    docs = str(docs_dir or settings.docs_dir)
    return f"rag build --docs {shlex.quote(docs)} --index {shlex.quote(str(settings.index_dir))}"


def require_index(settings: Settings) -> Path:
    """The live build's folder; ``IndexError_`` naming the build command when there is none."""
    build = _current_build(settings.index_dir)
    if build is None:
        raise IndexError_(f"{settings.index_dir} 中还没有索引；请先建立索引：{_rebuild_command(settings)}")
    return build


def load_index(settings: Settings, embedder: Embedder) -> SearchIndex:
    """Load the live build, refusing one made with another model or other settings."""
    index_dir = settings.index_dir
    build = require_index(settings)
    manifest = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
    rebuild = _rebuild_command(settings, manifest.get("docs_dir"))
    expected = settings_fingerprint(settings, embedder)
    stale = [k for k, v in expected.items() if manifest.get("settings", {}).get(k) != v]
    if stale:
        raise IndexError_(
            f"{index_dir} 中的索引是用不同的设置（{'、'.join(stale)}）建立的；请重建索引：{rebuild}"
        )
    articles = [Article(**row) for row in _read_jsonl(build / "articles.jsonl")]
    chunks = [Chunk(**row) for row in _read_jsonl(build / "chunks.jsonl")]
    vectors = np.load(build / "vectors.npy")
    _quiet_bm25s()
    return SearchIndex(
        path=build,
        manifest=manifest,
        articles={a.id: a for a in articles},
        chunks=chunks,
        vectors=vectors,
        faiss_index=faiss.read_index(str(build / "faiss.index")),
        bm25=bm25s.BM25.load(str(build / "bm25"), show_progress=False, verbosity=0),
    )


def _previous_vectors(index_dir: Path, expected: dict[str, Any]) -> dict[str, Float32Array]:
    """Vectors of the live build keyed by embedded-text hash, if it was made the same way."""
    build = _current_build(index_dir)
    if build is None:
        return {}
    try:
        manifest = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
        if manifest.get("settings") != expected:
            return {}
        keys = manifest["chunk_keys"]
        vectors = np.load(build / "vectors.npy")
    except (OSError, KeyError, ValueError):
        log.warning("上一次的索引 %s 无法读取；将重新计算全部向量", build)
        return {}
    return dict(zip(keys, vectors, strict=True))


@dataclass
class _BuildContent:
    """Everything a build writes, computed before its folder is created."""

    settings: dict[str, Any]
    """:func:`settings_fingerprint` of the build."""
    files: dict[str, str]
    """Document file name -> sha256 of its bytes (empty when articles were given)."""
    articles: list[Article]
    chunks: list[Chunk]
    keys: list[str]
    """Per chunk, the hash of its embedded text (what a rebuild reuses vectors by)."""
    vectors: Float32Array
    tokens: int
    """Tokens embedded by this build (not counting reused vectors)."""
    skipped: list[SkippedFile]
    """Files of the docs folder left out, with why."""


@dataclass
class _Docs:
    """What reading the docs folder gave: articles, per-file hashes and the files skipped."""

    articles: list[Article]
    files: dict[str, str]
    """Document source -> sha256 of its bytes, for the files indexed."""
    skipped: list[SkippedFile]


def _read_docs(settings: Settings, strict: bool) -> _Docs:
    """The articles of ``settings.docs_dir``, the sha256 of each file read, and the files skipped.

    A file that cannot be read or decoded, or holds no article text, is skipped with its
    reason (a warning is logged for each); ``strict`` raises on the first one instead.
    Files of an unknown type are always only skipped.
    """
    docs_dir = settings.docs_dir
    scan = scan_documents(docs_dir)
    files: dict[str, str] = {}
    articles: list[Article] = []
    skipped = list(scan.skipped)
    for path in scan.paths:
        source = document_source(path, docs_dir)
        try:
            data = read_bytes(path, source)
            found = parse_document(data, source)
        except DocumentError as exc:
            if strict:
                raise
            skipped.append(SkippedFile(source, exc.reason))
            continue
        files[source] = _sha256(data)
        articles.extend(found)
    skipped.sort(key=lambda s: s.source)
    for item in skipped:
        log.warning("跳过 %s：%s", docs_dir / item.source, item.reason)
    if not articles:
        raise IndexError_(no_articles_message(docs_dir, skipped))
    return _Docs(articles, files, skipped)


def build_index(
    settings: Settings,
    embedder: Embedder,
    articles: list[Article] | None = None,
    show_progress: bool = False,
    strict: bool = False,
) -> BuildStats:
    """Build (or incrementally update) the index of ``settings.docs_dir`` into ``settings.index_dir``.

    ``articles`` replaces reading the docs folder (the eval indexes benchmark paragraphs).
    Only passages are embedded: a build never needs (or makes) the question encoder.
    A document that cannot be used is skipped and listed (``BuildStats.skipped``, the
    manifest's ``skipped``); ``strict`` raises ``IngestError`` on the first one instead.
    """
    started = time.perf_counter()
    files: dict[str, str] = {}
    skipped: list[SkippedFile] = []
    if articles is None:
        docs = _read_docs(settings, strict)
        articles, files, skipped = docs.articles, docs.files, docs.skipped
    chunks = chunk_articles(articles, settings.chunk_size, settings.chunk_overlap)
    expected = settings_fingerprint(settings, embedder)

    previous = _previous_vectors(settings.index_dir, expected)
    keys = [_chunk_key(c, settings.title_context) for c in chunks]
    todo = [i for i, k in enumerate(keys) if k not in previous]
    vectors = np.zeros((len(chunks), embedder.dim), dtype=np.float32)
    for i, key in enumerate(keys):
        if key in previous:
            vectors[i] = previous[key]
    texts = [embedding_input(chunks[i], settings.title_context) for i in todo]
    embed_started = time.perf_counter()
    if texts:
        vectors[todo] = embedder.embed_passages(texts, show_progress=show_progress)
    embed_seconds = time.perf_counter() - embed_started
    tokens = embedder.count_tokens(texts) if texts else 0

    content = _BuildContent(expected, files, articles, chunks, keys, vectors, tokens, skipped)
    build = _write_build(settings, content)
    stats = BuildStats(
        documents=len(files) or len({a.source for a in articles}),
        articles=len(articles),
        chunks=len(chunks),
        embedded=len(todo),
        reused=len(chunks) - len(todo),
        tokens=tokens,
        seconds=time.perf_counter() - started,
        embed_seconds=embed_seconds,
        skipped=tuple(skipped),
    )
    log.info("built %s: %s", build, stats)
    return stats


def _write_build(settings: Settings, content: _BuildContent) -> Path:
    """Write a complete build into a fresh folder, then switch ``CURRENT`` to it atomically."""
    index_dir = settings.index_dir
    builds = index_dir / "builds"
    builds.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_temps(index_dir)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    tmp = builds / f".tmp-{stamp}-{os.getpid()}"
    tmp.mkdir()
    chunks = content.chunks
    try:
        _write_jsonl(tmp / "articles.jsonl", [asdict(a) for a in content.articles])
        _write_jsonl(tmp / "chunks.jsonl", [asdict(c) for c in chunks])
        np.save(tmp / "vectors.npy", content.vectors)
        faiss.write_index(build_faiss(content.vectors, settings.ann_threshold), str(tmp / "faiss.index"))
        build_bm25(chunks).save(str(tmp / "bm25"), show_progress=False)
        manifest = {
            "settings": content.settings,
            "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "docs_dir": str(settings.docs_dir),
            "files": content.files,
            "skipped": [asdict(item) for item in content.skipped],
            "counts": {
                "documents": len(content.files),
                "articles": len(content.articles),
                "chunks": len(chunks),
            },
            "tokens_embedded": content.tokens,
            "faiss": "hnsw" if len(chunks) >= settings.ann_threshold else "flat",
            "versions": _versions(),
            "chunk_keys": content.keys,
        }
        (tmp / "manifest.json").write_text(
            json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8"
        )
        final = builds / stamp
        tmp.rename(final)
        pointer_tmp = index_dir / f".CURRENT.{os.getpid()}"
        pointer_tmp.write_text(stamp)
        os.replace(pointer_tmp, index_dir / "CURRENT")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_old_builds(builds, keep=stamp)
    return final


def _remove_old_builds(builds: Path, keep: str) -> None:
    # Keep the previous build too: a server may still be reading it.
    names = sorted(p.name for p in builds.iterdir() if p.is_dir() and not p.name.startswith(".tmp-"))
    for name in names[:-2]:
        if name != keep:
            shutil.rmtree(builds / name, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _remove_abandoned_temps(index_dir: Path) -> None:
    """Delete what a killed build left: ``builds/.tmp-<stamp>-<pid>`` and ``.CURRENT.<pid>``.

    Only when that pid is gone, so a build running beside this one keeps its folder.
    """
    leftovers = [*(index_dir / "builds").glob(".tmp-*"), *index_dir.glob(".CURRENT.*")]
    for path in leftovers:
        pid = path.name.rsplit("-" if path.name.startswith(".tmp-") else ".", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            log.info("removing %s, left by an interrupted build", path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
