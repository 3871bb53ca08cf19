"""Question sets: the hand-built JSONL sets over the docs folder and SQuAD-format files.

A SQuAD paragraph becomes one :class:`~rag.models.Article` of a separate index; each of its
questions remembers the paragraph (``EvalQuestion.paragraph``), which relevance needs.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rag.errors import RagError
from rag.models import Article, Turn
from rag.textnorm import fold, nfkc

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SET = REPO_ROOT / "eval" / "questions.jsonl"
DEFAULT_FOLLOWUPS = REPO_ROOT / "eval" / "followups.jsonl"
DEFAULT_BENCH_DIR = REPO_ROOT.parent / "shared" / "bench"
"""Where the external benchmarks live unless ``--bench-dir`` says otherwise."""
STANDARD_BENCH: dict[str, str] = {
    "cmrc2018": "cmrc2018/cmrc2018_trial.json",
    "drcd": "drcd/DRCD_dev.json",
}
"""The external sets ``--bench`` runs, relative to the bench dir."""
UNANSWERABLE = "unanswerable"
TRADITIONAL_SHARE = 0.3
"""A SQuAD set whose questions change under t2s this often is traditional Chinese."""

SetKind = Literal["jsonl", "squad"]


@dataclass(frozen=True)
class EvalQuestion:
    """One question with its gold answers and what a relevant passage must contain."""

    id: str
    question: str
    answers: tuple[str, ...]
    type: str
    source: str = ""
    """Seed file the evidence comes from (hand-built sets)."""
    evidence: tuple[str, ...] = ()
    """Verbatim supporting quotes (``evidence`` then ``evidence_extra``); SQuAD: the gold answers."""
    paragraph: str | None = None
    """Article id of the question's paragraph (SQuAD sets)."""
    history: tuple[Turn, ...] = ()

    @property
    def answerable(self) -> bool:
        """True when the question has a gold answer."""
        return bool(self.answers)


@dataclass
class EvalSet:
    """A named question set and, for SQuAD files, the paragraphs to index."""

    name: str
    kind: SetKind
    path: Path
    questions: list[EvalQuestion]
    articles: list[Article] | None = None
    """Documents to index (SQuAD); ``None`` means the configured docs folder."""
    followups: list[EvalQuestion] = field(default_factory=list)
    traditional: bool = False
    limit: int | None = None


def set_name(path: Path) -> str:
    """Short name of a set for reports and thresholds: ``seed``, ``cmrc2018``, ``drcd``..."""
    if path.resolve() == DEFAULT_SET.resolve():
        return "seed"
    stem = path.stem.lower()
    stem = re.sub(r"[_\-.](trial|dev|test|train|validation|val)$", "", stem)
    return re.sub(r"[^a-z0-9_]+", "_", stem).strip("_") or "set"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise RagError(f"{path}:{n}: invalid JSON ({exc.msg})") from None
    return rows


def _question_from_row(row: dict[str, Any], path: Path) -> EvalQuestion:
    try:
        extra = row.get("evidence_extra") or []
        if isinstance(extra, str):
            extra = [extra]
        evidence = tuple(e for e in [row.get("evidence") or "", *extra] if e)
        history = tuple(Turn(role=t["role"], content=t["content"]) for t in row.get("history") or [])
        return EvalQuestion(
            id=str(row["id"]),
            question=str(row["question"]),
            answers=tuple(str(a) for a in row.get("answers") or []),
            type=str(row.get("type") or "question"),
            source=str(row.get("source") or ""),
            evidence=evidence,
            history=history,
        )
    except (KeyError, TypeError) as exc:
        raise RagError(f"{path}: question {row.get('id', '?')} lacks {exc}") from None


def load_questions(path: Path, limit: int | None = None) -> list[EvalQuestion]:
    """Questions of a JSONL file (``id, question, answers, source, evidence, type``), first ``limit``."""
    if not path.is_file():
        raise RagError(f"question set {path} not found")
    rows = _read_jsonl(path)
    if limit is not None:
        rows = rows[:limit]
    return [_question_from_row(row, path) for row in rows]


def load_jsonl_set(
    path: Path,
    limit: int | None = None,
    followups: Path | None = None,
    name: str | None = None,
) -> EvalSet:
    """A hand-built set over the docs folder; the default set also gets ``eval/followups.jsonl``."""
    if followups is None and path.resolve() == DEFAULT_SET.resolve() and DEFAULT_FOLLOWUPS.is_file():
        followups = DEFAULT_FOLLOWUPS
    return EvalSet(
        name=name or set_name(path),
        kind="jsonl",
        path=path,
        questions=load_questions(path, limit),
        followups=load_questions(followups) if followups is not None else [],
        limit=limit,
    )


def is_traditional(texts: Sequence[str], share: float = TRADITIONAL_SHARE) -> bool:
    """True when at least ``share`` of the texts change under traditional-to-simplified conversion."""
    if not texts:
        return False
    changed = sum(1 for t in texts if fold(t) != nfkc(t).lower())
    return changed / len(texts) >= share


def _squad_questions(para: dict[str, Any], article: Article) -> tuple[list[EvalQuestion], int]:
    """The questions of one SQuAD paragraph, and how many were empty (left out)."""
    questions: list[EvalQuestion] = []
    empty = 0
    for qa in para.get("qas") or []:
        if not str(qa.get("question") or "").strip():
            empty += 1  # a couple of CMRC questions are empty strings: nothing to ask
            continue
        answers = tuple(dict.fromkeys(str(a["text"]) for a in qa.get("answers") or [] if a.get("text")))
        questions.append(
            EvalQuestion(
                id=str(qa["id"]),
                question=str(qa["question"]),
                answers=answers,
                type="squad" if answers else UNANSWERABLE,
                source=article.source,
                evidence=answers,
                paragraph=article.id,
            )
        )
    return questions, empty


def _read_squad(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise RagError(f"SQuAD file {path} not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))["data"]
    except (ValueError, KeyError, TypeError) as exc:
        raise RagError(f"{path} is not a SQuAD JSON file ({exc})") from None
    if not isinstance(data, list):
        raise RagError(f"{path} is not a SQuAD JSON file (data is not a list)")
    return data


def load_squad_set(path: Path, limit: int | None = None, name: str | None = None) -> EvalSet:
    """A SQuAD-format file: each paragraph becomes an article, each question keeps its paragraph.

    ``limit`` keeps the first ``limit`` paragraphs (in file order) with all their questions, a
    deterministic subset. Paragraph text is kept as published (retrieval folds it anyway;
    gold answers are matched after ``squash``/CMRC normalization, which apply NFKC).
    """
    articles: list[Article] = []
    questions: list[EvalQuestion] = []
    seen: set[str] = set()
    empty = 0
    for d, entry in enumerate(_read_squad(path)):
        title = str(entry.get("title") or "").strip()
        for i, para in enumerate(entry.get("paragraphs") or []):
            if limit is not None and len(articles) >= limit:
                break
            source = title or str(para.get("id") or entry.get("id") or f"doc{d}")
            if f"{source}#{i}" in seen:  # two entries with one title: keep article ids unique
                source = f"{source}~{d}"
            article = Article(
                source=source, position=i, title=title or source, text=str(para["context"]).strip()
            )
            seen.add(article.id)
            articles.append(article)
            found, skipped = _squad_questions(para, article)
            questions += found
            empty += skipped
    if empty:
        log.info("%s: %d empty questions left out", path.name, empty)
    return EvalSet(
        name=name or set_name(path),
        kind="squad",
        path=path,
        questions=questions,
        articles=articles,
        traditional=is_traditional([q.question for q in questions]),
        limit=limit,
    )


def resolve_squad_path(path: Path, bench_dir: Path) -> Path | None:
    """The file as given, else relative to the bench dir, else a standard set's name; ``None`` if absent."""
    candidates = [path, bench_dir / path]
    if str(path) in STANDARD_BENCH:
        candidates.append(bench_dir / STANDARD_BENCH[str(path)])
    return next((p for p in candidates if p.is_file()), None)
