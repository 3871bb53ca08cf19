"""What ``rag eval`` does, without the command line: which sets, which modes, gate or not.

Everything the command needs comes in as :class:`EvalCommand` (the CLI fills it from its
options and their environment variables); nothing here reads the environment.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import RagError
from rag.evaluation.gate import DEFAULT_THRESHOLDS, Thresholds, check_gate, load_thresholds
from rag.evaluation.pipeline import ALL_MODES, EvalOptions, run_evaluation
from rag.evaluation.render import write_reports
from rag.evaluation.report import EvalReport, GateVerdict
from rag.evaluation.sets import (
    DEFAULT_BENCH_DIR,
    DEFAULT_SET,
    REPO_ROOT,
    STANDARD_BENCH,
    EvalSet,
    load_jsonl_set,
    load_squad_set,
    resolve_squad_path,
    set_name,
)
from rag.settings import RetrievalMode, Settings

log = logging.getLogger(__name__)

DEFAULT_REPORTS = REPO_ROOT / "eval" / "reports"


def parse_limits(values: Sequence[str]) -> tuple[int | None, dict[str, int]]:
    """``--limit N`` (every set) and ``--limit NAME=N`` (one set)."""
    default: int | None = None
    per_set: dict[str, int] = {}
    for value in values:
        name, _, number = value.rpartition("=")
        try:
            n = int(number)
        except ValueError:
            raise RagError(f"--limit {value}: expected N or NAME=N, e.g. --limit drcd=300") from None
        if n < 1:
            raise RagError(f"--limit {value}: must be at least 1")
        if name:
            per_set[name] = n
        else:
            default = n
    return default, per_set


@dataclass
class EvalCommand:
    """Everything ``rag eval`` was asked to do."""

    sets: list[Path] = field(default_factory=list)
    squad: list[Path] = field(default_factory=list)
    bench: bool = False
    bench_dir: Path = DEFAULT_BENCH_DIR
    cache_root: Path | None = None
    """Where eval indexes are cached; ``None``: ``<cache_dir>/eval-index``."""
    ci: bool = False
    """Running in CI: ``--gate`` refuses to skip an external set that is not there."""
    mode: str = "all"
    gate: bool = False
    thresholds: Path = DEFAULT_THRESHOLDS
    out: Path = DEFAULT_REPORTS
    answers: bool = True
    skip_answers: list[str] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)
    simplified: bool | None = None
    title_comparison: bool = True


@dataclass(frozen=True)
class EvalRun:
    """What ``rag eval`` produced: the report, the gate verdict (when asked), the report folder."""

    report: EvalReport
    gate: GateVerdict | None
    target: Path


def _squad_paths(cmd: EvalCommand) -> list[Path]:
    squad = list(cmd.squad)
    if cmd.bench or (cmd.gate and not (cmd.sets or cmd.squad)):
        squad += [Path(rel) for rel in STANDARD_BENCH.values() if Path(rel) not in squad]
    return squad


def _load_squad(cmd: EvalCommand, path: Path, limit_for: Callable[[str], int | None]) -> EvalSet | None:
    found = resolve_squad_path(path, cmd.bench_dir)
    if found is None and cmd.gate and cmd.ci:
        # On a laptop the gate can run on the seeds alone; in CI a missing benchmark would
        # let the CMRC and DRCD thresholds pass unmeasured.
        raise RagError(
            f"external set {path} not found under {cmd.bench_dir}; CI must measure it: "
            "put the benchmarks there or set --bench-dir / $RAG_EVAL_BENCH_DIR"
        )
    if found is None:
        log.warning(
            "external set %s not found under %s (set --bench-dir or $RAG_EVAL_BENCH_DIR): skipped",
            path,
            cmd.bench_dir,
        )
        return None
    return load_squad_set(found, limit_for(set_name(found)))


def collect_sets(cmd: EvalCommand, gate_limits: dict[str, int] | None = None) -> list[EvalSet]:
    """Load the requested sets; absent external files are skipped with a warning (an error for
    ``--gate`` in CI).

    No ``--set``/``--squad``: the seed set, plus the standard external sets with ``--bench``
    or ``--gate`` (the CI run).
    """
    default_limit, per_set = parse_limits(cmd.limits)
    limits = {**(gate_limits or {}), **per_set}

    def limit_for(name: str) -> int | None:
        return limits.get(name, default_limit)

    jsonl = list(cmd.sets) or ([] if cmd.squad else [DEFAULT_SET])
    out = [load_jsonl_set(p, limit_for(set_name(p))) for p in jsonl]
    for path in _squad_paths(cmd):
        loaded = _load_squad(cmd, path, limit_for)
        if loaded is not None:
            out.append(loaded)
    if not out:
        raise RagError("nothing to evaluate: no question set was found")
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise RagError(f"two sets share a name: {', '.join(names)}")
    return out


def parse_modes(mode: str) -> tuple[RetrievalMode, ...]:
    """``--mode``: one retrieval mode, or ``all``."""
    if mode == "all":
        return ALL_MODES
    if mode in ALL_MODES:
        return (mode,)
    raise RagError(f"--mode {mode}: expected hybrid, dense, bm25 or all")


def run_command(cmd: EvalCommand, settings: Settings) -> EvalRun:
    """Run ``rag eval``: the report, the gate verdict (when asked) and where the reports went."""
    modes = parse_modes(cmd.mode)
    thresholds: Thresholds | None = load_thresholds(cmd.thresholds) if cmd.gate else None
    # The thresholds were measured under the [gate] table's conditions, so --gate runs under
    # them too (command-line --limit/--skip-answers still win).
    sets = collect_sets(cmd, thresholds.limits if thresholds else None)
    options = EvalOptions(
        modes=modes,
        answers=cmd.answers,
        skip_answers=frozenset(cmd.skip_answers) | (thresholds.skip_answers if thresholds else frozenset()),
        title_comparison=cmd.title_comparison,
        simplified=cmd.simplified,
        cache_root=cmd.cache_root,
    )
    report = run_evaluation(sets, settings, options)
    gate = check_gate(report.metrics(), thresholds) if thresholds is not None else None
    return EvalRun(report, gate, write_reports(report, cmd.out, gate))
