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
