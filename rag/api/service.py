"""The service behind the routes: the loaded models, the live index and the document operations.

:class:`Service` is built once, in the app's lifespan, and kept on ``app.state.service``.
It owns what lives as long as the app: the embedder, the reader and the one
:class:`~rag.llm.LLMClient` (closed at shutdown). The index with its retriever and
answerer is an :class:`Engine`; adding or removing a document rebuilds the index
incrementally (unchanged chunks keep their vectors) and swaps the engine in one
assignment, so requests already running finish on the old one and the next request sees
the new corpus.

Failures are the project's own errors (``rag.errors``); ``rag.api.errors`` maps them to
HTTP statuses.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from rag.answer import Answerer
from rag.embedding import Embedder
from rag.errors import (
    ConflictError,
    IngestError,
    NotFoundError,
    PayloadError,
    PayloadTooLargeError,
    UnsupportedMediaError,
)
from rag.examples import Examples, example_questions
from rag.feedback import FeedbackStore, feedback_path
from rag.index import SearchIndex, build_index, load_index
from rag.ingest import DOC_SUFFIXES, document_source, list_documents, read_document
from rag.llm import LLMClient
from rag.models import Article, SkippedFile
from rag.reader import Reader, load_settings_reader
from rag.retrieval import Retriever
from rag.settings import Settings

UPLOAD_CONTENT_TYPES = frozenset(
    {"", "text/plain", "text/markdown", "text/x-markdown", "application/octet-stream"}
)
"""Media types an upload may declare besides ``text/*`` (browsers send these for .md files)."""


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


@dataclass(frozen=True)
class Deletion:
    """What removing a document did."""

    source: str
    article_ids: list[str]
    counts: dict[str, int]


class Service:
    """What the app holds for its lifetime: settings, the models, the LLM client and the live engine."""

    def __init__(
        self, settings: Settings, embedder: Embedder, reader: Reader, llm: LLMClient | None = None
    ) -> None:
        self.settings = settings
        self.embedder = embedder
        self.reader = reader
        self.llm = llm
        self.engine = self._engine(load_index(settings, embedder))
        self._write_lock = threading.Lock()
        self._examples: tuple[Engine, Examples] | None = None
        self._examples_lock = threading.Lock()
        self.feedback = FeedbackStore(feedback_path(settings))
        """Readers' ratings of answers (``POST /feedback``), beside the index."""

    @classmethod
    def start(cls, settings: Settings, embedder: Embedder | None = None) -> Service:
        """Load the models (the embedder unless given, the reader), the LLM client and the index."""
        if embedder is None:
            from rag.embedding import load_embedder

            embedder = load_embedder(settings)
        # At startup, not on the first question: the ONNX query encoder is made lazily.
        embedder.warm_query_encoder()
        reader = load_settings_reader(settings)
        llm = LLMClient(settings) if LLMClient.configured(settings) else None
        try:
            return cls(settings, embedder, reader, llm)
        except BaseException:
            if llm is not None:
                llm.close()
            raise

    def close(self) -> None:
        """Release what the service holds open (the feedback store, the LLM client's connections)."""
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

    def _rebuild(self) -> Engine:
        build_index(self.settings, self.embedder)
        engine = self._engine(load_index(self.settings, self.embedder))
        self.engine = engine
        return engine

    def counts(self, engine: Engine | None = None) -> dict[str, int]:
        """Documents, articles and chunks in the (given or live) index."""
        manifest = (engine or self.engine).index.manifest
        return {k: int(v) for k, v in manifest.get("counts", {}).items()}

    def document_list(self) -> DocumentListing:
        """The live index's files with their article and chunk counts, its skipped files and articles."""
        engine = self.engine
        index = engine.index
        articles = Counter(a.source for a in index.articles.values())
        chunks = Counter(c.source for c in index.chunks)
        sources = sorted(set(index.manifest.get("files", {})) | set(articles))
        skipped = [SkippedFile(**row) for row in index.manifest.get("skipped", [])]
        return DocumentListing(
            files=[FileCount(s, articles[s], chunks[s]) for s in sources],
            skipped=skipped,
            articles=list(index.articles.values()),
            counts=self.counts(engine),
        )

    def article(self, doc_id: str) -> Article:
        """The indexed article ``doc_id`` (``source#position``)."""
        article = self.engine.index.articles.get(doc_id)
        if article is None:
            raise NotFoundError(f"no article {doc_id!r}; GET /documents lists them")
        return article

    def add_document(self, filename: str | None, content_type: str | None, data: bytes) -> Upload:
        """Check an upload, save it into the docs folder and rebuild; nothing is left half-written.

        Uploads land at the top of the docs folder, so their source is their file name.
        """
        name = safe_filename(filename)
        check_upload(name, content_type, data, self.settings.max_upload_bytes)
        with self._write_lock:
            replaced, engine = self._save_and_rebuild(name, data)
        articles = [a for a in engine.index.articles.values() if a.source == name]
        return Upload(source=name, replaced=replaced, articles=articles, counts=self.counts(engine))

    def _save_and_rebuild(self, name: str, data: bytes) -> tuple[bool, Engine]:
        docs_dir = self.settings.docs_dir
        # The staging folder is hidden (a dot name), so a rebuild running meanwhile skips it.
        staging = Path(tempfile.mkdtemp(prefix=".upload-", dir=docs_dir))
        try:
            staged = staging / name
            staged.write_bytes(data)
            if not read_document(staged, staging):  # an IngestError names the file
                raise IngestError(f"{name}: contains no article text")
            dest = docs_dir / name
            replaced = dest.exists()
            backup = staging / ".previous"
            if replaced:
                shutil.copy2(dest, backup)
            staged.replace(dest)
            try:
                return replaced, self._rebuild()
            except BaseException:
                if replaced:
                    backup.replace(dest)
                else:
                    dest.unlink(missing_ok=True)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def delete_document(self, doc_id: str) -> Deletion:
        """Remove a source file (named by its path in the docs folder or by one of its article ids).

        Only indexed names are matched, never a path from the request: ``../x.txt`` is no
        document, so nothing outside the docs folder can be reached.
        """
        docs_dir = self.settings.docs_dir
        with self._write_lock:
            articles = self.engine.index.articles
            source = articles[doc_id].source if doc_id in articles else doc_id
            documents = list_documents(docs_dir)
            path = next((p for p in documents if document_source(p, docs_dir) == source), None)
            if path is None:
                raise NotFoundError(f"no document {doc_id!r}; GET /documents lists them")
            if len(documents) <= 1:
                raise ConflictError(f"{source} is the last document; the index cannot be empty")
            removed = [a.id for a in articles.values() if a.source == source]
            engine = self._remove_and_rebuild(path)
        return Deletion(source=source, article_ids=removed, counts=self.counts(engine))

    def _remove_and_rebuild(self, path: Path) -> Engine:
        staging = Path(tempfile.mkdtemp(prefix=".delete-", dir=self.settings.docs_dir))
        try:
            parked = staging / f"parked{path.suffix}"
            path.replace(parked)
            try:
                return self._rebuild()
            except BaseException:
                parked.replace(path)
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def check_upload(name: str, content_type: str | None, data: bytes, limit: int) -> None:
    """Refuse an upload that is not text, too large or empty (the message names the file)."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in UPLOAD_CONTENT_TYPES and not media.startswith("text/"):
        raise UnsupportedMediaError(f"{name}: content type {media} is not text; upload a .txt or .md file")
    if len(data) > limit:
        raise PayloadTooLargeError(f"{name} is larger than the limit of {limit} bytes (RAG_MAX_UPLOAD_BYTES)")
    if not data.strip():
        raise PayloadError(f"{name} is empty")


def safe_filename(raw: str | None) -> str:
    """The upload's name reduced to a safe base name in the docs folder, suffix kept.

    Directory parts are dropped (``../../x.txt`` is saved as ``x.txt``), characters other
    than letters, digits, ``_``, ``-`` and ``.`` become ``_``, and leading dots go (no
    hidden files). Anything but ``.txt``/``.md`` is refused.
    """
    if not raw or not raw.strip():
        raise PayloadError("the uploaded file has no name; send it as a .txt or .md file")
    name = unicodedata.normalize("NFKC", raw).replace("\x00", "")
    name = re.split(r"[/\\]", name)[-1].strip()
    suffix = Path(name).suffix.lower()
    if suffix not in DOC_SUFFIXES:
        raise UnsupportedMediaError(f"{raw}: only .txt and .md files can be added")
    stem = re.sub(r"[^\w.-]+", "_", name[: -len(suffix)])
    stem = re.sub(r"\.{2,}", ".", stem).strip("._-")[:100]
    if not stem:
        raise PayloadError(f"{raw}: not a usable file name; name it like 报道.txt")
    return stem + suffix
