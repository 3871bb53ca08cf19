"""Benchmark of answering with the trained reader (issue 10). Prints figures of one run.

    .venv/bin/python bench/reader_bench.py [--questions 200]

- ``/ask`` over HTTP (a real uvicorn server on loopback, the seeds, one client): p50/p95 of
  the whole request, and of the server's own retrieval and reader stages (``timings_ms``),
  so the reader's share stands beside retrieval alone;
- the same questions in-process for each reader backend (ONNX Runtime fp32 and int8,
  torch fp32 and bf16 autocast): p50/p95 of the reader stage and its ratio to fp32 ONNX, measured in one run.

Tests never assert times; this script is where they are measured.
"""

from __future__ import annotations

import argparse
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import uvicorn

from rag.answer import Answerer
from rag.api import create_app
from rag.embedding import load_embedder
from rag.index import build_index, load_index
from rag.reader import load_settings_reader
from rag.retrieval import Retriever
from rag.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.array(values), q)) if values else float("nan")


def serve(settings: Settings, embedder: object) -> tuple[uvicorn.Server, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, embedder=embedder), log_level="warning")  # type: ignore[arg-type]
    )
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    deadline = time.monotonic() + 300
    while not server.started:
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.05)
    return server, f"http://127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--questions", type=int, default=200)
    args = ap.parse_args()
    questions = [json.loads(line)["question"] for line in (ROOT / "eval" / "questions.jsonl").open()]
    questions = (questions * 2)[: args.questions]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(docs_dir=ROOT / "seeds", index_dir=Path(tmp) / "index")
        embedder = load_embedder(settings)
        build_index(settings, embedder)

        server, url = serve(settings, embedder)
        total, retrieve, read = [], [], []
        with httpx.Client(base_url=url, timeout=60) as client:
            for q in questions[:5]:
                client.post("/ask", json={"question": q}).raise_for_status()
            for q in questions:
                t0 = time.perf_counter()
                r = client.post("/ask", json={"question": q})
                total.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
                timings = r.json()["timings_ms"]
                retrieve.append(timings["retrieve"])
                read.append(timings["answer"])
        server.should_exit = True
        print(f"POST /ask over HTTP, {len(questions)} seed questions, one client")
        print(f"  {'stage':<22}{'p50 ms':>9}{'p95 ms':>9}")
        for name, vals in (("whole request", total), ("retrieval", retrieve), ("reader", read)):
            print(f"  {name:<22}{pct(vals, 50):9.1f}{pct(vals, 95):9.1f}")
        share = sum(read) / max(1e-9, sum(total))
        print(f"  reader share of the request time: {share:.0%}")

        retriever = Retriever(load_index(settings, embedder), embedder, settings)
        print("\nReader stage in-process by backend (same questions, same run)")
        print(f"  {'backend':<12}{'p50 ms':>9}{'p95 ms':>9}{'vs onnx':>9}")
        base_p50 = None
        for backend in ("onnx", "onnx-int8", "torch", "torch-bf16"):
            s = settings.model_copy(update={"reader_backend": backend})
            answerer = Answerer(retriever, s, reader=load_settings_reader(s))
            for q in questions[:5]:
                answerer.answer(q)
            times = [answerer.answer(q).timings_ms["answer"] for q in questions]
            p50 = pct(times, 50)
            base_p50 = base_p50 or p50
            print(f"  {backend:<12}{p50:9.1f}{pct(times, 95):9.1f}{base_p50 / p50:8.2f}x")


if __name__ == "__main__":
    main()
