"""PNG plots of a report (matplotlib, headless): per set, the metrics per configuration,
recall@k curves, scores per question type and latency."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

import numpy as np

from rag.evaluation.metrics import RECALL_KS
from rag.evaluation.report import EvalReport, SetReport

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

_BAR_METRICS = ("recall@1", "recall@5", "mrr@10", "ndcg@10")


def _figure(width: float, height: float) -> tuple[Figure, Axes]:
    import matplotlib

    matplotlib.use("Agg")  # no display: the plots only go to files
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height))
    return fig, ax


def _png(fig: Figure) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return buf.getvalue()


def _retrieval_bars(name: str, section: SetReport) -> bytes:
    configs = list(section.retrieval)
    fig, ax = _figure(max(6, 1.3 * len(configs)), 3.6)
    width = 0.8 / len(_BAR_METRICS)
    x = np.arange(len(configs))
    for j, m in enumerate(_BAR_METRICS):
        ax.bar(x + j * width, [section.retrieval[c].overall[m] for c in configs], width, label=m)
    ax.set_xticks(x + width * (len(_BAR_METRICS) - 1) / 2, configs, rotation=20)
    ax.set_ylim(0, 1.2)
    ax.set_title(f"{name}: retrieval by configuration")
    ax.legend(loc="upper center", ncol=len(_BAR_METRICS), fontsize=8)
    return _png(fig)


def _recall_curves(name: str, section: SetReport) -> bytes:
    fig, ax = _figure(6, 3.6)
    for config, result in section.retrieval.items():
        ax.plot(RECALL_KS, [result.overall[f"recall@{k}"] for k in RECALL_KS], marker="o", label=config)
    ax.set_xticks(RECALL_KS)
    ax.set_xlabel("k")
    ax.set_ylabel("recall@k")
    ax.set_title(f"{name}: recall@k")
    ax.legend(fontsize=8)
    return _png(fig)


def _by_type(name: str, section: SetReport) -> bytes | None:
    default = section.default_config
    by_type = section.retrieval[default].by_type if default in section.retrieval else None
    if not by_type:
        return None
    types = list(by_type)
    fig, ax = _figure(7, 0.35 * len(types) + 1.5)
    y = np.arange(len(types))
    ax.barh(y - 0.2, [by_type[t]["recall@5"] for t in types], 0.4, label=f"recall@5 ({default})")
    if section.answers is not None:
        accuracy = [section.answers.by_type.get(t, {}).get("accuracy", 0.0) for t in types]
        ax.barh(y + 0.2, accuracy, 0.4, label="answer accuracy")
    ax.set_yticks(y, types)
    ax.set_xlim(0, 1.05)
    ax.set_title(f"{name}: by question type")
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def _latency(name: str, section: SetReport) -> bytes:
    # The *_paragraph rows are the same searches judged again: their latency is not new.
    searched = [c for c in section.retrieval if not c.endswith("_paragraph")]
    labels = [f"search:{c}" for c in searched]
    p50 = [section.retrieval[c].latency_ms.p50 for c in searched]
    p95 = [section.retrieval[c].latency_ms.p95 for c in searched]
    if section.answers is not None:
        for stage, v in section.answers.latency_ms.items():
            labels.append(f"answer:{stage}")
            p50.append(v.p50)
            p95.append(v.p95)
    fig, ax = _figure(max(6, 1.1 * len(labels)), 3.4)
    x = np.arange(len(labels))
    ax.bar(x - 0.2, p50, 0.4, label="p50")
    ax.bar(x + 0.2, p95, 0.4, label="p95")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("ms")
    ax.set_title(f"{name}: latency")
    ax.legend(fontsize=8)
    return _png(fig)


def make_plots(report: EvalReport) -> dict[str, bytes]:
    """PNG plots per set, by file name (``<set>_retrieval.png``, ``<set>_recall_at_k.png``...)."""
    plots: dict[str, bytes] = {}
    for name, section in report.sets.items():
        if not section.retrieval:
            continue
        plots[f"{name}_retrieval.png"] = _retrieval_bars(name, section)
        plots[f"{name}_recall_at_k.png"] = _recall_curves(name, section)
        types = _by_type(name, section)
        if types is not None:
            plots[f"{name}_types.png"] = types
        plots[f"{name}_latency.png"] = _latency(name, section)
    return plots
