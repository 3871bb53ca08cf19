"""How right the reader is at each margin: the measurement behind ``RAG_LOW_CONFIDENCE``.

    .venv/bin/python bench/confidence_margin.py [--questions 1000] [--seed 12] [--save rows.json]

A deterministic sample of CMRC 2018 *train* questions (one per paragraph, paragraphs drawn
with a seeded generator), each read by the service's reader (``rag.reader``) in its gold
paragraph. Per margin bin (best span minus no-answer score, ``Reading.margin``) the table
prints how many answers fall there, their mean CMRC character F1, the share with F1 < 0.5
("mostly wrong"), and the confidence ``rag.answer.confidence`` gives that margin. Only
``../shared/bench/train/`` is read: never eval/questions.jsonl, CMRC trial or DRCD dev.

The reader was trained on this file (rag/weights/MODEL_CARD.md), so it is surer here than on
unseen text, where the same margins come lower for answers as often right: the confidence
fitted on this table is conservative on new text (it flags more than it needs to, not less).
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
from pathlib import Path

from rag.answer import confidence
from rag.evaluation.metrics import cmrc_f1
from rag.reader import load_settings_reader
from rag.settings import Settings

TRAIN = Path(__file__).resolve().parent.parent.parent / "shared" / "bench" / "train" / "cmrc2018_train.json"
BINS = (-99.0, -6.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 6.0, 8.0, 10.0, 99.0)


def sample(path: Path, n: int, seed: int) -> list[tuple[str, str, str, list[str]]]:
    """``(question, gold paragraph, distractor, gold answers)`` for the first answerable
    question of n paragraphs; the distractor is another paragraph that holds no gold answer."""
    data = json.loads(path.read_text(encoding="utf-8"))["data"]
    paragraphs = [p for entry in data for p in entry["paragraphs"]]
    rng = random.Random(seed)
    order = list(range(len(paragraphs)))
    rng.shuffle(order)
    out = []
    for i in order:
        para = paragraphs[i]
        qa = next((q for q in para["qas"] if q.get("answers") and q["question"].strip()), None)
        if qa is None:
            continue
        golds = [a["text"] for a in qa["answers"]]
        other = paragraphs[rng.randrange(len(paragraphs))]["context"]
        if other == para["context"] or any(g in other for g in golds):
            continue
        out.append((qa["question"], para["context"], other, golds))
        if len(out) == n:
            break
    return out


def table(title: str, rows: list[tuple[float, float]]) -> None:
    """Answers per margin bin: count, mean F1, share mostly wrong, mean confidence."""
    print(f"\n{title}: {len(rows)} readings, mean F1 {sum(f for _, f in rows) / max(1, len(rows)):.3f}")
    print("| margin | n | mean F1 | F1 < 0.5 | confidence |")
    print("|---|---|---|---|---|")
    for lo, hi in itertools.pairwise(BINS):
        part = [(m, f) for m, f in rows if lo <= m < hi]
        if not part:
            continue
        wrong = sum(f < 0.5 for _, f in part) / len(part)
        mean_f1 = sum(f for _, f in part) / len(part)
        mean_conf = sum(confidence(m) for m, _ in part) / len(part)
        label = f"< {hi:g}" if lo < -90 else f">= {lo:g}" if hi > 90 else f"[{lo:g}, {hi:g})"
        print(f"| {label} | {len(part)} | {mean_f1:.2f} | {wrong:.0%} | {mean_conf:.2f} |")


def fit_logistic(rows: list[tuple[float, float]]) -> tuple[float, float]:
    """``(a, b)`` of P(F1 >= 0.5 | margin) = sigmoid(a * margin + b), by Newton's method."""
    import numpy as np

    x = np.array([m for m, _ in rows])
    y = np.array([f >= 0.5 for _, f in rows], dtype=float)
    w = np.zeros(2)
    design = np.stack([x, np.ones_like(x)], axis=1)
    for _ in range(50):
        p = 1 / (1 + np.exp(-design @ w))
        grad = design.T @ (y - p)
        hess = design.T @ (design * (p * (1 - p))[:, None]) + 1e-6 * np.eye(2)
        w += np.linalg.solve(hess, grad)
    return float(w[0]), float(w[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--questions", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--train", type=Path, default=TRAIN)
    parser.add_argument("--save", type=Path, help="also write the (margin, F1) readings as JSON")
    args = parser.parse_args()
    reader = load_settings_reader(Settings())
    gold: list[tuple[float, float]] = []
    distractor: list[tuple[float, float]] = []
    for question, context, other, golds in sample(args.train, args.questions, args.seed):
        readings = reader.read(question, [context, other])
        for r in readings:
            row = (r.margin, cmrc_f1((context, other)[r.passage][r.start : r.end], golds))
            (gold if r.passage == 0 else distractor).append(row)
    if args.save:
        args.save.write_text(json.dumps({"gold": gold, "distractor": distractor}), encoding="utf-8")
    table("gold paragraph", gold)
    table("distractor paragraph (no answer in it)", distractor)
    # What users see: answers from the right passage, and from a wrong one when retrieval
    # missed; the service abstains below RAG_READER_MARGIN.
    floor = Settings().reader_margin
    rows = [r for r in gold + distractor if r[0] >= floor]
    table(f"both, answered (margin >= {floor:g})", rows)
    a, b = fit_logistic(rows)
    print(f"logistic fit of P(F1 >= 0.5): center {-b / a:.2f}, scale {1 / a:.2f}")
    print("cumulative: answers with margin below t")
    for t in (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0):
        part = [f for m, f in rows if m < t]
        if part:
            wrong = sum(f < 0.5 for f in part) / len(part)
            print(
                f"  t={t:g}: {len(part)} ({len(part) / len(rows):.0%}), mean F1 "
                f"{sum(part) / len(part):.2f}, F1<0.5 {wrong:.0%}, confidence {confidence(t):.2f}"
            )


if __name__ == "__main__":
    main()
