"""A build's ``articles.jsonl`` as a read-only mapping, each article read when it is asked for.

A loaded index needs an article's text only for the few articles a question's passages
widen into, a cited article's page and the document listing. Holding every text would cost
as much memory again as the chunks (~0.9 GB at 1M chunks): only each article's id, source
and where its line starts stay in memory (~0.1 KB an article), and an article is parsed
from the file (one ``pread``, no shared file position, so threads may read at once) on access.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np

from rag.errors import IndexError_
from rag.models import Article


class ArticleStore(Mapping[str, Article]):
    """Article id (``source#position``) -> :class:`Article`, in file order, read from ``path``.

    Opening parses every line once (a damaged file fails here, not on some later question)
    and keeps none of the texts. The file is a build's, which is never written again once
    it is live; a file changed under a loaded index raises :class:`IndexError_` on access.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        rows: dict[str, int] = {}
        by_source: dict[str, list[str]] = {}
        starts = [0]
        with path.open("rb") as f:
            for line in f:
                starts.append(starts[-1] + len(line))
                if not line.strip():
                    continue
                article = Article(**json.loads(line))
                article_id = article.id  # one string, kept by both tables
                if article_id not in rows:  # a repeated id is caught by the manifest's count
                    by_source.setdefault(article.source, []).append(article_id)
                rows[article_id] = len(starts) - 2
        self._rows = rows
        self._by_source = by_source
        self._starts = np.asarray(starts, dtype=np.int64)
        self._fd = os.open(path, os.O_RDONLY)
        weakref.finalize(self, os.close, self._fd)

    def __getitem__(self, article_id: str) -> Article:
        row = self._rows[article_id]
        start, end = int(self._starts[row]), int(self._starts[row + 1])
        data = os.pread(self._fd, end - start, start)
        try:
            article = Article(**json.loads(data))
        except (ValueError, TypeError):
            article = None
        if article is None or article.id != article_id:
            changed = f"{self.path} 在索引载入后被改动，读不出文章 {article_id}"
            raise IndexError_(f"{changed}：请重新运行 rag build")
        return article

    def __iter__(self) -> Iterator[str]:
        return iter(self._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def __contains__(self, article_id: object) -> bool:
        return article_id in self._rows

    def sources(self) -> dict[str, int]:
        """Each source that has articles -> how many, in file order."""
        return {source: len(ids) for source, ids in self._by_source.items()}

    def of_source(self, source: str) -> list[Article]:
        """The articles cut out of ``source``, in page order (none for an unknown source)."""
        return sorted((self[i] for i in self._by_source.get(source, [])), key=lambda a: a.position)
