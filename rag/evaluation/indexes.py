"""The eval indexes: one per set and index-shaping settings, cached and rebuilt incrementally.

A set's index lives in ``<cache root>/<set>[-n<limit>]-<key>``, where the key hashes
:func:`rag.index.settings_fingerprint` (the same fields that decide whether an index can be
reused) plus the docs folder of a hand-built set. Runs with other settings (the
title-context comparison, another chunk size) get their own folder instead of re-embedding
each other's.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from rag.embedding import Embedder
from rag.evaluation.report import IndexInfo
from rag.evaluation.sets import REPO_ROOT, EvalSet
from rag.index import build_index, load_index, settings_fingerprint
from rag.retrieval import Retriever
from rag.settings import Settings

log = logging.getLogger(__name__)


def default_cache_root(settings: Settings) -> Path:
    """Where eval indexes are kept unless the command says otherwise: ``<cache_dir>/eval-index``."""
    return settings.cache_dir / "eval-index"


def index_key(settings: Settings, embedder: Embedder, extra: str = "") -> str:
    """Short hash of the index fingerprint of ``settings`` (and an eval-only ``extra``).

    The passage precision is part of it (unlike an index's staleness check), so comparing
    bf16 with fp32 embeds each instead of reusing the other's vectors.
    """
    fields = {**settings_fingerprint(settings, embedder), "extra": extra}
    if embedder.passage_precision != "fp32":  # fp32 keeps the keys of the caches made before bf16
        fields["precision"] = embedder.passage_precision
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


def resolve_docs_dir(settings: Settings) -> Path:
    """The docs folder, found under the repository when a relative one is not under the cwd."""
    docs = settings.docs_dir
    if not docs.is_absolute() and not docs.exists() and (REPO_ROOT / docs).exists():
        docs = REPO_ROOT / docs
    return docs.resolve()


@dataclass(frozen=True)
class OpenedIndex:
    """A set's eval index, loaded: its retriever, the settings it was opened with, what was built."""

    retriever: Retriever
    settings: Settings
    info: IndexInfo


def open_retriever(
    eval_set: EvalSet, settings: Settings, embedder: Embedder, cache_root: Path
) -> OpenedIndex:
    """Build (incrementally) and load the eval index of a set under ``cache_root``."""
    docs = resolve_docs_dir(settings)
    extra = str(docs) if eval_set.articles is None else ""
    limit = f"-n{eval_set.limit}" if eval_set.limit is not None and eval_set.articles is not None else ""
    index_dir = cache_root / f"{eval_set.name}{limit}-{index_key(settings, embedder, extra)}"
    s = settings.model_copy(update={"index_dir": index_dir, "docs_dir": docs})
    stats = build_index(s, embedder, articles=eval_set.articles)
    log.info(
        "%s index (title_context=%s) in %s: %d chunks, %d embedded, %d reused, %.1f s",
        eval_set.name,
        s.title_context,
        index_dir,
        stats.chunks,
        stats.embedded,
        stats.reused,
        stats.seconds,
    )
    info = IndexInfo(
        dir=str(index_dir),
        title_context=s.title_context,
        articles=stats.articles,
        chunks=stats.chunks,
        embedded=stats.embedded,
        build_seconds=round(stats.seconds, 1),
    )
    return OpenedIndex(Retriever(load_index(s, embedder), embedder, s), s, info)
