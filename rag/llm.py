"""Optional LLM answers: any OpenAI-compatible chat endpoint, with citations verified, not trusted.

The flow the ``Answerer`` drives:

1. :func:`rewrite_question` turns a follow-up (``那它的会长是谁？``) into a standalone question.
2. :func:`build_messages` renders ``prompts/answer.jinja2``: the retrieved passages numbered
   ``[1]..[n]`` inside ``<资料>`` delimiters, as data the model must not take orders from.
3. :class:`LLMClient` sends them (``complete`` or ``stream``) through the real ``openai`` client.
4. :func:`verify_citations` checks every sentence of the reply against the passages it cites.

Every failure of the endpoint (timeout, connection, HTTP error, malformed reply) is an
:class:`LLMError` with a one-line message; the caller falls back to the extractive answer.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Self, cast

import httpx
import jinja2
import numpy as np
import openai
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from rag.errors import RagError
from rag.models import Citation
from rag.settings import Settings
from rag.textnorm import fold, search_tokens, squash

log = logging.getLogger(__name__)

NOT_FOUND = "资料中没有找到答案"
"""What the model must say when the passages do not answer (same text as ``rag.answer``)."""

MAX_HISTORY_TURNS = 6
"""How many previous messages (user or assistant) are sent along with a question."""

MAX_HISTORY_CHARS = 1000
"""Each previous message is cut to this many characters: history is context, not payload."""

MAX_PASSAGE_CHARS = 2000
"""A passage longer than this is cut in the prompt (chunks are ~300 characters)."""

MAX_REWRITE_CHARS = 500
"""A rewritten question longer than this is not a question but a runaway reply."""

PROMPTS_DIR = Path(__file__).with_name("prompts")

Role = str
History = Sequence["tuple[Role, str] | _TurnLike"]
Similarity = Callable[[str, str], float]


class LLMError(RagError):
    """The LLM endpoint failed or replied something unusable; the message is one line."""


class _TurnLike(Protocol):
    """``rag.answer.Turn`` without importing it (``rag.answer`` imports this module)."""

    @property
    def role(self) -> str: ...

    @property
    def content(self) -> str: ...


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
    ) -> Iterator[str]:
        """The reply as content deltas while the model writes it.

        ``llm_timeout`` bounds the wait for each piece, not the whole answer. An error in
        the middle raises ``LLMError`` after some deltas were already yielded. Closing the
        generator early closes the HTTP stream.
        """
        started = time.perf_counter()
        think = _ThinkFilter()
        produced = 0
        try:
            response = self._create(messages, stream=True, temperature=temperature, max_tokens=max_tokens)
        except (openai.OpenAIError, httpx.HTTPError, ValueError) as exc:
            raise self._error(exc) from exc
        try:
            for chunk in response:
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


_MARKER = re.compile(r"[\[【]\s*(\d+(?:\s*[,，、]\s*\d+)*)\s*[\]】]")


def _turns(history: History | None, max_turns: int) -> list[tuple[str, str]]:
    """The last ``max_turns`` user/assistant messages; other roles (``system``!) are dropped."""
    turns: list[tuple[str, str]] = []
    for turn in history or []:
        role, content = turn if isinstance(turn, tuple) else (turn.role, turn.content)
        if role not in ("user", "assistant"):
            log.warning("history turn with role %r ignored", role)
            continue
        if role == "assistant":
            # Its [n] pointed at the passages of its own question, not at this one's.
            content = _MARKER.sub("", content)
        content = content.strip()[:MAX_HISTORY_CHARS]
        if content:
            turns.append((role, content))
    return turns[-max_turns:] if max_turns > 0 else []


def build_messages(
    question: str,
    passages: Sequence[Citation],
    history: History | None = None,
    *,
    max_turns: int = MAX_HISTORY_TURNS,
) -> list[dict[str, str]]:
    """Chat messages asking the model to answer ``question`` from ``passages`` with [n] citations.

    ``passages`` are numbered by their ``id`` (1-based, as the service numbers citations).
    ``history`` is ``(role, content)`` pairs or ``Turn`` objects; the last ``max_turns`` become
    prior messages, and the passages plus the question always come last.
    """
    system = _render("answer.jinja2", "system")
    user = _render(
        "answer.jinja2",
        "user",
        question=question.strip(),
        passages=[
            {
                "n": p.id,
                "title": p.title,
                "source": p.source,
                "text": p.text[:MAX_PASSAGE_CHARS],
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
    history: History | None,
    *,
    max_turns: int = MAX_HISTORY_TURNS,
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


# -- verification ------------------------------------------------------------------------

# Defaults of verify_citations, measured on the seed pages with multilingual-e5-small:
# - TERM_OVERLAP 0.6: share of the sentence's content-word characters (jieba search tokens,
#   stopwords out, weighted by length so 年/中 count less than 汪志浩) found in the cited
#   passages. Faithful paraphrases of a 300-character chunk score 0.8-1.0; sentences that
#   wrap invented facts around its words 0.1-0.35 (联盟由宁波市政府于2020年成立: 0.31);
#   unrelated ones < 0.1. 0.6 leaves room for a model's own connecting words.
# - SIMILARITY 0.9: cosine of sentence (query prompt) and passage (passage prompt). e5 has a
#   high floor: unrelated Chinese sentences score 0.80-0.85 against a passage, a swapped name
#   ~0.88, faithful paraphrases 0.90-0.94. Other models need their own value.
# A sentence is supported when either reaches its threshold AND every number in it appears
# in the cited passages (a wrong date or amount is the costliest hallucination in news QA).
TERM_OVERLAP = 0.6
SIMILARITY = 0.9

_SENTENCE_END = re.compile(r"[。！？!?]+[”’」』）)]*|\n+")
_LEADING_MARKERS = re.compile(r"^(\s*[\[【]\s*\d+(?:\s*[,，、]\s*\d+)*\s*[\]】])+")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_LIST_ITEM = re.compile(r"^\s*(?:\d{1,2}[.、)）](?!\d)|[-*•])\s*")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3})")

# Instruction-like text planted in a document. It is never evidence for an answer.
_INJECTION = re.compile(
    r"(忽略|无视|忘记|忘掉|不要理会|跳过)(掉)?(以上|上述|之前|前面|先前|此前|所有|全部|系统|你的)"
    r".{0,8}?(指令|指示|规则|要求|提示|设定|命令)"
    r"|(ignore|disregard|forget)\s+(all\s+)?(the\s+)?(previous|prior|above|earlier|your)\s+"
    r"(instructions?|prompts?|rules)",
    re.IGNORECASE,
)
_PASSAGE_SENTENCE = re.compile(r"[^。！？!?\n]+[。！？!?]*[”’」』]*")


@dataclass(frozen=True)
class SentenceCheck:
    """The verdict on one sentence of a generated answer."""

    index: int
    """1-based position of the sentence in the answer."""
    text: str
    """The sentence as generated, markers included."""
    cited: list[int]
    """Markers that point at existing passages, in order."""
    missing: list[int]
    """Markers that point at no passage."""
    overlap: float | None
    """Length-weighted share of the sentence's terms found in the cited passages."""
    similarity: float | None
    """Best embedding similarity to a cited passage, when a similarity was given."""
    supported: bool
    """Cited, and the cited passages support it (or it is the not-found message)."""


@dataclass
class VerifiedAnswer:
    """A generated answer with its citations checked sentence by sentence."""

    text: str
    """The answer text as generated (reasoning block removed)."""
    cited_ids: list[int] = field(default_factory=list)
    """Ids of the existing passages it cites, in order of first citation."""
    warnings: list[str] = field(default_factory=list)
    """One line per problem: nonexistent citation, unsupported or uncited sentence, injection."""
    unsupported_sentences: list[str] = field(default_factory=list)
    """Sentences that cite passages which do not support them."""
    uncited_sentences: list[str] = field(default_factory=list)
    """Sentences that cite no existing passage."""
    abstained: bool = False
    """The model said the passages do not answer (``资料中没有找到答案``)."""
    sentences: list[SentenceCheck] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every sentence supported by a passage it cites, no citation dangling."""
        return not (
            self.unsupported_sentences or self.uncited_sentences or any(s.missing for s in self.sentences)
        )

    @property
    def supported(self) -> bool:
        """At least one sentence is a supported, cited statement (worth showing as an answer)."""
        return any(s.supported and s.cited for s in self.sentences)


def split_sentences(text: str) -> list[str]:
    """Sentences of a generated answer, each keeping its ``[n]`` markers.

    Splits after 。！？!? (and closing quotes) and at line breaks; markers written after
    the full stop (``……联盟。[1]``) are moved back to the sentence they cite.
    """
    pieces: list[str] = []
    last = 0
    for m in _SENTENCE_END.finditer(text):
        pieces.append(text[last : m.end()])
        last = m.end()
    pieces.append(text[last:])
    out: list[str] = []
    for piece in pieces:
        lead = _LEADING_MARKERS.match(piece)
        if lead and out:
            out[-1] = out[-1].rstrip() + lead.group().strip()
            piece = piece[lead.end() :]
        if piece.strip():
            out.append(piece.strip())
    return out


def _markers(sentence: str) -> list[int]:
    return [int(n) for m in _MARKER.finditer(sentence) for n in re.split(r"[,，、]", m.group(1))]


def _searchable(text: str) -> str:
    return _THOUSANDS.sub("", fold(squash(text)))


def _evidence(passage: Citation) -> str:
    """The passage text a sentence may rely on: sentences with planted instructions removed."""
    return "".join(s for s in _PASSAGE_SENTENCE.findall(passage.text) if not _INJECTION.search(s))


def suspected_injections(passages: Iterable[Citation]) -> list[int]:
    """Ids of passages that contain instruction-like text (``忽略以上指令……``)."""
    return [p.id for p in passages if _INJECTION.search(p.text)]


def term_overlap(sentence: str, evidence: str) -> float:
    """Length-weighted share of the sentence's search terms found in ``evidence`` (1.0 if none)."""
    tokens = set(search_tokens(_MARKER.sub("", sentence)))
    if not tokens:
        return 1.0
    haystack = _searchable(evidence)
    total = sum(len(t) for t in tokens)
    return sum(len(t) for t in tokens if t in haystack) / total


def _numbers(text: str) -> set[str]:
    return set(_NUMBER.findall(_searchable(_MARKER.sub("", text))))


def verify_citations(
    answer_text: str,
    passages: Sequence[Citation],
    similarity: Similarity | None = None,
    *,
    overlap_threshold: float = TERM_OVERLAP,
    similarity_threshold: float = SIMILARITY,
    check_numbers: bool = True,
) -> VerifiedAnswer:
    """Check each sentence of ``answer_text`` against the passages its ``[n]`` markers cite.

    A marker without a passage is a warning ``引用[n]不存在``; a cited sentence that is not
    supported (see ``TERM_OVERLAP``/``SIMILARITY`` above) is flagged, and so is a sentence
    without a citation, except the not-found message. ``similarity(sentence, passage_text)``
    is optional (e.g. :func:`embedding_similarity`); without it only terms are compared.
    """
    by_id = {p.id: p for p in passages}
    evidence: dict[int, str] = {}
    result = VerifiedAnswer(text=answer_text.strip())
    injected = suspected_injections(passages)
    for pid in injected:
        evidence[pid] = _evidence(by_id[pid])
    sentences = split_sentences(answer_text)
    if not sentences:
        result.warnings.append("回答为空")
    for i, sentence in enumerate(sentences, start=1):
        markers = _markers(sentence)
        cited = list(dict.fromkeys(n for n in markers if n in by_id))
        missing = list(dict.fromkeys(n for n in markers if n not in by_id))
        for n in missing:
            result.warnings.append(f"第{i}句的引用[{n}]不存在")
        for n in cited:
            if n not in result.cited_ids:
                result.cited_ids.append(n)
        content = _LIST_ITEM.sub("", _MARKER.sub("", sentence)).strip()
        overlap: float | None = None
        best: float | None = None
        if NOT_FOUND in squash(content):
            result.abstained = True
            supported = True
        elif not cited:
            supported = False
            result.uncited_sentences.append(sentence)
            result.warnings.append(f"第{i}句没有引用任何段落")
        else:
            texts = [evidence[n] if n in evidence else by_id[n].text for n in cited]
            joined = "\n".join(texts)
            overlap = term_overlap(content, joined)
            if similarity is not None:
                best = max(float(similarity(content, t)) for t in texts)
            supported = overlap >= overlap_threshold or (best is not None and best >= similarity_threshold)
            if supported and check_numbers:
                wrong = _numbers(content) - set(_NUMBER.findall(_searchable(joined)))
                if wrong:
                    supported = False
                    result.warnings.append(f"第{i}句的数字{'、'.join(sorted(wrong))}不在引用的段落中")
            if not supported:
                result.unsupported_sentences.append(sentence)
                result.warnings.append(f"第{i}句没有被引用的段落支持")
        result.sentences.append(SentenceCheck(i, sentence, cited, missing, overlap, best, supported))
    if result.abstained and result.cited_ids:
        result.abstained = False  # "not found" beside cited statements: a partial answer
    # Report planted instructions when they may have mattered: cited, or the answer is off.
    result.warnings[:0] = [
        f"段落[{pid}]含有疑似注入的指令，已忽略，不作为依据"
        for pid in injected
        if pid in result.cited_ids or not result.ok
    ]
    log.debug("verified %d sentences: %s", len(result.sentences), result.warnings or "ok")
    return result


class _Embedder(Protocol):
    def embed_query(self, text: str) -> np.ndarray: ...

    def embed_passages(self, texts: list[str]) -> np.ndarray: ...


def embedding_similarity(embedder: _Embedder) -> Similarity:
    """A ``similarity`` for :func:`verify_citations` from the service's ``Embedder``.

    Cosine of the sentence (query prompt) and the passage (passage prompt); each passage
    is embedded once per returned function, so build one per answer.
    """
    cache: dict[str, np.ndarray] = {}

    def similarity(sentence: str, passage: str) -> float:
        if passage not in cache:
            cache[passage] = embedder.embed_passages([passage])[0]
        return float(embedder.embed_query(sentence) @ cache[passage])

    return similarity


# -- what the Answerer calls -------------------------------------------------------------


def llm_answer(
    client: LLMClient,
    question: str,
    passages: Sequence[Citation],
    history: History | None = None,
    similarity: Similarity | None = None,
) -> VerifiedAnswer:
    """Ask the model to answer from ``passages`` and verify its citations. ``LLMError`` propagates."""
    if not passages:
        return VerifiedAnswer(text=NOT_FOUND, abstained=True)
    reply = client.complete(build_messages(question, passages, history))
    return verify_citations(reply, passages, similarity)


def llm_answer_stream(
    client: LLMClient,
    question: str,
    passages: Sequence[Citation],
    history: History | None = None,
    similarity: Similarity | None = None,
) -> Iterator[str | VerifiedAnswer]:
    """Like :func:`llm_answer`, yielding the text deltas first and the ``VerifiedAnswer`` last.

    ``LLMError`` can come after some deltas: the caller must then retract what it showed.
    """
    if not passages:
        yield NOT_FOUND
        yield VerifiedAnswer(text=NOT_FOUND, abstained=True)
        return
    parts: list[str] = []
    for delta in client.stream(build_messages(question, passages, history)):
        parts.append(delta)
        yield delta
    yield verify_citations("".join(parts), passages, similarity)
