"""Build, persist and load the search index: chunks, FAISS vectors and BM25.

Layout of ``index_dir``::

    CURRENT                 name of the live build (replaced atomically)
    builds/<stamp>/         one complete build
        manifest.json       model, prompts, chunking, per-file hashes, skipped files, counts, versions
        articles.jsonl      cleaned articles (for reading a citation in context)
        chunks.jsonl        chunks, in vector order
        tokens.jsonl        per chunk, its jieba tokens (what BM25 indexes; a rebuild reuses them)
        vectors.npy         normalized embeddings, float32 [n, dim] (memory-mapped when loaded)
        faiss.index         FAISS inner-product index over the vectors (flat, HNSW, or HNSW
                            with fp16 storage for big corpora: :func:`build_faiss`)
        bm25/               bm25s index over jieba tokens
    .build.lock             held (``flock``) by the build running now; a second one waits

A build is written completely into a fresh folder and verified (loaded and checked)
before ``CURRENT`` is switched to it, so a build killed midway leaves the previous index
loadable. A rebuild reuses the articles of every file whose bytes are unchanged, the
tokens of every unchanged chunk and the vectors of every unchanged embedded text.

The manifest records each file's size and sha256 and the counts; :func:`load_index`
checks them and that the parts agree (FAISS, vectors, chunks, articles, BM25). A bad
live build is passed over for the newest good one (``SearchIndex.fallback_from`` says
why); with none left, loading fails with one line naming the bad file. Pruning never
deletes the newest good build besides the new one.

Loading holds no second copy of a file: checksums are computed by streaming, JSON lines
are parsed line by line, articles are read from ``articles.jsonl`` when asked for
(:class:`rag.article_store.ArticleStore`), and ``vectors.npy`` and the BM25 arrays are
memory-mapped (file pages the kernel can share and drop, not process memory). The checksum is verified before
a file is mapped, so a damaged file fails at load, never at a later search.

A file that cannot be used (binary, undecodable, empty, of an unknown type) is skipped
and listed with its reason; ``build_index(strict=True)`` stops at the first unreadable one.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import logging
import mmap
import os
import shlex
import shutil
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import bm25s
import faiss
import numpy as np
import numpy.typing as npt

from rag import milvus_store
from rag.article_store import ArticleStore
from rag.chunking import chunk_articles
from rag.embedding import Embedder
from rag.errors import CorruptIndexError, IndexError_, StaleIndexError
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
_T = TypeVar("_T")

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
LOCK_NAME = ".build.lock"
_DATA_FILES = ("articles.jsonl", "chunks.jsonl", "tokens.jsonl", "vectors.npy", "faiss.index")
"""The files of a build besides the manifest and bm25/ (tokens.jsonl: builds from this version on)."""
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
    """A loaded build: everything retrieval needs (vectors and BM25 arrays memory-mapped)."""

    path: Path
    manifest: dict[str, Any]
    articles: ArticleStore
    """Read from ``articles.jsonl`` when asked for: only ids and offsets are held."""
    chunks: list[Chunk]
    vectors: Float32Array
    faiss_index: faiss.Index
    bm25: bm25s.BM25
    fallback_from: str | None = None
    """Set when the live build was bad and this older build was loaded instead: the bad
    file and what is wrong with it (one line, Chinese). ``None`` when the live build loaded."""
    warnings: list[str] = field(default_factory=list)
    """What a readiness check should show besides :func:`verify_loaded`'s problems
    (today: the fallback, when there was one)."""
    store: milvus_store.MilvusStore | None = None
    """The build's Milvus collection (``RAG_BACKEND=milvus``); ``None``: search the files."""

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


def hnsw_ef_search(n: int) -> int:
    """HNSW's search breadth for ``n`` vectors: the smallest measured to keep recall@10 >= 0.95.

    Measured with ``bench/scale_bench.py`` (e5-small vectors of real Chinese text, M=32,
    efConstruction 80): 128 is enough to 100k chunks; at 1M fp32 needs 384 (0.963; 256
    gives 0.95 only with fp16 storage, by luck of the draw), so 384 from 500k on, where
    recall starts to fall below the target at 128. Each step costs well under 1 ms a search.
    """
    if n < 200_000:
        return 128
    if n < 500_000:
        return 256
    return 384


def faiss_kind(n: int, ann_threshold: int, fp16_threshold: int) -> str:
    """Which FAISS index :func:`build_faiss` makes for ``n`` vectors: flat, hnsw or hnsw-fp16."""
    if n < ann_threshold:
        return "flat"
    return "hnsw-fp16" if n >= fp16_threshold else "hnsw"


def build_faiss(vectors: Float32Array, ann_threshold: int, fp16_threshold: int | None = None) -> faiss.Index:
    """Exact inner-product search for small corpora, HNSW from ``ann_threshold`` vectors on.

    From ``fp16_threshold`` vectors on (``None``: never) the HNSW graph stores its vectors
    in fp16 (``HNSW32,SQfp16``): half the memory of fp32 (0.75 GB less at 1M
    e5-small chunks) for a cosine error of ~1e-4, which changes recall@10 by < 0.01. The
    search breadth grows with the corpus (:func:`hnsw_ef_search`) and is saved in the file.
    """
    dim = vectors.shape[1] if vectors.ndim == 2 and vectors.size else 1
    n = len(vectors)
    kind = faiss_kind(n, ann_threshold, fp16_threshold if fp16_threshold is not None else n + 1)
    index: faiss.Index
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    else:
        graph: faiss.IndexHNSW
        if kind == "hnsw-fp16":
            # The stubs type the quantizer kind as a ScalarQuantizer; FAISS takes the enum value.
            fp16: Any = faiss.ScalarQuantizer.QT_fp16
            graph = faiss.IndexHNSWSQ(dim, fp16, 32, faiss.METRIC_INNER_PRODUCT)
            graph.train(np.ascontiguousarray(vectors[:1], dtype=np.float32))  # fp16 needs no statistics
        else:
            graph = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = 80
        graph.hnsw.efSearch = hnsw_ef_search(n)
        index = graph
    if len(vectors):
        index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def chunk_tokens(chunk: Chunk) -> list[str]:
    """What BM25 indexes for a chunk: jieba search-mode tokens of title and text.

    The title is included: headlines are words readers use. Never empty (bm25s needs a token).
    """
    return search_tokens(f"{chunk.title}\n{chunk.text}") or ["∅"]


def build_bm25(tokens: Sequence[Sequence[str]]) -> bm25s.BM25:
    """BM25 over each chunk's tokens (:func:`chunk_tokens`), in chunk order."""
    _quiet_bm25s()
    bm25 = bm25s.BM25()
    bm25.index([list(t) for t in tokens], show_progress=False)
    return bm25


def _token_key(chunk: Chunk) -> str:
    return _sha256(f"{chunk.title}\n{chunk.text}".encode())


@functools.cache
def _code_fingerprint(*modules: str) -> str:
    """sha256 of the source of ``modules`` (and jieba's version): what a reused result depends on.

    A rebuild reuses parsed articles and jieba tokens only when this is unchanged, so a
    new parser or tokenizer never leaves stale articles or tokens behind.
    """
    digest = hashlib.sha256(metadata.version("jieba").encode())
    for name in modules:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin:
            digest.update(Path(spec.origin).read_bytes())
    return digest.hexdigest()


def _parser_fingerprint() -> str:
    # The extractors and the OCR make the page text the ingest cuts into articles.
    return str(_code_fingerprint("rag.ingest", "rag.extract", "rag.ocr", "rag.textnorm", "rag.models"))


def _tokenizer_fingerprint() -> str:
    return str(_code_fingerprint("rag.textnorm"))


class _BadBuild(Exception):
    """A file of a build that is missing, unreadable or disagrees with the rest of the build."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}：{reason}")
        self.path = path
        self.reason = reason

    @property
    def line(self) -> str:
        return f"{self.path}：{self.reason}"


def _live_pointer(index_dir: Path) -> tuple[Path | None, _BadBuild | None]:
    """The build ``CURRENT`` names, or why it names none usable (garbage, a missing build).

    ``(None, None)`` when there is no ``CURRENT`` at all.
    """
    pointer = index_dir / "CURRENT"
    if not pointer.exists():
        return None, None
    try:
        name = pointer.read_bytes().decode("utf-8").strip()
    except OSError as exc:
        return None, _BadBuild(pointer, f"无法读取（{exc.strerror}）")
    except UnicodeDecodeError:
        return None, _BadBuild(pointer, "不是文本（应为一个索引文件夹的名字）")
    if not name or not name.isprintable() or "/" in name or "\\" in name or name.startswith("."):
        return None, _BadBuild(pointer, "内容无效（应为 builds/ 中一个索引文件夹的名字）")
    build = index_dir / "builds" / name
    if not (build / "manifest.json").is_file():
        return None, _BadBuild(pointer, f"指向的索引 builds/{name} 不存在或不完整")
    return build, None


def _builds_newest_first(index_dir: Path) -> list[Path]:
    builds = index_dir / "builds"
    if not builds.is_dir():
        return []
    return sorted(
        (p for p in builds.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
        reverse=True,
    )


def _candidates(index_dir: Path) -> tuple[list[Path], _BadBuild | None]:
    """Builds to try, best first: the live one, then the others newest first; and CURRENT's problem."""
    live, problem = _live_pointer(index_dir)
    if live is None and problem is None and _builds_newest_first(index_dir):
        problem = _BadBuild(index_dir / "CURRENT", "缺失")
    others = [b for b in _builds_newest_first(index_dir) if b != live]
    return ([live] if live else []) + others, problem


def _current_build(index_dir: Path) -> Path | None:
    """The live build, else the newest build folder with a manifest (None: no build at all)."""
    candidates, _problem = _candidates(index_dir)
    return next((b for b in candidates if (b / "manifest.json").is_file()), None)


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
    """The live build's folder (else the newest build's); ``IndexError_`` with the build command if none.

    Cheap (no file is verified): lets a command fail before its slow model load.
    """
    build = _current_build(settings.index_dir)
    if build is None:
        raise IndexError_(f"{settings.index_dir} 中还没有索引；请先建立索引：{_rebuild_command(settings)}")
    return build


_HASH_BLOCK = 1 << 20


def _file_digest(path: Path) -> tuple[int, str]:
    """Size and sha256 of a file, read in 1 MiB blocks (a 1.5 GB vectors.npy is never held whole)."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            size += len(block)
            digest.update(block)
    return size, digest.hexdigest()


def _file_record(path: Path) -> dict[str, Any]:
    size, sha256 = _file_digest(path)
    return {"size": size, "sha256": sha256}


def _build_files(build: Path) -> list[Path]:
    """The files of a build whose size and sha256 the manifest records."""
    bm25_dir = build / "bm25"
    bm25_files = sorted(p for p in bm25_dir.iterdir() if p.is_file()) if bm25_dir.is_dir() else []
    return [*(build / name for name in _DATA_FILES if (build / name).is_file()), *bm25_files]


def _read_manifest(build: Path) -> dict[str, Any]:
    path = build / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _BadBuild(path, "缺失") from None
    except OSError as exc:
        raise _BadBuild(path, f"无法读取（{exc.strerror}）") from None
    except ValueError:  # JSON and UTF-8 errors both
        raise _BadBuild(path, "不是有效的 JSON（被截断或损坏）") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("settings"), dict):
        raise _BadBuild(path, "内容不完整（缺少 settings）")
    return manifest


def _verify_files(build: Path, manifest: dict[str, Any]) -> None:
    """Check every file the manifest records against its size and sha256 (streamed, nothing kept).

    The size is compared before hashing, so a truncated file costs no read. A build made
    before sizes were recorded (no ``integrity``) is only checked for agreement.
    """
    records = manifest.get("integrity", {}).get("files")
    if not isinstance(records, dict):
        return
    for name, record in records.items():
        path = build / name
        try:
            size = path.stat().st_size
            if size != record.get("size"):
                raise _BadBuild(path, f"大小不符（应为 {record.get('size')} 字节，实为 {size} 字节）")
            size, sha256 = _file_digest(path)
        except FileNotFoundError:
            raise _BadBuild(path, "缺失") from None
        except OSError as exc:
            raise _BadBuild(path, f"无法读取（{exc.strerror}）") from None
        if size != record.get("size") or sha256 != record.get("sha256"):
            raise _BadBuild(path, "内容与建立时记录的校验和不符")


def _parse(path: Path, what: str, parse: Callable[[Path], _T]) -> _T:
    """``parse(path)`` of a build file (verified already, or not recorded); ``_BadBuild`` if it fails."""
    try:
        return parse(path)
    except FileNotFoundError:
        raise _BadBuild(path, "缺失") from None
    except Exception as exc:  # noqa: BLE001 -- whatever a damaged file makes a parser raise
        raise _BadBuild(path, f"无法读取为{what}（{type(exc).__name__}）") from None


def _jsonl(path: Path) -> list[Any]:
    """The rows of a JSON-lines file, read line by line (never the whole file as one string)."""
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _jsonl_objects(make: Callable[..., _T]) -> Callable[[Path], list[_T]]:
    """A parser of a JSON-lines file into ``make(**row)`` per line, no list of dicts in between.

    Strings repeated from row to row (a chunk's source, article id and title) are shared,
    not kept once per chunk: at 1M chunks that is ~0.2 GB less.
    """

    def parse(path: Path) -> list[_T]:
        shared: dict[str, str] = {}
        out: list[_T] = []
        with path.open(encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    for key in ("source", "article_id", "title"):
                        value = row.get(key)
                        if isinstance(value, str):
                            row[key] = shared.setdefault(value, value)
                    out.append(make(**row))
        return out

    return parse


def _load_vectors(path: Path) -> Float32Array:
    """``vectors.npy`` memory-mapped read-only (its pages stay the kernel's file cache).

    Rows are read one at a time (a hit's dense score), far apart: without ``MADV_RANDOM``
    each read faults in the kernel's readahead window (~128 KiB for a 1.5 KiB row), and
    200 searches of a 1M-chunk index mapped ~1.5 GB of it.
    """
    vectors: Float32Array = np.load(path, mmap_mode="r", allow_pickle=False)
    mapped = getattr(vectors, "_mmap", None)
    if mapped is not None and hasattr(mmap, "MADV_RANDOM"):
        mapped.madvise(mmap.MADV_RANDOM)
    return vectors


def _open_build(build: Path, manifest: dict[str, Any], dim: int) -> SearchIndex:
    """Load one build, checking its files and that its parts agree; ``_BadBuild`` names the first bad one."""
    _verify_files(build, manifest)
    articles = _parse(build / "articles.jsonl", "文章", ArticleStore)
    chunks = _parse(build / "chunks.jsonl", "段落", _jsonl_objects(Chunk))
    vectors = _parse(build / "vectors.npy", "向量", _load_vectors)
    faiss_index = _parse(build / "faiss.index", " FAISS 索引", lambda p: faiss.read_index(str(p)))
    _quiet_bm25s()
    bm25_dir = build / "bm25"
    if not bm25_dir.is_dir():
        raise _BadBuild(bm25_dir, "缺失")
    try:
        # Memory-mapped: the score matrix (the bulk of BM25) is read from the page cache.
        bm25 = bm25s.BM25.load(str(bm25_dir), mmap=True, show_progress=False, verbosity=0)
    except Exception as exc:  # noqa: BLE001 -- a damaged bm25s file raises anything
        raise _BadBuild(bm25_dir, f"无法读取为 BM25 索引（{type(exc).__name__}）") from None
    # The per-chunk hashes (two 64-character strings a chunk, ~0.25 GB at 1M chunks) serve
    # only a rebuild, which reads them from the file again: a loaded index does not keep them.
    kept = {k: v for k, v in manifest.items() if k not in ("chunk_keys", "token_keys")}
    index = SearchIndex(
        path=build,
        manifest=kept,
        articles=articles,
        chunks=chunks,
        vectors=vectors,
        faiss_index=faiss_index,
        bm25=bm25,
    )
    problems = _disagreements(index, dim)
    if problems:
        raise _BadBuild(*problems[0])
    return index


def _disagreements(index: SearchIndex, dim: int | None) -> list[tuple[Path, str]]:
    """Where the parts of a loaded build disagree: (the file at fault, what is wrong)."""
    build, n = index.path, len(index.chunks)
    out: list[tuple[Path, str]] = []
    counts = index.manifest.get("counts", {})
    if counts.get("chunks", n) != n:
        out.append((build / "chunks.jsonl", f"有 {n} 段，清单记录 {counts.get('chunks')} 段"))
    if counts.get("articles", len(index.articles)) != len(index.articles):
        out.append(
            (
                build / "articles.jsonl",
                f"有 {len(index.articles)} 篇文章，清单记录 {counts.get('articles')} 篇",
            )
        )
    vectors = index.vectors
    if not isinstance(vectors, np.ndarray) or vectors.ndim != 2 or vectors.dtype != np.float32:
        out.append((build / "vectors.npy", "不是 float32 的二维数组"))
    else:
        if vectors.shape[0] != n:
            out.append((build / "vectors.npy", f"有 {vectors.shape[0]} 行，应为 {n} 行（每段一行）"))
        if dim is not None and vectors.shape[1] != dim:
            out.append((build / "vectors.npy", f"向量维数 {vectors.shape[1]}，嵌入模型为 {dim}"))
    if index.faiss_index.ntotal != n:
        out.append((build / "faiss.index", f"有 {index.faiss_index.ntotal} 个向量，应为 {n} 个"))
    if dim is not None and index.faiss_index.d != dim:
        out.append((build / "faiss.index", f"向量维数 {index.faiss_index.d}，嵌入模型为 {dim}"))
    missing = next((c for c in index.chunks if c.article_id not in index.articles), None)
    if missing is not None:
        out.append((build / "articles.jsonl", f"缺少段落 {missing.id} 所属的文章"))
    scores = getattr(index.bm25, "scores", None)
    bm25_docs = scores.get("num_docs") if isinstance(scores, dict) else None
    if bm25_docs != n:
        out.append((build / "bm25", f"有 {bm25_docs} 个文档，应为 {n} 个"))
    return out


def verify_loaded(index: SearchIndex) -> list[str]:
    """Problems of a loaded index, one Chinese line each; an empty list means it agrees with itself.

    For a readiness check: FAISS holds one vector per chunk, the vectors have one row per
    chunk and the dimension the manifest records, every chunk's article is there, and BM25
    indexes one document per chunk. :func:`load_index` already refuses a build where any of
    this fails, so a problem here means the index was changed after loading. A fallback to
    an older build is not a problem: it is in ``index.fallback_from`` / ``index.warnings``.
    """
    dim = index.manifest.get("settings", {}).get("dim")
    return [
        f"{path}：{reason}" for path, reason in _disagreements(index, dim if isinstance(dim, int) else None)
    ]


def load_index(settings: Settings, embedder: Embedder) -> SearchIndex:
    """Load and verify the live build; on a bad one, the newest good older build (with a warning).

    Refuses (``StaleIndexError``) a live build made with another model or other settings.
    Every file is checked against the size and sha256 its manifest records, and the parts
    against each other (:func:`verify_loaded`'s checks). A bad live build is passed over for
    the newest good build made the same way; ``SearchIndex.fallback_from`` then names the bad
    file. With no good build, ``CorruptIndexError`` (an ``IndexError_``): one line naming the
    bad file and the rebuild command.
    """
    index_dir = settings.index_dir
    require_index(settings)
    expected = settings_fingerprint(settings, embedder)
    candidates, first_bad = _candidates(index_dir)
    docs_dir: str | None = None
    passed_over: list[str] = []
    for position, build in enumerate(candidates):
        try:
            manifest = _read_manifest(build)
            docs_dir = docs_dir or manifest.get("docs_dir")
            stale = [k for k, v in expected.items() if manifest["settings"].get(k) != v]
            if stale and position == 0:
                rebuild = _rebuild_command(settings, manifest.get("docs_dir"))
                raise StaleIndexError(
                    f"{index_dir} 中的索引是用不同的设置（{'、'.join(stale)}）建立的；请重建索引：{rebuild}"
                )
            if stale:
                log.info("跳过用不同设置建立的索引 %s", build)
                continue
            index = _open_build(build, manifest, embedder.dim)
            if settings.backend == "milvus":
                index.store = _open_store(settings, build, manifest)
        except _BadBuild as bad:
            # Logged only if an older build is served: else the error says it, once.
            passed_over.append(bad.line)
            first_bad = first_bad or bad
            continue
        for line in passed_over:
            log.warning("索引文件损坏：%s", line)
        if first_bad is not None:
            index.fallback_from = first_bad.line
            index.warnings.append(f"当前索引损坏（{first_bad.line}），已改用较早的索引 {build.name}")
            log.warning("%s；请重建索引：%s", index.warnings[-1], _rebuild_command(settings, docs_dir))
        return index
    assert first_bad is not None  # require_index found a build, and none loaded
    raise CorruptIndexError(
        f"索引文件 {first_bad.line}，且没有可用的较早索引；请重建索引：{_rebuild_command(settings, docs_dir)}"
    )


def _open_store(settings: Settings, build: Path, manifest: dict[str, Any]) -> milvus_store.MilvusStore:
    """The Milvus collection the manifest names, its row count checked; ``_BadBuild`` if it is not usable."""
    record = manifest.get("milvus")
    if not isinstance(record, dict) or not isinstance(record.get("rows"), int):
        raise _BadBuild(
            build / "manifest.json",
            "建立时没有写入 Milvus（当时 RAG_BACKEND=faiss）；请用 RAG_BACKEND=milvus 重建",
        )
    try:
        return milvus_store.MilvusStore.open(settings, str(record.get("collection")), record["rows"])
    except ValueError as exc:
        raise _BadBuild(build / "manifest.json", str(exc)) from None


@dataclass
class _Previous:
    """What a rebuild reuses from the newest good build made the same way."""

    vectors: dict[str, Float32Array]
    """Embedded-text hash -> vector."""
    tokens: dict[str, list[str]]
    """Title-and-text hash -> jieba tokens (empty when the tokenizer changed)."""
    articles: dict[str, tuple[str, list[Article]]]
    """Document source -> (sha256 of its bytes, its articles) (empty when the parser changed)."""


def _previous_build(index_dir: Path, expected: dict[str, Any]) -> _Previous | None:
    """The reusable parts of the newest good build made with ``expected`` settings (live first)."""
    candidates, problem = _candidates(index_dir)
    if problem is not None:
        log.warning("%s；将沿用最新的完好索引", problem.line)
    for build in candidates:
        try:
            manifest = _read_manifest(build)
            if manifest["settings"] != expected:
                return None  # settings changed: nothing is reusable, whatever older builds hold
            _verify_files(build, manifest)
            vectors = _parse(build / "vectors.npy", "向量", _load_vectors)
            keys = manifest.get("chunk_keys", [])
            if len(keys) != len(vectors):
                raise _BadBuild(build / "vectors.npy", "行数与清单不符")
            previous = _Previous(dict(zip(keys, vectors, strict=True)), {}, {})
            reuse = manifest.get("reuse", {})
            if reuse.get("tokenizer") == _tokenizer_fingerprint() and (build / "tokens.jsonl").is_file():
                tokens = _parse(build / "tokens.jsonl", "词", _jsonl)
                previous.tokens = dict(zip(manifest["token_keys"], tokens, strict=True))
            if reuse.get("parser") == _parser_fingerprint():
                rows = _parse(build / "articles.jsonl", "文章", _jsonl)
                by_source: dict[str, list[Article]] = {}
                for row in rows:
                    by_source.setdefault(row["source"], []).append(Article(**row))
                previous.articles = {
                    src: (sha, by_source[src])
                    for src, sha in manifest.get("files", {}).items()
                    if src in by_source
                }
        except _BadBuild as bad:
            log.warning("上一次的索引无法沿用（%s）；试更早的索引", bad.line)
            continue
        except (KeyError, TypeError, ValueError):
            log.warning("上一次的索引 %s 的清单不完整；试更早的索引", build)
            continue
        return previous
    return None


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
    token_keys: list[str]
    """Per chunk, the hash of its title and text (what a rebuild reuses tokens by)."""
    chunk_tokens: list[list[str]]
    """Per chunk, what BM25 indexes (:func:`chunk_tokens`)."""
    vectors: Float32Array
    tokens: int
    """Tokens embedded by this build (not counting reused vectors)."""
    skipped: list[SkippedFile]
    """Files of the docs folder left out, with why."""
    precision: str
    """What this build's new vectors were computed in (:attr:`Embedder.passage_precision`)."""


@dataclass
class _Docs:
    """What reading the docs folder gave: articles, per-file hashes and the files skipped."""

    articles: list[Article]
    files: dict[str, str]
    """Document source -> sha256 of its bytes, for the files indexed."""
    skipped: list[SkippedFile]


def _read_docs(
    settings: Settings,
    strict: bool,
    only: Collection[str] | None = None,
    previous: dict[str, tuple[str, list[Article]]] | None = None,
) -> _Docs:
    """The articles of ``settings.docs_dir``, the sha256 of each file read, and the files skipped.

    A file that cannot be read or decoded, or holds no article text, is skipped with its
    reason (a warning is logged for each); ``strict`` raises on the first one instead.
    Files of an unknown type are always only skipped. With ``only``, files whose source is
    not in it are ignored altogether (neither read nor listed as skipped). A file whose
    bytes hash as in ``previous`` (source -> (sha256, articles)) is not parsed again.
    """
    docs_dir = settings.docs_dir
    scan = scan_documents(docs_dir)
    files: dict[str, str] = {}
    articles: list[Article] = []
    wanted = None if only is None else set(only)
    skipped = [s for s in scan.skipped if wanted is None or s.source in wanted]
    for path in scan.paths:
        source = document_source(path, docs_dir)
        if wanted is not None and source not in wanted:
            continue
        try:
            data = read_bytes(path, source)
            digest = _sha256(data)
            known = (previous or {}).get(source)
            found = known[1] if known and known[0] == digest else parse_document(data, source)
        except DocumentError as exc:
            if strict:
                raise
            skipped.append(SkippedFile(source, exc.reason))
            continue
        files[source] = digest
        articles.extend(found)
    skipped.sort(key=lambda s: s.source)
    for item in skipped:
        log.warning("跳过 %s：%s", docs_dir / item.source, item.reason)
    if not articles:
        raise IndexError_(no_articles_message(docs_dir, skipped))
    return _Docs(articles, files, skipped)


def build_index(  # noqa: PLR0913  (the options after `embedder` all have defaults)
    settings: Settings,
    embedder: Embedder,
    articles: list[Article] | None = None,
    show_progress: bool = False,
    strict: bool = False,
    only: Collection[str] | None = None,
) -> BuildStats:
    """Build (or incrementally update) the index of ``settings.docs_dir`` into ``settings.index_dir``.

    ``articles`` replaces reading the docs folder (the eval indexes benchmark paragraphs).
    Only passages are embedded: a build never needs (or makes) the question encoder.
    A document that cannot be used is skipped and listed (``BuildStats.skipped``, the
    manifest's ``skipped``); ``strict`` raises ``IngestError`` on the first one instead.
    ``only`` (sources, i.e. paths relative to the docs folder as :func:`document_source`
    names them) restricts the build to those files of the docs folder: the others are
    neither indexed nor listed as skipped. A source in ``only`` that is not in the folder
    is ignored.
    """
    with build_lock(settings.index_dir):
        return _build_locked(settings, embedder, articles, (show_progress, strict, only))


@contextlib.contextmanager
def build_lock(index_dir: Path) -> Iterator[None]:
    """Hold ``index_dir/.build.lock`` exclusively (``flock``): one build of an index at a time.

    A second build waits for the first (saying so) and then reuses its vectors, so two
    ``rag build`` runs at once embed everything only once. The lock goes with the process,
    so a killed build never leaves it held.
    """
    index_dir.mkdir(parents=True, exist_ok=True)
    with (index_dir / LOCK_NAME).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning("另一个进程正在建立 %s 中的索引；等它完成后再继续……", index_dir)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _build_locked(
    settings: Settings,
    embedder: Embedder,
    articles: list[Article] | None,
    options: tuple[bool, bool, Collection[str] | None],
) -> BuildStats:
    """:func:`build_index`'s work, under the build lock; ``options``: show_progress, strict, only."""
    show_progress, strict, only = options
    started = time.perf_counter()
    expected = settings_fingerprint(settings, embedder)
    previous = _previous_build(settings.index_dir, expected) or _Previous({}, {}, {})
    files: dict[str, str] = {}
    skipped: list[SkippedFile] = []
    if articles is None:
        docs = _read_docs(settings, strict, only, previous.articles)
        articles, files, skipped = docs.articles, docs.files, docs.skipped
    chunks = chunk_articles(articles, settings.chunk_size, settings.chunk_overlap)

    keys = [_chunk_key(c, settings.title_context) for c in chunks]
    todo = [i for i, k in enumerate(keys) if k not in previous.vectors]
    vectors = np.zeros((len(chunks), embedder.dim), dtype=np.float32)
    for i, key in enumerate(keys):
        if key in previous.vectors:
            vectors[i] = previous.vectors[key]
    texts = [embedding_input(chunks[i], settings.title_context) for i in todo]
    embed_started = time.perf_counter()
    if texts:
        vectors[todo] = embedder.embed_passages(texts, show_progress=show_progress)
    embed_seconds = time.perf_counter() - embed_started
    tokens = embedder.count_tokens(texts) if texts else 0
    token_keys = [_token_key(c) for c in chunks]
    words = [previous.tokens.get(k) or chunk_tokens(c) for k, c in zip(token_keys, chunks, strict=True)]

    # Reused vectors may come from a build of the other precision: at cosine >= 0.99999
    # to each other, mixing them changes no ranking, so precision is not in `expected`.
    precision = embedder.passage_precision if texts else "none"
    content = _BuildContent(
        expected, files, articles, chunks, keys, token_keys, words, vectors, tokens, skipped, precision
    )
    build = _write_build(settings, content, embedder.dim)
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


def _write_build(settings: Settings, content: _BuildContent, dim: int) -> Path:
    """Write a complete build into a fresh folder, verify it, then switch ``CURRENT`` to it atomically."""
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
        with (tmp / "tokens.jsonl").open("w", encoding="utf-8") as f:
            f.writelines(json.dumps(t, ensure_ascii=False) + "\n" for t in content.chunk_tokens)
        np.save(tmp / "vectors.npy", content.vectors)
        kind = faiss_kind(len(chunks), settings.ann_threshold, settings.faiss_fp16_threshold)
        faiss_index = build_faiss(content.vectors, settings.ann_threshold, settings.faiss_fp16_threshold)
        faiss.write_index(faiss_index, str(tmp / "faiss.index"))
        del faiss_index  # the graph of a big corpus is GBs: not kept through BM25 and the read-back
        build_bm25(content.chunk_tokens).save(str(tmp / "bm25"), show_progress=False)
        manifest: dict[str, Any] = {
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
            "embed_precision": content.precision,
            "faiss": kind,
            "versions": _versions(),
            "reuse": {"parser": _parser_fingerprint(), "tokenizer": _tokenizer_fingerprint()},
            "integrity": {
                "files": {p.relative_to(tmp).as_posix(): _file_record(p) for p in _build_files(tmp)},
                "dim": dim,
            },
            "chunk_keys": content.keys,
            "token_keys": content.token_keys,
        }
        if settings.backend == "milvus":
            # A new collection per build: the served one is untouched until CURRENT switches.
            name = milvus_store.collection_name(settings, stamp)
            rows = milvus_store.write_collection(settings, name, chunks, content.vectors)
            manifest["milvus"] = {"collection": name, "rows": rows, "uri": milvus_store.resolve_uri(settings)}
        (tmp / "manifest.json").write_text(
            json.dumps(manifest, ensure_ascii=False, indent=1), encoding="utf-8"
        )
        try:  # read back exactly as load_index will, before anything points at it
            read_back = _read_manifest(tmp)
            _open_build(tmp, read_back, dim)
            if settings.backend == "milvus":
                _open_store(settings, tmp, read_back)
        except _BadBuild as bad:
            raise IndexError_(f"新建立的索引未通过校验（{bad.line}）；请检查磁盘后重试") from None
        final = builds / stamp
        tmp.rename(final)
        pointer_tmp = index_dir / f".CURRENT.{os.getpid()}"
        pointer_tmp.write_text(stamp)
        os.replace(pointer_tmp, index_dir / "CURRENT")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _remove_old_builds(builds, keep=stamp)
    if settings.backend == "milvus":
        _drop_unused_collections(settings, builds)
    return final


def _drop_unused_collections(settings: Settings, builds: Path) -> None:
    """Drop the Milvus collections no remaining build names (old builds, a killed build's leftover).

    Run after ``CURRENT`` switched, so the collection being served until then was never
    missing; the one kept build before the new one keeps its collection for the fallback.
    """
    keep: set[str] = set()
    for build in builds.iterdir():
        with contextlib.suppress(_BadBuild):
            record = _read_manifest(build).get("milvus") if build.is_dir() else None
            if isinstance(record, dict):
                keep.add(str(record.get("collection")))
    milvus_store.drop_unused(settings, keep)


def _is_good(build: Path) -> bool:
    """Whether a build's manifest reads and its files match the sizes and checksums it records."""
    try:
        _verify_files(build, _read_manifest(build))
    except _BadBuild:
        return False
    return True


def _remove_old_builds(builds: Path, keep: str) -> None:
    """Delete old builds, keeping ``keep`` (the new one) and the newest good build before it.

    The one before stays because a server may still be reading it and because it is what
    loading falls back to if the new build is damaged later; a damaged build is never what
    is kept in its place.
    """
    names = sorted(
        (p.name for p in builds.iterdir() if p.is_dir() and not p.name.startswith(".")), reverse=True
    )
    older = [name for name in names if name != keep]
    good = next((name for name in older if _is_good(builds / name)), None)
    for name in older:
        if name != good:
            shutil.rmtree(builds / name, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a leftover named after a live pid is still in use)."""
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
        if pid.isdigit() and not pid_alive(int(pid)):
            log.info("removing %s, left by an interrupted build", path)
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
