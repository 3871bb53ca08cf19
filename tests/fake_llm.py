"""A fake OpenAI-compatible chat server for tests: real HTTP on loopback, scripted "model".

It speaks the chat-completions wire protocol the way OpenAI, Ollama, vLLM and llama.cpp's
server do: ``POST /v1/chat/completions`` answers a ``chat.completion`` JSON object, or with
``"stream": true`` an SSE stream of ``chat.completion.chunk`` objects ending in
``data: [DONE]``; ``GET /v1/models`` lists the one model.

The "model" is a script: a function of the request's messages returning either the reply
text or a :class:`Fault` (sleep past the client's timeout, an HTTP error, a malformed body,
a stream that stalls). Every request body is recorded in ``FakeLLM.requests``.
:func:`obeying` is a script that obeys instructions planted in the passages it is given.

    with FakeLLM(lambda messages: "回答[1]。") as fake:
        settings = Settings(llm_base_url=fake.base_url, llm_model=fake.model)

Streams can be paced: ``chunk_delay`` seconds between chunks, or, deterministically, a
``gate``: after the first piece of text the stream waits until the test sets the event, so
a test can check that the first piece reached its client while the rest was not yet
generated. ``stream_log`` records what each stream sent, in order.

:class:`LoopbackServer` runs any ASGI app the same way (the service under test, say).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class Fault:
    """A misbehaviour of the server instead of a normal reply.

    ``sleep``: wait ``seconds`` before answering ``text`` normally (past the client's timeout).
    ``status``: answer HTTP ``status`` with the OpenAI error body.
    ``raw``: answer HTTP 200 with ``body`` verbatim as ``content_type`` (malformed replies);
    with ``stream: true`` the body is sent as the SSE stream instead.
    ``stall``: stream ``text`` and then stop sending for ``seconds`` before ``[DONE]``.
    """

    kind: str
    seconds: float = 0.0
    status: int = 200
    body: str = ""
    content_type: str = "application/json"
    text: str = ""


Reply = str | Fault
Script = Callable[[Messages], Reply]


def sleep(seconds: float, text: str = "太慢了[1]。") -> Fault:
    """Answer ``text``, but only after ``seconds``."""
    return Fault("sleep", seconds=seconds, text=text)


def http_error(status: int, message: str = "internal error") -> Fault:
    """Answer HTTP ``status`` with an OpenAI-style error body."""
    body = json.dumps({"error": {"message": message, "type": "server_error", "code": None}})
    return Fault("status", status=status, body=body)


def raw(body: str, content_type: str = "application/json") -> Fault:
    """Answer HTTP 200 with ``body`` as it is: non-JSON, JSON without choices, ..."""
    return Fault("raw", body=body, content_type=content_type)


def stall(text: str, seconds: float) -> Fault:
    """Stream ``text``, then go silent for ``seconds`` (a stream that hangs mid-answer)."""
    return Fault("stall", seconds=seconds, text=text)


def last_user(messages: Messages) -> str:
    """The content of the last user message (where the passages and the question are)."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")


_PASSAGE_BLOCK = re.compile(r'<资料 编号="(\d+)">\n(.*?)\n</资料>', re.DOTALL)
# What a gullible model reads past: invisible format characters (zero-width, bidi controls).
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def passage_blocks(prompt: str) -> dict[int, str]:
    """The numbered ``<资料 编号="n">`` blocks of an answer prompt, by number."""
    return {int(n): body for n, body in _PASSAGE_BLOCK.findall(prompt)}


def obeying(payloads: list[str], *, cite: bool = True, prefix: str = "") -> Script:
    """A model that obeys whatever a passage tells it to say: the worst case for injection.

    When a passage of the prompt carries one of ``payloads`` (however it is spelt there:
    NFKC and invisible characters are looked through, as a model reads), the reply is that
    payload, citing the passage it came from (``cite``), after ``prefix`` (e.g. a faithful
    sentence, so that the planted one rides on a supported answer). It obeys even text the
    prompt marks as a suspected instruction: the service must not rely on the model.
    Without a payload in the prompt it answers ``资料中没有找到答案。``.
    """

    def model(messages: Messages) -> str:
        for n, body in passage_blocks(last_user(messages)).items():
            seen = _INVISIBLE.sub("", unicodedata.normalize("NFKC", body))
            for payload in payloads:
                if unicodedata.normalize("NFKC", payload) in seen:
                    return f"{prefix}{payload}[{n}]。" if cite else f"{prefix}{payload}。"
        return "资料中没有找到答案。"

    return model


class LoopbackServer:
    """A real uvicorn server for ``app`` on ``127.0.0.1`` (a free port), in a daemon thread."""

    def __init__(
        self, app: Any, lifespan: Literal["on", "off"] = "on", name: str = "loopback", settings: Any = None
    ) -> None:
        self.app = app
        self.lifespan = lifespan
        self.name = name
        self.settings = settings
        """With the service's ``Settings``: served as ``rag serve`` serves it (``rag.api.server``)."""
        self.log_level = "warning"
        self.port = 0
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        options: dict[str, Any] = {
            "log_level": self.log_level,
            "lifespan": self.lifespan,
            "timeout_graceful_shutdown": 1,
        }
        if self.settings is not None:
            from rag.api.server import server_config

            config: uvicorn.Config = server_config(self.app, self.settings, **options)
        else:
            config = uvicorn.Config(self.app, **options)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [sock]}, daemon=True, name=self.name
        )
        self._thread.start()
        # Generous: the service's lifespan loads models; the fake LLM starts in milliseconds.
        deadline = time.monotonic() + 180
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} server did not start; see the log above")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._server is not None and self._thread is not None
        self._server.should_exit = True
        self._thread.join(timeout=15)


@dataclass
class StreamLog:
    """What one streamed reply sent: the text pieces so far, and whether it has ended."""

    pieces: list[str] = field(default_factory=list)
    finished: bool = False
    gate_timed_out: bool = False


@dataclass
class FakeLLM:
    """The server; a context manager that starts it on ``127.0.0.1`` on a free port."""

    script: Script = field(default=lambda _messages: "好的[1]。")
    model: str = "fake-qwen"
    api_key: str = "test-key"
    chunk_chars: int = 3
    """How many characters of the reply each streamed chunk carries."""
    chunk_delay: float = 0.0
    """Seconds between two streamed chunks (a model that takes its time)."""
    gate: threading.Event | None = None
    """When set to an event: every stream waits for it after its first piece of text."""
    gate_timeout: float = 60.0
    """How long a stream waits at the gate before going on anyway (recorded in its log)."""
    requests: list[dict[str, Any]] = field(default_factory=list)
    stream_log: list[StreamLog] = field(default_factory=list)
    """One entry per streamed reply, in order."""

    def __post_init__(self) -> None:
        self._loopback = LoopbackServer(self._app(), lifespan="off", name="fake-llm")

    @property
    def port(self) -> int:
        """The port it listens on (0 until started)."""
        return self._loopback.port

    @property
    def base_url(self) -> str:
        """What ``RAG_LLM_BASE_URL`` would be: ``http://127.0.0.1:<port>/v1``."""
        return f"{self._loopback.url}/v1"

    def __enter__(self) -> Self:
        self._loopback.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._loopback.__exit__(*exc)

    # -- the HTTP side ------------------------------------------------------------------

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models(request: Request) -> Response:
            if (denied := self._check_auth(request)) is not None:
                return denied
            data = [{"id": self.model, "object": "model", "created": 0, "owned_by": "fake"}]
            return JSONResponse({"object": "list", "data": data})

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Response:
            if (denied := self._check_auth(request)) is not None:
                return denied
            body = await request.json()
            self.requests.append(body)
            reply = self.script(body["messages"])
            stream = bool(body.get("stream"))
            if isinstance(reply, Fault):
                if reply.kind == "status":
                    return Response(reply.body, reply.status, media_type="application/json")
                if reply.kind == "raw":
                    media = "text/event-stream" if stream else reply.content_type
                    return Response(reply.body, 200, media_type=media)
                if reply.kind == "sleep":
                    await asyncio.sleep(reply.seconds)
                    reply_text = reply.text
                elif reply.kind == "stall":
                    return self._sse(reply.text, stall_seconds=reply.seconds)
                else:
                    raise ValueError(f"unknown fault {reply.kind}")
            else:
                reply_text = reply
            if stream:
                options = body.get("stream_options") or {}
                counted = self._usage(reply_text, body["messages"]) if options.get("include_usage") else None
                return self._sse(reply_text, usage=counted)
            return JSONResponse(self._completion(reply_text, body["messages"]))

        return app

    def _check_auth(self, request: Request) -> Response | None:
        if request.headers.get("authorization") == f"Bearer {self.api_key}":
            return None
        error = {
            "message": "invalid api key",
            "type": "invalid_request_error",
            "code": "401",
        }
        return JSONResponse({"error": error}, status_code=401)

    @staticmethod
    def _usage(text: str, messages: Messages) -> dict[str, int]:
        """Token counts as this fake counts them: one per character."""
        prompt_tokens = sum(len(str(m.get("content", ""))) for m in messages)
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(text),
            "total_tokens": prompt_tokens + len(text),
        }

    def _completion(self, text: str, messages: Messages) -> dict[str, Any]:
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
            "usage": self._usage(text, messages),
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> str:
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n"

    async def _pace(self, index: int, log: StreamLog) -> None:
        """Before text piece ``index``: wait at the gate (after the first piece) or the delay."""
        if index == 0:
            return
        if index == 1 and self.gate is not None:
            # In a worker thread: the event is set from the test's thread, not this loop.
            log.gate_timed_out = not await asyncio.to_thread(self.gate.wait, self.gate_timeout)
        elif self.chunk_delay:
            await asyncio.sleep(self.chunk_delay)

    def _sse(
        self, text: str, stall_seconds: float = 0.0, usage: dict[str, int] | None = None
    ) -> StreamingResponse:
        log = StreamLog()
        self.stream_log.append(log)

        async def events() -> AsyncIterator[str]:
            yield self._chunk({"role": "assistant", "content": ""})
            pieces = [text[i : i + self.chunk_chars] for i in range(0, len(text), self.chunk_chars)]
            for index, piece in enumerate(pieces):
                await self._pace(index, log)
                yield self._chunk({"content": piece})
                log.pieces.append(piece)  # after the yield: Starlette has handed it to the socket
            if stall_seconds:
                await asyncio.sleep(stall_seconds)
            yield self._chunk({}, finish="stop")
            if usage is not None:  # OpenAI's include_usage chunk: no choices, the counts
                last = {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": usage,
                }
                yield f"data: {json.dumps(last)}\n\n"
            log.finished = True
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
