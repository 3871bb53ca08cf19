"""Benchmark of the index build and search (issue 3). Prints ratios measured in one run.

    .venv/bin/python bench/retrieval_bench.py

- embedding throughput of `build_index` against a bare `SentenceTransformer.encode` of the
  same texts (the build should run at the speed of the model: ratio >= 0.8);
- total build time for the seeds, from nothing;
- search latency p50/p95 over 200 queries, in-process, per mode, and hybrid again with the
  questions embedded by torch instead of ONNX Runtime (the speed-up is a ratio of one run);
- HNSW recall@10 against exact search, on 50,000 vectors clustered around real chunk embeddings.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from rag.chunking import chunk_articles
from rag.embedding import load_embedder
from rag.index import build_faiss, build_index, embedding_input, load_index
from rag.ingest import load_corpus
from rag.retrieval import Retriever
from rag.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q))


def main() -> None:
    base = Settings(docs_dir=ROOT / "seeds")
    embedder = load_embedder(base)
    chunks = chunk_articles(load_corpus(base.docs_dir), base.chunk_size, base.chunk_overlap)
    texts = [embedding_input(c, base.title_context) for c in chunks]
    tokens = embedder.count_tokens(texts)
    embedder.model.encode(texts[:8], prompt="passage: ")  # warm up

    started = time.perf_counter()
    embedder.model.encode(
        texts, prompt=embedder.passage_prompt, batch_size=base.embed_batch_size, normalize_embeddings=True
    )
    bare = time.perf_counter() - started

    with tempfile.TemporaryDirectory() as tmp:
        settings = base.model_copy(update={"index_dir": Path(tmp) / "index"})
        started = time.perf_counter()
        stats = build_index(settings, embedder)
        build_seconds = time.perf_counter() - started
        retriever = Retriever(load_index(settings, embedder), embedder, settings)
        questions = [json.loads(line)["question"] for line in (ROOT / "eval" / "questions.jsonl").open()]
        questions = (questions * 2)[:200]
        latency: dict[str, list[float]] = {}
        for mode in ("bm25", "dense", "hybrid"):
            times = []
            for q in questions:
                t = time.perf_counter()
                retriever.search(q, k=10, retrieval_mode=mode)  # type: ignore[arg-type]
                times.append((time.perf_counter() - t) * 1000)
            latency[mode] = times
        # The same hybrid search with questions embedded by torch instead of ONNX Runtime.
        fast_encoder, embedder.query_encoder = embedder.query_encoder, None
        times = []
        for q in questions:
            t = time.perf_counter()
            retriever.search(q, k=10, retrieval_mode="hybrid")
            times.append((time.perf_counter() - t) * 1000)
        latency["hybrid (torch questions)"] = times
        embedder.query_encoder = fast_encoder

    print(f"chunks: {len(chunks)}, tokens: {tokens}")
    print(f"bare SentenceTransformer.encode: {bare:.1f} s, {tokens / bare:.0f} tokens/s")
    print(
        f"build_index embedding:          {stats.embed_seconds:.1f} s, {stats.tokens_per_second:.0f} tokens/s"
    )
    print(f"throughput ratio build/bare:     {bare / stats.embed_seconds:.2f}")
    print(f"total build time (seeds, fresh): {build_seconds:.1f} s")
    backend = "ONNX Runtime" if fast_encoder is not None else "torch (onnxruntime unavailable)"
    print(f"questions embedded with: {backend}")
    for mode, times in latency.items():
        print(
            f"search {mode:6s} over {len(times)} queries: p50 {statistics.median(times):.1f} ms, "
            f"p95 {percentile(times, 95):.1f} ms"
        )
    ratio = statistics.median(latency["hybrid (torch questions)"]) / statistics.median(latency["hybrid"])
    print(f"hybrid p50 speed-up from ONNX Runtime questions: {ratio:.2f}x")

    # Real embeddings are clustered (e5 vectors of Chinese news share a cone), unlike uniform
    # random vectors, HNSW's worst case: grow 50,000 vectors around the seed chunks' own.
    rng = np.random.default_rng(0)
    centres = embedder.embed_passages(texts[:64])
    picks = rng.integers(0, len(centres), 50_000)
    vectors = centres[picks] + 0.04 * rng.standard_normal((50_000, embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    queries = centres[rng.integers(0, len(centres), 200)] + 0.04 * rng.standard_normal(
        (200, embedder.dim)
    ).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    flat = faiss.IndexFlatIP(embedder.dim)
    flat.add(vectors)
    _, exact = flat.search(queries, 10)
    hnsw = build_faiss(vectors, ann_threshold=1)
    _, approx = hnsw.search(queries, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    print(f"HNSW recall@10 vs exact on 50,000 clustered vectors: {recall:.3f}")


if __name__ == "__main__":
    main()
