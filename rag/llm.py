"""Optional LLM answers: any OpenAI-compatible chat endpoint, with citations verified, not trusted.

The flow the ``Answerer`` drives:

1. :func:`rewrite_question` turns a follow-up (``那它的会长是谁？``) into a standalone question.
2. :func:`build_messages` renders ``prompts/answer.jinja2``: the retrieved passages numbered
   ``[1]..[n]`` inside ``<资料>`` delimiters, as data the model must not take orders from.
3. :class:`LLMClient` sends them (``complete`` or ``stream``) through the real ``openai`` client.
4. :func:`rag.verification.verify_citations` checks every sentence of the reply against
   the passages it cites.

Every failure of the endpoint (timeout, connection, HTTP error, malformed reply) is an
:class:`LLMError` with a one-line message; the caller falls back to the extractive answer.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Self, cast

import httpx
import jinja2
import openai
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from rag.errors import RagError
from rag.injection import mark_instructions
from rag.models import NOT_FOUND, Citation, Turn
from rag.settings import Settings
from rag.verification import CITATION_MARKER

log = logging.getLogger(__name__)

MAX_HISTORY_CHARS = 1000
"""Each previous message is cut to this many characters: history is context, not payload."""

MAX_PASSAGE_CHARS = 2000
"""A passage longer than this is cut in the prompt (chunks are ~300 characters)."""

MAX_REWRITE_CHARS = 500
"""A rewritten question longer than this is not a question but a runaway reply."""

PROMPTS_DIR = Path(__file__).with_name("prompts")


class LLMError(RagError):
    """The LLM endpoint failed or replied something unusable; the message is one line."""


def _one_line(text: str, limit: int = 200) -> str:
    """Whitespace collapsed and cut to ``limit`` characters: error messages stay on one line."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


# -- the client --------------------------------------------------------------------------

_THINK_OPEN = "<think>"
_THINK_CLOSE = "</think>"
_THINK_BLOCK = re.compile(r"^\s*<think>.*?</think>\s*", re.DOTALL)


def _strip_think(text: str) -> str:
    """The reply without a leading ``<think>…</think>`` block (Qwen3, DeepSeek-R1 in content)."""
    if text.lstrip().startswith(_THINK_OPEN):
        if _THINK_CLOSE not in text:
            return ""
        return _THINK_BLOCK.sub("", text, count=1)
    return text


class _ThinkFilter:
    """Streaming version of :func:`_strip_think`: drops a leading reasoning block from deltas."""

    def __init__(self) -> None:
        self._buffer = ""
        self._state = "start"  # start -> [thinking -> after] -> answer

    def feed(self, delta: str) -> str:
        """The part of ``delta`` that belongs to the answer (may be empty)."""
        if self._state == "answer":
            return delta
        self._buffer += delta
        if self._state == "start":
            head = self._buffer.lstrip()
            if head.startswith(_THINK_OPEN):
                self._state = "thinking"
            elif _THINK_OPEN.startswith(head):
                return ""  # could still become "<think>": wait for more
            else:
                self._state = "answer"
                out, self._buffer = self._buffer, ""
                return out
        if self._state == "thinking" and _THINK_CLOSE in self._buffer:
            self._state = "after"
            self._buffer = self._buffer.split(_THINK_CLOSE, 1)[1]
        if self._state == "after":
            out, self._buffer = self._buffer.lstrip(), ""
            if out:
                self._state = "answer"
            return out
        return ""

    def flush(self) -> str:
        """What is left at the end of the stream (a short reply that looked like ``<thi``)."""
        out = self._buffer if self._state == "start" else ""
        self._buffer = ""
        return out


class LLMClient:
    """A chat model behind an OpenAI-compatible endpoint (Ollama, vLLM, llama.cpp, Qwen, ...).

    Built per service (not a module global); safe to share between threads. ``base_url``
    is the API root including the version, e.g. ``http://localhost:11434/v1`` for Ollama.
    No retries: a failure is reported at once and the service answers extractively.
    """

    def __init__(self, settings: Settings) -> None:
        """Connect lazily to ``settings.llm_base_url``; ``LLMError`` when it is not configured."""
        if not self.configured(settings):
            raise LLMError("no LLM configured: set RAG_LLM_BASE_URL and RAG_LLM_MODEL")
        assert settings.llm_base_url is not None and settings.llm_model is not None
        self.base_url = settings.llm_base_url.rstrip("/")
        self.model = settings.llm_model
        self.timeout = settings.llm_timeout
        self.stream_usage = settings.llm_stream_usage
        self._client = OpenAI(
            base_url=self.base_url,
            api_key=settings.llm_api_key or "not-needed",
            timeout=settings.llm_timeout,
            max_retries=0,
        )

    @staticmethod
    def configured(settings: Settings) -> bool:
        """Whether an endpoint and a model are set (``RAG_LLM_BASE_URL``, ``RAG_LLM_MODEL``)."""
        return bool(settings.llm_base_url and settings.llm_model)

    def __repr__(self) -> str:
        return f"LLMClient(base_url={self.base_url!r}, model={self.model!r})"

    def close(self) -> None:
        """Close the HTTP connections."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _error(self, exc: BaseException) -> LLMError:
        """The one-line ``LLMError`` for whatever the client or the endpoint did."""
        where = f"LLM {self.model} at {self.base_url}"
        if isinstance(exc, openai.APITimeoutError | httpx.TimeoutException):
            return LLMError(f"{where} timed out after {self.timeout:g}s (RAG_LLM_TIMEOUT)")
        if isinstance(exc, openai.APIConnectionError | httpx.TransportError):
            cause = exc.__cause__ or exc
            return LLMError(_one_line(f"cannot reach {where}: {cause}"))
        if isinstance(exc, openai.APIStatusError):
            hint = ""
            if exc.status_code == 404:
                hint = " (does RAG_LLM_BASE_URL end in /v1? is RAG_LLM_MODEL pulled?)"
            elif exc.status_code in (401, 403):
                hint = " (check RAG_LLM_API_KEY)"
            detail = exc.message
            if isinstance(exc.body, dict):
                detail = str(exc.body.get("message") or exc.body.get("error") or detail)
            return LLMError(_one_line(f"{where} answered HTTP {exc.status_code}{hint}: {detail}"))
        if isinstance(exc, ValueError):  # json.JSONDecodeError, pydantic validation
            return LLMError(_one_line(f"{where} sent a malformed reply: {exc}"))
        return LLMError(_one_line(f"{where} failed: {type(exc).__name__}: {exc}"))

    def _create(self, messages: list[dict[str, str]], *, stream: bool, **options: Any) -> Any:
        return self._client.chat.completions.create(
            model=self.model,
            messages=cast("list[ChatCompletionMessageParam]", messages),
            stream=stream,
            **{k: v for k, v in options.items() if v is not None},
        )

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
    ) -> str:
        """The reply text to ``messages`` (a leading ``<think>`` block removed)."""
        started = time.perf_counter()
        try:
            completion = self._create(messages, stream=False, temperature=temperature, max_tokens=max_tokens)
        except (openai.OpenAIError, httpx.HTTPError, ValueError) as exc:
            raise self._error(exc) from exc
        choices = getattr(completion, "choices", None)
        if not isinstance(choices, list) or not choices:
            raise LLMError(f"LLM {self.model} at {self.base_url} sent a malformed reply: no choices")
        message = getattr(choices[0], "message", None)
        content = getattr(message, "content", None)
        if not isinstance(content, str) or not content.strip():
            raise LLMError(f"LLM {self.model} at {self.base_url} sent a malformed reply: no message content")
        text = _strip_think(content).strip()
        if not text:
            raise LLMError(f"LLM {self.model} at {self.base_url} replied only with reasoning")
        log.info(
            "LLM reply: %d chars in %.0f ms",
            len(text),
            (time.perf_counter() - started) * 1000,
        )
        return text

    def stream(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        usage: dict[str, int] | None = None,
    ) -> Iterator[str]:
        """The reply as content deltas while the model writes it.

        ``llm_timeout`` bounds the wait for each piece, not the whole answer. An error in
        the middle raises ``LLMError`` after some deltas were already yielded. Closing the
        generator early closes the HTTP stream. When the endpoint reports token counts in
        the stream, they are put into ``usage`` (``prompt_tokens``, ``completion_tokens``);
        they are asked for with ``stream_options`` unless ``RAG_LLM_STREAM_USAGE`` is off
        (OpenAI, vLLM, Ollama and llama.cpp take it; an old server may refuse the field).
        """
        started = time.perf_counter()
        think = _ThinkFilter()
        produced = 0
        try:
            response = self._create(
                messages,
                stream=True,
                temperature=temperature,
                max_tokens=max_tokens,
                stream_options={"include_usage": True} if self.stream_usage else None,
            )
        except (openai.OpenAIError, httpx.HTTPError, ValueError) as exc:
            raise self._error(exc) from exc
        try:
            for chunk in response:
                if usage is not None:
                    _record_usage(getattr(chunk, "usage", None), usage)
                choices = getattr(chunk, "choices", None)
                if not choices:
                    continue  # e.g. the usage chunk some servers send last
                delta = getattr(choices[0], "delta", None)
                content = getattr(delta, "content", None)
                if not isinstance(content, str) or not content:
                    continue
                piece = think.feed(content)
                if piece:
                    produced += len(piece)
                    yield piece
            rest = think.flush()
            if rest:
                produced += len(rest)
                yield rest
        except (openai.OpenAIError, httpx.HTTPError, ValueError) as exc:
            raise self._error(exc) from exc
        finally:
            close = getattr(response, "close", None)
            if callable(close):
                close()
        if not produced:
            raise LLMError(f"LLM {self.model} at {self.base_url} streamed no answer text")
        log.info(
            "LLM stream: %d chars in %.0f ms",
            produced,
            (time.perf_counter() - started) * 1000,
        )

    def models(self) -> list[str]:
        """The model ids the endpoint serves (a health check for ``rag doctor``-like commands)."""
        try:
            return [m.id for m in self._client.models.list()]
        except (openai.OpenAIError, httpx.HTTPError, ValueError) as exc:
            raise self._error(exc) from exc


# -- prompts -----------------------------------------------------------------------------


def _record_usage(reported: object, usage: dict[str, int]) -> None:
    """Copy a stream chunk's ``usage`` (when it has well-formed counts) into ``usage``."""
    prompt = getattr(reported, "prompt_tokens", None)
    completion = getattr(reported, "completion_tokens", None)
    if isinstance(prompt, int) and isinstance(completion, int) and prompt >= 0 and completion >= 0:
        usage.update(prompt_tokens=prompt, completion_tokens=completion)


def _as_data(value: object) -> str:
    """Passage text made safe to put between ``<资料>`` tags: it cannot close or open one.

    Angle brackets become their full-width forms (Chinese news prints none of its own),
    so a document containing ``</资料>`` cannot end the data block and talk as the user.
    """
    return str(value).replace("<", "＜").replace(">", "＞")


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(PROMPTS_DIR),
        autoescape=False,  # chat prompts, not HTML
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters["data"] = _as_data
    return env


def _render(template: str, part: str, **context: Any) -> str:
    """Render the macro ``part`` (``system`` or ``user``) of a template in ``prompts/``."""
    module = _environment().get_template(template).make_module({"not_found": NOT_FOUND})
    return str(getattr(module, part)(**context)).strip()


def _turns(history: Sequence[Turn], max_turns: int) -> list[tuple[str, str]]:
    """The last ``max_turns`` messages, cut to ``MAX_HISTORY_CHARS``, blank ones dropped."""
    turns: list[tuple[str, str]] = []
    for turn in history:
        content = turn.content
        if turn.role == "assistant":
            # Its [n] pointed at the passages of its own question, not at this one's.
            content = CITATION_MARKER.sub("", content)
        content = content.strip()[:MAX_HISTORY_CHARS]
        if content:
            turns.append((turn.role, content))
    return turns[-max_turns:] if max_turns > 0 else []


def build_messages(
    question: str,
    passages: Sequence[Citation],
    history: Sequence[Turn],
    *,
    max_turns: int,
) -> list[dict[str, str]]:
    """Chat messages asking the model to answer ``question`` from ``passages`` with [n] citations.

    ``passages`` are numbered by their ``id`` (1-based, as the service numbers citations).
    The last ``max_turns`` of ``history`` become prior messages (``Settings.history_turns``),
    and the passages plus the question always come last.
    """
    system = _render("answer.jinja2", "system")
    user = _render(
        "answer.jinja2",
        "user",
        question=question.strip(),
        passages=[
            {
                "n": p.id,
                "title": p.chunk.title,
                "source": p.chunk.source,
                # Sentences that address the model are marked as such (see rag.injection).
                "text": mark_instructions(p.chunk.text[:MAX_PASSAGE_CHARS]),
            }
            for p in passages
        ],
    )
    messages = [{"role": "system", "content": system}]
    messages += [{"role": r, "content": c} for r, c in _turns(history, max_turns)]
    messages.append({"role": "user", "content": user})
    return messages


def _clean_rewrite(reply: str) -> str:
    """The question out of a rewrite reply: first line, no label, no quotes."""
    lines = [line.strip() for line in reply.strip().splitlines() if line.strip()]
    text = lines[0] if lines else ""
    text = re.sub(r"^(改写后的问题|独立问题|问题|Question)\s*[:：]\s*", "", text)
    return text.strip().strip("“”\"'「」『』").strip()


def rewrite_question(
    client: LLMClient,
    question: str,
    history: Sequence[Turn],
    *,
    max_turns: int,
) -> str:
    """``question`` made standalone from ``history`` (``那它的会长是谁？`` → ``大桥商会的会长是谁？``).

    Without history the question is returned as it is, without asking the model. An
    unusable rewrite (empty, runaway) is an ``LLMError``, like a failed request.
    """
    turns = _turns(history, max_turns)
    if not turns:
        return question
    messages = [
        {"role": "system", "content": _render("rewrite.jinja2", "system")},
        {
            "role": "user",
            "content": _render("rewrite.jinja2", "user", question=question.strip(), turns=turns),
        },
    ]
    rewritten = _clean_rewrite(client.complete(messages))
    if not rewritten:
        raise LLMError(f"LLM {client.model} returned an empty rewrite of the question")
    if len(rewritten) > MAX_REWRITE_CHARS:
        raise LLMError(f"LLM {client.model} rewrote the question into {len(rewritten)} characters")
    log.info("rewrote %r as %r", question, rewritten)
    return rewritten
