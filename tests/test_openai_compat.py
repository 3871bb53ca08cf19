"""The OpenAI-compatible endpoints, driven by the official ``openai`` client against a live server."""

from __future__ import annotations

import re
from typing import Any

import openai
import pytest

from rag.api.routes.openai import SOURCES_HEADING, chat_question
from rag.api.schemas import MODEL_ID, ChatCompletionRequest
from rag.embedding import Embedder

PAGE_000 = "000_ed8d00c7a0348028.txt"
QUESTION = "锦屏成立了什么联盟"


@pytest.fixture(scope="module")
def client(live_server: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server}/v1", api_key="not-needed", timeout=120, max_retries=0)


def extra(obj: Any, name: str) -> Any:
    """A non-OpenAI field the server adds (kept by the SDK's models as an extra)."""
    return (obj.model_extra or {}).get(name)


def check_answer_text(text: str, citations: list[dict]) -> None:
    answer, _, sources = text.partition(f"\n\n{SOURCES_HEADING}\n")
    markers = {int(n) for n in re.findall(r"\[(\d+)\]", answer)}
    assert markers, text
    ids = {c["id"] for c in citations}
    assert markers <= ids
    listed = re.findall(r"^\[(\d+)\] (.+)（(.+)）$", sources, re.M)
    assert listed, text
    by_id = {c["id"]: c for c in citations}
    for n, title, source in listed:
        assert by_id[int(n)]["title"] == title
        assert by_id[int(n)]["source"] == source


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_ID]
    assert client.models.retrieve(MODEL_ID).id == MODEL_ID


def test_chat_completion(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL_ID, messages=[{"role": "user", "content": QUESTION}]
    )
    assert completion.object == "chat.completion"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    text = choice.message.content or ""
    citations = extra(completion, "citations")
    assert citations and citations[0]["source"] == PAGE_000
    assert {"id", "article_id", "source", "title", "text", "highlight"} <= set(citations[0])
    check_answer_text(text, citations)
    assert PAGE_000 in text.partition(SOURCES_HEADING)[2]


def test_chat_completion_stream_matches_the_plain_one(client: openai.OpenAI) -> None:
    messages: list[Any] = [
        {"role": "system", "content": "你是新闻助手。"},
        {"role": "user", "content": QUESTION},
    ]
    plain = client.chat.completions.create(model=MODEL_ID, messages=messages)
    stream = client.chat.completions.create(model=MODEL_ID, messages=messages, stream=True)
    chunks = list(stream)
    assert len(chunks) >= 3
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    final = chunks[-1]
    assert final.choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    citations = extra(final, "citations")
    assert citations and citations[0]["source"] == PAGE_000
    check_answer_text(text, citations)
    assert text == plain.choices[0].message.content


def test_usage_counts_real_tokens(client: openai.OpenAI, embedder: Embedder) -> None:
    messages: list[Any] = [{"role": "user", "content": QUESTION}]
    plain = client.chat.completions.create(model=MODEL_ID, messages=messages)
    usage = plain.usage
    assert usage is not None
    content = plain.choices[0].message.content or ""
    # The reply counted with the model's tokenizer; the prompt holds the question and the passages read.
    assert usage.completion_tokens == embedder.count_tokens([content])
    assert usage.prompt_tokens > embedder.count_tokens([QUESTION], query=True)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    chunks = list(
        client.chat.completions.create(
            model=MODEL_ID, messages=messages, stream=True, stream_options={"include_usage": True}
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None  # OpenAI's usage chunk, after the stop
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert last.usage.model_dump() == usage.model_dump()  # the same reply, the same counts
    unasked = list(client.chat.completions.create(model=MODEL_ID, messages=messages, stream=True))
    assert all(c.usage is None for c in unasked) and unasked[-1].choices


CHAIRMAN = "陈尔容"  # 恒锋工具's 董事长: the corpus names others, only the history says whose


def test_follow_up_uses_the_earlier_messages(client: openai.OpenAI) -> None:
    follow_up: Any = {"role": "user", "content": [{"type": "text", "text": "董事长是谁？"}]}
    alone = client.chat.completions.create(model=MODEL_ID, messages=[follow_up])
    assert CHAIRMAN not in (alone.choices[0].message.content or "")
    completion = client.chat.completions.create(
        model=MODEL_ID,
        messages=[
            {"role": "user", "content": "恒锋工具位于哪里？"},
            {"role": "assistant", "content": "海盐县武原街道。"},
            follow_up,
        ],
    )
    text = completion.choices[0].message.content or ""
    assert CHAIRMAN in text.partition(SOURCES_HEADING)[0]
    citations = extra(completion, "citations")
    assert citations and "恒锋工具" in citations[0]["text"]
    check_answer_text(text, citations)


def test_top_k_and_answer_mode_extensions(client: openai.OpenAI) -> None:
    for body in ({"top_k": 2, "rag_mode": "extractive"}, {"top_k": 2, "answer_mode": "extractive"}):
        completion = client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": QUESTION}], extra_body=body
        )
        assert len(extra(completion, "citations")) == 2
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": QUESTION}], extra_body={"rag_mode": "magic"}
        )
    assert "rag_mode" in str(info.value)


def test_empty_question_is_a_clear_client_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "   "}])
    assert "问题是空的" in str(info.value)
    assert "messages.0.content" in str(info.value)  # names the message
    with pytest.raises(openai.UnprocessableEntityError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "system", "content": "hi"}])
    assert "user" in str(info.value)
    with pytest.raises(openai.UnprocessableEntityError):
        client.chat.completions.create(model=MODEL_ID, messages=[])


def test_history_drops_the_sources_list_of_earlier_replies() -> None:
    body = ChatCompletionRequest.model_validate(
        {
            "messages": [
                {"role": "system", "content": "你是新闻助手。"},
                {"role": "user", "content": QUESTION},
                {"role": "assistant", "content": f"创新服务联盟 [1]\n\n{SOURCES_HEADING}\n[1] 标题（x.txt）"},
                {"role": "user", "content": "那它的会长是谁？"},
            ]
        }
    )
    question, history = chat_question(body)
    assert question == "那它的会长是谁？"
    assert [(t.role, t.content) for t in history] == [("user", QUESTION), ("assistant", "创新服务联盟 [1]")]
