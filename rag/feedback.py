"""Readers' thumbs up/down on answers, kept in SQLite under the index folder and exported as JSONL.

A newsroom grows its eval set from real use: every rating keeps the question, the answer
as shown, the ids of the articles it cited and an optional comment.
``rag feedback-export`` and ``GET /feedback`` write the rows one JSON object per line.

The store lives beside the index (``<index_dir>/feedback.sqlite3``), outside the
``builds/`` folders a rebuild replaces, so ratings survive rebuilds.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO

from pydantic import BaseModel, Field, StringConstraints

from rag.settings import Settings

FEEDBACK_FILE = "feedback.sqlite3"
MAX_QUESTION_CHARS = 2_000
MAX_ANSWER_CHARS = 20_000
MAX_CITATIONS = 50
MAX_CITATION_ID_CHARS = 1_000
MAX_COMMENT_CHARS = 2_000
MAX_ID_CHARS = 200

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at TEXT NOT NULL,
    rating TEXT NOT NULL CHECK (rating IN ('up', 'down')),
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    citations TEXT NOT NULL,
    conversation_id TEXT,
    comment TEXT,
    answer_mode TEXT
)
"""
_COLUMNS = (
    "id",
    "created_at",
    "rating",
    "question",
    "answer",
    "citations",
    "conversation_id",
    "comment",
    "answer_mode",
)


class Feedback(BaseModel):
    """One rating of an answer, as the page sends it (``POST /feedback``)."""

    rating: Literal["up", "down"] = Field(description="up: the answer helped; down: it did not.")
    question: str = Field(min_length=1, max_length=MAX_QUESTION_CHARS, description="The question asked.")
    answer: str = Field(max_length=MAX_ANSWER_CHARS, description="The answer as shown.")
    citations: list[Annotated[str, StringConstraints(max_length=MAX_CITATION_ID_CHARS)]] = Field(
        default_factory=list,
        max_length=MAX_CITATIONS,
        description="Ids (``source#position``) of the articles the answer cited.",
    )
    conversation_id: str | None = Field(None, max_length=MAX_ID_CHARS)
    comment: str | None = Field(None, max_length=MAX_COMMENT_CHARS, description="What the reader adds.")
    answer_mode: str | None = Field(None, max_length=MAX_ID_CHARS, description="extractive or llm.")


def feedback_path(settings: Settings) -> Path:
    """Where the feedback of ``settings``' index is kept."""
    return settings.index_dir / FEEDBACK_FILE


class FeedbackStore:
    """The SQLite table of ratings; safe to share between threads (one lock, one connection)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # One connection for the app's threadpool, every use under the lock.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)

    def add(self, entry: Feedback) -> int:
        """Store one rating; returns its id."""
        created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        values = (
            created,
            entry.rating,
            entry.question,
            entry.answer,
            json.dumps(list(entry.citations), ensure_ascii=False),
            entry.conversation_id,
            entry.comment,
            entry.answer_mode,
        )
        with self._lock:
            cursor = self._db.execute(
                f"INSERT INTO feedback ({', '.join(_COLUMNS[1:])}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                values,
            )
            row_id = cursor.lastrowid
        assert row_id is not None
        return row_id

    def count(self) -> int:
        """How many ratings are stored."""
        with self._lock:
            (n,) = self._db.execute("SELECT COUNT(*) FROM feedback").fetchone()
        return int(n)

    def rows(self) -> list[dict[str, Any]]:
        """Every rating, oldest first, as the export writes it."""
        with self._lock:
            found = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM feedback ORDER BY id").fetchall()
        out = []
        for values in found:
            row = dict(zip(_COLUMNS, values, strict=True))
            row["citations"] = json.loads(row["citations"])
            out.append(row)
        return out

    def export_jsonl(self, out: TextIO) -> int:
        """Write every rating as one JSON object per line; returns how many were written."""
        rows = self.rows()
        for row in rows:
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        return len(rows)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()
