"""How reader and retrieval scores combine, and where to abstain: a sweep over measured readings.

    .venv/bin/python bench/reader_sweep.py [--sets seed cmrc2018] [--passages 3 5]

Each question of the sets is retrieved and read once (top 5 passages, the service's own
``Retriever`` and ``Reader``); the readings are then scored under every combination of

- ``context``: characters of the article read on each side of a chunk;
- ``passages``: how many of the top passages the reader's answer may come from;
- ``rank_weight``: span score = reader margin (span minus no-answer) + weight / rank;
- ``margin``: abstain when the chosen span's margin is below it;
- ``byline``: whether bylines answer who-wrote questions before the reader (seed set);
- ``gate``: abstain on the chosen span's margin (``chosen``) or on the best margin of any
  passage (``any``).

and the table prints F1, EM, accuracy, abstention recall (per unanswerable group) and
wrong abstentions, with the eval harness's own metric functions. Only these few numbers
are chosen on the measurement sets (the issue allows it); nothing is trained on them.
"""

from __future__ import annotations

import argparse
import itertools
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from rag.answer import Answerer
from rag.embedding import load_embedder
from rag.evaluation.indexes import default_cache_root, open_retriever
from rag.evaluation.metrics import answer_contains, cmrc_em, cmrc_f1, strip_citations
from rag.evaluation.sets import DEFAULT_BENCH_DIR, DEFAULT_SET, load_jsonl_set, load_squad_set
from rag.reader import Reading, load_settings_reader
from rag.settings import Settings

SQUAD = {"cmrc2018": "cmrc2018/cmrc2018_trial.json", "drcd": "drcd/DRCD_dev.json"}


@dataclass
class Row:
    qtype: str
    golds: tuple[str, ...]
    texts: list[str]
    readings: list[Reading]
    byline: str | None


def collect(
    name: str, settings: Settings, limit: int | None, contexts: list[int], bench_dir: Path
) -> dict[int, list[Row]]:
    """Each question retrieved once and read once per context width (characters each side)."""
    if name == "seed":
        eval_set = load_jsonl_set(DEFAULT_SET, limit)
    else:
        eval_set = load_squad_set(bench_dir / SQUAD[name], limit)
    embedder = load_embedder(settings)
    cache_root = Path(os.environ.get("RAG_EVAL_CACHE_DIR") or default_cache_root(settings))
    opened = open_retriever(eval_set, settings, embedder, cache_root)
    retriever, s = opened.retriever, opened.settings
    reader = load_settings_reader(s)
    answerers = {
        c: Answerer(retriever, s.model_copy(update={"reader_passages": 5, "reader_context": c}), reader)
        for c in contexts
    }
    out: dict[int, list[Row]] = {c: [] for c in contexts}
    for q in eval_set.questions:
        hits = retriever.search(q.question, k=5)
        for c, answerer in answerers.items():
            texts = [p.text for p in answerer.passages(hits)]
            byline = answerer._byline_answer(q.question, hits)
            out[c].append(
                Row(
                    q.type,
                    q.answers,
                    texts,
                    reader.read(q.question, texts),
                    strip_citations(byline.answer) if byline else None,
                )
            )
    return out


def score(
    rows: list[Row], passages: int, rank_weight: float, margin: float, byline: bool, gate: str
) -> dict[str, float]:
    f1 = em = acc = 0.0
    answerable = wrong_abstain = 0
    abstained_by_type: dict[str, list[bool]] = defaultdict(list)
    for row in rows:
        pred: str | None = None
        if byline and row.byline is not None:
            pred = row.byline
        else:
            cands = [r for r in row.readings if r.passage < passages]
            if cands:
                best = max(cands, key=lambda r: r.margin + rank_weight / (r.passage + 1))
                # gate "chosen": the chosen span must clear the margin; "any": some passage must.
                clears = best.margin if gate == "chosen" else max(r.margin for r in cands)
                if clears >= margin:
                    pred = row.texts[best.passage][best.start : best.end].strip()
        if row.golds:
            answerable += 1
            if pred is None:
                wrong_abstain += 1
                continue
            f1 += cmrc_f1(pred, row.golds)
            em += cmrc_em(pred, row.golds)
            acc += answer_contains(pred, row.golds)
        else:
            abstained_by_type[row.qtype].append(pred is None)
    out = {
        "f1": f1 / max(1, answerable),
        "em": em / max(1, answerable),
        "acc": acc / max(1, answerable),
        "wrong_abst": wrong_abstain / max(1, answerable),
    }
    for qtype, flags in sorted(abstained_by_type.items()):
        out[f"recall_{qtype}"] = sum(flags) / len(flags)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", nargs="+", default=["seed", "cmrc2018"])
    ap.add_argument("--limit", type=int)
    ap.add_argument("--passages", nargs="+", type=int, default=[1, 3, 5])
    ap.add_argument("--contexts", nargs="+", type=int, default=[0, 60])
    ap.add_argument("--rank-weights", nargs="+", type=float, default=[0.0, 1.0, 2.0, 4.0])
    ap.add_argument(
        "--margins", nargs="+", type=float, default=[-4.0, -3.0, -2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]
    )
    ap.add_argument(
        "--bench-dir",
        type=Path,
        default=Path(os.environ.get("RAG_EVAL_BENCH_DIR") or DEFAULT_BENCH_DIR),
        help="External benchmarks (default $RAG_EVAL_BENCH_DIR or ../shared/bench).",
    )
    args = ap.parse_args()
    settings = Settings(docs_dir=Path(__file__).resolve().parents[1] / "seeds")
    for name in args.sets:
        by_context = collect(name, settings, args.limit, args.contexts, args.bench_dir)
        for context, rows in by_context.items():
            print(f"\n## {name}, context {context} characters ({len(rows)} questions)")
            header = None
            for passages, weight, margin, byline, gate in itertools.product(
                args.passages,
                args.rank_weights,
                args.margins,
                [False, True] if name == "seed" else [False],
                ["chosen", "any"],
            ):
                if gate == "any" and weight == 0:
                    continue  # the same as "chosen"
                m = score(rows, passages, weight, margin, byline, gate)
                if header is None:
                    header = ["passages", "rank_w", "margin", "byline", "gate", *m]
                    print("| " + " | ".join(header) + " |")
                    print("|" + "---|" * len(header))
                cells = [str(passages), f"{weight:g}", f"{margin:g}", "y" if byline else "n", gate]
                print("| " + " | ".join(cells + [f"{v:.3f}" for v in m.values()]) + " |")


if __name__ == "__main__":
    main()
