"""Cost of the index from 10k to 1M chunks (issue 15): FAISS flat/HNSW/IVF, bm25s, milvus-lite.

    .venv/bin/python bench/scale_bench.py --sizes 10k,100k [--methods flat,hnsw,ivfpq,ivfsq8,bm25s,milvus]
    .venv/bin/python bench/scale_bench.py --sizes 100k,1m --methods build-real
    .venv/bin/python bench/scale_bench.py --methods embed [--embed-passages 1000]

Corpus. Real Chinese text, reshuffled: the paragraphs of CMRC 2018 trial and DRCD dev
(``../shared/bench``) are split into sentences; a synthetic chunk takes consecutive
sentences from one random paragraph, then from a second one, until it has ~300
characters. Only the sentence pool is embedded (passage prompt, torch bf16 autocast:
cosine 0.99999 to fp32, see ``bench/embed_throughput.py``); a chunk's vector is the mean
of its sentences' vectors, renormalised. That keeps each vector tied to its text and its
neighbourhood structure topical (chunks sharing a paragraph are near), at a cost of
seconds for 1M chunks instead of hours. The script checks the method on real chunks: a
sample is embedded whole (as ``rag build`` embeds: torch, bf16 autocast where the CPU has
it) and compared to its synthetic vector
(that timing also gives the "embedding included" build cost). Likewise BM25: each sentence
is tokenized once by the project's jieba tokenizer (``rag.textnorm.search_tokens``), a
chunk's tokens are its sentences' tokens; tokenizing real chunks is timed on the sample.

Queries: 200 real benchmark questions, embedded by the question encoder. Ground truth for
recall@10: exact inner-product top-10 over all vectors. Every (size, method) builds in one
child process and searches in another, so peak RSS is per method: "build RSS" is the
builder's peak (vectors in memory included), "serve RSS" the process after loading the
index from disk (Python + numpy + FAISS baseline ~0.1 GB included), "anon" its
anonymous part (what a memory-mapped index does not pin). Search latency is one
question at a time, as the service searches. ANN parameters (efSearch, nprobe) are tuned to
the smallest value with recall@10 >= 0.95.

``build-real``: the real embedded path rather than FAISS alone. The synthetic corpus is
made into real ``Article`` and ``Chunk`` objects (three consecutive chunks an article, ten
articles a source file) and written by ``rag.index``'s own writer (its FAISS choice by
size, bm25s over the sentences' jieba tokens, the manifest, the read-back check). A fresh
process then calls ``rag.index.load_index`` and searches through ``rag.retrieval.Retriever``
exactly as the service does (hybrid: dense + BM25 + RRF, hits with their dense scores),
the questions' vectors precomputed (no model in the process: its ~0.5 GB and a question's
~20 ms embedding are not the index's cost). It prints load time, RSS and anonymous RSS
after loading and after searching, hybrid/dense/BM25 p50 and p95, and recall@10 of the
dense ranking against exact search, with an estimate of what the Chunk objects and the article table
take. ``RAG_*`` variables reach the writer (e.g. ``RAG_FAISS_FP16_THRESHOLD``).

``embed``: the passage-embedding throughput of ``bench/embed_throughput.py`` (its own
code, called here), so one script reports the whole build cost.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger("scale_bench")

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "bench"
SETS = (BENCH / "cmrc2018" / "cmrc2018_trial.json", BENCH / "drcd" / "DRCD_dev.json")
CHUNK_CHARS = 300
N_QUERIES = 200
SAMPLE = 200  # real chunks embedded whole: validates the synthetic vectors, times embedding
TARGET_RECALL = 0.95
F32 = npt.NDArray[np.float32]


def parse_size(text: str) -> int:
    """``10k`` -> 10000, ``1m`` -> 1000000."""
    text = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    return int(float(text.rstrip("km")) * mult)


def rss_mb() -> float:
    """Current resident set size of this process, MB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def anon_rss_mb() -> float:
    """Anonymous (not file-backed) resident memory of this process, MB: what mmap does not page out."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1e3
    return rss_mb()


def peak_rss_mb() -> float:
    """Peak resident set size of this process, MB.

    ``VmHWM``, not ``getrusage``: ru_maxrss survives exec, so a child would report the
    peak of the parent it was forked from (the one holding torch).
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1e3
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def disk_mb(path: Path) -> float:
    """Size of a file or folder on disk, MB."""
    if path.is_file():
        return path.stat().st_size / 1e6
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


# ---------------------------------------------------------------- the pool (cached)


def split_sentences(text: str) -> list[str]:
    """Sentences of a paragraph, ending punctuation kept; very short ones dropped."""
    out, cur = [], []
    for ch in " ".join(text.split()):
        cur.append(ch)
        if ch in "。！？；!?":
            out.append("".join(cur).strip())
            cur = []
    if cur:
        out.append("".join(cur).strip())
    return [s[:150] for s in out if len(s) >= 6]


def make_pool(work: Path) -> dict[str, Any]:
    """Sentences, their vectors and tokens, questions and their vectors; cached in ``work``."""
    cache = work / "pool.npz"
    meta_file = work / "pool.json"
    if cache.is_file() and meta_file.is_file():
        data = np.load(cache)
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        return {**meta, "sent_vecs": data["sent_vecs"], "query_vecs": data["query_vecs"]}
    from rag.embedding import configure_runtime, load_embedder
    from rag.settings import Settings
    from rag.textnorm import search_tokens

    configure_runtime()
    import torch

    sentences: list[str] = []
    para_of: list[int] = []
    questions: list[str] = []
    n_para = 0
    for path in SETS:
        for doc in json.loads(path.read_text(encoding="utf-8"))["data"]:
            for para in doc["paragraphs"]:
                sents = split_sentences(para["context"])
                if len(sents) >= 2:
                    sentences += sents
                    para_of += [n_para] * len(sents)
                    n_para += 1
                questions += [q["question"] for q in para["qas"]]
    rng = np.random.default_rng(0)
    questions = [questions[i] for i in rng.choice(len(questions), N_QUERIES, replace=False)]
    embedder = load_embedder(Settings(query_backend="onnx"), lazy=False)
    log.info("pool: %d sentences of %d paragraphs; embedding them (bf16 autocast)", len(sentences), n_para)
    started = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sent_vecs = embedder.embed_passages(sentences)
    log.info("pool embedded in %.0f s", time.perf_counter() - started)
    query_vecs = np.stack([embedder.embed_query(q) for q in questions]).astype(np.float32)
    started = time.perf_counter()
    sent_tokens = [search_tokens(s) for s in sentences]
    log.info("pool tokenized in %.0f s", time.perf_counter() - started)
    meta = {
        "sentences": sentences,
        "para_of": para_of,
        "questions": questions,
        "sent_tokens": sent_tokens,
        "query_tokens": [search_tokens(q) for q in questions],
    }
    # The "embedding included" cost and the calibration, on real chunks made the same way.
    chunks = synth_chunks(SAMPLE, np.asarray(para_of), [len(s) for s in sentences], seed=99)
    texts = ["".join(sentences[i] for i in ids) for ids in chunks]
    embedder.embed_passages(texts[:8])
    started = time.perf_counter()
    real = embedder.embed_passages(texts)
    meta["embed_s_per_1k"] = (time.perf_counter() - started) / len(texts) * 1000
    meta["embed_precision"] = embedder.passage_precision
    started = time.perf_counter()
    for t in texts:
        search_tokens(t)
    meta["tokenize_s_per_1k"] = (time.perf_counter() - started) / len(texts) * 1000
    meta["sample_chunks"] = chunks
    meta.update(calibrate(chunks, sent_vecs, real, query_vecs))
    work.mkdir(parents=True, exist_ok=True)
    np.savez(cache, sent_vecs=sent_vecs, query_vecs=query_vecs)
    meta_file.write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")
    return {**meta, "sent_vecs": sent_vecs, "query_vecs": query_vecs}


def mean_pairwise(vecs: F32) -> float:
    """Mean cosine over distinct pairs of L2-normalised rows."""
    total = vecs.sum(axis=0)
    n = len(vecs)
    return float((total @ total - n) / (n * (n - 1)))


def calibrate(chunks: list[list[int]], sent_vecs: F32, real: F32, queries: F32) -> dict[str, Any]:
    """The spread factor that gives synthetic vectors the real ones' pairwise cosine, and checks.

    A mean of sentence vectors lies closer to the corpus centre than a chunk's own
    embedding (pairwise cosine ~0.95 against ~0.86 for real chunks), which would make
    every chunk a near neighbour of every other. Moving each vector away from the centre
    ``c`` by a factor ``s`` (``c + s (v - c)``, renormalised) restores that one statistic;
    ``s`` is found by bisection on the real sample.
    """
    raw = chunk_vectors(chunks, sent_vecs, None, 1.0)
    center = raw.mean(axis=0)
    target = mean_pairwise(real)
    lo, hi = 1.0, 8.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if mean_pairwise(chunk_vectors(chunks, sent_vecs, center, mid)) > target:
            lo = mid
        else:
            hi = mid
    spread = (lo + hi) / 2
    synth = chunk_vectors(chunks, sent_vecs, center, spread)
    checks: dict[str, float] = {}
    for name, vecs in (("mean", raw), ("spread", synth)):
        cos = np.sum(real * vecs, axis=1)
        checks[f"cos_real_vs_{name}_mean"] = float(cos.mean())
        checks[f"pairwise_cos_{name}"] = mean_pairwise(vecs)
        checks[f"query_top1_cos_{name}"] = float((queries @ vecs.T).max(axis=1).mean())
    checks["pairwise_cos_real"] = target
    checks["query_top1_cos_real"] = float((queries @ real.T).max(axis=1).mean())
    return {"spread": spread, "center": center.tolist(), "validation": checks}


def synth_chunks(n: int, para_of: npt.NDArray[np.int64], lengths: list[int], seed: int) -> list[list[int]]:
    """``n`` chunks as sentence ids: a run from one random paragraph, then from another, to ~300 chars."""
    rng = np.random.default_rng(seed)
    starts = np.flatnonzero(np.r_[True, para_of[1:] != para_of[:-1]])
    ends = np.r_[starts[1:], len(para_of)]
    n_para = len(starts)
    out: list[list[int]] = []
    picks = rng.integers(0, n_para, size=(n, 4))
    offs = rng.random((n, 4))
    for row in range(n):
        ids: list[int] = []
        chars = 0
        for k in range(4):
            p = picks[row, k]
            s = starts[p] + int(offs[row, k] * (ends[p] - starts[p]))
            while s < ends[p] and chars < CHUNK_CHARS * (k + 1) / 2:
                ids.append(int(s))
                chars += lengths[s]
                s += 1
            if chars >= CHUNK_CHARS:
                break
        out.append(ids)
    return out


def chunk_vectors(chunks: list[list[int]], sent_vecs: F32, center: F32 | None, spread: float) -> F32:
    """Mean of each chunk's sentence vectors, L2-normalised, then spread from ``center``.

    ``center=None``: the plain mean; see :func:`calibrate` for why and how it is spread.
    """
    flat = np.fromiter((i for ids in chunks for i in ids), dtype=np.int64)
    offsets = np.r_[0, np.cumsum([len(ids) for ids in chunks])[:-1]]
    out = np.add.reduceat(sent_vecs[flat], offsets, axis=0).astype(np.float32)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    if center is not None:
        out = center + np.float32(spread) * (out - center)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out.astype(np.float32)


def make_corpus(size: int, pool: dict[str, Any], work: Path) -> Path:
    """Vectors, token ids, exact top-10 (``gt.npy``) and queries for ``size`` chunks, in a folder."""
    folder = work / f"n{size}"
    if (folder / "gt.npy").is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    para_of = np.asarray(pool["para_of"])
    lengths = [len(s) for s in pool["sentences"]]
    sent_vecs = pool["sent_vecs"]
    center = np.asarray(pool["center"], dtype=np.float32)
    vecs = np.empty((size, sent_vecs.shape[1]), dtype=np.float32)
    flat_tokens: list[npt.NDArray[np.int32]] = []
    vocab: dict[str, int] = {}
    sent_tok = [
        np.asarray([vocab.setdefault(t, len(vocab)) for t in toks] or [0], dtype=np.int32)
        for toks in pool["sent_tokens"]
    ]
    chunk_lens = np.empty(size, dtype=np.int64)
    block = 100_000
    for lo in range(0, size, block):
        chunks = synth_chunks(min(block, size - lo), para_of, lengths, seed=lo + 1)
        vecs[lo : lo + len(chunks)] = chunk_vectors(chunks, sent_vecs, center, pool["spread"])
        for j, ids in enumerate(chunks):
            toks = np.concatenate([sent_tok[i] for i in ids])
            flat_tokens.append(toks)
            chunk_lens[lo + j] = len(toks)
    np.save(folder / "vectors.npy", vecs)
    np.savez(folder / "tokens.npz", flat=np.concatenate(flat_tokens), lens=chunk_lens)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    queries = pool["query_vecs"]
    best_s = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(queries), 10), dtype=np.int64)
    for lo in range(0, size, block):
        scores = queries @ vecs[lo : lo + block].T
        top = np.argpartition(-scores, 10, axis=1)[:, :10]
        cand_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], axis=1)
        cand_i = np.concatenate([best_i, top + lo], axis=1)
        order = np.argsort(-cand_s, axis=1)[:, :10]
        best_s, best_i = np.take_along_axis(cand_s, order, 1), np.take_along_axis(cand_i, order, 1)
    np.save(folder / "gt.npy", best_i)
    np.save(folder / "queries.npy", queries)
    (folder / "query_tokens.json").write_text(
        json.dumps(pool["query_tokens"], ensure_ascii=False), encoding="utf-8"
    )
    return folder


# ---------------------------------------------------------------- children


FACTORIES = {
    "flat": "Flat",
    "hnsw": "HNSW32,Flat",
    "hnswsq8": "HNSW32,SQ8",
    "hnswfp16": "HNSW32,SQfp16",
    "ivfsq8": "IVF{nlist},SQ8",
    "ivfpq": "IVF{nlist},PQ48",
}


def recall_at_10(found: npt.NDArray[np.int64], gt: npt.NDArray[np.int64]) -> float:
    """Mean share of the exact top-10 found in the top-10."""
    return float(np.mean([len(set(f) & set(g)) / 10 for f, g in zip(found, gt, strict=True)]))


def child_build(method: str, folder: Path) -> dict[str, Any]:
    """Build ``method`` over ``folder``'s corpus and write it to disk; time and peak RSS."""
    if method == "bm25s":
        import bm25s
        from bm25s.tokenization import Tokenized

        data = np.load(folder / "tokens.npz")
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        ids = [a.tolist() for a in np.split(data["flat"], np.cumsum(data["lens"])[:-1])]
        started = time.perf_counter()
        bm25 = bm25s.BM25()
        bm25.index(Tokenized(ids=ids, vocab=vocab), show_progress=False)
        seconds = time.perf_counter() - started
        out = folder / "bm25s"
        bm25.save(str(out))
        return {"build_s": seconds, "n": len(ids), "build_rss_mb": peak_rss_mb(), "disk_mb": disk_mb(out)}
    vecs = np.load(folder / "vectors.npy")
    n = len(vecs)
    if method == "milvus":
        from pymilvus import MilvusClient

        path = folder / "milvus.db"
        if path.exists():
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        started = time.perf_counter()
        client = MilvusClient(str(path))
        client.create_collection("chunks", dimension=vecs.shape[1], metric_type="IP", auto_id=False)
        for lo in range(0, n, 10_000):
            client.insert(
                "chunks", [{"id": lo + j, "vector": v} for j, v in enumerate(vecs[lo : lo + 10_000].tolist())]
            )
        client.flush("chunks")
        seconds = time.perf_counter() - started
        index = client.describe_index("chunks", client.list_indexes("chunks")[0])
        client.close()
        return {
            "build_s": seconds,
            "n": n,
            "build_rss_mb": peak_rss_mb(),
            "disk_mb": disk_mb(path),
            "params": index.get("index_type", "?"),
        }
    import faiss

    nlist = max(64, int(4 * np.sqrt(n)))
    index = faiss.index_factory(
        vecs.shape[1], FACTORIES[method].format(nlist=nlist), faiss.METRIC_INNER_PRODUCT
    )
    started = time.perf_counter()
    if method.startswith("hnsw"):
        faiss.downcast_index(index).hnsw.efConstruction = 80  # as rag.index.build_faiss
    if not index.is_trained:
        train = vecs[np.random.default_rng(0).choice(n, min(n, 50 * nlist), replace=False)]
        index.train(train)
    index.add(vecs)
    seconds = time.perf_counter() - started
    out = folder / f"{method}.faiss"
    faiss.write_index(index, str(out))
    return {
        "build_s": seconds,
        "n": n,
        "build_rss_mb": peak_rss_mb(),
        "disk_mb": disk_mb(out),
        "params": FACTORIES[method].format(nlist=nlist),
    }


def latencies(fn: Any, queries: list[Any]) -> tuple[list[Any], float, float]:
    """Results of ``fn`` per query, and p50/p95 latency in ms (after 10 warm-up calls)."""
    for q in queries[:10]:
        fn(q)
    times, results = [], []
    for q in queries:
        started = time.perf_counter()
        results.append(fn(q))
        times.append((time.perf_counter() - started) * 1000)
    return results, float(np.percentile(times, 50)), float(np.percentile(times, 95))


def child_search(method: str, folder: Path) -> dict[str, Any]:
    """Load ``method``'s index from disk, tune its ANN parameter, time one-at-a-time search."""
    gt = np.load(folder / "gt.npy")
    queries = np.load(folder / "queries.npy")
    base = rss_mb()
    if method.startswith("bm25s"):
        import bm25s

        bm25 = bm25s.BM25.load(str(folder / "bm25s"), mmap=method == "bm25s-mmap")
        serve = rss_mb()
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        qtoks = json.loads((folder / "query_tokens.json").read_text(encoding="utf-8"))
        # Words the corpus never has are dropped, as bm25s itself does for string queries.
        qids = [[t for t in toks if t in vocab] or [next(iter(vocab))] for toks in qtoks]

        def run(q: list[str]) -> Any:
            return bm25.retrieve([q], k=10, show_progress=False, n_threads=1)

        _, p50, p95 = latencies(run, qids)
        return {
            "serve_rss_mb": max(serve, rss_mb()),
            "index_rss_mb": rss_mb() - base,
            "p50_ms": p50,
            "p95_ms": p95,
            "anon_mb": anon_rss_mb(),
            "recall": None,
        }
    if method == "milvus":
        from pymilvus import MilvusClient

        client = MilvusClient(str(folder / "milvus.db"))
        client.load_collection("chunks")
        serve = rss_mb()

        def run(q: F32) -> list[int]:
            hits = client.search("chunks", data=[q.tolist()], limit=10, search_params={"metric_type": "IP"})
            return [h["id"] for h in hits[0]]

        found, p50, p95 = latencies(run, list(queries))
        return {
            "serve_rss_mb": serve,
            "index_rss_mb": serve - base,
            "p50_ms": p50,
            "p95_ms": p95,
            "anon_mb": anon_rss_mb(),
            "recall": recall_at_10(np.asarray(found), gt),
            "note": "RSS of the client; milvus-lite runs in a child",
        }
    import faiss

    index = faiss.read_index(str(folder / f"{method}.faiss"))
    serve = rss_mb()
    space = faiss.ParameterSpace()
    knob = "efSearch" if method.startswith("hnsw") else "nprobe" if method.startswith("ivf") else None
    chosen: str = "exact"
    if knob:
        values = (
            [16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512]
            if knob == "efSearch"
            else [1, 2, 4, 8, 16, 32, 64, 128, 256]
        )
        rec = 0.0
        for v in values:
            space.set_index_parameter(index, knob, v)
            _, found = index.search(queries, 10)
            rec = recall_at_10(found, gt)
            chosen = f"{knob}={v}"
            if rec >= TARGET_RECALL:
                break

    def run(q: F32) -> Any:
        return index.search(q[None, :], 10)[1][0]

    faiss.omp_set_num_threads(1)  # one question at a time: threads only add overhead
    found, p50, p95 = latencies(run, list(queries))
    return {
        "serve_rss_mb": serve,
        "index_rss_mb": serve - base,
        "p50_ms": p50,
        "p95_ms": p95,
        "anon_mb": anon_rss_mb(),
        "recall": recall_at_10(np.asarray(found), gt),
        "tuned": chosen,
    }


# ---------------------------------------------------------------- the real embedded path


class FrozenEmbedder:
    """What ``rag.index`` and ``rag.retrieval`` ask of an embedder, without a model.

    The build fingerprint's fields, and no way to embed: the questions' vectors are
    precomputed (:class:`PrecomputedRetriever`), the chunks' are the synthetic ones.
    """

    model_id = "scale-bench/synthetic-multilingual-e5-small"
    fingerprint = "scale-bench-synthetic"
    dim = 384
    query_prompt = "query: "
    passage_prompt = "passage: "
    passage_precision = "bf16"


def real_settings(folder: Path) -> Any:
    """Settings of the real build of ``folder``'s corpus (``RAG_*`` variables apply)."""
    from rag.settings import Settings

    return Settings(docs_dir=folder, index_dir=folder / "real-index")


def real_corpus(size: int, pool: dict[str, Any]) -> tuple[list[Any], list[Any], list[list[str]]]:
    """Articles, chunks and each chunk's jieba tokens for the ``size`` synthetic chunks.

    The chunks are :func:`make_corpus`'s (same seeds, same order), so row ``i`` of its
    ``vectors.npy`` is chunk ``i``'s vector. Three consecutive chunks make an article
    (``article.text[start:end] == chunk.text``), ten articles a source file.
    """
    from rag.models import Article, Chunk

    sentences: list[str] = pool["sentences"]
    sent_tokens: list[list[str]] = pool["sent_tokens"]
    para_of = np.asarray(pool["para_of"])
    lengths = [len(x) for x in sentences]
    ids_of: list[list[int]] = []
    for lo in range(0, size, 100_000):  # the blocks and seeds of make_corpus
        ids_of += synth_chunks(min(100_000, size - lo), para_of, lengths, seed=lo + 1)
    articles: list[Any] = []
    chunks: list[Any] = []
    tokens: list[list[str]] = []
    for first in range(0, size, 3):
        group = ids_of[first : first + 3]
        texts = ["".join(sentences[i] for i in ids) for ids in group]
        number = first // 3
        article = Article(
            source=f"synthetic/{number // 10:06d}.txt",
            position=number % 10,
            title=sentences[group[0][0]][:20],
            text="".join(texts),
        )
        articles.append(article)
        start = 0
        for ids, text in zip(group, texts, strict=True):
            end = start + len(text)
            chunks.append(Chunk(article.id, article.source, article.title, text, start, end))
            tokens.append([t for i in ids for t in sent_tokens[i]] or ["∅"])
            start = end
    return articles, chunks, tokens


def child_build_real(folder: Path) -> dict[str, Any]:
    """Write the real build of ``folder``'s corpus with ``rag.index``'s writer; time, peak RSS, disk."""
    from rag import index as rag_index

    pool = make_pool(folder.parent)
    (folder / "questions.json").write_text(
        json.dumps(pool["questions"], ensure_ascii=False), encoding="utf-8"
    )
    settings = real_settings(folder)
    shutil.rmtree(settings.index_dir, ignore_errors=True)  # one build, not this and an older one
    vectors = np.load(folder / "vectors.npy")
    started = time.perf_counter()
    articles, chunks, tokens = real_corpus(len(vectors), pool)
    objects_s = time.perf_counter() - started
    embedder: Any = FrozenEmbedder()
    content = rag_index._BuildContent(
        settings=rag_index.settings_fingerprint(settings, embedder),
        files={},
        articles=articles,
        chunks=chunks,
        keys=[rag_index._chunk_key(c, settings.title_context) for c in chunks],
        token_keys=[rag_index._token_key(c) for c in chunks],
        chunk_tokens=tokens,
        vectors=vectors,
        tokens=0,
        skipped=[],
        precision="bf16",
    )
    started = time.perf_counter()
    with rag_index.build_lock(settings.index_dir):
        build = rag_index._write_build(settings, content, embedder.dim)
    seconds = time.perf_counter() - started
    manifest = json.loads((build / "manifest.json").read_text(encoding="utf-8"))
    files = {p.relative_to(build).as_posix(): p.stat().st_size / 1e6 for p in build.rglob("*") if p.is_file()}
    return {
        "build_s": seconds,
        "objects_s": objects_s,
        "n": len(chunks),
        "articles": len(articles),
        "build_rss_mb": peak_rss_mb(),
        "disk_mb": disk_mb(build),
        "files_mb": files,
        "params": manifest["faiss"],
    }


def _object_mb(objects: list[Any]) -> float:
    """Memory of a list's dataclass objects and the strings they hold (shared ones once), MB."""
    seen: set[int] = set()
    total = sys.getsizeof(objects)
    for obj in objects:
        total += sys.getsizeof(obj)  # slots: the fields live in the object itself
        for value in (getattr(obj, f.name) for f in dataclasses.fields(obj)):
            if id(value) not in seen:
                seen.add(id(value))
                total += sys.getsizeof(value)
    return total / 1e6


def _article_store_mb(store: Any) -> float:
    """Memory of what a loaded :class:`rag.article_store.ArticleStore` holds (ids, offsets), MB."""
    ids = sys.getsizeof(store._rows) + sum(sys.getsizeof(k) for k in store._rows)
    lists = sys.getsizeof(store._by_source) + sum(sys.getsizeof(v) for v in store._by_source.values())
    return (ids + lists + store._starts.nbytes) / 1e6


def child_search_real(folder: Path) -> dict[str, Any]:
    """``load_index`` the real build, search it as the service does; load time, RSS, latency, recall."""
    from rag.index import load_index
    from rag.retrieval import Retriever

    class PrecomputedRetriever(Retriever):
        """The service's retriever, its questions' vectors looked up instead of embedded."""

        def __init__(self, index: Any, embedder: Any, settings: Any, vectors: dict[str, F32]) -> None:
            super().__init__(index, embedder, settings)
            self.vectors = vectors

        def embed(self, question: str) -> np.ndarray:
            return self.vectors[question]

    settings = real_settings(folder)
    embedder: Any = FrozenEmbedder()
    questions = json.loads((folder / "questions.json").read_text(encoding="utf-8"))
    queries = np.load(folder / "queries.npy")
    gt = np.load(folder / "gt.npy")
    base, base_anon = rss_mb(), anon_rss_mb()
    started = time.perf_counter()
    index = load_index(settings, embedder)
    load_s = time.perf_counter() - started
    loaded, loaded_anon, load_peak = rss_mb(), anon_rss_mb(), peak_rss_mb()
    retriever = PrecomputedRetriever(index, embedder, settings, dict(zip(questions, queries, strict=True)))
    found = [retriever.dense(v, 10).ids for v in queries]
    recall = recall_at_10(np.asarray(found), gt)
    hybrid, hybrid_p50, hybrid_p95 = latencies(lambda q: retriever.search(q, k=5), questions)
    _, dense_p50, dense_p95 = latencies(lambda v: retriever.dense(v, 50), list(queries))
    _, bm25_p50, bm25_p95 = latencies(lambda q: retriever.bm25(q, 50), questions)
    # A consecutive sample: chunks of one article share its strings, as in the whole list.
    sample = min(len(index.chunks), 30_000)
    chunks_mb = _object_mb(index.chunks[:sample]) * len(index.chunks) / max(sample, 1)
    articles_mb = _article_store_mb(index.articles)
    return {
        "load_s": load_s,
        "base_rss_mb": base,
        "base_anon_mb": base_anon,
        "serve_rss_mb": loaded,
        "anon_mb": loaded_anon,
        "load_peak_mb": load_peak,
        "after_rss_mb": rss_mb(),
        "after_anon_mb": anon_rss_mb(),
        "chunks_mb": chunks_mb,
        "articles_mb": articles_mb,
        "faiss": type(index.faiss_index).__name__,
        "ef_search": getattr(getattr(index.faiss_index, "hnsw", None), "efSearch", None),
        "recall": recall,
        "hybrid_p50_ms": hybrid_p50,
        "hybrid_p95_ms": hybrid_p95,
        "dense_p50_ms": dense_p50,
        "dense_p95_ms": dense_p95,
        "bm25_p50_ms": bm25_p50,
        "bm25_p95_ms": bm25_p95,
        "hits": len(hybrid[0]),
    }


def print_real(rows: list[dict[str, Any]]) -> None:
    """The build-real rows: one line each, then where the memory goes."""
    print(
        f"\n{'chunks':>8} {'faiss':10} {'ef':>4} {'build s':>7} {'build RSS':>9} {'disk MB':>8} "
        f"{'load s':>6} "
        f"{'RSS':>7} {'anon':>7} {'after':>7} {'anon':>7} {'hyb p50':>7} {'p95':>6} {'dense':>6} {'bm25':>6} "
        f"{'recall':>6}"
    )
    for r in rows:
        if "error" in r:
            print(f"{r['size']:>8} build-real error: {r['error']}")
            continue
        print(
            f"{r['n']:>8} {r['params']:10} {r['ef_search'] or '-':>4} {r['build_s']:7.0f} "
            f"{r['build_rss_mb']:8.0f}M {r['disk_mb']:8.0f} {r['load_s']:6.1f} {r['serve_rss_mb']:6.0f}M "
            f"{r['anon_mb']:6.0f}M {r['after_rss_mb']:6.0f}M {r['after_anon_mb']:6.0f}M "
            f"{r['hybrid_p50_ms']:7.2f} {r['hybrid_p95_ms']:6.2f} {r['dense_p50_ms']:6.2f} "
            f"{r['bm25_p50_ms']:6.2f} {r['recall']:6.3f}"
        )
    for r in rows:
        if "error" not in r:
            print(
                f"{r['n']:>8}: before loading {r['base_rss_mb']:.0f} MB ({r['base_anon_mb']:.0f} anon); "
                f"Chunk objects ~{r['chunks_mb']:.0f} MB, article table ~{r['articles_mb']:.0f} MB "
                "(texts read on demand); "
                f"load peak {r['load_peak_mb']:.0f} MB; files MB: "
                + ", ".join(f"{k} {v:.0f}" for k, v in r["files_mb"].items() if v >= 1)
            )
    print(
        "(build s: rag.index's writer, embedding excluded; RSS/anon after load_index, then after searching)"
    )


def run_embed(passages: int) -> None:
    """Passage-embedding throughput: ``bench/embed_throughput.py``'s own measurement, called here."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import embed_throughput

    saved = sys.argv
    sys.argv = [embed_throughput.__file__, "--passages", str(passages)]  # its main() reads its options
    try:
        embed_throughput.main()
    finally:
        sys.argv = saved


def run_child(stage: str, method: str, folder: Path, timeout: float) -> dict[str, Any]:
    """Run a build or search stage in a fresh process; its JSON result (or an ``error``)."""
    cmd = [sys.executable, __file__, "--child", stage, method, str(folder)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def main() -> None:
    """Parse arguments, make the corpora, run every (size, method), print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10k,100k")
    parser.add_argument("--methods", default="flat,hnsw,hnswsq8,ivfsq8,bm25s,bm25s-mmap,milvus")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rag-scale-bench"))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per child stage")
    parser.add_argument("--embed-passages", type=int, default=1000, help="passages for the embed method")
    parser.add_argument("--child", nargs=3, metavar=("STAGE", "METHOD", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        stage, method, folder = args.child
        if method == "build-real":
            result = (child_build_real if stage == "build" else child_search_real)(Path(folder))
        else:
            result = (child_build if stage == "build" else child_search)(method, Path(folder))
        print(json.dumps(result))
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    methods = args.methods.split(",")
    if "embed" in methods:
        run_embed(args.embed_passages)
        methods.remove("embed")
        if not methods:
            return
    pool = make_pool(args.work)
    log.info("validation of the synthetic vectors on %d real chunks: %s", SAMPLE, pool["validation"])
    log.info(
        "embedding (torch %s, the build path): %.1f s per 1k chunks; jieba tokens: %.2f s per 1k",
        pool.get("embed_precision", "fp32"),
        pool["embed_s_per_1k"],
        pool["tokenize_s_per_1k"],
    )
    rows: list[dict[str, Any]] = []
    real_rows: list[dict[str, Any]] = []
    for size in (parse_size(s) for s in args.sizes.split(",")):
        started = time.perf_counter()
        folder = make_corpus(size, pool, args.work)
        log.info("corpus of %d chunks ready in %.0f s", size, time.perf_counter() - started)
        built_by: dict[str, dict[str, Any]] = {}
        for method in methods:
            if method == "build-real":
                built = run_child("build", method, folder, args.timeout)
                searched = {} if "error" in built else run_child("search", method, folder, args.timeout)
                real_rows.append({"size": size, "method": method, **built, **searched})
                log.info("%s", real_rows[-1])
                continue
            build_method = "bm25s" if method.startswith("bm25s") else method
            if method != "bm25s-mmap" or "bm25s" not in built_by:
                built_by[build_method] = run_child("build", build_method, folder, args.timeout)
            built = built_by[build_method]
            if "error" in built:
                rows.append({"size": size, "method": method, **built})
                log.info("%d %s: %s", size, method, built["error"])
                continue
            searched = run_child("search", method, folder, args.timeout)
            row = {"size": size, "method": method, **built, **searched}
            rows.append(row)
            log.info("%s", row)
    (args.work / "results.json").write_text(json.dumps(rows + real_rows, indent=1), encoding="utf-8")
    if real_rows:
        print_real(real_rows)
    if not rows:
        return
    embed_1k, precision = pool["embed_s_per_1k"], pool.get("embed_precision", "fp32")
    print(
        f"\nembedding (torch {precision}, 2 cores): {embed_1k:.1f} s per 1k chunks; jieba: "
        f"{pool['tokenize_s_per_1k']:.2f} s per 1k"
    )
    head = (
        f"{'chunks':>8} {'method':11} {'params':22} {'build s/1k':>10} {'+embed':>7} {'build RSS':>9} "
        f"{'serve RSS':>9} {'anon':>6} {'disk MB':>8} {'p50 ms':>7} {'p95 ms':>7} {'recall@10':>9}"
    )
    print(head)
    for r in rows:
        if "error" in r:
            print(f"{r['size']:>8} {r['method']:11} error: {r['error']}")
            continue
        per_1k = r["build_s"] / r["n"] * 1000
        extra = pool["tokenize_s_per_1k"] if r["method"].startswith("bm25s") else embed_1k
        recall = "-" if r.get("recall") is None else f"{r['recall']:.3f}"
        params = str(r.get("tuned", "")) + (" " if r.get("tuned") else "") + str(r.get("params", ""))
        print(
            f"{r['size']:>8} {r['method']:11} {params[:22]:22} {per_1k:10.3f} {per_1k + extra:7.1f} "
            f"{r['build_rss_mb']:8.0f}M {r['serve_rss_mb']:8.0f}M {r.get('anon_mb', 0):5.0f}M "
            f"{r['disk_mb']:8.1f} {r['p50_ms']:7.2f} {r['p95_ms']:7.2f} {recall:>9}"
        )


if __name__ == "__main__":
    main()
