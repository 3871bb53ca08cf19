"""How long an upload-like rebuild takes at about 5,000 chunks, and what loading costs.

    .venv/bin/python bench/incremental_build.py [--chunks 5000] [--work DIR] [--module PATH]

Writes paragraphs of ``../shared/bench/train/`` as .txt files (title, blank line, text)
into ``WORK/docs`` until they make about ``--chunks`` chunks, builds them once, then times
three rebuilds: one 1 KB file added (an upload), nothing changed, and the file removed;
then ``load_index`` (the median of 5). ``--module`` times another copy of ``rag/index.py``
(e.g. ``git show HEAD:rag/index.py``) on the same corpus, for a before/after comparison.

The first build's vectors come from a stand-in that returns random unit vectors with the
real model's fingerprint: embedding 5,000 chunks on a laptop CPU takes many minutes and is
not what is measured. Every timed rebuild embeds its new text with the real model.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from rag.embedding import Embedder, configure_runtime, load_embedder
from rag.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT.parent / "shared" / "bench" / "train"
UPLOAD = "upload.txt"


class RandomVectors:
    """The real embedder, except that passages get random unit vectors (the untimed first build)."""

    def __init__(self, real: Embedder) -> None:
        self._real = real
        self._rng = np.random.default_rng(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def embed_passages(self, texts: list[str], show_progress: bool = False) -> np.ndarray:  # noqa: ARG002
        v = self._rng.standard_normal((len(texts), self._real.dim)).astype(np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def write_corpus(docs: Path, paragraphs: int) -> None:
    """``paragraphs`` training paragraphs as one .txt file each."""
    rows: list[tuple[str, str]] = []
    for name in ("cmrc2018_train.json", "DRCD_test.json", "xquad.zh.json"):
        data = json.loads((TRAIN / name).read_text(encoding="utf-8"))["data"]
        rows += [(a.get("title") or "无题", p["context"]) for a in data for p in a["paragraphs"]]
    docs.mkdir(parents=True, exist_ok=True)
    for i, (title, text) in enumerate(rows[:paragraphs]):
        (docs / f"p{i:05d}.txt").write_text(f"{title}\n\n{text}\n", encoding="utf-8")


def load_module(path: Path | None) -> ModuleType:
    """``rag.index``, or the copy of it at ``path``."""
    if path is None:
        import rag.index

        return rag.index
    spec = importlib.util.spec_from_file_location("index_under_test", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> None:
    """Build, time the rebuilds and the load, print one line each."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=5000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rag-incremental-bench"))
    parser.add_argument("--module", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    configure_runtime()
    index = load_module(args.module)
    docs = args.work / "docs"
    if not docs.is_dir():
        write_corpus(docs, paragraphs=int(args.chunks / 2.15))
    (docs / UPLOAD).unlink(missing_ok=True)
    settings = Settings(docs_dir=docs, index_dir=args.work / "index")
    shutil.rmtree(settings.index_dir, ignore_errors=True)
    embedder = load_embedder(settings)
    first = index.build_index(settings, RandomVectors(embedder))  # type: ignore[arg-type]
    print(f"first build (random vectors): {first.chunks} chunks, {first.seconds:.1f} s")
    embedder.embed_passages(["预热"])  # a running service has its passage model loaded already
    upload = "上传的文档\n\n" + "本报讯 这是一份新上传的文档，用来测量增量重建索引的用时。" * 12 + "\n"
    (docs / UPLOAD).write_text(upload, encoding="utf-8")
    for what in ("one 1 KB file added", "nothing changed", "that file removed"):
        if what == "that file removed":
            (docs / UPLOAD).unlink()
        stats = index.build_index(settings, embedder)
        print(f"rebuild, {what}: {stats.seconds:.2f} s (embedded {stats.embedded}, {stats.chunks} chunks)")
    times = []
    for _ in range(5):
        started = time.perf_counter()
        loaded = index.load_index(settings, embedder)
        times.append(time.perf_counter() - started)
    print(f"load_index: median {statistics.median(times) * 1000:.0f} ms over 5 ({len(loaded)} chunks)")


if __name__ == "__main__":
    sys.exit(main())
