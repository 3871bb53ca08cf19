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
    with pytest.raises(openai.BadRequestError) as info:  # OpenAI answers 400, as clients expect
        client.chat.completions.create(
            model=MODEL_ID, messages=[{"role": "user", "content": QUESTION}], extra_body={"rag_mode": "magic"}
        )
    assert "rag_mode" in str(info.value)
    assert info.value.param == "rag_mode"


def test_empty_question_is_a_clear_client_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "user", "content": "   "}])
    assert "问题是空的" in str(info.value)
    assert info.value.param == "messages.0.content"  # names the message
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=[{"role": "system", "content": "hi"}])
    assert "user" in str(info.value)
    assert info.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=[])
    assert info.value.param == "messages"


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


# ---- strict, OpenAI-shaped refusals (issue 13) ---------------------------------------------

USER: Any = [{"role": "user", "content": QUESTION}]

BAD_PARAMETERS: list[tuple[dict[str, Any], str, str]] = [
    # (extra body, param, code): one case per family of OpenAI parameters
    ({"n": 2}, "n", "unsupported_value"),
    ({"n": 0}, "n", "invalid_value"),
    ({"stream": "yes"}, "stream", "invalid_type"),
    ({"stream": 1}, "stream", "invalid_type"),
    ({"temperature": "hot"}, "temperature", "invalid_type"),
    ({"temperature": 2.5}, "temperature", "invalid_value"),
    ({"top_p": 1.5}, "top_p", "invalid_value"),
    ({"max_tokens": 10**12}, "max_tokens", "invalid_value"),
    ({"max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"max_completion_tokens": "10"}, "max_completion_tokens", "invalid_type"),
    ({"presence_penalty": -3}, "presence_penalty", "invalid_value"),
    ({"frequency_penalty": "x"}, "frequency_penalty", "invalid_type"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "invalid_value"),
    ({"stop": 5}, "stop", "invalid_type"),
    ({"seed": "42"}, "seed", "invalid_type"),
    ({"user": 7}, "user", "invalid_type"),
    ({"response_format": {"type": "json_object"}}, "response_format.type", "unsupported_value"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", "unsupported_parameter"),
    ({"tool_choice": "auto"}, "tool_choice", "unsupported_parameter"),
    ({"functions": [{"name": "f"}]}, "functions", "unsupported_parameter"),
    ({"logprobs": True}, "logprobs", "unsupported_parameter"),
    ({"top_logprobs": 3}, "top_logprobs", "unsupported_parameter"),
    ({"stream_options": {"include_usage": True}}, "stream_options", "invalid_value"),
    (
        {"stream": True, "stream_options": {"include_usage": "yes"}},
        "stream_options.include_usage",
        "invalid_type",
    ),
    ({"messages": [{"role": "robot", "content": QUESTION}]}, "messages.0.role", "invalid_value"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content", "invalid_type"),
    ({"messages": [{"role": "user", "content": [{"type": 5}]}]}, "messages.0.content.0.type", "invalid_type"),
]


@pytest.mark.parametrize(("extra_body", "param", "code"), BAD_PARAMETERS, ids=lambda v: str(v)[:40])
def test_bad_parameters_are_openai_400s(
    client: openai.OpenAI, extra_body: dict[str, Any], param: str, code: str
) -> None:
    body = {"model": MODEL_ID, "messages": USER, **extra_body}
    with pytest.raises(openai.BadRequestError) as info:
        # Raw post: the SDK's typed create() would refuse some of these before sending.
        client.post("/chat/completions", body=body, cast_to=object)
    error = info.value
    assert error.status_code == 400
    assert error.param == param, error.body
    assert error.code == code, error.body
    assert isinstance(error.body, dict) and error.body["type"] == "invalid_request_error"
    assert param in error.message  # the one-line message names the field too
    assert "\n" not in error.message


def test_n_greater_than_one_is_refused_not_answered_once(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=USER, n=2)
    assert "n > 1 is not supported" in info.value.message
    assert info.value.param == "n"


def test_typed_create_calls_surface_as_bad_request(client: openai.OpenAI) -> None:
    """The SDK's own keyword arguments, as an application would pass them."""
    calls: list[dict[str, Any]] = [
        {"max_tokens": 10**12},
        {"temperature": 3.0},
        {"response_format": {"type": "json_object"}},
        {"tools": [{"type": "function", "function": {"name": "lookup", "parameters": {}}}]},
        {"logprobs": True},
    ]
    for kwargs in calls:
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL_ID, messages=USER, **kwargs)
        assert info.value.param == next(iter(kwargs)).replace("response_format", "response_format.type")


def test_good_request_with_known_and_vendor_parameters_answers(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL_ID,
        messages=USER,
        n=1,
        temperature=0.2,
        top_p=1,
        max_tokens=256,
        presence_penalty=0,
        frequency_penalty=0.5,
        stop=["\n\n\n"],
        seed=7,
        user="tester",
        response_format={"type": "text"},
        logprobs=False,
        tool_choice="none",
        stream=False,
        extra_body={"repetition_penalty": 1.1, "top_k": 3, "chat_template_kwargs": {"x": 1}},
    )
    assert len(extra(completion, "citations")) == 3
    assert extra(completion, "citations")[0]["source"] == PAGE_000
    streamed = list(
        client.chat.completions.create(
            model=MODEL_ID, messages=USER, stream=True, temperature=1, extra_body={"vendor_x": True}
        )
    )
    assert streamed[-1].choices[0].finish_reason == "stop"


# Oversize text: varied characters (the size check must not depend on what they are).
RARE = "".join(chr(0x4E00 + (i * 7919) % 20000) for i in range(25_000))


def test_an_oversize_message_is_a_413_naming_it(client: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": RARE[:20_001]}, {"role": "user", "content": QUESTION}]
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=messages)
    error = info.value
    assert error.status_code == 413
    assert error.param == "messages.0.content"
    assert "20000" in error.message
    # Content parts count as much as a string.
    parts: Any = [{"role": "user", "content": [{"type": "text", "text": RARE[:20_001]}]}]
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=[*parts, *USER])
    assert info.value.status_code == 413 and info.value.param == "messages.0.content"


def test_an_oversize_conversation_is_a_413_naming_the_setting(client: openai.OpenAI) -> None:
    turn = RARE[:19_000]
    messages: Any = [
        {"role": "user", "content": turn},
        {"role": "assistant", "content": turn},
        {"role": "user", "content": turn},
        *USER,
    ]  # 57,000 characters > the default RAG_MAX_CONVERSATION_CHARS (50,000)
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model=MODEL_ID, messages=messages)
    error = info.value
    assert error.status_code == 413
    assert error.param == "messages"
    assert "50000" in error.message and "RAG_MAX_CONVERSATION_CHARS" in error.message
    assert error.code == "context_length_exceeded"


def test_a_longest_previous_turn_still_answers(client: openai.OpenAI) -> None:
    """At the cap, the previous user turn (read by jieba for the follow-up) is accepted.

    One run jieba cannot split is its worst case (quadratic): 20,000 × 的 cost 2.5 s whole.
    """
    messages: Any = [
        {"role": "user", "content": "的" * 20_000},
        {"role": "assistant", "content": "好的。"},
        *USER,
    ]
    completion = client.chat.completions.create(model=MODEL_ID, messages=messages)
    assert completion.choices[0].finish_reason == "stop"
