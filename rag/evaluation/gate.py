"""The CI gate: ``eval/thresholds.toml`` parsed, and a run's metrics compared with it.

``[<set>.<section>]`` tables hold ``"metric" = minimum`` or ``{min = x}`` / ``{max = x}``; the
``[gate]`` table says how the CI run is made (per-set ``limit``, ``skip_answers``), since the
thresholds were measured under those conditions.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag.errors import RagError
from rag.evaluation.report import GateVerdict
from rag.evaluation.sets import REPO_ROOT

DEFAULT_THRESHOLDS = REPO_ROOT / "eval" / "thresholds.toml"
GATE_TABLE = "gate"
"""Table of ``thresholds.toml`` that configures the CI run instead of naming a set."""

MeasuredMetrics = Mapping[str, Mapping[str, Mapping[str, float]]]
"""Set -> section -> metric -> value (:meth:`rag.evaluation.report.EvalReport.metrics`)."""


@dataclass(frozen=True)
class Bound:
    """A metric's allowed range; ``None`` leaves that side open."""

    min: float | None = None
    max: float | None = None


@dataclass(frozen=True)
class Thresholds:
    """A parsed thresholds file."""

    bounds: dict[str, dict[str, dict[str, Bound]]] = field(default_factory=dict)
    """Set -> section -> metric -> bound, in file order."""
    limits: dict[str, int] = field(default_factory=dict)
    """``[gate] limit``: per-set limits of the CI run."""
    skip_answers: frozenset[str] = frozenset()
    """``[gate] skip_answers``: sets whose answers the CI run does not evaluate."""


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _bound(where: str, value: object) -> Bound:
    """A plain number is a minimum; ``{min = x}`` / ``{max = x}`` give either bound."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Bound(min=value)
    if (
        isinstance(value, dict)
        and value
        and set(value) <= {"min", "max"}
        and all(_is_number(v) for v in value.values())
    ):
        return Bound(min=value.get("min"), max=value.get("max"))
    raise RagError(f"{where}: expected a minimum or {{min = x}} / {{max = x}}, got {value!r}")


def _gate_config(table: object) -> tuple[dict[str, int], frozenset[str]]:
    cfg = table if isinstance(table, dict) else {}
    limits = cfg.get("limit", {})
    skip = cfg.get("skip_answers", [])
    if not isinstance(limits, dict) or not all(isinstance(v, int) and v > 0 for v in limits.values()):
        raise RagError(f"[{GATE_TABLE}] limit must be a table of set = positive integer, e.g. {{drcd = 300}}")
    if not isinstance(skip, list):
        raise RagError(f"[{GATE_TABLE}] skip_answers must be a list of set names")
    return {str(k): int(v) for k, v in limits.items()}, frozenset(str(x) for x in skip)


def parse_thresholds(data: Mapping[str, Any]) -> Thresholds:
    """Thresholds from the parsed TOML; a malformed table or bound is a ``RagError``."""
    limits, skip = _gate_config(data.get(GATE_TABLE))
    bounds: dict[str, dict[str, dict[str, Bound]]] = {}
    for set_key, sections in data.items():
        if set_key == GATE_TABLE:
            continue
        if not isinstance(sections, dict) or not all(isinstance(v, dict) for v in sections.values()):
            raise RagError(f"[{set_key}]: expected [{set_key}.<section>] tables of metric bounds")
        bounds[set_key] = {
            section: {m: _bound(f"{set_key}.{section} {m}", b) for m, b in metrics.items()}
            for section, metrics in sections.items()
        }
    return Thresholds(bounds=bounds, limits=limits, skip_answers=skip)


def load_thresholds(path: Path) -> Thresholds:
    """Parse ``thresholds.toml``: ``[set.section]`` tables of ``"metric" = minimum`` or ``{max = x}``."""
    if not path.is_file():
        raise RagError(f"thresholds file {path} not found")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RagError(f"{path}: {exc}") from None
    return parse_thresholds(data)


def _check_section(where: str, limits: Mapping[str, Bound], measured: Mapping[str, float]) -> list[str]:
    failures = []
    for metric, bound in limits.items():
        value = measured.get(metric)
        if value is None:
            failures.append(f"{where} {metric}: not in the report (renamed or misspelled?)")
            continue
        if bound.min is not None and value < bound.min:
            failures.append(f"{where} {metric} = {value:.4f} < minimum {bound.min}")
        if bound.max is not None and value > bound.max:
            failures.append(f"{where} {metric} = {value:.4f} > maximum {bound.max}")
    return failures


def check_gate(measured: MeasuredMetrics, thresholds: Thresholds) -> GateVerdict:
    """Compare a run's metrics with the thresholds.

    A section of a set or configuration that this run did not measure is skipped with a
    note; a metric missing from a measured section fails (a renamed or misspelled metric
    must not pass silently).
    """
    failures: list[str] = []
    notes: list[str] = []
    for set_key, sections in thresholds.bounds.items():
        if set_key not in measured:
            notes.append(f"{set_key}: not run, skipped")
            continue
        for section_key, limits in sections.items():
            section = measured[set_key].get(section_key)
            if section is None:
                notes.append(f"{set_key}.{section_key}: not measured in this run, skipped")
                continue
            failures += _check_section(f"{set_key}.{section_key}", limits, section)
    return GateVerdict(failures=failures, notes=notes)
