"""The Milvus backend on milvus-lite for real (no mock): same hits as FAISS, deletes, killed builds,
outages and readiness.

One milvus-lite database per module, started in this process by pymilvus from a ``.db``
path under the index folder, as ``RAG_BACKEND=milvus`` with the default URI does. The
outage tests run milvus-lite's own gRPC server (``milvus-lite server``) as a real Milvus
server on a loopback port, stop it while the service serves, and start it again; an
unreachable server is a closed loopback port.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fake_llm import LoopbackServer

from rag import milvus_store
from rag.api import create_app
from rag.embedding import Embedder
from rag.errors import CorruptIndexError, IndexError_, StoreUnavailableError
from rag.index import build_index, load_index
from rag.retrieval import Retriever
from rag.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
SEEDS = ROOT / "seeds"
QUESTION = "锦屏成立了什么联盟"
FEW_SEEDS = ("000_ed8d00c7a0348028.txt",)
"""The seed file the small indexes of the outage tests hold (its article answers QUESTION)."""
QUESTIONS = Path(__file__).resolve().parent.parent / "eval" / "questions.jsonl"
BM25_TOP1_AGREEMENT = 0.95
"""Measured 0.990 (298 of 301 seed questions) on milvus-lite 3.2.2: its jieba analyzer cuts
the whole text at once and keeps punctuation, where bm25s gets the project's own tokens; and
its BM25 constants / IDF are its own. The bound leaves room for a jieba or lite upgrade."""

log = logging.getLogger(__name__)


def _questions() -> list[str]:
    with QUESTIONS.open(encoding="utf-8") as f:
        return [json.loads(line)["question"] for line in f if line.strip()]


@pytest.fixture(scope="module")
def milvus_settings(
    settings: Settings, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Seeds copied to a private folder, built once with ``backend=milvus`` (files and a collection)."""
    root = tmp_path_factory.mktemp("milvus")
    shutil.copytree(SEEDS, root / "docs")
    s = settings.model_copy(
        update={"docs_dir": root / "docs", "index_dir": root / "index", "backend": "milvus"}
    )
    build_index(s, embedder)
    return s


def _top1(retriever: Retriever, mode: str, questions: list[str]) -> list[str | None]:
    out: list[str | None] = []
    for q in questions:
        hits = retriever.search(q, k=1, retrieval_mode=mode)  # type: ignore[arg-type]
        out.append(hits[0].chunk.id if hits else None)
    return out


def test_seed_questions_top_hits_match_faiss(milvus_settings: Settings, embedder: Embedder) -> None:
    """Dense: the same top-1 for every seed question; BM25: top-1 agreement at least the measured bound."""
    faiss_settings = milvus_settings.model_copy(update={"backend": "faiss"})
    on_files = Retriever(load_index(faiss_settings, embedder), embedder, faiss_settings)
    on_milvus = Retriever(load_index(milvus_settings, embedder), embedder, milvus_settings)
    assert on_files.index.store is None
    assert on_milvus.index.store is not None
    assert len(on_milvus.index.store) == len(on_files.index) > 50
    questions = _questions()
    assert len(questions) > 250

    assert _top1(on_milvus, "dense", questions) == _top1(on_files, "dense", questions)

    files_bm25 = _top1(on_files, "bm25", questions)
    milvus_bm25 = _top1(on_milvus, "bm25", questions)
    agree = sum(a == b for a, b in zip(files_bm25, milvus_bm25, strict=True)) / len(questions)
    log.warning("BM25 top-1 agreement, milvus-lite vs bm25s: %.3f of %d questions", agree, len(questions))
    assert agree >= BM25_TOP1_AGREEMENT

    hybrid = on_milvus.search("锦屏成立了什么联盟", k=3, retrieval_mode="hybrid")
    assert hybrid and hybrid[0].bm25_score is not None and hybrid[0].bm25_score > 0
    assert hybrid[0].chunk.source == "000_ed8d00c7a0348028.txt"


def test_deleted_document_is_gone_after_reopening(milvus_settings: Settings, embedder: Embedder) -> None:
    """A rebuild after a file is deleted serves a new collection without it; the old one is dropped later."""
    s = milvus_settings.model_copy(update={"index_dir": milvus_settings.index_dir.parent / "index-delete"})
    docs = s.docs_dir.parent / "docs-delete"
    shutil.copytree(s.docs_dir, docs)
    s = s.model_copy(update={"docs_dir": docs})
    build_index(s, embedder)
    gone = "000_ed8d00c7a0348028.txt"
    before = load_index(s, embedder)
    assert before.store is not None and gone in before.store.sources()
    first = before.store.name

    (docs / gone).unlink()
    build_index(s, embedder)
    reopened = Retriever.open(s)
    assert reopened.index.store is not None
    assert reopened.index.store.name != first
    assert gone not in reopened.index.store.sources()
    assert len(reopened.index.store) == len(reopened.index)
    for mode in ("dense", "bm25", "hybrid"):
        hits = reopened.search("锦屏成立了什么联盟", k=10, retrieval_mode=mode)  # type: ignore[arg-type]
        assert hits and all(h.chunk.source != gone for h in hits)

    # The build before stays for the fallback (as its files do); one more build drops it.
    build_index(s, embedder)
    client = milvus_store.connect(s)
    assert first not in client.list_collections()


def test_killed_build_leaves_the_served_collection_usable(
    milvus_settings: Settings, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A build dying after its collection is written, before CURRENT switches, changes nothing served."""
    s = milvus_settings.model_copy(update={"index_dir": milvus_settings.index_dir.parent / "index-killed"})
    build_index(s, embedder)
    served = load_index(s, embedder)
    assert served.store is not None
    client = milvus_store.connect(s)
    before = set(client.list_collections())

    written: list[str] = []
    real_write = milvus_store.write_collection

    def write_then_die(*args: object, **kwargs: object) -> int:
        real_write(*args, **kwargs)  # type: ignore[arg-type]
        written.append(str(args[1]))
        raise KeyboardInterrupt  # what a Ctrl-C or a kill looks like to the code after it

    monkeypatch.setattr(milvus_store, "write_collection", write_then_die)
    (s.docs_dir / "extra.txt").write_text(
        "【新文章】\n锦屏县新建了一座图书馆，藏书十万册。", encoding="utf-8"
    )
    try:
        with pytest.raises(KeyboardInterrupt):
            build_index(s, embedder)
    finally:
        (s.docs_dir / "extra.txt").unlink()
    monkeypatch.undo()
    assert written and written[0] in client.list_collections()  # the half-made build's collection

    again = Retriever.open(s)
    assert again.index.path == served.path
    assert again.index.store is not None and again.index.store.name == served.store.name
    assert again.search("锦屏成立了什么联盟", k=1, retrieval_mode="bm25")

    build_index(s, embedder)  # the next good build sweeps the leftover
    after = set(client.list_collections())
    assert written[0] not in after
    assert served.store.name in after  # kept for the fallback, as its build folder is
    assert before <= after | {written[0]}


def test_manifest_count_is_checked(milvus_settings: Settings, embedder: Embedder) -> None:
    """A collection that lost rows is a bad build: loading names it (no older build here to fall back to)."""
    s = milvus_settings.model_copy(update={"index_dir": milvus_settings.index_dir.parent / "index-count"})
    build_index(s, embedder)
    loaded = load_index(s, embedder)
    assert loaded.store is not None
    loaded.store.client.delete(loaded.store.name, ids=[0])
    with pytest.raises(IndexError_, match=r"Milvus 集合 .* 有 \d+ 行，清单记录 \d+ 行"):
        load_index(s, embedder)


def test_faiss_build_loaded_as_milvus_says_how_to_rebuild(
    settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    """An index built without Milvus, opened with RAG_BACKEND=milvus: one line saying to rebuild."""
    docs = tmp_path / "docs"
    docs.mkdir()
    shutil.copy(SEEDS / "000_ed8d00c7a0348028.txt", docs)
    s = settings.model_copy(update={"docs_dir": docs, "index_dir": tmp_path / "index"})
    build_index(s, embedder)
    assert not (s.index_dir / "milvus.db").exists()  # the default backend never starts Milvus
    with pytest.raises(IndexError_, match="RAG_BACKEND=milvus 重建"):
        load_index(s.model_copy(update={"backend": "milvus"}), embedder)


def test_uri_resolution(settings: Settings, tmp_path: Path) -> None:
    """A relative milvus-lite path lives under the index folder; a server URL and an absolute path stay."""
    s = settings.model_copy(update={"index_dir": tmp_path / "idx"})
    assert milvus_store.resolve_uri(s) == str(tmp_path / "idx" / "milvus.db")
    assert milvus_store.resolve_uri(s.model_copy(update={"milvus_uri": "/data/m.db"})) == "/data/m.db"
    server = s.model_copy(update={"milvus_uri": "http://milvus:19530"})
    assert milvus_store.resolve_uri(server) == "http://milvus:19530" and milvus_store.is_server(server)
    assert milvus_store.collection_name(s, "20261204T030102123456Z").startswith(milvus_store.owner(s))
    other = s.model_copy(update={"index_dir": tmp_path / "other"})
    assert milvus_store.owner(other) != milvus_store.owner(s)


# ---- outages: an unreachable server, a stopped one, a locked or vanished milvus-lite file ----


def _free_port() -> int:
    """A loopback port nothing listens on (bound, then released: connecting to it is refused)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MilvusServer:
    """milvus-lite's gRPC server in a child process: a real Milvus server on ``127.0.0.1:port``."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """``http://127.0.0.1:<port>``, as ``RAG_MILVUS_URI`` names a server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start it (again: same folder, same port) and wait until it answers."""
        from pymilvus import MilvusClient, MilvusException

        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "milvus_lite",
                "server",
                "--data-dir",
                str(self.data_dir),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, f"milvus-lite server ended (rc {self.proc.returncode})"
            try:
                MilvusClient(uri=self.uri, timeout=1).close()
                return
            except MilvusException:
                assert time.monotonic() < deadline, "milvus-lite server did not answer in 60 s"
                time.sleep(0.2)

    def stop(self) -> None:
        """Kill it (an outage, not a clean shutdown) and wait until it is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@contextmanager
def milvus_server(data_dir: Path) -> Iterator[MilvusServer]:
    """A started :class:`MilvusServer`, stopped at the end whatever happened."""
    server = MilvusServer(data_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _small_settings(settings: Settings, root: Path, uri: str) -> Settings:
    """A docs folder of FEW_SEEDS and an index folder under ``root``, ``backend=milvus`` at ``uri``."""
    docs = root / "docs"
    docs.mkdir(parents=True)
    for name in FEW_SEEDS:
        shutil.copy(SEEDS / name, docs)
    return settings.model_copy(
        update={"docs_dir": docs, "index_dir": root / "index", "backend": "milvus", "milvus_uri": uri}
    )


def _rag(args: list[str], s: Settings, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """``rag ARGS`` in a child process with ``s``' index, docs and Milvus settings."""
    env = {
        **os.environ,
        "RAG_CACHE_DIR": str(s.cache_dir),
        "RAG_BACKEND": "milvus",
        "RAG_MILVUS_URI": s.milvus_uri,
    }
    return subprocess.run(
        [sys.executable, "-m", "rag", *args, "--index", str(s.index_dir), "--docs", str(s.docs_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def _one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``错误：`` line of a failed ``rag`` run (exit 2, no traceback)."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("错误：")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_unreachable_server_fails_the_build_with_one_line(
    settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    """Nothing listens at the URI: one line naming it and the settings to fix; nothing is left behind."""
    uri = f"http://127.0.0.1:{_free_port()}"
    s = _small_settings(settings, tmp_path, uri)
    with pytest.raises(StoreUnavailableError, match="RAG_MILVUS_URI") as raised:
        build_index(s, embedder)
    line = str(raised.value)
    assert uri in line and "\n" not in line
    assert not (s.index_dir / "CURRENT").exists()
    builds = s.index_dir / "builds"
    assert not builds.exists() or not any(builds.glob("*"))  # no half-written build left


@pytest.mark.integration
def test_server_outage_while_serving_is_503_and_recovers(
    settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    """A Milvus server stopped under a running service: 503 per request (OpenAI's shape under /v1)
    and on /readyz, naming the URI; started again, the same service answers again. Stopped,
    ``rag serve`` and ``rag build`` end with one line and exit 2."""
    with milvus_server(tmp_path / "milvus-data") as milvus:
        s = _small_settings(settings, tmp_path, milvus.uri)
        build_index(s, embedder)
        with LoopbackServer(create_app(s, embedder=embedder), settings=s) as web:
            search = f"{web.url}/search"
            assert httpx.get(search, params={"q": QUESTION}, timeout=60).status_code == 200
            assert httpx.get(f"{web.url}/readyz", timeout=60).status_code == 200

            milvus.stop()
            for mode in ("dense", "bm25", "hybrid"):
                down = httpx.get(search, params={"q": QUESTION, "retrieval_mode": mode}, timeout=60)
                assert down.status_code == 503, down.text
                assert milvus.uri in down.json()["message"] and "RAG_MILVUS_URI" in down.json()["message"]
                assert int(down.headers["retry-after"]) >= 1
            chat = httpx.post(
                f"{web.url}/v1/chat/completions",
                json={"model": "rag-zh", "messages": [{"role": "user", "content": QUESTION}]},
                timeout=60,
            )
            assert chat.status_code == 503, chat.text
            error = chat.json()["error"]
            assert error["type"] == "server_error" and milvus.uri in error["message"]
            ready = httpx.get(f"{web.url}/readyz", timeout=60)
            assert ready.status_code == 503
            assert ready.json()["ready"] is False
            assert any(milvus.uri in p for p in ready.json()["problems"]), ready.json()
            assert httpx.get(f"{web.url}/healthz", timeout=60).status_code == 200  # alive, not ready

            milvus.start()  # the same folder on the same port: the service reconnects by itself
            deadline = time.monotonic() + 60
            while (again := httpx.get(f"{web.url}/readyz", timeout=60)).status_code != 200:
                assert time.monotonic() < deadline, again.text
                time.sleep(0.5)
            hits = httpx.get(search, params={"q": QUESTION}, timeout=60).json()["hits"]
            assert hits and hits[0]["source"] == FEW_SEEDS[0]

        milvus.stop()
        serve = _one_error_line(_rag(["serve", "--port", "0"], s))
        assert milvus.uri in serve and "RAG_MILVUS_URI" in serve
        build = _one_error_line(_rag(["build"], s))
        assert milvus.uri in build and "RAG_MILVUS_URI" in build


def test_milvus_lite_file_held_by_another_process_is_one_line(milvus_settings: Settings) -> None:
    """This test process holds the module's milvus-lite folder: ``rag serve`` and ``rag build``
    in another process say who holds it and what to do, exit 2, no traceback."""
    folder = milvus_store.resolve_uri(milvus_settings)
    assert Path(folder, "LOCK").is_file()
    for args in (["serve", "--port", "0"], ["build"]):
        line = _one_error_line(_rag(args, milvus_settings))
        assert folder in line and "另一个进程" in line and "RAG_MILVUS_URI" in line


@pytest.mark.integration
def test_readyz_rechecks_the_collection(milvus_settings: Settings, embedder: Embedder) -> None:
    """On milvus-lite: rows deleted, the collection dropped and the folder deleted behind the
    service's back each make /readyz 503 with the problem; a search on the dropped collection is
    a 503 saying to rebuild, not a 500."""
    s = milvus_settings.model_copy(update={"index_dir": milvus_settings.index_dir.parent / "index-ready"})
    build_index(s, embedder)
    with LoopbackServer(create_app(s, embedder=embedder), settings=s) as web:
        ready = f"{web.url}/readyz"
        assert httpx.get(ready, timeout=60).status_code == 200
        store = load_index(s, embedder).store
        assert store is not None

        store.client.delete(store.name, ids=[0])
        short = httpx.get(ready, timeout=60)
        assert short.status_code == 503
        assert any(f"Milvus 集合 {store.name} 有" in p and "清单记录" in p for p in short.json()["problems"])

        store.client.drop_collection(store.name)
        dropped = httpx.get(ready, timeout=60)
        assert dropped.status_code == 503
        assert any(store.name in p and "已不存在" in p for p in dropped.json()["problems"])
        search = httpx.get(f"{web.url}/search", params={"q": QUESTION, "retrieval_mode": "dense"}, timeout=60)
        assert search.status_code == 503 and "rag build" in search.json()["message"], search.text

        shutil.rmtree(milvus_store.resolve_uri(s))
        gone = httpx.get(ready, timeout=60)
        assert gone.status_code == 503
        assert any("已不在磁盘上" in p for p in gone.json()["problems"]), gone.json()
    # Loading it again: the data is gone, no older build can help; one line naming the folder.
    with pytest.raises(CorruptIndexError, match="milvus-lite 数据 .* 不存在"):
        load_index(s, embedder)
