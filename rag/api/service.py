"""The service behind the routes: the loaded models, the live index and the document jobs.

:class:`Service` is built once, in the app's lifespan, and kept on ``app.state.service``.
It owns what lives as long as the app: the embedder, the reader and the one
:class:`~rag.llm.LLMClient` (closed at shutdown). The index with its retriever and
answerer is an :class:`Engine`; adding or removing a document rebuilds the index
(unchanged chunks keep their vectors) and swaps the engine in one assignment, so
requests already running finish on the old one and the next request sees the new corpus.

Adding and removing documents are *jobs* (:class:`DocumentJobs`): the request does the
cheap checks at once (name, type, size, readable text; unknown id, last document), the
upload is parked in a hidden staging folder, and one worker thread runs the jobs in
order, each rebuilding the index. Queries keep answering from the current index
meanwhile. A rebuild reads exactly the files the live index holds plus or minus the
change (``build_index(only=...)``): a file copied into the docs folder by hand is listed
as ``unindexed`` and left alone until ``rag build``, and if files the index holds have
vanished from the folder the job fails and the index is kept.

Failures are the project's own errors (``rag.errors``); ``rag.api.errors`` maps them to
HTTP statuses.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import re
import shutil
import threading
import time
import unicodedata
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from rag.answer import Answerer
from rag.api.errors import one_line, status_of
from rag.embedding import Embedder
from rag.errors import (
    ConflictError,
    IngestError,
    NotFoundError,
    PayloadError,
    PayloadTooLargeError,
    RagError,
    UnsupportedMediaError,
)
from rag.examples import Examples, example_questions
from rag.feedback import FeedbackStore, feedback_path
from rag.index import SearchIndex, build_index, load_index, pid_alive
from rag.ingest import (
    DOC_SUFFIXES,
    DOCX_SUFFIXES,
    HTML_SUFFIXES,
    IMAGE_SUFFIXES,
    PDF_SUFFIXES,
    check_document,
    document_source,
    list_documents,
)
from rag.llm import LLMClient
from rag.models import Article, SkippedFile
from rag.reader import Reader, load_settings_reader
from rag.retrieval import Retriever
from rag.settings import Settings

log = logging.getLogger(__name__)

UPLOAD_CONTENT_TYPES = frozenset(
    {"", "text/plain", "text/markdown", "text/x-markdown", "application/octet-stream"}
)
"""Media types an upload of a text file may declare besides ``text/*`` (browsers send these for .md)."""
GENERIC_CONTENT_TYPES = frozenset({"", "application/octet-stream"})
"""Media types that say nothing about the file: accepted for every supported suffix."""
DOCX_CONTENT_TYPE = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"

MAX_STEM_BYTES = 200
"""The most UTF-8 bytes of a saved file name before its suffix.

File systems limit a name to 255 *bytes* (ext4, xfs, btrfs, APFS), and a Chinese character
is 3 bytes in UTF-8: counting characters let an 84-character name fail with "File name
too long". 200 bytes (66 Chinese characters) plus ``.txt`` leaves 50 bytes for what tools
add beside a file (editor swap files, ``rsync``'s ``.name.XXXXXX`` temporaries, ``~``).
"""
SHORTENED_HASH_CHARS = 8
"""Hex digits of the full name's sha256 appended to a shortened stem (two long names that
share their first 190 bytes stay two files; the same long name replaces its own file)."""
STAGING_PREFIXES = (".upload-", ".delete-")
"""Hidden folders of the docs folder where jobs park files (a build skips dot names)."""
KEEP_JOBS = 100
"""Finished jobs kept in memory for ``GET /documents/jobs/{id}`` (the oldest go first)."""
CLOSE_WAIT_SECONDS = 60.0
"""How long :meth:`Service.close` waits for a running rebuild to finish."""
INTERNAL_JOB_ERROR = "internal error while indexing; see the server log"
"""A failed job's error when the cause is a bug (logged with its traceback), not the request."""
UNINDEXED_HINT = "these files are in the docs folder but not in the index; run `rag build` to index them"

JobKind = Literal["upload", "delete"]
JobStatus = Literal["queued", "running", "done", "failed"]


@dataclass(frozen=True)
class Engine:
    """One loaded index with its retriever and answerer; replaced whole on a rebuild."""

    index: SearchIndex
    retriever: Retriever
    answerer: Answerer


@dataclass(frozen=True)
class Upload:
    """What adding a document did."""

    source: str
    replaced: bool
    articles: list[Article]
    counts: dict[str, int]


@dataclass(frozen=True)
class FileCount:
    """One indexed file: how many articles and passages of it the index holds."""

    source: str
    articles: int
    chunks: int


@dataclass(frozen=True)
class DocumentListing:
    """What the live index holds (``GET /documents``)."""

    files: list[FileCount]
    """Indexed files, sorted by source."""
    skipped: list[SkippedFile]
    """Files its build left out, with why (from the build's manifest)."""
    articles: list[Article]
    """Every article, in corpus order."""
    counts: dict[str, int]
    unindexed: list[str] = field(default_factory=list)
    """Documents in the docs folder that the index does not hold (``rag build`` indexes them)."""


@dataclass(frozen=True)
class Deletion:
    """What removing a document did."""

    source: str
    article_ids: list[str]
    counts: dict[str, int]


@dataclass
class Job:
    """One document change, queued for the worker; read by ``GET /documents/jobs/{id}``.

    The worker thread writes the fields, request threads read them: each field is one
    assignment, and :meth:`DocumentJobs.get` hands out the object as it is (a reader may
    see ``running`` a moment before ``started`` is set, never a torn value).
    """

    id: str
    kind: JobKind
    source: str
    """The document: the name an upload is saved under, or the file a delete removes."""
    requested: str
    """What the client sent: the upload's file name or the id of the delete."""
    status: JobStatus = "queued"
    stage: str = "queued"
    """Progress in words: queued, indexing, loading, done, failed."""
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: Upload | Deletion | None = None
    error: str | None = None
    error_status: int | None = None
    run: Callable[[Job], Upload | Deletion] | None = field(default=None, repr=False)
    discard: Callable[[], None] | None = field(default=None, repr=False)
    """Undoes what submitting did (removes the staged upload) when the job never runs."""

    @property
    def renamed(self) -> bool:
        """An upload saved under another name than the one sent (shortened, cleaned)."""
        return self.kind == "upload" and Path(self.requested.replace("\\", "/")).name != self.source

    @staticmethod
    def iso(stamp: float | None) -> str | None:
        """A timestamp as ISO 8601 UTC (None stays None)."""
        if stamp is None:
            return None
        return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds")

    def timings_ms(self) -> dict[str, float]:
        """``queued``: waiting for the worker; ``run``: the rebuild (so far, while running)."""
        now = time.time()
        start = self.started if self.started is not None else (self.finished or now)
        out = {"queued": round((start - self.created) * 1000, 1)}
        if self.started is not None:
            out["run"] = round(((self.finished or now) - self.started) * 1000, 1)
        return out


class DocumentJobs:
    """A queue of document jobs and the one worker thread that runs them in order.

    One worker, because every job rebuilds the whole index from the one before: two at
    once would race on the docs folder and on which build ``CURRENT`` names.
    """

    def __init__(self, keep: int = KEEP_JOBS) -> None:
        self._keep = keep
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._lock = threading.Lock()
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._closing = False
        self._thread = threading.Thread(target=self._work, name="rag-document-jobs", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> Job:
        """Queue ``job``; it runs after every job submitted before it."""
        with self._lock:
            if self._closing:
                raise ConflictError("the server is shutting down; send the document again after it restarts")
            self._jobs[job.id] = job
            self._trim()
            self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job:
        """The job ``job_id``, finished or not; ``NotFoundError`` once it is forgotten or never was."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise NotFoundError(f"no job {job_id!r}; the last {self._keep} jobs are kept")
        return job

    def pending(self) -> int:
        """Jobs queued or running."""
        with self._lock:
            return sum(1 for j in self._jobs.values() if j.status in ("queued", "running"))

    def _trim(self) -> None:
        # Forget the oldest finished jobs beyond `keep`; queued and running ones stay.
        finished = [k for k, j in self._jobs.items() if j.status in ("done", "failed")]
        for key in finished[: max(0, len(self._jobs) - self._keep)]:
            del self._jobs[key]

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if self._closing:
                self._fail(job, ConflictError("the server shut down before this job ran; send it again"))
                continue
            job.started = time.time()
            job.status, job.stage = "running", "indexing"
            assert job.run is not None
            try:
                job.result = job.run(job)
            except RagError as exc:
                self._fail(job, exc)
            except Exception:
                log.exception("document job %s (%s %s) failed", job.id, job.kind, job.source)
                self._fail(job, None)
            else:
                job.finished = time.time()
                job.status, job.stage = "done", "done"
                log.info("document job %s done: %s %s", job.id, job.kind, job.source)
            finally:
                job.run = None  # drop the closure (and the upload's bytes) once it ran

    def _fail(self, job: Job, exc: RagError | None) -> None:
        if job.discard is not None:
            job.discard()
        job.error = one_line(str(exc)) if exc is not None else INTERNAL_JOB_ERROR
        job.error_status = status_of(exc) if exc is not None else 500
        job.finished = time.time()
        job.status, job.stage = "failed", "failed"
        if exc is not None:
            log.warning("document job %s (%s %s) failed: %s", job.id, job.kind, job.source, job.error)

    def close(self, wait: float = CLOSE_WAIT_SECONDS) -> None:
        """Stop taking jobs, fail the queued ones, let a running rebuild finish (up to ``wait`` s)."""
        with self._lock:
            self._closing = True
        self._queue.put(None)
        self._thread.join(timeout=wait)
        if self._thread.is_alive():
            log.warning("a document job is still rebuilding the index after %.0f s; not waiting", wait)


class Service:
    """What the app holds for its lifetime: settings, the models, the LLM client and the live engine."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder,
        reader: Reader,
        llm: LLMClient | None = None,
        index: SearchIndex | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.reader = reader
        self.llm = llm
        remove_staging_leftovers(settings.docs_dir)
        self.engine = self._engine(index if index is not None else load_index(settings, embedder))
        self._write_lock = threading.Lock()
        self._examples: tuple[Engine, Examples] | None = None
        self._examples_lock = threading.Lock()
        self.feedback = FeedbackStore(feedback_path(settings))
        """Readers' ratings of answers (``POST /feedback``), beside the index."""
        unindexed = self.unindexed()
        if unindexed:
            shown = "、".join(unindexed[:5]) + ("…" if len(unindexed) > 5 else "")
            log.warning(
                "文档文件夹 %s 中有 %d 个文件不在索引里（%s）：上传和删除不会收录它们；"
                "请运行 rag build 建立索引",
                settings.docs_dir,
                len(unindexed),
                shown,
            )
        self.jobs = DocumentJobs()
        """Uploads and deletes, run one at a time by a worker thread."""

    @classmethod
    def start(
        cls, settings: Settings, embedder: Embedder | None = None, index: SearchIndex | None = None
    ) -> Service:
        """Load the models (the embedder unless given, the reader), the LLM client and the index
        (unless given: ``rag serve`` has loaded it to check it)."""
        if embedder is None:
            from rag.embedding import load_embedder

            embedder = load_embedder(settings)
        # At startup, not on the first question: the ONNX query encoder is made lazily.
        embedder.warm_query_encoder()
        reader = load_settings_reader(settings)
        llm = LLMClient(settings) if LLMClient.configured(settings) else None
        try:
            return cls(settings, embedder, reader, llm, index)
        except BaseException:
            if llm is not None:
                llm.close()
            raise

    def close(self) -> None:
        """Stop the job worker, then release the feedback store and the LLM client's connections."""
        self.jobs.close()
        self.feedback.close()
        if self.llm is not None:
            self.llm.close()

    def examples(self) -> Examples:
        """The chat page's example questions for the live corpus, made once per engine.

        Made-up questions are checked with the engine's answerer (a few extractive answers,
        on the first call after a start or a rebuild); ``questions.txt`` too is read then.
        """
        engine = self.engine
        with self._examples_lock:
            if self._examples is None or self._examples[0] is not engine:
                made = example_questions(engine.index, self.settings.docs_dir, answerer=engine.answerer)
                self._examples = (engine, made)
            return self._examples[1]

    def _engine(self, index: SearchIndex) -> Engine:
        retriever = Retriever(index, self.embedder, self.settings)
        # Every engine shares the service's reader and LLM client: a rebuild loads neither anew.
        answerer = Answerer(retriever, self.settings, reader=self.reader, llm=self.llm)
        return Engine(index, retriever, answerer)

    def _rebuild(self, sources: set[str], job: Job | None = None) -> Engine:
        """Build the index of exactly ``sources`` (docs-folder paths), load it and swap it in."""
        build_index(self.settings, self.embedder, only=sources)
        if job is not None:
            job.stage = "loading"
        engine = self._engine(load_index(self.settings, self.embedder))
        self.engine = engine
        return engine

    def counts(self, engine: Engine | None = None) -> dict[str, int]:
        """Documents, articles and chunks in the (given or live) index."""
        manifest = (engine or self.engine).index.manifest
        return {k: int(v) for k, v in manifest.get("counts", {}).items()}

    # ---- what the index holds, against what the folder holds ---------------------------

    @staticmethod
    def indexed_sources(engine: Engine) -> set[str]:
        """The files the engine's build indexed (its manifest's ``files``; its articles' sources)."""
        index = engine.index
        return set(index.manifest.get("files", {})) or set(index.articles.sources())

    @staticmethod
    def known_sources(engine: Engine) -> set[str]:
        """Indexed files and the files its build skipped: what the next rebuild reads again."""
        skipped = {row["source"] for row in engine.index.manifest.get("skipped", [])}
        return Service.indexed_sources(engine) | skipped

    def unindexed(self, engine: Engine | None = None) -> list[str]:
        """Documents in the docs folder that the index neither holds nor lists as skipped, sorted."""
        docs_dir = self.settings.docs_dir
        known = self.known_sources(engine or self.engine)
        try:
            on_disk = [document_source(p, docs_dir) for p in list_documents(docs_dir)]
        except IngestError:  # the folder itself is gone: nothing is unindexed, the jobs say why
            return []
        return sorted(s for s in on_disk if s not in known)

    def _sources_for(self, engine: Engine, add: str | None = None, remove: str | None = None) -> set[str]:
        """What a job's rebuild reads: the live index's files, plus ``add``, minus ``remove``.

        ``ConflictError`` (the index is kept) when files the index holds are gone from the
        docs folder: rebuilding from what is left would silently shrink the corpus.
        """
        docs_dir = self.settings.docs_dir
        indexed = self.indexed_sources(engine) - {remove}
        missing = sorted(s for s in indexed if not (docs_dir / s).is_file())
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise ConflictError(
                f"{len(missing)} indexed documents are missing from {docs_dir} ({shown}); "
                "restore them or run rag build"
            )
        # Skipped files are read again (still listed with why) while they are there.
        skipped = {s for s in self.known_sources(engine) - indexed if (docs_dir / s).is_file()} - {remove}
        return indexed | skipped | ({add} if add else set())

    def document_list(self) -> DocumentListing:
        """The live index's files with their article and chunk counts, its skipped files and articles."""
        engine = self.engine
        index = engine.index
        articles = index.articles.sources()
        chunks = Counter(c.source for c in index.chunks)
        sources = sorted(set(index.manifest.get("files", {})) | set(articles))
        skipped = [SkippedFile(**row) for row in index.manifest.get("skipped", [])]
        return DocumentListing(
            files=[FileCount(s, articles.get(s, 0), chunks[s]) for s in sources],
            skipped=skipped,
            articles=list(index.articles.values()),
            counts=self.counts(engine),
            unindexed=self.unindexed(engine),
        )

    def article(self, doc_id: str) -> Article:
        """The indexed article ``doc_id`` (``source#position``)."""
        article = self.engine.index.articles.get(doc_id)
        if article is None:
            raise NotFoundError(f"no article {doc_id!r}; GET /documents lists them")
        return article

    def job(self, job_id: str) -> Job:
        """A document job by id (``NotFoundError`` when unknown)."""
        return self.jobs.get(job_id)

    # ---- adding ------------------------------------------------------------------------

    def submit_upload(self, filename: str | None, content_type: str | None, data: bytes) -> Job:
        """Check an upload, park it in a hidden staging folder and queue the job that indexes it.

        Refusals (name, type, size, no readable text) are raised here, before a job exists.
        Uploads land at the top of the docs folder, so their source is their file name.
        """
        name = safe_filename(filename)
        check_upload(name, content_type, data, self.settings.max_upload_bytes)
        job_id = uuid.uuid4().hex
        docs_dir = self.settings.docs_dir
        if not docs_dir.is_dir():
            raise ConflictError(f"the docs folder {docs_dir} is missing; restore it or run rag build")
        staging = docs_dir / f".upload-{os.getpid()}-{job_id}"
        try:
            staging.mkdir()
            (staging / name).write_bytes(data)
            check_document(data, name)  # a DocumentError names the file; OCR waits for the job
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        job = Job(
            id=job_id,
            kind="upload",
            source=name,
            requested=filename or "",
            run=lambda j: self._run_upload(j, staging),
            discard=lambda: shutil.rmtree(staging, ignore_errors=True),
        )
        return self.jobs.submit(job)

    def _run_upload(self, job: Job, staging: Path) -> Upload:
        name = job.source
        with self._write_lock:
            sources = self._sources_for(self.engine, add=name)
            dest = self.settings.docs_dir / name
            replaced = dest.exists()
            backup = staging / ".previous"
            try:
                if replaced:
                    shutil.copy2(dest, backup)
                (staging / name).replace(dest)
                try:
                    engine = self._rebuild(sources, job)
                except BaseException:
                    if replaced:
                        backup.replace(dest)
                    else:
                        dest.unlink(missing_ok=True)
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        articles = engine.index.articles.of_source(name)
        return Upload(source=name, replaced=replaced, articles=articles, counts=self.counts(engine))

    # ---- removing ----------------------------------------------------------------------

    def submit_delete(self, doc_id: str) -> Job:
        """Check a delete (unknown: 404, the last indexed document: 409) and queue its job.

        ``doc_id`` is a source (its path in the docs folder) or one of its article ids. Only
        names the index knows are matched, never a path from the request: ``../x.txt`` is no
        document, so nothing outside the docs folder can be reached.
        """
        engine = self.engine
        articles = engine.index.articles
        source = articles[doc_id].source if doc_id in articles else doc_id
        if source not in self.known_sources(engine):
            raise NotFoundError(f"no document {doc_id!r}; GET /documents lists them")
        if not self.indexed_sources(engine) - {source}:
            raise ConflictError(f"{source} is the last document; the index cannot be empty")
        job = Job(id=uuid.uuid4().hex, kind="delete", source=source, requested=doc_id)
        job.run = self._run_delete
        return self.jobs.submit(job)

    def _run_delete(self, job: Job) -> Deletion:
        source = job.source
        docs_dir = self.settings.docs_dir
        with self._write_lock:
            engine = self.engine
            # Checked again: a job queued before this one may have changed the index.
            if source not in self.known_sources(engine):
                raise NotFoundError(f"no document {job.requested!r}; GET /documents lists them")
            if not self.indexed_sources(engine) - {source}:
                raise ConflictError(f"{source} is the last document; the index cannot be empty")
            sources = self._sources_for(engine, remove=source)
            removed = [a.id for a in engine.index.articles.of_source(source)]
            path = docs_dir / source
            staging = docs_dir / f".delete-{os.getpid()}-{job.id}"
            staging.mkdir()
            try:
                parked = staging / f"parked{path.suffix}"
                present = path.is_file()
                if present:
                    path.replace(parked)
                try:
                    engine = self._rebuild(sources, job)
                except BaseException:
                    if present:
                        parked.replace(path)
                    raise
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        return Deletion(source=source, article_ids=removed, counts=self.counts(engine))


def remove_staging_leftovers(docs_dir: Path) -> list[Path]:
    """Delete the staging folders a killed server left in the docs folder; returns what went.

    Jobs name theirs ``.upload-<pid>-<job>`` / ``.delete-<pid>-<job>``: one whose pid is
    alive (another server on this folder, or this process) is kept; older names without a
    pid (``.upload-x``) are leftovers too. A parked upload was never indexed: it goes with
    its folder, and a parked delete's file had been removed on purpose.
    """
    removed: list[Path] = []
    if not docs_dir.is_dir():
        return removed
    for path in sorted(docs_dir.iterdir()):
        prefix = next((p for p in STAGING_PREFIXES if path.name.startswith(p)), None)
        if prefix is None or not path.is_dir():
            continue
        pid = path.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.warning(
            "已删除上次服务中断时留下的暂存文件夹：%s（其中的上传未收录，请重新上传）",
            "、".join(p.name for p in removed),
        )
    return removed


def _media_fits(suffix: str, media: str) -> bool:
    """Whether a declared media type fits the file's suffix (a generic one fits any)."""
    if media in GENERIC_CONTENT_TYPES:
        return True
    if suffix in PDF_SUFFIXES:
        return media in ("application/pdf", "application/x-pdf")
    if suffix in DOCX_SUFFIXES:
        return media in (DOCX_CONTENT_TYPE, "application/zip")
    if suffix in HTML_SUFFIXES:
        return media in ("text/html", "application/xhtml+xml")
    if suffix in IMAGE_SUFFIXES:
        return media.startswith("image/")
    return media in UPLOAD_CONTENT_TYPES or media.startswith("text/")


def check_upload(name: str, content_type: str | None, data: bytes, limit: int) -> None:
    """Refuse an upload whose media type does not fit its suffix, too large or empty (naming the file).

    Text files take ``text/*``; PDF ``application/pdf``; DOCX its Office type; HTML
    ``text/html``; images ``image/*``; any of them ``application/octet-stream`` or none.
    """
    media = (content_type or "").split(";")[0].strip().lower()
    suffix = next((s for s in DOC_SUFFIXES if name.lower().endswith(s)), "")
    if not _media_fits(suffix, media):
        raise UnsupportedMediaError(
            f"{name}: content type {media} does not fit a {suffix or 'text'} file; "
            f"upload a {'/'.join(DOC_SUFFIXES)} file with its own type"
        )
    if len(data) > limit:
        raise PayloadTooLargeError(f"{name} is larger than the limit of {limit} bytes (RAG_MAX_UPLOAD_BYTES)")
    if not data.strip():
        raise PayloadError(f"{name} is empty")


def _shown(raw: str, limit: int = 60) -> str:
    """A client's file name fit for a one-line error message (a 5,000-character name is cut)."""
    flat = re.sub(r"\s+", " ", raw).strip()
    return flat if len(flat) <= limit else flat[:limit] + "…"


def _cut_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` of at most ``max_bytes`` UTF-8 bytes (whole characters)."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


def safe_filename(raw: str | None) -> str:
    """The upload's name reduced to a safe base name in the docs folder, suffix kept.

    Directory parts are dropped (``../../x.txt`` is saved as ``x.txt``), characters other
    than letters, digits, ``_``, ``-`` and ``.`` become ``_``, and leading dots go (no
    hidden files). A stem over :data:`MAX_STEM_BYTES` UTF-8 bytes is shortened at a
    character boundary and ends in ``-`` and a hash of the whole name. A name with nothing
    but dots, spaces and a suffix (``.txt``) is a bad name (``PayloadError``, 400);
    any suffix outside :data:`rag.ingest.DOC_SUFFIXES` is refused (``UnsupportedMediaError``, 415).
    """
    if not raw or not raw.strip():
        raise PayloadError("the uploaded file has no name; send it as a .txt or .md file")
    name = unicodedata.normalize("NFKC", raw).replace("\x00", "")
    name = re.split(r"[/\\]", name)[-1].strip()
    bad_name = PayloadError(f"{_shown(raw)}: not a usable file name; name it like 报道.txt")
    suffix = next((s for s in DOC_SUFFIXES if name.lower().endswith(s)), None)
    if suffix is None:
        if not name.strip(". "):  # "..", "   ", "...": no name at all, whatever the type
            raise bad_name
        raise UnsupportedMediaError(f"{_shown(raw)}: only {'/'.join(DOC_SUFFIXES)} files can be added")
    stem = re.sub(r"[^\w.-]+", "_", name[: -len(suffix)])
    stem = re.sub(r"\.{2,}", ".", stem).strip("._-")
    if not stem:
        raise bad_name
    if len(stem.encode("utf-8")) > MAX_STEM_BYTES:
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:SHORTENED_HASH_CHARS]
        head = _cut_utf8(stem, MAX_STEM_BYTES - SHORTENED_HASH_CHARS - 1).rstrip("._-")
        stem = f"{head}-{digest}"
    return stem + suffix
