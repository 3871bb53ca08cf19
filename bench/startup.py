"""How long `rag search` and `rag ask` take from the shell, and where the time goes.

    .venv/bin/python bench/startup.py [--index DIR] [--reps 5] [--question Q]

On a built index with a warm cache (converted model and ONNX exports made: one
untimed run of each command first), it times ``--reps`` runs of each command as a
subprocess (wall clock, median and range), then the same work in a child process
split into phases (median of the same number of runs):

- python:   the interpreter starting (``python -c pass``)
- import:   importing the modules the command needs (rag.cli, retrieval, answer)
- model:    the question encoder (and, for ask, the reader): tokenizer, ONNX sessions
- index:    reading the index (chunks, FAISS, BM25)
- jieba:    loading jieba's dictionary (the first BM25 tokenization)
- query:    the search / the answer itself

Without ``--index`` it uses /tmp/warm-idx when that holds a build, else builds the
seed documents into a temporary folder first. Nothing here needs the network.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RAG = Path(sys.executable).with_name("rag")
DEFAULT_INDEX = Path("/tmp/warm-idx")
BUDGET_S = 3.0

# The child: each phase timed on its own, printed as one JSON line.
_PHASES = r"""
import json, sys, time
t0 = time.perf_counter()
import rag.cli  # noqa: F401  (what the command imports before it runs)
from rag.retrieval import Retriever
command, index, question = sys.argv[1:4]
if command == "ask":
    from rag.answer import Answerer
t1 = time.perf_counter()
from rag.embedding import load_embedder
from rag.index import load_index
from rag.settings import Settings
settings = Settings(index_dir=index)
embedder = load_embedder(settings)
embedder.warm_query_encoder()
reader = None
if command == "ask":
    from rag.reader import load_settings_reader
    reader = load_settings_reader(settings)
t2 = time.perf_counter()
retriever = Retriever(load_index(settings, embedder), embedder, settings)
t3 = time.perf_counter()
from rag.textnorm import search_tokens
search_tokens("锦屏")
t4 = time.perf_counter()
if command == "ask":
    Answerer(retriever, settings, reader=reader).answer(question)
else:
    retriever.search(question)
t5 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "model": t2 - t1, "index": t3 - t2, "jieba": t4 - t3,
                  "query": t5 - t4, "torch": "torch" in sys.modules,
                  "sentence_transformers": "sentence_transformers" in sys.modules}))
"""


def _wall(cmd: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr}")
    return seconds


def _index(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    if (DEFAULT_INDEX / "CURRENT").is_file():
        return DEFAULT_INDEX
    index = Path(tempfile.mkdtemp(prefix="startup-idx-"))
    print(f"building the seed index into {index} ...", file=sys.stderr)
    subprocess.run([str(RAG), "build", "--docs", str(ROOT / "seeds"), "--index", str(index)], check=True)
    return index


def _summary(values: list[float]) -> str:
    return f"{statistics.median(values):5.2f} s  (min {min(values):.2f}, max {max(values):.2f})"


def main() -> None:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("--index", type=Path, default=None)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--question", default="锦屏成立了什么联盟")
    args = parser.parse_args()
    index = _index(args.index)
    commands = {name: [str(RAG), name, args.question, "--index", str(index)] for name in ("search", "ask")}
    for cmd in commands.values():  # warm: the exports and the page cache, untimed
        _wall(cmd)

    python = [_wall([sys.executable, "-c", "pass"]) for _ in range(args.reps)]
    print(f"index {index}, {args.reps} runs each, warm cache")
    print(f"{'python -c pass':<14} {_summary(python)}")
    failed = False
    for name, cmd in commands.items():
        walls = [_wall(cmd) for _ in range(args.reps)]
        phases: list[dict[str, float]] = []
        for _ in range(args.reps):
            out = subprocess.run(
                [sys.executable, "-c", _PHASES, name, str(index), args.question],
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=True,
            )
            phases.append(json.loads(out.stdout.strip().splitlines()[-1]))
        median = statistics.median(walls)
        verdict = "ok" if median < BUDGET_S else f"OVER the {BUDGET_S:.0f} s budget"
        failed |= median >= BUDGET_S
        print(f"{'rag ' + name:<14} {_summary(walls)}  {verdict}")
        split = ", ".join(
            f"{key} {statistics.median(p[key] for p in phases):.2f}"
            for key in ("import", "model", "index", "jieba", "query")
        )
        heavy = [k for k in ("torch", "sentence_transformers") if any(p[k] for p in phases)]
        print(f"{'':<14} phases (median s): python {statistics.median(python):.2f}, {split}")
        print(f"{'':<14} imported torch / sentence-transformers: {', '.join(heavy) or 'neither'}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
