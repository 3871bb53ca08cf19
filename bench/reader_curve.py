"""The reader's learning curve: CMRC 2018 trial F1 against training windows seen.

    .venv/bin/python bench/reader_curve.py reader-run [--limit 80] [--backend onnx]

Scores every snapshot a ``rag train-reader`` run wrote (``snapshot-<windows>.safetensors``,
listed in ``curve.jsonl``) and its final weights, each question with its gold paragraph
given (the reader alone, no retrieval), and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

from rag.embedding import ensure_default_model
from rag.evaluation.sets import DEFAULT_BENCH_DIR
from rag.reader import load_reader
from rag.reader_training import evaluate_reader
from rag.settings import Settings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--limit", type=int, help="First N paragraphs of CMRC trial (default: all).")
    ap.add_argument("--backend", default="onnx")
    ap.add_argument(
        "--bench-dir",
        type=Path,
        default=Path(os.environ.get("RAG_EVAL_BENCH_DIR") or DEFAULT_BENCH_DIR),
        help="External benchmarks (default $RAG_EVAL_BENCH_DIR or ../shared/bench).",
    )
    args = ap.parse_args()
    settings = Settings()
    base = ensure_default_model(settings.cache_dir)
    trial = args.bench_dir / "cmrc2018" / "cmrc2018_trial.json"
    points: dict[int, tuple[Path, float | None]] = {}
    curve = args.run / "curve.jsonl"
    for line in curve.read_text(encoding="utf-8").splitlines() if curve.is_file() else []:
        row = json.loads(line)
        points[int(row["windows"])] = (args.run / row["snapshot"], float(row["loss"]))
    final = args.run / "reader.safetensors"
    if final.is_file():
        manifest = json.loads(final.with_suffix(".json").read_text(encoding="utf-8"))
        points[int(manifest["windows"])] = (final, None)
    print("| windows seen | training loss | F1 | EM | questions |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as cache:
        for windows, (weights, loss) in sorted(points.items()):
            if not weights.with_suffix(".json").is_file():
                continue
            reader = load_reader(base, Path(cache), backend=args.backend, weights=weights)
            score = evaluate_reader(reader, trial, args.limit)
            loss_cell = f"{loss:.3f}" if loss is not None else "(final)"
            cells = [f"{windows:,}", loss_cell, f"{score.f1:.3f}", f"{score.em:.3f}", str(score.questions)]
            print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
