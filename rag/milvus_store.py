"""The Milvus backend (``RAG_BACKEND=milvus``): one collection per build, dense and BM25 search in it.

The same code talks to milvus-lite (``RAG_MILVUS_URI`` a local ``.db`` path, the default
``./milvus.db`` under the index folder) and to a Milvus server (``http://host:19530``,
optional ``RAG_MILVUS_TOKEN``). A build still writes its files (chunks, articles, FAISS,
bm25s) so the manifest check works the same; it also writes every chunk, its vector and its
text into a fresh collection named after the build's stamp, and the manifest records the
collection and its row count. Loading checks that count.

An outage (the server unreachable, a milvus-lite file another process holds, the collection
dropped behind the service's back) is a :class:`~rag.errors.StoreUnavailableError`: one line
naming the URI and the fix, exit 2 from the CLI, a 503 from the API; every call has a short
timeout, so a server that stops answering fails the request instead of hanging it.
:func:`problems` is the readiness check of ``GET /readyz``.

Hybrid search is two searches here (dense, BM25) fused by :meth:`rag.retrieval.Retriever._rrf`,
not Milvus' ``RRFRanker``: the project's fusion is *weighted* RRF (``dense_weight``,
``bm25_weight``, ``rrf_k``), which the server-side ranker cannot express, and one fusion
for both backends keeps their rankings comparable.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from rag.errors import IndexError_, StoreUnavailableError
from rag.models import Chunk
from rag.settings import Settings
from rag.textnorm import STOPWORDS, fold

log = logging.getLogger(__name__)
_T = TypeVar("_T")

PREFIX = "rag_"
"""Collections this project owns start with it, then a hash of the index folder (see :func:`owner`)."""
_INSERT_BATCH = 512
# Same graph as FAISS' HNSW (rag.index.build_faiss), so the two ANN paths are comparable.
_HNSW = {"M": 32, "efConstruction": 80}
_EF_SEARCH = 128
CONNECT_TIMEOUT_S = 5.0
"""Seconds connecting may take: a server address that drops packets fails ``rag serve`` fast."""
CALL_TIMEOUT_S = 10.0
"""Seconds one search, count or existence check may take, pymilvus' retries included (without it,
pymilvus retries an unavailable server 75 times with back-off: minutes on one request)."""
LOAD_TIMEOUT_S = 300.0
"""Seconds loading a collection into the server's memory may take (once, when an index is loaded)."""
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
    # pymilvus logs every failed call with a traceback on its own handler (it does not propagate):
    # during an outage that is one traceback per request. Each failure reaches the caller as an
    # exception (an outage as one StoreUnavailableError line), so its own log only repeats it.
    logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
    return pymilvus


class _DropLockTraceback(logging.Filter):
    """Drops milvus-lite's traceback for a data folder another process holds: :func:`connect` says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        kind = record.exc_info[0] if record.exc_info else None
        return not (kind is not None and kind.__name__ == "DataDirLockedError")


logging.getLogger("milvus_lite.server_manager").addFilter(_DropLockTraceback())


def _locked_elsewhere(data_dir: str) -> bool:
    """Whether another process holds milvus-lite's ``LOCK`` of ``data_dir`` (an open ``rag serve``)."""
    lock = Path(data_dir) / "LOCK"
    if not lock.is_file():
        return False
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _reason(exc: BaseException) -> str:
    """What pymilvus or gRPC says went wrong, on one line."""
    details = getattr(exc, "details", None)
    text = details() if callable(details) else getattr(exc, "message", "") or str(exc)
    return " ".join(str(text).split()) or type(exc).__name__


def _outage(exc: BaseException) -> bool:
    """Whether ``exc`` says the store cannot be reached (not a bug, not a bad request)."""
    import grpc  # a dependency of pymilvus

    pymilvus = _pymilvus()
    exceptions = pymilvus.exceptions
    if isinstance(exc, grpc.RpcError):
        return True  # UNAVAILABLE, DEADLINE_EXCEEDED, UNAUTHENTICATED (a wrong token), ...
    if not isinstance(exc, pymilvus.MilvusException):
        return False
    connection = (
        exceptions.ConnectError,
        exceptions.MilvusUnavailableException,
        exceptions.ConnectionNotExistException,
        exceptions.ConnectionConfigException,
    )
    # code 2: "Fail connecting to server"; a grpc.StatusCode: retries ran out on a gRPC error.
    return isinstance(exc, connection) or exc.code == 2 or isinstance(exc.code, grpc.StatusCode)


def _gone(exc: BaseException) -> bool:
    """Whether ``exc`` says the collection does not exist (dropped behind the service's back)."""
    pymilvus = _pymilvus()
    if isinstance(exc, pymilvus.exceptions.CollectionNotExistException):
        return True
    return (
        isinstance(exc, pymilvus.MilvusException)
        and exc.code == pymilvus.exceptions.ErrorCode.COLLECTION_NOT_FOUND
    )


_NOT_LOADED = 101
"""Milvus' code for "collection not loaded" (pymilvus names no constant for it)."""


def _released(exc: BaseException) -> bool:
    """Whether ``exc`` says the collection exists but is not loaded (its server restarted)."""
    pymilvus = _pymilvus()
    return isinstance(exc, pymilvus.MilvusException) and (
        exc.code == _NOT_LOADED or "released" in str(getattr(exc, "message", ""))
    )


def unavailable_line(uri: str, exc: BaseException, server: bool, connecting: bool = False) -> str:
    """The one line of an outage of ``uri``: what failed and what to do.

    ``connecting``: the failure was opening the store, when a milvus-lite folder may be locked
    by another process (later, this process holds the lock itself, so it is not looked at).
    """
    if server:
        return (
            f"无法连接 Milvus 服务器 {uri}（{_reason(exc)}）；"
            "请确认 Milvus 已启动且可以访问，或改正 RAG_MILVUS_URI / RAG_MILVUS_TOKEN，然后重试"
        )
    if connecting and _locked_elsewhere(uri):
        return (
            f"milvus-lite 数据 {uri} 正被另一个进程占用（milvus-lite 同一时间只许一个进程打开）；"
            "请先停止另一个使用它的 rag 进程（rag serve 或 rag build），"
            "或改用 Milvus 服务器：RAG_MILVUS_URI=http://主机:19530"
        )
    return f"无法打开 milvus-lite 数据 {uri}（{_reason(exc)}）；请检查该路径可以读写，或改正 RAG_MILVUS_URI"


@contextlib.contextmanager
def _reachable(
    uri: str, server: bool, collection: str | None = None, *, connecting: bool = False
) -> Iterator[None]:
    """Turn pymilvus' outage errors inside the block into one-line ``StoreUnavailableError`` s.

    ``collection``: the block uses it, so "collection not found" is said as such. Any other
    error (a bad request: a bug here) keeps its traceback.
    """
    try:
        yield
    except Exception as exc:
        if collection is not None and _gone(exc):
            raise StoreUnavailableError(
                f"Milvus 集合 {collection} 已不存在（{uri}，被删除了）；请重建索引：rag build"
            ) from None
        if _outage(exc):
            raise StoreUnavailableError(unavailable_line(uri, exc, server, connecting)) from None
        raise


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
    """A ``MilvusClient`` for ``settings`` (starts milvus-lite in this process for a ``.db`` path).

    ``StoreUnavailableError`` (one line naming the URI and the fix) when the server cannot be
    reached within :data:`CONNECT_TIMEOUT_S` or another process holds the milvus-lite file.
    """
    pymilvus = _pymilvus()
    uri = resolve_uri(settings)
    server = is_server(settings)
    if not server:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    with _reachable(uri, server, connecting=True):
        return pymilvus.MilvusClient(uri=uri, token=settings.milvus_token or "", timeout=CONNECT_TIMEOUT_S)


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
    # No timeout on the build's own calls (a large insert or index build may take long); a
    # server going away still fails them at once (connection refused), as one line.
    with _reachable(resolve_uri(settings), is_server(settings)):
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
    result = client.query(name, filter="", output_fields=["count(*)"], timeout=CALL_TIMEOUT_S)
    return int(result[0]["count(*)"])


def drop_unused(settings: Settings, keep: set[str]) -> list[str]:
    """Drop this index's collections not in ``keep`` (old builds, a killed build's leftover); their names."""
    client = connect(settings)
    mine = owner(settings)
    with _reachable(resolve_uri(settings), is_server(settings)):
        dropped = [n for n in client.list_collections() if n.startswith(mine) and n not in keep]
        for name in dropped:
            client.drop_collection(name)
            log.info("dropped Milvus collection %s", name)
    return dropped


class MilvusStore:
    """The collection of one loaded build: dense and BM25 search, returning chunk positions.

    Every call turns an outage into ``StoreUnavailableError`` (the API's 503), see :func:`_reachable`.
    """

    def __init__(self, client: Any, name: str, uri: str = "", server: bool = False) -> None:
        self.client = client
        self.name = name
        self.uri = uri
        """Where the collection lives (``RAG_MILVUS_URI`` resolved), for the messages."""
        self.server = server
        """Whether ``uri`` is a Milvus server (else a milvus-lite folder)."""

    @classmethod
    def open(cls, settings: Settings, name: str, rows: int) -> MilvusStore:
        """Attach to collection ``name``; ``ValueError`` (one line) if missing or not ``rows`` long.

        ``StoreUnavailableError`` when the store cannot be reached (no older build would help:
        its collection lives in the same store).
        """
        uri = resolve_uri(settings)
        server = is_server(settings)
        if not server and not Path(uri).exists():
            # connect() would make a new, empty milvus-lite folder; the build's data is gone.
            raise ValueError(f"milvus-lite 数据 {uri} 不存在（被删除或移走了）")
        client = connect(settings)
        with _reachable(uri, server):
            if not client.has_collection(name, timeout=CALL_TIMEOUT_S):
                raise ValueError(f"Milvus 集合 {name} 不存在（{uri}）")
            client.load_collection(name, timeout=LOAD_TIMEOUT_S)
            found = count_rows(client, name)
        if found != rows:
            raise ValueError(f"Milvus 集合 {name} 有 {found} 行，清单记录 {rows} 行")
        return cls(client, name, uri, server)

    def _call(self, call: Callable[[], _T]) -> _T:
        """``call()`` on the collection, outages as ``StoreUnavailableError``; loaded again if released.

        A restarted server can hold the collection unloaded (milvus-lite's server always does;
        a Milvus whose query nodes were replaced, until it recovers): it is loaded again once,
        so the service comes back by itself when its server does.
        """
        with _reachable(self.uri, self.server, self.name):
            try:
                return call()
            except Exception as exc:
                if not _released(exc):
                    raise
                log.warning(
                    "Milvus collection %s was released (server restarted?): loading it again", self.name
                )
                self.client.load_collection(self.name, timeout=LOAD_TIMEOUT_S)
                return call()

    def __len__(self) -> int:
        return self._call(lambda: count_rows(self.client, self.name))

    def problems(self, rows: int) -> list[str]:
        """Why the collection cannot serve, one Chinese line each; empty when it can (``GET /readyz``).

        Re-checks what :meth:`open` checked: the store answers, the collection exists and holds
        the ``rows`` the manifest records; for milvus-lite, that its folder is still on disk.
        """
        if not self.server and not Path(self.uri).exists():
            return [f"milvus-lite 数据 {self.uri} 已不在磁盘上（被删除或移走了）；请重建索引：rag build"]
        try:
            if not self._call(lambda: self.client.has_collection(self.name, timeout=CALL_TIMEOUT_S)):
                return [f"Milvus 集合 {self.name} 已不存在（{self.uri}，被删除了）；请重建索引：rag build"]
            found = len(self)
        except StoreUnavailableError as exc:
            return [str(exc)]
        if found != rows:
            return [f"Milvus 集合 {self.name} 有 {found} 行，清单记录 {rows} 行；请重建索引：rag build"]
        return []

    def _search(
        self, data: list[Any], field: str, depth: int, params: dict[str, Any]
    ) -> tuple[list[int], list[float]]:
        result = self._call(
            lambda: self.client.search(
                self.name,
                data=data,
                anns_field=field,
                limit=depth,
                search_params=params,
                output_fields=[],
                timeout=CALL_TIMEOUT_S,
            )
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
        rows = self._call(
            lambda: self.client.query(
                self.name, filter="id >= 0", output_fields=["source"], timeout=CALL_TIMEOUT_S
            )
        )
        return {str(r["source"]) for r in rows}


def problems(store: MilvusStore | None, manifest: dict[str, Any]) -> list[str]:
    """Readiness of a loaded build's collection (none: ``RAG_BACKEND=faiss``, nothing to check)."""
    if store is None:
        return []
    record = manifest.get("milvus")
    rows = record.get("rows") if isinstance(record, dict) else None
    return store.problems(rows if isinstance(rows, int) else -1)
