"""Shared pytest fixtures, the test lanes and a clean environment for every test.

Lanes: a test that needs the embedding model, the reader or a built index is ``slow``; one
that needs a live HTTP server or a browser is ``integration``. Both are marked here from
the fixtures a test uses (and by ``pytestmark`` in modules that load models themselves).
``pytest`` alone runs the fast lane; ``make test`` (CI) runs everything with ``-m ""``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.embedding import Embedder, configure_runtime, load_embedder
from rag.settings import Settings

# What the `rag` command does at start-up, before anything imports torch.
configure_runtime()

# The real per-user cache: the default model is converted once per machine, not per run.
CACHE_DIR = Path.home() / ".cache" / "rag-zh"

SLOW_FIXTURES = frozenset({"embedder", "seed_settings", "api_settings"})
INTEGRATION_FIXTURES = frozenset({"live_server", "browser", "page"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with its lane from the fixtures it needs (directly or through others)."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & INTEGRATION_FIXTURES:
            item.add_marker(pytest.mark.integration)
        if names & (SLOW_FIXTURES | INTEGRATION_FIXTURES):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _clean_environment() -> Iterator[None]:
    """No ``RAG_*`` variable of the developer's shell reaches a test (or its subprocesses).

    Session-scoped and autouse, so it is in place before any other fixture builds Settings.
    """
    with pytest.MonkeyPatch.context() as mp:
        for name in [n for n in os.environ if n.startswith("RAG_")]:
            mp.delenv(name)
        yield


@pytest.fixture(scope="session")
def settings() -> Settings:
    """Settings with the real model cache, every other field at its default.

    Starlette's ``TestClient`` sends ``Host: testserver``: that host is allowed too.
    """
    base = Settings(cache_dir=CACHE_DIR)
    return base.model_copy(update={"allowed_hosts": [*base.allowed_hosts, "testserver"]})


@pytest.fixture(scope="session")
def embedder(settings: Settings) -> Embedder:
    """The configured embedding model, loaded once per test session."""
    return load_embedder(settings)


# ---- The HTTP service (test_api, test_openai_compat, test_browser, test_schemathesis) ----

API_ADMIN_TOKEN = "test-admin-token"
SEEDS_DIR = Path(__file__).resolve().parent.parent / "seeds"


@pytest.fixture(scope="session")
def api_settings(
    settings: Settings, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings over a private copy of seeds/ with its own index, built once per session.

    Uploads in the API tests land in this copy, never in the repository's seeds/.
    """
    import shutil

    from rag.index import build_index

    root = tmp_path_factory.mktemp("api")
    docs = root / "docs"
    shutil.copytree(SEEDS_DIR, docs)
    api = settings.model_copy(
        update={
            "docs_dir": docs,
            "index_dir": root / "index",
            "admin_token": API_ADMIN_TOKEN,
        }
    )
    build_index(api, embedder)
    return api


@pytest.fixture(scope="session")
def live_server(api_settings: Settings, embedder: Embedder) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 (a free port) running ``create_app``; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    from rag.api import create_app
    from rag.api.server import server_config

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = server_config(
        create_app(api_settings, embedder=embedder),
        api_settings,
        log_level="warning",
        lifespan="on",
        backlog=256,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the API server did not start; see the log above")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


# ---- A built index over the repository's seeds (test_index, test_answer) ----


@pytest.fixture(scope="session")
def seed_settings(
    settings: Settings, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings whose index over seeds/ is built once per session, in a temp folder."""
    from rag.index import build_index

    seeded = settings.model_copy(
        update={"docs_dir": SEEDS_DIR, "index_dir": tmp_path_factory.mktemp("seed-index")}
    )
    build_index(seeded, embedder)
    return seeded
