"""The report rendered: shared tables, Markdown, HTML (``templates/report.html.jinja2``), the
terminal summary (rich renderables), and the report folder written to disk."""

from __future__ import annotations

import base64
import functools
import json
import logging
import os
import shutil
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import jinja2

from rag.evaluation.metrics import RECALL_KS
from rag.evaluation.plots import make_plots
from rag.evaluation.report import (
    ANSWER_METRICS,
    RETRIEVAL_METRIC_NAMES,
    AnswerRow,
    EvalReport,
    GateVerdict,
    QuestionDetail,
    SetReport,
)

if TYPE_CHECKING:
    from rich.console import RenderableType

log = logging.getLogger(__name__)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
MISS_RANK = 5
"""A question whose first relevant chunk is below this rank is listed as a retrieval miss."""
MAX_MISSES = 25
_SHORT = {f"recall@{k}": f"R@{k}" for k in RECALL_KS} | {"mrr@10": "MRR@10", "ndcg@10": "nDCG@10"}
_ANSWER_TYPE_COLUMNS = ("accuracy", "em", "f1", "abstained")


@dataclass(frozen=True)
class Table:
    """One table of a set's section, the same in every format."""

    caption: str
    headers: list[str]
    rows: list[list[str]]


def fmt(value: object) -> str:
    """A cell: floats to 3 decimals, ``None`` as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _ms(value: float) -> str:
    return f"{value:.1f}"


def _retrieval_tables(section: SetReport) -> list[Table]:
    if not section.retrieval:
        return []
    cols = list(RETRIEVAL_METRIC_NAMES)
    rows = [
        [cfg, *(fmt(r.overall.get(m)) for m in cols), _ms(r.latency_ms.p50), _ms(r.latency_ms.p95)]
        for cfg, r in section.retrieval.items()
    ]
    tables = [Table("Retrieval", ["config", *cols, "p50 ms", "p95 ms"], rows)]
    default = section.default_config
    by_type = section.retrieval[default].by_type if default in section.retrieval else None
    if by_type:
        rows = [[t, str(int(v["n"])), *(fmt(v.get(m)) for m in cols)] for t, v in by_type.items()]
        tables.append(Table(f"Retrieval by question type ({default})", ["type", "n", *cols], rows))
    return tables


def _answer_tables(section: SetReport) -> list[Table]:
    answers = section.answers
    if answers is None:
        return []
    cols = [c for c in ANSWER_METRICS if c in answers.overall]
    tables = [Table("Answers (default configuration)", cols, [[fmt(answers.overall[c]) for c in cols]])]
    rows = [
        [t, str(int(v["n"])), *(fmt(v.get(m)) for m in _ANSWER_TYPE_COLUMNS)]
        for t, v in answers.by_type.items()
    ]
    if len(rows) > 1:
        tables.append(Table("Answers by question type", ["type", "n", *_ANSWER_TYPE_COLUMNS], rows))
    if answers.latency_ms:
        rows = [[stage, _ms(v.p50), _ms(v.p95)] for stage, v in answers.latency_ms.items()]
        tables.append(Table("Answer latency per stage (ms)", ["stage", "p50", "p95"], rows))
    return tables


def report_tables(section: SetReport) -> list[Table]:
    """The tables of one set's section, shared by every format."""
    tables = _retrieval_tables(section) + _answer_tables(section)
    f = section.followups
    if f is not None:
        rows = [
            ["with history", fmt(f.accuracy_with_history), fmt(f.hit_with_history)],
            ["without history", fmt(f.accuracy_without_history), fmt(f.hit_without_history)],
        ]
        tables.append(Table(f"Follow-ups ({f.n} pairs)", ["", "accuracy", "hit@5"], rows))
    return tables


def misses(section: SetReport, limit: int = MAX_MISSES) -> tuple[list[QuestionDetail], list[AnswerRow]]:
    """The first retrieval misses (default configuration, not in the top 5) and wrong answers."""
    default = section.default_config or ""
    retrieval = [
        d
        for d in section.details
        if default in d.ranks and ((rank := d.ranks[default]) is None or rank > MISS_RANK)
    ]
    answers = [
        a
        for a in (d.answer for d in section.details)
        if a is not None and ((a.gold and not a.correct) or (not a.gold and not a.abstained))
    ]
    return retrieval[:limit], answers[:limit]


def set_heading(name: str, section: SetReport) -> str:
    """``seed: 30 questions (27 answerable), limit 30, 112 chunks, 41.2 s``."""
    bits = [f"{section.questions} questions ({section.answerable} answerable)"]
    if section.limit is not None:
        bits.append(f"limit {section.limit}")
    if section.traditional:
        bits.append("traditional Chinese")
    bits.append(f"{section.indexes[0].chunks if section.indexes else '?'} chunks")
    bits.append(f"{section.seconds.total} s")
    return f"{name}: " + ", ".join(bits)


def _md_table(headers: list[str], rows: list[list[str]]) -> str:
    def esc(cell: str) -> str:
        return cell.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_misses(section: SetReport) -> list[str]:
    out: list[str] = []
    r_miss, a_miss = misses(section)
    default = section.default_config
    if r_miss:
        out += [f"### Retrieval misses ({default}, not in top {MISS_RANK}; first {len(r_miss)})", ""]
        out += [f"- `{d.id}` [{d.type}] {d.question} — rank {d.ranks.get(default or '')}" for d in r_miss]
        out.append("")
    if a_miss:
        out += [f"### Answer misses (first {len(a_miss)})", ""]
        for a in a_miss:
            gold = "/".join(a.gold) or "(unanswerable)"
            out.append(f"- `{a.id}` [{a.type}] {a.question} — gold {gold}; got: {(a.answer or '')[:80]}")
        out.append("")
    return out


def render_markdown(report: EvalReport, gate: GateVerdict | None = None, plots: Iterable[str] = ()) -> str:
    """The report as Markdown (plots referenced as files in ``plots/``)."""
    plots = list(plots)
    out = [
        "# Evaluation report",
        "",
        f"- created: {report.created}, commit: {report.commit or '?'}, total {report.seconds} s",
        f"- settings: {json.dumps(asdict(report.settings), ensure_ascii=False)}",
        "- recall@k = at least one relevant chunk in the top k (ranx hit_rate@k); "
        "answers scored with the CMRC 2018 normalization",
        "",
    ]
    if gate is not None:
        out += ["## Gate", "", "**passed**" if gate.passed else "**FAILED**", ""]
        out += [f"- {line}" for line in gate.failures + gate.notes]
        out.append("")
    for name, section in report.sets.items():
        out += [f"## {set_heading(name, section)}", ""]
        for t in report_tables(section):
            out += [f"### {t.caption}", "", _md_table(t.headers, t.rows), ""]
        for plot in plots:
            if plot.startswith(f"{name}_"):
                out += [f"![{plot}](plots/{plot})", ""]
        out += _md_misses(section)
    return "\n".join(out)


@functools.cache
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # questions and answers are document text: never markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _html_set(name: str, section: SetReport, plots: dict[str, bytes]) -> dict[str, object]:
    r_miss, a_miss = misses(section)
    default = section.default_config or ""
    return {
        "heading": set_heading(name, section),
        "tables": report_tables(section),
        "plots": [
            (plot, base64.b64encode(png).decode())
            for plot, png in plots.items()
            if plot.startswith(f"{name}_")
        ],
        "retrieval_misses": Table(
            f"Retrieval misses (not in top {MISS_RANK})",
            ["id", "type", "question", "rank"],
            [[d.id, d.type, d.question, fmt(d.ranks.get(default))] for d in r_miss],
        ),
        "answer_misses": Table(
            "Answer misses",
            ["id", "type", "question", "gold", "answer"],
            [[a.id, a.type, a.question, "/".join(a.gold), (a.answer or "")[:120]] for a in a_miss],
        ),
    }


def render_html(report: EvalReport, plots: dict[str, bytes], gate: GateVerdict | None = None) -> str:
    """A self-contained HTML report: tables and the PNG plots embedded as base64."""
    return (
        _environment()
        .get_template("report.html.jinja2")
        .render(
            report=report,
            settings_json=json.dumps(asdict(report.settings), ensure_ascii=False),
            gate=gate,
            sets=[_html_set(name, section, plots) for name, section in report.sets.items()],
        )
    )


def terminal_summary(report: EvalReport, gate: GateVerdict | None = None) -> list[RenderableType]:
    """The headline tables and the gate verdict, as rich renderables for the terminal."""
    from rich import box
    from rich.rule import Rule
    from rich.table import Table as RichTable
    from rich.text import Text

    out: list[RenderableType] = []
    for name, section in report.sets.items():
        out.append(Rule(set_heading(name, section)))
        for t in report_tables(section):
            if t.caption.startswith(("Retrieval by question type", "Answers by")):
                continue  # in the reports; the terminal keeps to the headline tables
            headers, rows = t.headers, t.rows
            if len(rows) == 1 and len(headers) > 4:  # one wide row reads better as a column
                headers, rows = ["metric", "value"], [[h, v] for h, v in zip(headers, rows[0], strict=True)]
            table = RichTable(title=t.caption, title_justify="left", box=box.SIMPLE)
            for h in headers:
                left = h in ("config", "stage", "metric", "")
                table.add_column(_SHORT.get(h, h), justify="left" if left else "right")
            for row in rows:
                table.add_row(*row)
            out.append(table)
    if gate is not None:
        out += [Text.from_markup(f"[dim]gate: {note}[/dim]") for note in gate.notes]
        verdict = (
            f"[red]gate: failed, {len(gate.failures)} metric(s) out of bounds[/red]"
            if gate.failures
            else "[green]gate: passed[/green]"
        )
        out.append(Text.from_markup(verdict))
    return out


def write_reports(report: EvalReport, out_dir: Path, gate: GateVerdict | None = None) -> Path:
    """Write JSON, Markdown, HTML, plots and per-question details to ``out_dir/<stamp>/`` and ``latest/``."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    target = out_dir / stamp
    n = 1
    while target.exists():
        target = out_dir / f"{stamp}-{n}"
        n += 1
    (target / "plots").mkdir(parents=True)
    plots = make_plots(report)
    for plot, data in plots.items():
        (target / "plots" / plot).write_bytes(data)
    (target / "report.json").write_text(
        json.dumps(report.to_dict(gate), ensure_ascii=False, indent=1), encoding="utf-8"
    )
    for name, section in report.sets.items():
        with (target / f"details-{name}.jsonl").open("w", encoding="utf-8") as f:
            for detail in section.details:
                f.write(json.dumps(detail.to_dict(), ensure_ascii=False) + "\n")
    (target / "report.md").write_text(render_markdown(report, gate, plots), encoding="utf-8")
    (target / "report.html").write_text(render_html(report, plots, gate), encoding="utf-8")
    # Copy, then swap in: a reader of latest/ never sees a half-written folder.
    latest = out_dir / "latest"
    tmp = out_dir / f".latest-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(target, tmp)
    shutil.rmtree(latest, ignore_errors=True)
    tmp.rename(latest)
    log.info("reports written to %s (and %s)", target, latest)
    return target
