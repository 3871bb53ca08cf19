"""The Milvus backend (``RAG_BACKEND=milvus``): one collection per build, dense and BM25 search in it.

The same code talks to milvus-lite (``RAG_MILVUS_URI`` a local ``.db`` path, the default
``./milvus.db`` under the index folder) and to a Milvus server (``http://host:19530``,
optional ``RAG_MILVUS_TOKEN``). A build still writes its files (chunks, articles, FAISS,
bm25s) so the manifest check works the same; it also writes every chunk, its vector and its
text into a fresh collection named after the build's stamp, and the manifest records the
collection and its row count. Loading checks that count.

Hybrid search is two searches here (dense, BM25) fused by :meth:`rag.retrieval.Retriever._rrf`,
not Milvus' ``RRFRanker``: the project's fusion is *weighted* RRF (``dense_weight``,
``bm25_weight``, ``rrf_k``), which the server-side ranker cannot express, and one fusion
for both backends keeps their rankings comparable.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from rag.errors import IndexError_
from rag.models import Chunk
from rag.settings import Settings
from rag.textnorm import STOPWORDS, fold

log = logging.getLogger(__name__)

PREFIX = "rag_"
"""Collections this project owns start with it, then a hash of the index folder (see :func:`owner`)."""
_INSERT_BATCH = 512
# Same graph as FAISS' HNSW (rag.index.build_faiss), so the two ANN paths are comparable.
_HNSW = {"M": 32, "efConstruction": 80}
_EF_SEARCH = 128
_TEXT_MAX = 65_535
# What BM25 indexes: the folded title and text, as rag.index.chunk_tokens; jieba search mode and
# the project's stopwords, as rag.textnorm.search_tokens.
ANALYZER: dict[str, Any] = {
    "tokenizer": {"type": "jieba", "mode": "search"},
    "filter": [{"type": "stop", "stop_words": sorted(STOPWORDS)}],
}


def _pymilvus() -> Any:
    """The ``pymilvus`` module, or one clear line on how to install it."""
    try:
        import pymilvus
    except ImportError:
        raise IndexError_(
            "RAG_BACKEND=milvus 需要 pymilvus 与 milvus-lite；请安装：pip install -e '.[milvus]'"
        ) from None
    return pymilvus


_SERVER_SCHEMES = ("http://", "https://", "tcp://", "unix:")


def is_server(settings: Settings) -> bool:
    """Whether ``RAG_MILVUS_URI`` names a Milvus server (else a milvus-lite file)."""
    return settings.milvus_uri.startswith(_SERVER_SCHEMES)


def resolve_uri(settings: Settings) -> str:
    """``RAG_MILVUS_URI`` as pymilvus takes it: a server URL as is, a relative path under the index folder."""
    uri = settings.milvus_uri
    if is_server(settings):
        return uri
    path = Path(uri).expanduser()
    return str(path if path.is_absolute() else settings.index_dir / path)


def owner(settings: Settings) -> str:
    """The prefix of the collections of this index folder: ``rag_<hash of its absolute path>_``.

    Two index folders served from one Milvus server then never drop each other's collections.
    """
    digest = hashlib.sha256(str(settings.index_dir.resolve()).encode()).hexdigest()[:10]
    return f"{PREFIX}{digest}_"


def collection_name(settings: Settings, stamp: str) -> str:
    """The collection of the build ``stamp`` (Milvus names: letters, digits and ``_``)."""
    return owner(settings) + "".join(c if c.isalnum() else "_" for c in stamp)


def connect(settings: Settings) -> Any:
    """A ``MilvusClient`` for ``settings`` (starts milvus-lite in this process for a ``.db`` path)."""
    pymilvus = _pymilvus()
    uri = resolve_uri(settings)
    if not is_server(settings):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    try:
        return pymilvus.MilvusClient(uri=uri, token=settings.milvus_token or "")
    except pymilvus.MilvusException as exc:
        raise IndexError_(
            f"无法连接 Milvus（{uri}）：{exc.message}；请检查 RAG_MILVUS_URI 与 RAG_MILVUS_TOKEN"
        ) from None


def _schema(client: Any, dim: int) -> Any:
    pymilvus = _pymilvus()
    data_type = pymilvus.DataType
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", data_type.INT64, is_primary=True)  # position in chunks.jsonl
    schema.add_field("chunk_id", data_type.VARCHAR, max_length=512)
    schema.add_field("source", data_type.VARCHAR, max_length=2048)
    schema.add_field("title", data_type.VARCHAR, max_length=_TEXT_MAX)
    schema.add_field("start", data_type.INT64)
    schema.add_field("end", data_type.INT64)
    schema.add_field("text", data_type.VARCHAR, max_length=_TEXT_MAX)
    schema.add_field(
        "lexical", data_type.VARCHAR, max_length=_TEXT_MAX, enable_analyzer=True, analyzer_params=ANALYZER
    )
    schema.add_field("sparse", data_type.SPARSE_FLOAT_VECTOR)
    schema.add_field("vector", data_type.FLOAT_VECTOR, dim=dim)
    schema.add_function(
        pymilvus.Function(
            name="bm25",
            function_type=pymilvus.FunctionType.BM25,
            input_field_names=["lexical"],
            output_field_names=["sparse"],
        )
    )
    return schema


def _rows(chunks: Sequence[Chunk], vectors: npt.NDArray[np.float32]) -> Iterable[dict[str, Any]]:
    for i, (chunk, vector) in enumerate(zip(chunks, vectors, strict=True)):
        yield {
            "id": i,
            "chunk_id": chunk.id,
            "source": chunk.source,
            "title": chunk.title,
            "start": chunk.start,
            "end": chunk.end,
            "text": chunk.text,
            "lexical": fold(f"{chunk.title}\n{chunk.text}") or "∅",
            "vector": vector.tolist(),
        }


def write_collection(
    settings: Settings, name: str, chunks: Sequence[Chunk], vectors: npt.NDArray[np.float32]
) -> int:
    """Create collection ``name`` of ``chunks`` and their ``vectors``, indexed and loaded; its row count."""
    client = connect(settings)
    if client.has_collection(name):  # a build with the same stamp cannot exist; a leftover can
        client.drop_collection(name)
    client.create_collection(name, schema=_schema(client, int(vectors.shape[1])))
    batch: list[dict[str, Any]] = []
    for row in _rows(chunks, vectors):
        batch.append(row)
        if len(batch) == _INSERT_BATCH:
            client.insert(name, batch)
            batch = []
    if batch:
        client.insert(name, batch)
    client.flush(name)
    params = client.prepare_index_params()
    params.add_index(field_name="vector", index_type="HNSW", metric_type="IP", params=_HNSW)
    params.add_index(field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    # A server waits here until the index is built; milvus-lite builds it in the call, and its
    # gRPC adapter lacks AllocTimestamp, which pymilvus' waiting loop calls (logged, then 0.5 s sleeps).
    client.create_index(name, params, sync=is_server(settings))
    client.load_collection(name)
    rows = count_rows(client, name)
    log.info("Milvus collection %s: %d rows", name, rows)
    return rows


def count_rows(client: Any, name: str) -> int:
    """Rows of collection ``name`` as a query sees them (deletes applied)."""
    result = client.query(name, filter="", output_fields=["count(*)"])
    return int(result[0]["count(*)"])


def drop_unused(settings: Settings, keep: set[str]) -> list[str]:
    """Drop this index's collections not in ``keep`` (old builds, a killed build's leftover); their names."""
    client = connect(settings)
    mine = owner(settings)
    dropped = [n for n in client.list_collections() if n.startswith(mine) and n not in keep]
    for name in dropped:
        client.drop_collection(name)
        log.info("dropped Milvus collection %s", name)
    return dropped


class MilvusStore:
    """The collection of one loaded build: dense and BM25 search, returning chunk positions."""

    def __init__(self, client: Any, name: str) -> None:
        self.client = client
        self.name = name

    @classmethod
    def open(cls, settings: Settings, name: str, rows: int) -> MilvusStore:
        """Attach to collection ``name``; ``ValueError`` (one line) if missing or not ``rows`` long."""
        client = connect(settings)
        if not client.has_collection(name):
            raise ValueError(f"Milvus 集合 {name} 不存在（{resolve_uri(settings)}）")
        client.load_collection(name)
        found = count_rows(client, name)
        if found != rows:
            raise ValueError(f"Milvus 集合 {name} 有 {found} 行，清单记录 {rows} 行")
        return cls(client, name)

    def __len__(self) -> int:
        return count_rows(self.client, self.name)

    def _search(
        self, data: list[Any], field: str, depth: int, params: dict[str, Any]
    ) -> tuple[list[int], list[float]]:
        result = self.client.search(
            self.name, data=data, anns_field=field, limit=depth, search_params=params, output_fields=[]
        )
        hits = result[0] if result else []
        return [int(h["id"]) for h in hits], [float(h["distance"]) for h in hits]

    def dense(self, query: npt.NDArray[np.float32], depth: int) -> tuple[list[int], list[float]]:
        """Top ``depth`` chunk positions by inner product (cosine: the vectors are normalized)."""
        return self._search(
            [query.tolist()], "vector", depth, {"metric_type": "IP", "params": {"ef": max(_EF_SEARCH, depth)}}
        )

    def bm25(self, text: str, depth: int) -> tuple[list[int], list[float]]:
        """Top ``depth`` chunk positions by Milvus' BM25 over the analyzed ``text`` (already folded)."""
        ids, scores = self._search([text], "sparse", depth, {"metric_type": "BM25"})
        # milvus-lite returns BM25 negated (best first, most negative); the server, positive.
        # BM25 is never negative, so abs() is the score on both.
        keep = [(i, abs(s)) for i, s in zip(ids, scores, strict=True) if s != 0]
        return [i for i, _ in keep], [s for _, s in keep]

    def sources(self) -> set[str]:
        """The document sources present in the collection (for checks and tests)."""
        rows = self.client.query(self.name, filter="id >= 0", output_fields=["source"])
        return {str(r["source"]) for r in rows}
