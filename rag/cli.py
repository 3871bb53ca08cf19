"""The ``rag`` command: a thin layer over the library. Errors a user can fix print one line and exit 2."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from rag.errors import RagError
from rag.settings import RetrievalMode, Settings

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
    typer.echo(json.dumps(data, ensure_ascii=False, indent=2))


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False) -> None:
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
def build(docs: DocsOpt = None, index: IndexOpt = None) -> None:
    """Build or update the index (only new and changed files are embedded)."""
    from rag.embedding import load_embedder
    from rag.index import build_index

    settings = make_settings(docs, index)
    stats = build_index(settings, load_embedder(settings), show_progress=sys.stderr.isatty())
    speed = f", {stats.tokens_per_second:.0f} tokens/s" if stats.embedded else ", nothing to embed"
    typer.echo(
        f"{stats.documents} documents, {stats.articles} articles, {stats.chunks} chunks "
        f"({stats.embedded} embedded, {stats.reused} reused) in {stats.seconds:.1f} s{speed}"
    )


@app.command()
@user_errors
def search(
    question: str,
    k: Annotated[int, typer.Option("--k", min=1, max=100, help="How many chunks.")] = 5,
    mode: Annotated[RetrievalMode | None, typer.Option("--mode", help="hybrid, dense or bm25.")] = None,
    index: IndexOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Rank the chunks that best match a question."""
    from rag.retrieval import Retriever, check_question

    check_question(question)
    settings = make_settings(index=index)
    hits = Retriever.open(settings).search(question, k=k, mode=mode)
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
    k: Annotated[int, typer.Option("--k", min=1, max=20, help="Passages to consider.")] = 5,
    index: IndexOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Answer a question with cited passages."""
    from rag.answer import Answerer
    from rag.retrieval import Retriever, check_question

    check_question(question)
    settings = make_settings(index=index)
    answer = Answerer(Retriever.open(settings), settings).answer(question, top_k=k)
    if as_json:
        emit_json(asdict(answer))
        return
    typer.echo(answer.answer)
    for c in answer.citations:
        typer.echo(f"[{c.id}] {c.title} ({c.source})\n    {c.text}")


@app.command("eval")
@user_errors
def eval_(
    sets: Annotated[
        list[Path] | None,
        typer.Option("--set", help="JSONL question set (repeatable); default eval/questions.jsonl."),
    ] = None,
    squad: Annotated[
        list[Path] | None,
        typer.Option("--squad", help="SQuAD-format file (repeatable), as given or under the bench dir."),
    ] = None,
    bench: Annotated[
        bool, typer.Option("--bench", help="Also run the external sets (CMRC 2018 trial, DRCD dev).")
    ] = False,
    bench_dir: Annotated[
        Path | None,
        typer.Option("--bench-dir", envvar="RAG_EVAL_BENCH_DIR", help="Default ../shared/bench."),
    ] = None,
    mode: Annotated[str, typer.Option("--mode", help="hybrid, dense, bm25 or all.")] = "all",
    gate: Annotated[
        bool,
        typer.Option("--gate", help="CI run: seed + external sets; exit 1 below eval/thresholds.toml."),
    ] = False,
    thresholds: Annotated[Path | None, typer.Option("--thresholds", help="Gate thresholds file.")] = None,
    as_json: JsonOpt = False,
    out: Annotated[Path | None, typer.Option("--out", help="Reports folder; default eval/reports.")] = None,
    no_answers: Annotated[bool, typer.Option("--no-answers", help="Retrieval only.")] = False,
    skip_answers: Annotated[
        list[str] | None, typer.Option("--skip-answers", help="Set whose answers to skip, e.g. drcd.")
    ] = None,
    limit: Annotated[
        list[str] | None,
        typer.Option("--limit", help="N or NAME=N: first N questions (JSONL) or paragraphs (SQuAD)."),
    ] = None,
    simplified: Annotated[
        bool | None,
        typer.Option("--simplified/--no-simplified", help="Also ask SQuAD questions in simplified."),
    ] = None,
    no_title: Annotated[bool, typer.Option("--no-title", help="Skip the title-context comparison.")] = False,
    docs: DocsOpt = None,
) -> None:
    """Measure retrieval and answers on question sets, write reports, optionally gate on thresholds."""

    from rag import evaluate as ev

    logging.getLogger("rag.evaluate").setLevel(logging.INFO)
    cmd = ev.EvalCommand(
        sets=sets or [],
        squad=squad or [],
        bench=bench,
        bench_dir=bench_dir,
        mode=mode,
        gate=gate,
        thresholds=thresholds or ev.DEFAULT_THRESHOLDS,
        as_json=as_json,
        out=out,
        answers=not no_answers,
        skip_answers=skip_answers or [],
        limits=limit or [],
        simplified=simplified,
        title_comparison=not no_title,
    )
    report, verdict, target = ev.run_command(cmd, make_settings(docs))
    if as_json:
        emit_json(ev.summary(report, verdict))
    else:
        ev.print_summary(report, verdict)
    if target is not None:
        typer.echo(f"reports: {target}", err=True)
    for line in verdict[0] if verdict else []:
        typer.echo(f"gate: FAIL {line}", err=True)
    if verdict and verdict[0]:
        raise typer.Exit(1)


TRAIN_SETS = ("train/cmrc2018_train.json", "train/DRCD_test.json", "train/xquad.zh.json")


@app.command("train-reader")
@user_errors
def train_reader(
    data: Annotated[
        list[Path] | None,
        typer.Option(
            "--data", help="SQuAD-format training file (repeatable); default the three bench train sets."
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", help="Run folder: checkpoints, snapshots, the trained weights.")
    ] = Path("reader-run"),
    bench_dir: Annotated[
        Path | None,
        typer.Option("--bench-dir", envvar="RAG_EVAL_BENCH_DIR", help="Default ../shared/bench."),
    ] = None,
    epochs: Annotated[float, typer.Option("--epochs", min=0.01, help="Passes over the windows.")] = 1.0,
    max_windows: Annotated[
        int | None, typer.Option("--max-windows", min=1, help="Stop after N windows.")
    ] = None,
    limit_questions: Annotated[
        int | None, typer.Option("--limit-questions", min=1, help="First N questions of each file.")
    ] = None,
    lr: Annotated[float, typer.Option("--lr", help="Peak learning rate (after 6% warm-up).")] = 1e-4,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    max_length: Annotated[
        int, typer.Option("--max-length", min=64, max=512, help="Tokens per window.")
    ] = 256,
    seed: Annotated[int, typer.Option("--seed")] = 13,
    device: Annotated[str, typer.Option("--device", help="cpu or cuda.")] = "cpu",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads.")] = None,
    fresh: Annotated[bool, typer.Option("--fresh", help="Ignore a checkpoint in --out.")] = False,
    init: Annotated[
        Path | None,
        typer.Option("--init", help="Start from these reader weights (e.g. rag/weights/reader.safetensors)."),
    ] = None,
    snapshot_every: Annotated[
        int, typer.Option("--snapshot-every", min=1, help="Windows between learning-curve snapshots.")
    ] = 2500,
    eval_limit: Annotated[
        int | None,
        typer.Option("--eval-limit", min=0, help="CMRC trial paragraphs to score at the end (0: none)."),
    ] = None,
) -> None:
    """Fine-tune the span reader (resumes from a checkpoint in --out), then score it on CMRC trial."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from rag.embedding import ensure_default_model
    from rag.evaluate import resolve_bench_dir
    from rag.reader import load_reader
    from rag.reader_training import TrainConfig, evaluate_reader, train

    bench = resolve_bench_dir(bench_dir)
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

        weights = train(cfg, progress=progress)
    typer.echo(f"trained weights: {weights} (manifest {weights.with_suffix('.json')})")
    trial = bench / "cmrc2018" / "cmrc2018_trial.json"
    if eval_limit == 0 or not trial.is_file():
        return
    reader = load_reader(cfg.base_model_dir, settings.cache_dir, backend="torch", weights=weights)
    score = evaluate_reader(reader, trial, eval_limit)
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
