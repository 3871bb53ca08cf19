"""The ``rag`` command: a thin layer over the library. Errors a user can fix print one line and exit 2.

What the user reads is Chinese, one line per message: ``错误：`` lines (exit 2) name the
problem and the fix with the user's own paths; progress goes to stderr (the library's
``rag.progress`` lines, see :mod:`rag.progress`), results to stdout. Each command loads
the models once and says so when that took more than a second.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from rag.errors import RagError
from rag.models import RequestedAnswerMode
from rag.settings import RetrievalMode, Settings

if TYPE_CHECKING:
    from rag.embedding import Embedder
    from rag.index import BuildStats, SearchIndex
    from rag.models import Answer, Citation
    from rag.reader_training import TrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Offline Chinese news search and QA.")
log = logging.getLogger("rag")

F = TypeVar("F", bound=Callable[..., Any])

DocsOpt = Annotated[
    Path | None, typer.Option("--docs", help="Folder of documents (.txt, .md, .pdf, .docx, .html, images).")
]
IndexOpt = Annotated[Path | None, typer.Option("--index", help="Index folder.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]

SLOW_LOAD_S = 1.0
"""Loading models longer than this is worth a line on stderr."""
NEAREST_SHOWN = 2
"""Passages shown as "nearest" when nothing answers the question."""


def say(message: str) -> None:
    """One line of progress or status on stderr (results go to stdout)."""
    typer.echo(message, err=True)


def user_errors(func: F) -> F:
    """Turn a ``RagError`` into one ``错误：`` line on stderr and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except RagError as exc:
            say(f"错误：{' '.join(str(exc).split())}")
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


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the current ``sys.stderr`` (a test runner may swap it between commands)."""

    def __init__(self, prefixed: bool) -> None:
        super().__init__()
        self.prefixed = prefixed

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass  # always the current sys.stderr

    def format(self, record: logging.LogRecord) -> str:
        if not self.prefixed:
            return record.getMessage()
        if self.level <= logging.INFO:  # --verbose: where each line comes from
            return f"{record.levelname} {record.name}: {record.getMessage()}"
        prefix = "错误：" if record.levelno >= logging.ERROR else "警告："
        return prefix + " ".join(record.getMessage().split())


def _handler(logger: logging.Logger, prefixed: bool) -> _StderrHandler:
    """The one :class:`_StderrHandler` of ``logger``, added on first use."""
    for handler in logger.handlers:
        if isinstance(handler, _StderrHandler):
            return handler
    handler = _StderrHandler(prefixed)
    logger.addHandler(handler)
    return handler


def configure_logging(verbose: bool) -> None:
    """Warnings (or, with ``--verbose``, everything) on stderr; progress lines always."""
    level = logging.INFO if verbose else logging.WARNING
    root = logging.getLogger()
    root.setLevel(level)
    _handler(root, prefixed=True).setLevel(level)
    progress = logging.getLogger("rag.progress")
    progress.setLevel(logging.INFO)
    progress.propagate = False
    _handler(progress, prefixed=False).setLevel(logging.INFO)


@contextlib.contextmanager
def loading(what: str = "模型", announce: bool = False) -> Iterator[None]:
    """Time a load: one line on stderr when it took over :data:`SLOW_LOAD_S`.

    ``announce``: a line before it too (for a load the user waits on with nothing else shown).
    """
    if announce:
        say(f"正在加载{what}……")
    started = time.perf_counter()
    yield
    seconds = time.perf_counter() - started
    if seconds > SLOW_LOAD_S:
        say(f"已加载{what}（{seconds:.1f} 秒）")


def run(prog_name: str | None = None) -> None:
    """The ``rag`` console script: the app, then exit without tearing the loaded models down.

    Freeing the parsed tokenizer, the ONNX sessions and jieba's dictionary at interpreter
    exit costs ~0.7 s of a 3 s ``rag ask``; output is flushed and every file the commands
    write is closed by then, so the process ends at once. A crash keeps Python's normal
    exit (and its traceback). Tests call :data:`app` itself, which never exits the process.
    """
    try:
        app(prog_name=prog_name)
        code = 0
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress.")] = False) -> None:
    """Offline Chinese news search and QA."""
    # Before any command imports torch: passive OpenMP waiting, so torch's idle threads
    # don't spin on the cores the web server or another build needs (see configure_runtime).
    from rag.embedding import configure_runtime

    configure_runtime()
    configure_logging(verbose)


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


def build_summary(stats: BuildStats, docs_dir: Path) -> list[str]:
    """What a build did, in lines: the counts, then every skipped file with its reason."""
    speed = f"，{stats.tokens_per_second:.0f} token/秒" if stats.embedded else "，没有需要重新向量化的内容"
    lines = [
        f"已建立索引：{stats.documents} 个文档，{stats.articles} 篇文章，{stats.chunks} 段"
        f"（新向量化 {stats.embedded} 段，沿用 {stats.reused} 段），用时 {stats.seconds:.1f} 秒{speed}"
    ]
    if stats.skipped:
        # Relative to the docs folder, as GET /documents names them (the warnings above give full paths).
        lines.append(f"跳过 {len(stats.skipped)} 个文件（未建索引，{docs_dir} 中）：")
        lines += [f"  {item.source}：{item.reason}" for item in stats.skipped]
    return lines


def run_build(
    settings: Settings, embedder: Embedder, *, strict: bool = False, err: bool = False
) -> BuildStats:
    """Build the index with progress, then print the summary (on stderr with ``err``)."""
    from rag.index import build_index
    from rag.ingest import DocumentError

    try:
        stats = build_index(settings, embedder, show_progress=True, strict=strict)
    except DocumentError as exc:
        if not strict:
            raise
        raise RagError(
            f"{settings.docs_dir / exc.source}：{exc.reason}（--strict 遇到第一个无法使用的文件就停止；"
            "去掉 --strict 则跳过它并列出）"
        ) from None
    for line in build_summary(stats, settings.docs_dir):
        typer.echo(line, err=err)
    return stats


def open_embedder(settings: Settings) -> Embedder:
    """The embedding model of ``settings`` (its torch weights load when a build needs them)."""
    from rag.embedding import load_embedder

    return load_embedder(settings)


@app.command()
@user_errors
def build(
    docs: DocsOpt = None,
    index: IndexOpt = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict", help="Stop at the first file that cannot be read (default: skip and list it)."
        ),
    ] = False,
) -> None:
    """Build or update the index (only new and changed files are embedded)."""
    from rag.ingest import scan_documents

    settings = make_settings(docs, index)
    scan_documents(settings.docs_dir)  # a missing docs folder fails now, not after the model loads
    with loading():
        embedder = open_embedder(settings)
    run_build(settings, embedder, strict=strict)


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
    with loading("模型和索引"):
        retriever = Retriever.open(settings)
        retriever.embedder.warm_query_encoder()
    hits = retriever.search(question, k=k, retrieval_mode=retrieval_mode)
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
    if not rows:
        say("没有找到相关段落")
    for row in rows:
        typer.echo(
            f"{row['rank']}. [{row['score']:.4f}] {row['title']} ({row['source']})\n   {row['text']}\n"
        )


def answer_lines(answer: Answer) -> list[str]:
    """``rag ask``'s text output: the answer, its sentence, and only the passages it cites.

    When nothing answers, the nearest passages are shown as that, not as sources.
    """
    lines = [answer.answer]
    by_id = {c.id: c for c in answer.citations}
    from rag.verification import cited_ids

    cited = [by_id[n] for n in cited_ids(answer.answer) if n in by_id]
    if answer.abstained or not cited:
        nearest = list(answer.citations[:NEAREST_SHOWN])
        if nearest:
            lines.append("")
            lines.append("没有段落回答这个问题。最接近的段落（仅供参考，不是答案的出处）：")
            lines += [_passage(c, mark="·") for c in nearest]
        return lines
    if answer.answer_sentence:
        lines.append(f"依据：{answer.answer_sentence}")
    if answer.confidence is not None:
        doubt = "，把握不大，请核对引用的段落" if answer.low_confidence else ""
        lines.append(f"把握：{round(answer.confidence * 100)}%{doubt}")
    lines.append("")
    lines.append("引用的段落：")
    lines += [_passage(c, mark=f"[{c.id}]") for c in cited]
    return lines


def _passage(citation: Citation, mark: str) -> str:
    chunk = citation.chunk
    return f"{mark} {chunk.title}（{chunk.source}）\n    {chunk.text}"


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
    """Answer a question with the passages it cites."""
    from rag.answer import Answerer
    from rag.retrieval import Retriever, check_question

    check_question(question)
    settings = make_settings(index=index)
    with loading("模型和索引"):
        retriever = Retriever.open(settings)
        retriever.embedder.warm_query_encoder()
        answerer = Answerer(retriever, settings)
    try:
        answer = answerer.answer(question, top_k=k, answer_mode=answer_mode)
    finally:
        answerer.close()
    if as_json:
        emit_json(asdict(answer))
        return
    for warning in answer.warnings:
        say(f"注意：{warning}")
    for line in answer_lines(answer):
        typer.echo(line)


@app.command("feedback-export")
@user_errors
def feedback_export(
    index: IndexOpt = None,
    out: Annotated[Path | None, typer.Option("--out", help="Write the JSONL here [default: stdout].")] = None,
) -> None:
    """Export the thumbs up/down given on the page as JSONL (one object per line)."""
    from rag.feedback import FeedbackStore, feedback_path

    settings = make_settings(index=index)
    if not settings.index_dir.is_dir():
        raise RagError(f"索引文件夹 {settings.index_dir} 不存在；请用 --index 指定服务所用的索引文件夹")
    path = feedback_path(settings)
    if not path.is_file():
        say(f"{path} 中还没有反馈：在页面上对回答点赞或点踩后再导出")
        if out is not None:
            out.write_text("", encoding="utf-8")
        return
    store = FeedbackStore(path)
    try:
        if out is None:
            rows = store.export_jsonl(sys.stdout)
        else:
            try:
                with out.open("w", encoding="utf-8") as f:
                    rows = store.export_jsonl(f)
            except OSError as exc:
                raise RagError(f"无法写入 {out}（{exc.strerror}）；请换一个 --out 路径") from None
    finally:
        store.close()
    say(f"已导出 {rows} 条反馈" + (f"到 {out}" if out is not None else ""))


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
OcrOpt = Annotated[bool, typer.Option("--ocr", help="OCR accuracy on rendered 2-column pages only.")]


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
    ocr: OcrOpt = False,
) -> None:
    """Measure retrieval and answers on question sets, write reports, optionally gate on thresholds."""
    if ocr:
        from rag.evaluation.ocr import run_ocr_eval

        raise typer.Exit(run_ocr_eval(make_settings(docs).docs_dir))
    import importlib.util
    import shutil

    missing = [name for name in ("ranx", "matplotlib") if importlib.util.find_spec(name) is None]
    if missing:
        raise RagError(
            f"rag eval 需要 {'、'.join(missing)}（eval 附加依赖）；"
            f"请先安装：{sys.executable} -m pip install -e '.[eval]'（或 make test）"
        )

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
        raise RagError(f"找不到训练数据：{'、'.join(missing)}；请用 --data 或 --bench-dir 指定")
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
    typer.echo(f"训练好的权重：{weights}（说明文件 {weights.with_suffix('.json')}）")
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
        f"CMRC 2018 trial（给定标准段落）：F1 {score.f1:.3f}，EM {score.em:.3f}（{score.questions} 个问题）"
    )


def _ready_url(host: str, port: int) -> str:
    """The address to open in a browser: a wildcard host is reached on the loopback address."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _ensure_index(settings: Settings, embedder: Embedder) -> SearchIndex | None:
    """Build the index when there is none, or rebuild one made with other settings, saying so.

    Returns the loaded index when it could be served as it is (the service takes it rather
    than loading it a second time: at a million chunks that is seconds and a second copy's
    memory), ``None`` after a build (the service loads what was built).

    A damaged live build with a good older one serves the older one (``load_index`` warns);
    with no good build left, ``CorruptIndexError`` ends ``rag serve`` with one line naming the
    bad file and the rebuild command: rebuilding silently could hide a failing disk.
    """
    from rag.errors import IndexError_, StaleIndexError
    from rag.index import load_index, require_index

    try:
        require_index(settings)
    except IndexError_:
        say(f"还没有索引：先从 {settings.docs_dir} 建立索引（保存在 {settings.index_dir}）……")
        run_build(settings, embedder, err=True)
        return None
    try:
        return load_index(settings, embedder)
    except StaleIndexError:
        say(f"{settings.index_dir} 中的索引是用不同的设置建立的：从 {settings.docs_dir} 重新建立……")
        run_build(settings, embedder, err=True)
        return None


@app.command()
@user_errors
def serve(
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")
    ] = 8000,
    index: IndexOpt = None,
    docs: DocsOpt = None,
) -> None:
    """Start the web service (chat page, JSON API, OpenAI-compatible API); builds the index if needed."""
    import uvicorn

    from rag.api import create_app
    from rag.api.server import served_hosts, server_config

    settings = make_settings(docs, index)
    settings = settings.model_copy(update={"allowed_hosts": served_hosts(settings.allowed_hosts, host)})
    with loading("嵌入模型"):  # its torch weights load (announced) only if a build needs them
        embedder = open_embedder(settings)
    loaded = _ensure_index(settings, embedder)
    verbose = logging.getLogger().isEnabledFor(logging.INFO)

    class Server(uvicorn.Server):
        """Says where to point the browser once the socket listens (after the app's startup)."""

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                bound = self.servers[0].sockets[0].getsockname()[1] if self.servers else port
                url = _ready_url(host, bound)
                say(f"已就绪：{url}（API 文档：{url}docs；按 Ctrl+C 停止）")

    say("正在启动服务（加载问题编码器、阅读模型和索引）……")
    config = server_config(
        create_app(settings, embedder=embedder, index=loaded),
        settings,
        host=host,
        port=port,
        log_level="info" if verbose else "warning",
    )
    server = Server(config)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 3 when the app's startup or the bind fails
        if exc.code in (None, 0):
            raise
        raise RagError(
            f"服务没有启动（见上面的错误）；如果端口 {port} 已被占用，请换一个：rag serve --port {port + 1}"
        ) from None
