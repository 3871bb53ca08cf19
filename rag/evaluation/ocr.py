"""OCR accuracy on rendered Chinese news pages (``rag eval --ocr``).

Known news text (articles of the docs folder, e.g. the seeds: measured on, never trained
on) is laid out as a two-column newspaper page in Noto CJK, screenshotted by Chromium at
300 dpi (12 pt text, ``device_scale_factor`` 300/96), OCR'd by :mod:`rag.ocr`, and
compared with what was rendered: character accuracy is ``1 - edit distance /
len(reference)`` after NFKC (punctuation widths) and with whitespace removed. The text
is compared in reading order, so a column read in the wrong order costs accuracy too.
"""

from __future__ import annotations

import html
import logging
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag.errors import RagError
from rag.models import Article

log = logging.getLogger(__name__)

CHROMIUM = Path("/usr/bin/chromium")
DPI = 300
SCALE = DPI / 96
"""CSS pixels are 1/96 inch: this scale makes a screenshot 300 dpi-equivalent."""
PAGE_WIDTH_CSS = 794
"""A4 width (210 mm) in CSS pixels."""
COLUMN_CHARS = 420
"""About how much text of one article goes in a column (a third of an A4 page's height)."""
GOAL = 0.98
"""The accuracy ``rag eval --ocr`` is held to."""

_PAGE_CSS = """
body { margin: 0; background: #fff; color: #000; }
.page { width: PAGE_WIDTHpx; padding: 48px 40px; box-sizing: border-box;
  font-family: "Noto Serif CJK SC", "Noto Sans CJK SC", serif; font-size: 12pt; line-height: 1.6; }
.cols { display: flex; gap: 36px; }
.col { flex: 1; min-width: 0; }
h2 { font-family: "Noto Sans CJK SC", sans-serif; font-size: 18pt; margin: 0 0 14px; line-height: 1.3; }
p { margin: 0 0 6px; text-indent: 2em; text-align: justify; }
""".replace("PAGE_WIDTH", str(PAGE_WIDTH_CSS))


@dataclass(frozen=True)
class Column:
    """One column of a rendered page: a headline and its paragraphs, in reading order."""

    title: str
    paragraphs: tuple[str, ...]

    @property
    def text(self) -> str:
        """What the column shows, in reading order."""
        return "\n".join((self.title, *self.paragraphs))


@dataclass(frozen=True)
class OcrSample:
    """A page to render: its columns left to right."""

    columns: tuple[Column, ...]

    @property
    def reference(self) -> str:
        """The page's known text in reading order."""
        return "\n".join(column.text for column in self.columns)

    def html(self) -> str:
        """The page as HTML: columns side by side, Noto CJK, 12 pt body text."""
        parts = []
        for column in self.columns:
            body = "".join(f"<p>{html.escape(p)}</p>" for p in column.paragraphs)
            parts.append(f'<div class="col"><h2>{html.escape(column.title)}</h2>{body}</div>')
        return (
            f'<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><style>{_PAGE_CSS}</style>'
            f'</head><body><div class="page"><div class="cols">{"".join(parts)}</div></div></body></html>'
        )


@dataclass(frozen=True)
class OcrResult:
    """Accuracy and speed over the sample pages."""

    pages: int
    characters: int
    errors: int
    seconds: float
    """OCR time only (not rendering)."""

    @property
    def accuracy(self) -> float:
        """Character accuracy over all pages: ``1 - edits / reference characters``."""
        return 1 - self.errors / self.characters if self.characters else 0.0

    @property
    def pages_per_second(self) -> float:
        """OCR throughput on this machine."""
        return self.pages / self.seconds if self.seconds else 0.0


def normalise(text: str) -> str:
    """NFKC (full- and half-width punctuation alike), whitespace removed: what is compared."""
    return "".join(unicodedata.normalize("NFKC", text).split())


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions), two rows of memory."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def char_accuracy(ocr_text: str, reference: str) -> float:
    """``1 - edit distance / len(reference)`` on normalised text (0 when the reference is empty)."""
    ref = normalise(reference)
    if not ref:
        return 0.0
    return 1 - edit_distance(normalise(ocr_text), ref) / len(ref)


def _column(article: Article, chars: int = COLUMN_CHARS) -> Column:
    """The article's headline and its first paragraphs, up to about ``chars`` characters."""
    paragraphs: list[str] = []
    used = 0
    for paragraph in article.text.split("\n"):
        if used >= chars:
            break
        paragraph = paragraph[: chars - used] if used + len(paragraph) > chars + 80 else paragraph
        paragraphs.append(paragraph)
        used += len(paragraph)
    return Column(article.title, tuple(paragraphs))


def samples_from_articles(
    articles: Sequence[Article], pages: int, chars: int = COLUMN_CHARS
) -> list[OcrSample]:
    """``pages`` two-column pages, each from two consecutive articles, ``chars`` per column or so."""
    usable = [a for a in articles if len(a.text) >= 200 and 4 <= len(a.title) <= 24]
    if len(usable) < 2:
        raise RagError("OCR 评测需要至少两篇 200 字以上的文章；请用 --docs 指定新闻文档文件夹")
    return [
        OcrSample(
            (_column(usable[(2 * n) % len(usable)], chars), _column(usable[(2 * n + 1) % len(usable)], chars))
        )
        for n in range(pages)
    ]


def samples_from_docs(docs_dir: Path, pages: int, chars: int = COLUMN_CHARS) -> list[OcrSample]:
    """Sample pages from the ``.txt``/``.md`` articles of ``docs_dir`` (sorted, deterministic)."""
    from rag.ingest import parse_document

    articles: list[Article] = []
    for path in sorted(docs_dir.glob("*.txt")) + sorted(docs_dir.glob("*.md")):
        if path.name == "questions.txt":
            continue
        articles.extend(parse_document(path.read_bytes(), path.name))
    return samples_from_articles(articles, pages, chars)


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian Chromium driven by Playwright (never a downloaded browser)."""
    if not CHROMIUM.is_file():
        raise RagError(f"找不到 Chromium（{CHROMIUM}）；请安装 Debian 的 chromium 包")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"]
        )
        try:
            yield browser
        finally:
            browser.close()


def render_png(browser: Any, page_html: str) -> bytes:
    """A full-page PNG screenshot of ``page_html`` at 300 dpi-equivalent."""
    context = browser.new_context(
        viewport={"width": PAGE_WIDTH_CSS, "height": 600}, device_scale_factor=SCALE
    )
    try:
        page = context.new_page()
        page.set_content(page_html, wait_until="load")
        page.evaluate("document.fonts.ready")
        png: bytes = page.screenshot(full_page=True, type="png")
        return png
    finally:
        context.close()


def measure(samples: Sequence[OcrSample]) -> OcrResult:
    """Render each sample, OCR it and total the edit distances against the known text."""
    from rag.ocr import ocr_image

    errors = characters = 0
    seconds = 0.0
    with chromium() as browser:
        for n, sample in enumerate(samples, 1):
            png = render_png(browser, sample.html())
            started = time.perf_counter()
            page = ocr_image(png)
            seconds += time.perf_counter() - started
            ref = normalise(sample.reference)
            distance = edit_distance(normalise(page.text), ref)
            log.info(
                "OCR page %d: accuracy %.4f (%d edits / %d chars)",
                n,
                1 - distance / len(ref),
                distance,
                len(ref),
            )
            errors += distance
            characters += len(ref)
    return OcrResult(pages=len(samples), characters=characters, errors=errors, seconds=seconds)


def summary(result: OcrResult) -> str:
    """One line for the terminal: accuracy against the goal and pages per second."""
    verdict = "达标" if result.accuracy >= GOAL else "未达标"
    return (
        f"OCR 字符准确率 {result.accuracy:.4f}（目标 ≥ {GOAL}，{verdict}）；"
        f"{result.pages} 页、{result.characters} 字、{result.errors} 处编辑；"
        f"{result.pages_per_second:.2f} 页/秒（300 dpi）"
    )


def run_ocr_eval(docs_dir: Path, pages: int = 3) -> int:
    """``rag eval --ocr``: measure ``pages`` pages of ``docs_dir``'s articles, print the summary.

    Returns the exit status: 0 when the accuracy reaches :data:`GOAL`, else 1.
    """
    import typer

    logging.getLogger("rag.evaluation").setLevel(logging.INFO)
    result = measure(samples_from_docs(docs_dir, pages))
    typer.echo(summary(result))
    return 0 if result.accuracy >= GOAL else 1
