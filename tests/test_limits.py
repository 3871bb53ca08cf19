"""Probes of what one client may cost the service: slow and oversized requests, hosts, load.

Each probe runs against a real uvicorn server on loopback, served the way ``rag serve``
serves (``rag.api.server.server_config``), with limits made small so the probes are quick.
A fake LLM that sleeps stands in for a slow answer where a test needs one deterministically.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from fake_llm import FakeLLM, LoopbackServer, sleep

from rag.api import create_app
from rag.embedding import Embedder
from rag.settings import Settings

QUESTION = "锦屏成立了什么联盟"


def serve(settings: Settings, embedder: Embedder, **limits: Any) -> LoopbackServer:
    """A loopback server over the test corpus with ``limits`` (Settings fields) changed."""
    limited = settings.model_copy(update=limits)
    return LoopbackServer(create_app(limited, embedder=embedder), settings=limited)


def raw_connection(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=30)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed ``sock`` (read returns b""), or None if it stayed open."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return None
    except ConnectionResetError:
        pass
    return time.monotonic() - started


# ---- slow and oversized clients ---------------------------------------------------------


@pytest.fixture(scope="module")
def slow_limits(api_settings: Settings, embedder: Embedder) -> Iterator[str]:
    with serve(api_settings, embedder, header_timeout=1.5, keep_alive_timeout=1, max_connections=40) as s:
        yield s.url


def test_half_a_request_line_is_dropped_after_the_header_timeout(slow_limits: str) -> None:
    sock = raw_connection(slow_limits)
    sock.sendall(b"GET /healthz HT")
    took = closed_within(sock, 10)
    assert took is not None, "a half-sent request line held the connection for 10 s"
    assert took < 5


def test_a_client_dripping_its_headers_is_dropped_too(slow_limits: str) -> None:
    """Every byte used to restart uvicorn's timer: a byte a second held the connection for ever."""
    sock = raw_connection(slow_limits)
    started = time.monotonic()
    closed = False
    for byte in b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 20:
        try:
            sock.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
        time.sleep(0.4)
        if time.monotonic() - started > 6:
            break
    if not closed:
        closed = closed_within(sock, 3) is not None
    assert closed, "a client sending a byte every 0.4 s kept its connection"


def test_many_half_open_connections_do_not_stop_a_normal_request(slow_limits: str) -> None:
    socks = [raw_connection(slow_limits) for _ in range(30)]
    for sock in socks:
        sock.sendall(b"POST /ask HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    response = httpx.post(f"{slow_limits}/ask", json={"question": QUESTION}, timeout=60)
    assert response.status_code == 200
    assert all(closed_within(sock, 10) is not None for sock in socks)


def test_an_idle_kept_alive_connection_closes(slow_limits: str) -> None:
    sock = raw_connection(slow_limits)
    sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    assert closed_within(sock, 8) is not None


def test_oversized_headers_answer_400(slow_limits: str) -> None:
    sock = raw_connection(slow_limits)
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    try:
        # In pieces, as a network delivers them: h11 refuses once its buffer passes the limit.
        for start in range(0, len(head), 8192):
            sock.sendall(head[start : start + 8192])
            time.sleep(0.01)
    except (BrokenPipeError, ConnectionResetError):
        pass
    reply = b""
    try:
        while chunk := sock.recv(4096):
            reply += chunk
    except ConnectionResetError:
        pass
    assert reply.startswith(b"HTTP/1.1 400"), reply[:80]


def test_connections_beyond_the_limit_get_503(api_settings: Settings, embedder: Embedder) -> None:
    with serve(api_settings, embedder, max_connections=3, header_timeout=30) as server:
        held = [raw_connection(server.url) for _ in range(3)]
        for sock in held:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        time.sleep(0.2)
        response = httpx.get(f"{server.url}/healthz", timeout=30)
        assert response.status_code == 503
        for sock in held:
            sock.close()
        time.sleep(0.2)
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200


# ---- hosts and logs ---------------------------------------------------------------------


def test_a_foreign_host_header_is_refused(live_server: str) -> None:
    """DNS rebinding: a page of evil.example resolving to 127.0.0.1 must not read the corpus."""
    for path in ("/healthz", "/documents", "/search?q=锦屏"):
        response = httpx.get(f"{live_server}{path}", headers={"Host": "evil.example"}, timeout=30)
        assert response.status_code == 400
        assert "RAG_ALLOWED_HOSTS" in response.json()["message"]
    port = live_server.rsplit(":", 1)[1]
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST"):
        assert httpx.get(f"{live_server}/healthz", headers={"Host": host}, timeout=30).status_code == 200
    assert httpx.get(f"{live_server}/healthz", headers={"Host": ""}, timeout=30).status_code == 400


def test_any_host_when_configured(api_settings: Settings, embedder: Embedder) -> None:
    with serve(api_settings, embedder, allowed_hosts=["*"]) as server:
        response = httpx.get(f"{server.url}/healthz", headers={"Host": "archive.example"}, timeout=30)
        assert response.status_code == 200


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_the_access_log_never_records_a_token(api_settings: Settings, embedder: Embedder) -> None:
    server = serve(api_settings, embedder)
    server.log_level = "info"
    records = _Records()
    with server:
        access = logging.getLogger("uvicorn.access")
        access.addHandler(records)
        try:
            httpx.get(f"{server.url}/documents?token=SECRET-1", timeout=30)
            httpx.delete(f"{server.url}/documents/x.txt?access_token=SECRET-2", timeout=30)
            httpx.get(f"{server.url}/search?q=锦屏&api_key=SECRET-3", timeout=30)
            time.sleep(0.2)
        finally:
            access.removeHandler(records)
    logged = "\n".join(records.lines)
    assert "/documents" in logged and "/search" in logged, logged
    assert "SECRET" not in logged, logged


# ---- what one request may cost ----------------------------------------------------------


def test_history_beyond_the_total_limit_is_413_naming_it(live_server: str) -> None:
    turn = {"role": "user", "content": "锦屏" * 9_000}  # 18,000 characters: under the per-turn cap
    body = {"question": QUESTION, "history": [turn, turn, turn]}  # 54,000 in all: over 50,000
    for path in ("/ask", "/ask/stream"):
        response = httpx.post(f"{live_server}{path}", json=body, timeout=60)
        assert response.status_code == 413, response.text
        message = response.json()["message"]
        assert message.startswith("history") and "RAG_MAX_CONVERSATION_CHARS" in message
    body["history"] = [turn, turn]
    assert httpx.post(f"{live_server}/ask", json=body, timeout=120).status_code == 200


def test_jieba_reads_long_text_in_pieces(monkeypatch: pytest.MonkeyPatch) -> None:
    """Its pass over an unsplittable run is quadratic: no call may see more than JIEBA_PIECE."""
    import jieba

    from rag import textnorm

    seen: list[int] = []
    real = jieba.cut_for_search

    def recording(text: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(len(text))
        return real(text, *args, **kwargs)

    monkeypatch.setattr(jieba, "cut_for_search", recording)
    tokens = textnorm.search_tokens("锦屏成立了联盟。" + "的" * 20_000)
    assert "锦屏" in tokens and "联盟" in tokens
    assert seen and max(seen) <= textnorm.JIEBA_PIECE


def test_a_query_uses_at_most_max_query_terms(seed_settings: Settings, embedder: Embedder) -> None:
    from rag.index import load_index
    from rag.retrieval import Retriever

    limited = seed_settings.model_copy(update={"max_query_terms": 5})
    index = load_index(limited, embedder)
    retriever = Retriever(index, embedder, limited)
    asked: list[list[str]] = []
    real = index.bm25.get_scores

    def recording(tokens: list[str], *args: Any, **kwargs: Any) -> Any:
        asked.append(list(tokens))
        return real(tokens, *args, **kwargs)

    index.bm25.get_scores = recording  # type: ignore[method-assign]
    vocabulary = [t for t in index.bm25.vocab_dict if len(t) > 1][:40]
    ranking = retriever.bm25("".join(vocabulary), depth=5)
    assert asked and len(set(asked[0])) == 5
    assert ranking.ids  # still a ranking, from the first terms
    retriever.bm25(QUESTION, depth=5)
    assert asked[1]  # a normal question keeps all its terms
    assert set(asked[1]) <= set(index.bm25.vocab_dict)


# ---- the answer limiter: slots, queue, deadline -----------------------------------------


@pytest.fixture(scope="module")
def slow_llm() -> Iterator[FakeLLM]:
    """An LLM that takes 3 s to answer: an answer that holds its slot, deterministically."""
    with FakeLLM(lambda messages: sleep(3.0, "联盟[1]。")) as fake:
        yield fake


def llm_limits(api_settings: Settings, fake: FakeLLM, **limits: Any) -> dict[str, Any]:
    return {
        "llm_base_url": fake.base_url,
        "llm_model": fake.model,
        "llm_api_key": fake.api_key,
        "llm_timeout": 30.0,
        **limits,
    }


LLM_QUESTION = {"question": QUESTION, "answer_mode": "llm"}


def test_a_full_queue_answers_503_with_retry_after_at_once(
    api_settings: Settings, embedder: Embedder, slow_llm: FakeLLM
) -> None:
    limits = llm_limits(api_settings, slow_llm, max_concurrent_answers=1, max_queued_answers=0)
    with serve(api_settings, embedder, **limits) as server, ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, f"{server.url}/ask", json=LLM_QUESTION, timeout=60)
        time.sleep(1.0)  # the first holds the only slot (its LLM sleeps 3 s)
        started = time.monotonic()
        busy = httpx.post(f"{server.url}/ask", json={"question": QUESTION}, timeout=60)
        refused_in = time.monotonic() - started
        chat = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "rag-zh", "messages": [{"role": "user", "content": QUESTION}]},
            timeout=60,
        )
        assert first.result().status_code == 200
    assert busy.status_code == 503 and refused_in < 1.5
    assert int(busy.headers["retry-after"]) >= 1
    assert "RAG_MAX_QUEUED_ANSWERS" in busy.json()["message"]
    assert chat.status_code == 503 and "error" in chat.json()  # OpenAI's shape under /v1
    # The page and the other routes are not behind the limiter.
    assert busy.headers["content-security-policy"]


def test_a_request_waits_in_the_queue_then_gets_its_answer(
    api_settings: Settings, embedder: Embedder, slow_llm: FakeLLM
) -> None:
    limits = llm_limits(api_settings, slow_llm, max_concurrent_answers=1, max_queued_answers=4)
    with serve(api_settings, embedder, **limits) as server, ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, f"{server.url}/ask", json=LLM_QUESTION, timeout=60)
        time.sleep(0.5)
        second = httpx.post(f"{server.url}/ask", json={"question": QUESTION}, timeout=60)
        assert first.result().status_code == 200
    assert second.status_code == 200


def test_waiting_longer_than_the_queue_timeout_is_503(
    api_settings: Settings, embedder: Embedder, slow_llm: FakeLLM
) -> None:
    limits = llm_limits(
        api_settings, slow_llm, max_concurrent_answers=1, max_queued_answers=4, queue_timeout=0.5
    )
    with serve(api_settings, embedder, **limits) as server, ThreadPoolExecutor(2) as pool:
        first = pool.submit(httpx.post, f"{server.url}/ask", json=LLM_QUESTION, timeout=60)
        time.sleep(0.5)
        late = httpx.get(f"{server.url}/search", params={"q": QUESTION}, timeout=60)
        assert first.result().status_code == 200
    assert late.status_code == 503
    assert "RAG_QUEUE_TIMEOUT" in late.json()["message"] and late.headers["retry-after"]


def test_an_answer_past_the_deadline_is_503_and_its_slot_comes_back(
    api_settings: Settings, embedder: Embedder, slow_llm: FakeLLM
) -> None:
    limits = llm_limits(api_settings, slow_llm, request_timeout=1.0, max_concurrent_answers=1)
    with serve(api_settings, embedder, **limits) as server:
        started = time.monotonic()
        late = httpx.post(f"{server.url}/ask", json=LLM_QUESTION, timeout=60)
        took = time.monotonic() - started
        assert late.status_code == 503, late.text
        assert took < 2.5
        assert "RAG_REQUEST_TIMEOUT" in late.json()["message"] and late.headers["retry-after"]
        # The abandoned answer finishes in the background; then the slot serves the next one.
        time.sleep(3.0)
        extractive = {"question": QUESTION, "answer_mode": "extractive"}
        assert httpx.post(f"{server.url}/ask", json=extractive, timeout=60).status_code == 200


def test_crafted_questions_do_not_hold_up_normal_ones(api_settings: Settings, embedder: Embedder) -> None:
    """Long (heavy-lane) questions queue behind one slot of their own, not before short ones."""
    from rag.api.limits import HEAVY_BODY_BYTES

    crafted = {"question": ("锦屏街道联盟商会" * 250)[:1_990] + "？"}
    assert len(httpx.Request("POST", "http://x", json=crafted).content) > HEAVY_BODY_BYTES
    with serve(api_settings, embedder, max_concurrent_answers=1, max_queued_answers=64) as server:
        stop = threading.Event()
        statuses: list[int] = []

        def flood() -> None:
            with httpx.Client(timeout=120) as client:
                while not stop.is_set():
                    statuses.append(client.post(f"{server.url}/ask", json=crafted).status_code)

        threads = [threading.Thread(target=flood) for _ in range(6)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(1.0)
            # Six heavy requests are running or queued in their lane: a normal one takes the
            # normal lane's free slot instead of waiting behind them.
            normal = httpx.post(f"{server.url}/ask", json={"question": QUESTION}, timeout=60)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    assert normal.status_code == 200
    assert statuses and set(statuses) <= {200, 503}


# ---- readiness ------------------------------------------------------------------------


def test_readyz_says_the_index_agrees_with_itself(live_server: str) -> None:
    ready = httpx.get(f"{live_server}/readyz", timeout=30)
    assert ready.status_code == 200
    body = ready.json()
    assert body["ready"] is True and body["problems"] == [] and body["counts"]["chunks"] > 0


def test_readyz_is_503_when_the_served_build_is_gone(
    api_settings: Settings, embedder: Embedder, tmp_path: Any
) -> None:
    import shutil

    from rag.index import build_index

    own = api_settings.model_copy(update={"index_dir": tmp_path / "index"})
    build_index(own, embedder)
    with serve(own, embedder) as server:
        assert httpx.get(f"{server.url}/readyz", timeout=30).status_code == 200
        shutil.rmtree(own.index_dir / "builds")
        gone = httpx.get(f"{server.url}/readyz", timeout=30)
        assert gone.status_code == 503
        assert gone.json()["ready"] is False and gone.json()["problems"]
        # Liveness is another question: the process still answers from memory.
        assert httpx.get(f"{server.url}/healthz", timeout=30).status_code == 200


# ---- bad bodies and encodings -----------------------------------------------------------

BAD_BODIES = {
    "deeply nested": b"[" * 100_000 + b"]" * 100_000,
    "not UTF-8": b'"\xff\xfe\xfa"',
    "GB18030": '"锦屏成立了什么联盟"'.encode("gb18030"),
    "lone surrogate": b'"\\ud800\\u9526\\u5c4f"',
    "low surrogate": b'"\\udfff"',
    "huge number": b"1" + b"0" * 5_000,
    "NaN": b"NaN",
    "truncated": b'"\xe9\x94',
    "nul characters": b'"\\u0000\\u0000"',
}
"""Bad values, each sent as the question, as an earlier message and as a chat message."""


def bodies(path: str, value: bytes) -> list[bytes]:
    if path.startswith("/v1/"):
        return [
            b'{"messages": [{"role": "user", "content": ' + value + b"}]}",
            b'{"messages": [{"role": "user", "content": ' + value + b'}, {"role": "user", "content": "q"}]}',
        ]
    return [
        b'{"question": ' + value + b"}",
        b'{"question": "q", "history": [{"role": "user", "content": ' + value + b"}]}",
        b'{"question": "q", "top_k": ' + value + b"}",
    ]


@pytest.mark.parametrize("name", list(BAD_BODIES))
@pytest.mark.parametrize("path", ["/ask", "/ask/stream", "/v1/chat/completions"])
def test_bad_bodies_get_a_4xx_never_a_5xx(live_server: str, path: str, name: str) -> None:
    for body in bodies(path, BAD_BODIES[name]):
        response = httpx.post(
            f"{live_server}{path}", content=body, headers={"Content-Type": "application/json"}, timeout=120
        )
        assert response.status_code < 500, (name, body[:80], response.status_code, response.text[:200])
        if response.status_code >= 400:
            assert response.json()["message"], response.text


def test_a_lone_surrogate_in_the_question_is_named(live_server: str) -> None:
    body = b'{"question": "\\ud800\\u9526\\u5c4f"}'
    response = httpx.post(
        f"{live_server}/ask", content=body, headers={"Content-Type": "application/json"}, timeout=60
    )
    assert response.status_code == 422
    assert response.json()["message"].startswith("question")
