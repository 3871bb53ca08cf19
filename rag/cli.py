"""The ``rag`` command: a thin layer over the library. Errors a user can fix print one line and exit 2."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from rag.errors import RagError
from rag.models import RequestedAnswerMode
from rag.settings import RetrievalMode, Settings

if TYPE_CHECKING:
    from rag.reader_training import TrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Offline Chinese news search and QA.")
log = logging.getLogger("rag")

F = TypeVar("F", bound=Callable[..., Any])

DocsOpt = Annotated[Path | None, typer.Option("--docs", help="Folder of .txt/.md documents.")]
IndexOpt = Annotated[Path | None, typer.Option("--index", help="Index folder.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def user_errors(func: F) -> F:
    """Turn a ``RagError`` into one line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RagError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def make_settings(docs: Path | None = None, index: Path | None = None, **overrides: Any) -> Settings:
    """Settings from the environment, with command-line options on top."""
    if docs is not None:
        overrides["docs_dir"] = docs
    if index is not None:
        overrides["index_dir"] = index
    return Settings(**overrides)


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON, Chinese unescaped."""
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2))


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False) -> None:
    """Offline Chinese news search and QA."""
    # Before any command imports torch: passive OpenMP waiting, so torch's idle threads
    # don't spin on the cores the web server or another build needs (see configure_runtime).
    from rag.embedding import configure_runtime

    configure_runtime()
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


@app.command()
@user_errors
def chunks(docs: DocsOpt = None, as_json: JsonOpt = False) -> None:
    """Print every chunk of the corpus (source, title, offsets, text)."""
    from rag.chunking import chunk_articles
    from rag.ingest import load_corpus

    settings = make_settings(docs)
    rows = [
        {"source": c.source, "title": c.title, "start": c.start, "end": c.end, "text": c.text}
        for c in chunk_articles(load_corpus(settings.docs_dir), settings.chunk_size, settings.chunk_overlap)
    ]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        typer.echo(f"{row['source']} [{row['start']}:{row['end']}] {row['title']}\n  {row['text']}\n")


@app.command()
@user_errors
def build(
    docs: DocsOpt = None,
    index: IndexOpt = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="Stop at the first unreadable file instead of skipping it.")
    ] = False,
) -> None:
    """Build or update the index (only new and changed files are embedded; bad files are skipped)."""
    from rag.embedding import load_embedder
    from rag.index import build_index
    from rag.ingest import list_documents

    settings = make_settings(docs, index)
    list_documents(settings.docs_dir)  # a missing docs folder fails now, not after the model loads
    stats = build_index(settings, load_embedder(settings), show_progress=sys.stderr.isatty(), strict=strict)
    speed = f", {stats.tokens_per_second:.0f} tokens/s" if stats.embedded else ", nothing to embed"
    typer.echo(
        f"{stats.documents} documents, {stats.articles} articles, {stats.chunks} chunks "
        f"({stats.embedded} embedded, {stats.reused} reused) in {stats.seconds:.1f} s{speed}"
    )
    if stats.skipped:
        typer.echo(f"跳过 {len(stats.skipped)} 个文件（未建索引）：")
        for item in stats.skipped:
            typer.echo(f"  {item.source}：{item.reason}")


@app.command()
@user_errors
def search(
    question: str,
    k: Annotated[
        int | None, typer.Option("--k", min=1, max=100, help="How many chunks [default: RAG_TOP_K].")
    ] = None,
    retrieval_mode: Annotated[
        RetrievalMode | None,
        typer.Option(
            "--retrieval-mode", "--mode", help="hybrid, dense or bm25 [default: RAG_RETRIEVAL_MODE]."
        ),
    ] = None,
    index: IndexOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank the chunks that best match a question."""
    from rag.retrieval import Retriever, check_question

    check_question(question)
    settings = make_settings(index=index)
    hits = Retriever.open(settings).search(question, k=k, retrieval_mode=retrieval_mode)
    rows = [
        {
            "rank": h.rank,
            "score": round(h.score, 6),
            "source": h.chunk.source,
            "title": h.chunk.title,
            "text": h.chunk.text,
            "start": h.chunk.start,
            "end": h.chunk.end,
        }
        for h in hits
    ]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        typer.echo(
            f"{row['rank']}. [{row['score']:.4f}] {row['title']} ({row['source']})\n   {row['text']}\n"
        )


@app.command()
@user_errors
def ask(
    question: str,
    k: Annotated[
        int | None, typer.Option("--k", min=1, max=20, help="Passages to consider [default: RAG_TOP_K].")
    ] = None,
    answer_mode: Annotated[
        RequestedAnswerMode,
        typer.Option("--answer-mode", help="auto (the LLM when configured), extractive or llm."),
    ] = "auto",
    index: IndexOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question with cited passages."""
    from rag.answer import Answerer
    from rag.retrieval import Retriever, check_question

    check_question(question)
    settings = make_settings(index=index)
    answerer = Answerer(Retriever.open(settings), settings)
    try:
        answer = answerer.answer(question, top_k=k, answer_mode=answer_mode)
    finally:
        answerer.close()
    if as_json:
        emit_json(asdict(answer))
        return
    typer.echo(answer.answer)
    for c in answer.citations:
        typer.echo(f"[{c.id}] {c.chunk.title} ({c.chunk.source})\n    {c.chunk.text}")


# The options of `rag eval` and `rag train-reader`, one alias each so that the commands
# read as what they do.
SetsOpt = Annotated[
    list[Path] | None,
    typer.Option("--set", help="JSONL question set (repeatable); default eval/questions.jsonl."),
]
SquadOpt = Annotated[
    list[Path] | None,
    typer.Option("--squad", help="SQuAD-format file (repeatable), as given or under the bench dir."),
]
BenchOpt = Annotated[
    bool, typer.Option("--bench", help="Also run the external sets (CMRC 2018 trial, DRCD dev).")
]
BenchDirOpt = Annotated[
    Path | None, typer.Option("--bench-dir", envvar="RAG_EVAL_BENCH_DIR", help="Default ../shared/bench.")
]
EvalCacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--eval-cache", envvar="RAG_EVAL_CACHE_DIR", help="Eval index cache; default <cache>/eval-index."
    ),
]
CiOpt = Annotated[
    bool, typer.Option("--ci/--no-ci", envvar="CI", help="With --gate, a missing external set is an error.")
]
ModesOpt = Annotated[str, typer.Option("--mode", help="hybrid, dense, bm25 or all.")]
GateOpt = Annotated[
    bool, typer.Option("--gate", help="CI run: seed + external sets; exit 1 below eval/thresholds.toml.")
]
ThresholdsOpt = Annotated[Path | None, typer.Option("--thresholds", help="Gate thresholds file.")]
ReportsOpt = Annotated[Path | None, typer.Option("--out", help="Reports folder; default eval/reports.")]
NoAnswersOpt = Annotated[bool, typer.Option("--no-answers", help="Retrieval only.")]
SkipAnswersOpt = Annotated[
    list[str] | None, typer.Option("--skip-answers", help="Set whose answers to skip, e.g. drcd.")
]
LimitOpt = Annotated[
    list[str] | None,
    typer.Option("--limit", help="N or NAME=N: first N questions (JSONL) or paragraphs (SQuAD)."),
]
SimplifiedOpt = Annotated[
    bool | None, typer.Option("--simplified/--no-simplified", help="Also ask SQuAD questions in simplified.")
]
NoTitleOpt = Annotated[bool, typer.Option("--no-title", help="Skip the title-context comparison.")]


@app.command("eval")
@user_errors
def eval_(
    sets: SetsOpt = None,
    squad: SquadOpt = None,
    bench: BenchOpt = False,
    bench_dir: BenchDirOpt = None,
    eval_cache: EvalCacheOpt = None,
    ci: CiOpt = False,
    mode: ModesOpt = "all",
    gate: GateOpt = False,
    thresholds: ThresholdsOpt = None,
    as_json: JsonOpt = False,
    out: ReportsOpt = None,
    no_answers: NoAnswersOpt = False,
    skip_answers: SkipAnswersOpt = None,
    limit: LimitOpt = None,
    simplified: SimplifiedOpt = None,
    no_title: NoTitleOpt = False,
    docs: DocsOpt = None,
) -> None:
    """Measure retrieval and answers on question sets, write reports, optionally gate on thresholds."""
    import shutil

    from rich.console import Console

    from rag.evaluation.command import DEFAULT_REPORTS, EvalCommand, run_command
    from rag.evaluation.gate import DEFAULT_THRESHOLDS
    from rag.evaluation.render import terminal_summary
    from rag.evaluation.sets import DEFAULT_BENCH_DIR

    logging.getLogger("rag.evaluation").setLevel(logging.INFO)
    cmd = EvalCommand(
        sets=sets or [],
        squad=squad or [],
        bench=bench,
        bench_dir=bench_dir or DEFAULT_BENCH_DIR,
        cache_root=eval_cache,
        ci=ci,
        mode=mode,
        gate=gate,
        thresholds=thresholds or DEFAULT_THRESHOLDS,
        out=out or DEFAULT_REPORTS,
        answers=not no_answers,
        skip_answers=skip_answers or [],
        limits=limit or [],
        simplified=simplified,
        title_comparison=not no_title,
    )
    result = run_command(cmd, make_settings(docs))
    if as_json:
        emit_json(result.report.to_dict(result.gate))
    else:
        console = Console(width=max(shutil.get_terminal_size((120, 24)).columns, 110))
        for item in terminal_summary(result.report, result.gate):
            console.print(item)
    typer.echo(f"reports: {result.target}", err=True)
    for line in result.gate.failures if result.gate else []:
        typer.echo(f"gate: FAIL {line}", err=True)
    if result.gate is not None and not result.gate.passed:
        raise typer.Exit(1)


TRAIN_SETS = ("train/cmrc2018_train.json", "train/DRCD_test.json", "train/xquad.zh.json")

DataOpt = Annotated[
    list[Path] | None,
    typer.Option(
        "--data", help="SQuAD-format training file (repeatable); default the three bench train sets."
    ),
]
RunOpt = Annotated[
    Path, typer.Option("--out", help="Run folder: checkpoints, snapshots, the trained weights.")
]
EpochsOpt = Annotated[float, typer.Option("--epochs", min=0.01, help="Passes over the windows.")]
MaxWindowsOpt = Annotated[int | None, typer.Option("--max-windows", min=1, help="Stop after N windows.")]
LimitQuestionsOpt = Annotated[
    int | None, typer.Option("--limit-questions", min=1, help="First N questions of each file.")
]
LrOpt = Annotated[float, typer.Option("--lr", help="Peak learning rate (after 6% warm-up).")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1)]
MaxLengthOpt = Annotated[int, typer.Option("--max-length", min=64, max=512, help="Tokens per window.")]
SeedOpt = Annotated[int, typer.Option("--seed")]
DeviceOpt = Annotated[str, typer.Option("--device", help="cpu or cuda.")]
ThreadsOpt = Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads.")]
FreshOpt = Annotated[bool, typer.Option("--fresh", help="Ignore a checkpoint in --out.")]
InitOpt = Annotated[
    Path | None,
    typer.Option("--init", help="Start from these reader weights (e.g. rag/weights/reader.safetensors)."),
]
SnapshotOpt = Annotated[
    int, typer.Option("--snapshot-every", min=1, help="Windows between learning-curve snapshots.")
]
EvalLimitOpt = Annotated[
    int | None,
    typer.Option("--eval-limit", min=0, help="CMRC trial paragraphs to score at the end (0: none)."),
]


@app.command("train-reader")
@user_errors
def train_reader(
    data: DataOpt = None,
    out: RunOpt = Path("reader-run"),
    bench_dir: BenchDirOpt = None,
    epochs: EpochsOpt = 1.0,
    max_windows: MaxWindowsOpt = None,
    limit_questions: LimitQuestionsOpt = None,
    lr: LrOpt = 1e-4,
    batch_size: BatchOpt = 16,
    max_length: MaxLengthOpt = 256,
    seed: SeedOpt = 13,
    device: DeviceOpt = "cpu",
    threads: ThreadsOpt = None,
    fresh: FreshOpt = False,
    init: InitOpt = None,
    snapshot_every: SnapshotOpt = 2500,
    eval_limit: EvalLimitOpt = None,
) -> None:
    """Fine-tune the span reader (resumes from a checkpoint in --out), then score it on CMRC trial."""
    from rag.conversion import ensure_default_model
    from rag.evaluation.sets import DEFAULT_BENCH_DIR
    from rag.reader_training import TrainConfig

    bench = bench_dir or DEFAULT_BENCH_DIR
    files = data or [bench / name for name in TRAIN_SETS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise RagError(f"training data not found: {', '.join(missing)}; pass --data or --bench-dir")
    settings = make_settings()
    cfg = TrainConfig(
        data=files,
        out_dir=out,
        base_model_dir=ensure_default_model(settings.cache_dir),
        seed=seed,
        max_length=max_length,
        epochs=epochs,
        max_windows=max_windows,
        limit_questions=limit_questions,
        lr=lr,
        batch_size=batch_size,
        device=device,
        threads=threads,
        snapshot_every=snapshot_every,
        init=init,
    )
    if fresh:
        (out / "checkpoint.pt").unlink(missing_ok=True)
    weights = _train_with_progress(cfg)
    typer.echo(f"trained weights: {weights} (manifest {weights.with_suffix('.json')})")
    trial = bench / "cmrc2018" / "cmrc2018_trial.json"
    if eval_limit != 0 and trial.is_file():
        _score_on_trial(cfg, settings, weights, trial, eval_limit)


def _train_with_progress(cfg: TrainConfig) -> Path:
    """Train, with a progress bar on a terminal."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rag.reader_training import train

    columns = (
        TextColumn("training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("steps, loss {task.fields[loss]:.3f}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not sys.stderr.isatty(), console=None) as bar:
        task = bar.add_task("train", total=None, loss=0.0)

        def progress(step: int, total: int, loss: float) -> None:
            bar.update(task, completed=step, total=total, loss=loss)

        return train(cfg, progress=progress)


def _score_on_trial(
    cfg: TrainConfig, settings: Settings, weights: Path, trial: Path, limit: int | None
) -> None:
    """The trained reader's F1/EM on CMRC 2018 trial, each question with its gold paragraph."""
    from rag.reader import load_reader
    from rag.reader_training import evaluate_reader

    reader = load_reader(cfg.base_model_dir, settings.cache_dir, backend="torch", weights=weights)
    score = evaluate_reader(reader, trial, limit)
    typer.echo(
        f"CMRC 2018 trial, gold paragraph given: F1 {score.f1:.3f}, EM {score.em:.3f} "
        f"({score.questions} questions)"
    )


@app.command()
@user_errors
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 8000,
    index: IndexOpt = None,
    docs: DocsOpt = None,
) -> None:
    """Start the web service (chat page, JSON API, OpenAI-compatible API); builds the index if needed."""
    import uvicorn

    from rag.api import create_app
    from rag.embedding import load_embedder
    from rag.errors import IndexError_
    from rag.index import build_index, load_index

    settings = make_settings(docs, index)
    embedder = load_embedder(settings)
    try:
        load_index(settings, embedder)
    except IndexError_ as exc:
        typer.echo(f"{exc}\nbuilding the index from {settings.docs_dir} first ...", err=True)
        stats = build_index(settings, embedder, show_progress=sys.stderr.isatty())
        typer.echo(f"{stats.documents} documents, {stats.chunks} chunks indexed", err=True)
    typer.echo(f"serving on http://{host}:{port}/ (API docs at /docs)", err=True)
    uvicorn.run(create_app(settings, embedder=embedder), host=host, port=port, log_level="info")
