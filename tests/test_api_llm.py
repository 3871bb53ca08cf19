"""The HTTP service with an LLM configured: streaming as the model writes, retractions, one client.

The LLM is the fake chat server (``tests/fake_llm.py``, the real OpenAI wire protocol on
loopback); the service is a real uvicorn server over the seed corpus; the clients are
httpx and the official ``openai`` SDK.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fake_llm import FakeLLM, LoopbackServer, Messages, last_user

from rag.api import create_app
from rag.api.routes.openai import SOURCES_HEADING, retraction_text
from rag.api.schemas import MODEL_ID
from rag.api.service import Service
from rag.embedding import Embedder
from rag.llm import LLMClient
from rag.settings import Settings

QUESTION = "锦屏成立了什么联盟"
PAGE_000 = "000_ed8d00c7a0348028.txt"
UNSUPPORTED = "该联盟由宁波市政府出资一亿元设立，总部位于杭州[1]。"
NOT_SUPPORTED = "LLM answer was not supported by the passages; extractive answer"


def faithful_model(messages: Messages) -> str:
    """Answers with the prompt's own sentence about the 联盟, citing the passage it is in."""
    prompt = last_user(messages)
    for n, body in re.findall(r'<资料 编号="(\d+)">\n(.*?)\n</资料>', prompt, re.DOTALL):
        text = body.split("正文：", 1)[-1]
        sentence = next((s for s in re.split(r"(?<=。)", text) if "创新服务联盟" in s), None)
        if sentence:
            return f"{sentence.strip().rstrip('。')}[{n}]。"
    raise AssertionError(f"no passage about the 联盟 in the prompt:\n{prompt}")


def llm_settings(base: Settings, fake: FakeLLM, **update: Any) -> Settings:
    values: dict[str, Any] = {
        "llm_base_url": fake.base_url,
        "llm_model": fake.model,
        "llm_api_key": fake.api_key,
        # Longer than the fake's gate: a test that fails waits for the gate, not a timeout.
        "llm_timeout": fake.gate_timeout * 2,
        **update,
    }
    return base.model_copy(update=values)


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeLLM]:
    with FakeLLM(gate=threading.Event(), gate_timeout=30.0, chunk_chars=2) as server:
        yield server


@pytest.fixture
def gate(fake: FakeLLM) -> threading.Event:
    """Closed: each stream of the fake waits after its first piece until the test opens it."""
    assert fake.gate is not None
    fake.gate.clear()
    fake.script = faithful_model
    fake.stream_log.clear()
    return fake.gate


@pytest.fixture(scope="module")
def server(fake: FakeLLM, api_settings: Settings, embedder: Embedder) -> Iterator[str]:
    with LoopbackServer(create_app(llm_settings(api_settings, fake), embedder=embedder)) as s:
        yield s.url


def sse_frames(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(event, data)`` pairs as they arrive."""
    name, data = "", ""
    for line in lines:
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            data = line.removeprefix("data: ")
        elif not line and name:
            yield name, json.loads(data)
            name, data = "", ""


def test_ask_stream_sends_the_first_token_before_the_llm_has_finished(
    fake: FakeLLM, gate: threading.Event, server: str
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    with (
        httpx.Client(base_url=server, timeout=120) as c,
        c.stream("POST", "/ask/stream", json={"question": QUESTION}) as r,
    ):
        assert r.status_code == 200
        for name, data in sse_frames(r.iter_lines()):
            if name == "delta" and not gate.is_set():
                # The fake waits at its gate after its first piece: this delta was streamed
                # through while the rest of the answer was not even generated yet.
                (log,) = fake.stream_log
                assert len(log.pieces) == 1 and not log.finished
                assert data["text"] == log.pieces[0]
                gate.set()
            events.append((name, data))
    (log,) = fake.stream_log
    assert log.finished and not log.gate_timed_out
    names = [name for name, _ in events]
    assert names[-1] == "answer" and set(names[:-1]) == {"delta"}
    final = events[-1][1]
    assert final["answer_mode"] == "llm"
    assert "创新服务联盟" in final["answer"]
    assert "".join(data["text"] for name, data in events if name == "delta") == final["answer"]
    assert len(names) - 1 == len(log.pieces)  # one delta per piece the model wrote


def test_chat_stream_sends_the_first_token_before_the_llm_has_finished(
    fake: FakeLLM, gate: threading.Event, server: str
) -> None:
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="not-needed", timeout=120, max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    pieces: list[str] = []
    citations: Any = None
    for chunk in stream:
        content = chunk.choices[0].delta.content if chunk.choices else None
        if content and not gate.is_set():
            (log,) = fake.stream_log
            assert len(log.pieces) == 1 and not log.finished
            assert content == log.pieces[0]
            gate.set()
        pieces.append(content or "")
        citations = (chunk.model_extra or {}).get("citations", citations)
    (log,) = fake.stream_log
    assert log.finished and not log.gate_timed_out
    text = "".join(pieces)
    answer, _, sources = text.partition(f"\n\n{SOURCES_HEADING}\n")
    assert answer == "".join(log.pieces)
    assert citations and citations[0]["source"] == PAGE_000
    assert PAGE_000 in sources


def test_an_unsupported_llm_answer_is_retracted_in_both_streams(
    fake: FakeLLM, gate: threading.Event, server: str
) -> None:
    gate.set()
    fake.script = lambda _messages: UNSUPPORTED
    with httpx.Client(base_url=server, timeout=120) as c:
        extractive = c.post("/ask", json={"question": QUESTION, "answer_mode": "extractive"}).json()
        with c.stream("POST", "/ask/stream", json={"question": QUESTION}) as r:
            events = list(sse_frames(r.iter_lines()))
    names = [name for name, _ in events]
    cut = names.index("retract")
    assert cut > 0 and set(names[:cut]) == {"delta"}
    assert "".join(data["text"] for _, data in events[:cut]) == UNSUPPORTED  # what was shown ...
    assert events[cut][1] == {"reason": NOT_SUPPORTED}  # ... and why it goes
    after = [data["text"] for name, data in events[cut + 1 :] if name == "delta"]
    final = events[-1][1]
    assert names[-1] == "answer" and "".join(after) == final["answer"] == extractive["answer"]
    assert final["answer_mode"] == "extractive"
    assert NOT_SUPPORTED in final["warnings"]

    client = openai.OpenAI(base_url=f"{server}/v1", api_key="not-needed", timeout=120, max_retries=0)
    stream = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": QUESTION}], stream=True
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    # A chat stream cannot take text back: it says why, then the replacement follows.
    shown, notice, replacement = text.partition(retraction_text(NOT_SUPPORTED))
    assert shown == UNSUPPORTED and notice
    assert replacement.partition(f"\n\n{SOURCES_HEADING}\n")[0] == extractive["answer"]


def test_rebuilds_reuse_the_one_llm_client_and_shutdown_closes_it(
    settings: Settings, embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[LLMClient] = []
    closed: list[LLMClient] = []
    original_init, original_close = LLMClient.__init__, LLMClient.close

    def counting_init(self: LLMClient, s: Settings) -> None:
        made.append(self)
        original_init(self, s)

    def recording_close(self: LLMClient) -> None:
        closed.append(self)
        original_close(self)

    monkeypatch.setattr(LLMClient, "__init__", counting_init)
    monkeypatch.setattr(LLMClient, "close", recording_close)

    from rag.index import build_index

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(
        "锦屏街道成立创新服务联盟\n\n本报讯 锦屏街道成立了创新服务联盟。\n", encoding="utf-8"
    )
    (docs / "b.txt").write_text("岳林街道新建公园\n\n本报讯 岳林街道新建了一座公园。\n", encoding="utf-8")
    with FakeLLM() as fake:
        own = llm_settings(
            settings,
            fake,
            docs_dir=docs,
            index_dir=tmp_path / "index",
            admin_token="t",
            llm_timeout=30.0,
        )
        build_index(own, embedder)
        app = create_app(own, embedder=embedder)
        with LoopbackServer(app) as s, httpx.Client(base_url=s.url, timeout=120) as c:
            service: Service = app.state.service
            llm = service.llm
            before = service.engine
            assert llm is not None and before.answerer.llm is llm
            r = c.post(
                "/documents",
                files={"file": ("c.txt", "新闻标题\n\n本报讯 新的一篇报道。\n".encode())},
                headers={"Authorization": "Bearer t"},
            )
            assert r.status_code == 202, r.text  # an upload is a job (issue 13): wait for it
            job = service.job(r.json()["job"]["id"])
            deadline = time.monotonic() + 120
            while job.status in ("queued", "running") and time.monotonic() < deadline:
                time.sleep(0.1)
            assert job.status == "done", job.error
            after = service.engine
            assert after is not before and after.answerer is not before.answerer  # rebuilt ...
            assert after.answerer.llm is llm  # ... with the same client
            assert made == [llm] and closed == []
        assert closed == [llm]  # closed once, at shutdown


def test_chat_usage_is_the_llms_own_count(fake: FakeLLM, gate: threading.Event, server: str) -> None:
    gate.set()
    client = openai.OpenAI(base_url=f"{server}/v1", api_key="not-needed", timeout=120, max_retries=0)
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": QUESTION}]
    )
    sent = fake.requests[-1]
    assert sent["stream_options"] == {"include_usage": True}
    (log,) = fake.stream_log
    reply = "".join(log.pieces)
    # The fake counts a token per character of what it was sent and what it wrote.
    prompt = sum(len(m["content"]) for m in sent["messages"])
    assert completion.usage is not None
    assert completion.usage.model_dump() == {
        "prompt_tokens": prompt,
        "completion_tokens": len(reply),
        "total_tokens": prompt + len(reply),
    } | {k: v for k, v in completion.usage.model_dump().items() if v is None}
