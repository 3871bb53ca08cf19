"""Small corpora that are not seeds/, written to a folder and indexed (test_examples, test_browser)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rag.embedding import Embedder
from rag.index import build_index
from rag.settings import Settings


def write_docs(docs: Path, files: Mapping[str, str | bytes]) -> Path:
    """Write ``files`` (relative name -> text, or bytes as they are) under ``docs``; returns ``docs``."""
    for name, content in files.items():
        path = docs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    return docs


def indexed_corpus(
    settings: Settings, embedder: Embedder, root: Path, files: Mapping[str, str | bytes], **update: Any
) -> Settings:
    """``settings`` over ``files`` written to ``root/docs``, indexed into ``root/index``."""
    docs = write_docs(root / "docs", files)
    own = settings.model_copy(update={"docs_dir": docs, "index_dir": root / "index", **update})
    build_index(own, embedder)
    return own
