"""Passage-embedding throughput for an index build (issue 15). Ratios are of one run.

    .venv/bin/python bench/embed_throughput.py [--passages 1000] [--batch 32]

Embeds ~1,000 real 300-character passages (windows of CMRC 2018 trial and DRCD dev
paragraphs, ``../shared/bench``) with the default model, four ways:

- ``torch fp32``: the project's build path, :meth:`rag.embedding.Embedder.embed_passages`;
- ``torch bf16``: the same call under ``torch.autocast("cpu", torch.bfloat16)`` (AMX);
- ``ORT fp32``: the ONNX export of the encoder (:mod:`rag.onnx_query`, the graph that
  embeds questions serves passages too), batched here the way ``embed_passages`` batches
  (longest first, padded per batch, mean pooling over the attention mask);
- ``ORT int8``: the same graph after ``onnxruntime.quantization.quantize_dynamic``
  (MatMul weights to int8, activations quantized per batch).

Prints passages/s, tokens/s, the ratio to torch fp32, and the max abs difference and the
lowest/mean cosine of each variant's vectors against torch fp32.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rag.embedding import Embedder, configure_runtime, load_embedder
from rag.onnx_query import load_tokenizer, onnx_path, open_session, standard_pipeline
from rag.settings import Settings

log = logging.getLogger("embed_throughput")

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT.parent / "shared" / "bench"
SETS = (BENCH / "cmrc2018" / "cmrc2018_trial.json", BENCH / "drcd" / "DRCD_dev.json")

F32 = npt.NDArray[np.float32]


def real_passages(n: int, size: int = 300, qas: list[tuple[str, str]] | None = None) -> list[str]:
    """``n`` passages of ~``size`` characters: consecutive windows of benchmark paragraphs.

    ``qas``, when given, receives (question, answer text) of the paragraphs taken.
    """
    out: list[str] = []
    per_set = (n + len(SETS) - 1) // len(SETS)
    for path in SETS:
        taken = 0
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
        for doc in data:
            for para in doc["paragraphs"]:
                ctx = " ".join(para["context"].split())
                for start in range(0, max(1, len(ctx) - size // 2), size):
                    piece = ctx[start : start + size]
                    if len(piece) >= size // 2 and taken < per_set:
                        out.append(piece)
                        taken += 1
                        if qas is not None and start == 0:
                            qas += [(q["question"], q["answers"][0]["text"]) for q in para["qas"][:2]]
    return out[:n]


class OrtPassageEncoder:
    """Batched passage embedding with ONNX Runtime: tokenizers + ORT + numpy mean pooling."""

    def __init__(self, model_file: Path, tokenizer_file: Path, max_len: int, threads: int) -> None:
        self.session = open_session(model_file, threads)
        self.names = [i.name for i in self.session.get_inputs()]
        self.tok = load_tokenizer(tokenizer_file)
        self.max_len = max_len

    def encode(self, texts: list[str], prompt: str, batch: int) -> F32:
        """L2-normalised mean-pooled vectors of ``prompt + text``, in input order."""
        specials = self.tok.num_special_tokens_to_add(False)
        encs = self.tok.encode_batch([prompt + t for t in texts], add_special_tokens=False)
        ids: list[list[int]] = []
        for enc in encs:
            enc.truncate(self.max_len - specials)
            ids.append(self.tok.post_process(enc).ids)
        order = np.argsort([-len(i) for i in ids], kind="stable")
        out: F32 | None = None
        for lo in range(0, len(order), batch):
            rows = order[lo : lo + batch]
            width = max(len(ids[r]) for r in rows)
            input_ids = np.zeros((len(rows), width), dtype=np.int64)  # pad id 1 is masked anyway
            mask = np.zeros((len(rows), width), dtype=np.int64)
            for j, r in enumerate(rows):
                input_ids[j, : len(ids[r])] = ids[r]
                mask[j, : len(ids[r])] = 1
            columns = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(mask)}
            hidden = self.session.run(None, {n: columns[n] for n in self.names})[0]
            m = mask[:, :, None].astype(np.float32)
            vec = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
            vec /= np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)
            if out is None:
                out = np.empty((len(texts), vec.shape[1]), dtype=np.float32)
            out[rows] = vec
        assert out is not None
        return out


def quantize_int8(src: Path, dest_dir: Path) -> Path:
    """Dynamic int8 quantization of the MatMul weights of ``src`` (its external weights kept)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # The quantizer logs one line per tensor it leaves alone (hundreds) at INFO level.
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.WARNING)

    dest = dest_dir / "model.int8.onnx"
    quantize_dynamic(
        str(src),
        str(dest),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        use_external_data_format=True,
    )
    logging.getLogger().setLevel(level)
    return dest


def timed(fn: Callable[[], F32]) -> tuple[F32, float]:
    """``fn()``'s result and the seconds it took."""
    started = time.perf_counter()
    vecs = fn()
    return vecs, time.perf_counter() - started


def compare(vecs: F32, ref: F32) -> tuple[float, float, float]:
    """Max abs difference, lowest and mean cosine of ``vecs`` rows against ``ref`` rows."""
    cos = np.sum(vecs * ref, axis=1) / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(ref, axis=1))
    return float(np.abs(vecs - ref).max()), float(cos.min()), float(cos.mean())


def hits(vecs: F32, queries: F32, gold: list[set[int]], k: int) -> float:
    """Share of questions with a passage holding the answer among the top ``k``."""
    top = np.argsort(-(queries @ vecs.T), axis=1)[:, :k]
    return float(np.mean([bool(set(row) & g) for row, g in zip(top.tolist(), gold, strict=True)]))


def main() -> None:
    """Run the four variants on the same passages and print one table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--skip", default="", help="comma-separated variants to skip: bf16,ort,int8")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    configure_runtime()
    import torch

    settings = Settings(query_backend="onnx")
    embedder: Embedder = load_embedder(settings, lazy=False)
    qas: list[tuple[str, str]] = []
    texts = real_passages(args.passages, qas=qas)
    # Questions whose answer is in one of the passages: a small retrieval check of each variant.
    gold = [{i for i, t in enumerate(texts) if a in t} for _, a in qas]
    keep = [j for j, g in enumerate(gold) if g][:300]
    gold = [gold[j] for j in keep]
    queries = np.stack([embedder.embed_query(qas[j][0]) for j in keep]).astype(np.float32)
    tokens = embedder.count_tokens(texts)
    log.info(
        "%d passages, %d tokens (%.0f tokens/passage), %d torch threads, AMX: %s",
        len(texts),
        tokens,
        tokens / len(texts),
        torch.get_num_threads(),
        "amx" in Path("/proc/cpuinfo").read_text(),
    )
    embedder.embed_passages(texts[:8])  # warm up (allocations, first-call kernels)
    skip = set(args.skip.split(","))

    results: list[tuple[str, float, F32]] = []
    ref, seconds = timed(lambda: embedder.embed_passages(texts))
    results.append(("torch fp32 (current)", seconds, ref))

    if "bf16" not in skip:

        def bf16() -> F32:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return embedder.embed_passages(texts)

        with torch.autocast("cpu", dtype=torch.bfloat16):
            embedder.embed_passages(texts[:8])
        vecs, seconds = timed(bf16)
        results.append(("torch bf16 autocast", seconds, vecs))

    pipeline = standard_pipeline(Path(embedder._source.model_dir or "."))
    export = onnx_path(settings.cache_dir, embedder.fingerprint)
    threads = torch.get_num_threads()
    if pipeline is not None and export.is_file():
        prompt = embedder.passage_prompt
        variants = []
        if "ort" not in skip:
            variants.append(("ORT fp32", export))
        with tempfile.TemporaryDirectory() as tmp:
            if "int8" not in skip:
                started = time.perf_counter()
                variants.append(("ORT int8 (dynamic)", quantize_int8(export, Path(tmp))))
                log.info("int8 quantization took %.1f s", time.perf_counter() - started)
            for name, path in variants:
                enc = OrtPassageEncoder(path, pipeline.tokenizer_file, pipeline.max_seq_length, threads)
                enc.encode(texts[:8], prompt, args.batch)
                vecs, seconds = timed(lambda enc=enc: enc.encode(texts, prompt, args.batch))  # type: ignore[misc]
                results.append((name, seconds, vecs))
    else:
        log.info("No checked ONNX export at %s: run a `rag search` once to make it; ORT rows skipped", export)

    base = results[0][1]
    print(
        f"\n{'variant':24} {'passages/s':>10} {'tokens/s':>9} {'speed-up':>8} {'max|d|':>8} "
        f"{'min cos':>9} {'mean cos':>9} {'hit@1':>6} {'hit@5':>6}"
    )
    for name, seconds, vecs in results:
        dmax, cmin, cmean = compare(vecs, ref)
        print(
            f"{name:24} {len(texts) / seconds:10.1f} {tokens / seconds:9.0f} {base / seconds:8.2f} "
            f"{dmax:8.1e} {cmin:9.6f} {cmean:9.6f} {hits(vecs, queries, gold, 1):6.3f} "
            f"{hits(vecs, queries, gold, 5):6.3f}"
        )
    print(f"(hit@k: {len(gold)} benchmark questions, their answer in one of the {len(texts)} passages)")


if __name__ == "__main__":
    main()
