"""OCR of scanned newspaper pages and images, offline, with each line's position on the page.

The engine is RapidOCR (PP-OCRv4 detection and recognition, run by onnxruntime); its ONNX
models ship inside the ``rapidocr-onnxruntime`` wheel and the package has no download code,
so nothing is fetched at run time. It is loaded once per process (:func:`_engine`).

OCR gives text lines with boxes in no useful order. :func:`layout` puts them in reading
order for a newspaper page:

1. Lines much wider than the typical line (headlines or rules across columns) cut the
   page into horizontal bands; each such line is a block of its own.
2. Inside a band, lines are clustered into columns by x-overlap; columns are read left to
   right (horizontal Chinese text), each top to bottom.
3. Inside a column a block (paragraph or article) ends at a large vertical gap, at a
   first-line indent and around a headline (a line clearly taller than the body text).

``OcrPage.text`` joins lines of a block with ``\\n`` and blocks with a blank line: the
shape of the OCR'd seed pages, ready for :func:`rag.ingest.parse_page`.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import statistics
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rag.errors import IngestError

if TYPE_CHECKING:
    from PIL import Image

log = logging.getLogger(__name__)

PDF_DPI = 300
"""Resolution a PDF page is rendered at before OCR (and for the page-image route)."""
MAX_PIXELS = 60_000_000
"""Larger images are refused: a 300 dpi broadsheet page is about 25 million pixels."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
"""Image files OCR reads."""

_SPAN_FACTOR = 1.5  # wider than this times the median line: spans columns
_HEADLINE_FACTOR = 1.3  # taller and wider-set than this times the median line: a headline
_GAP_FACTOR = 1.0  # a vertical gap over this times the median line height ends a block
_INDENT_FACTOR = 1.2  # a first-line indent of over this times the line height starts a paragraph
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


class OcrError(IngestError):
    """An image or PDF page cannot be read or OCR'd; the message says why (one Chinese line)."""


@dataclass(frozen=True)
class OcrLine:
    """One recognised line of text and where it is on the page."""

    text: str
    box: tuple[float, float, float, float]
    """``(x0, y0, x1, y1)`` in page pixels (the rendered page for a PDF)."""
    confidence: float
    """The recogniser's score, 0 to 1."""

    @property
    def height(self) -> float:
        """The box's height in pixels."""
        return self.box[3] - self.box[1]

    @property
    def width(self) -> float:
        """The box's width in pixels."""
        return self.box[2] - self.box[0]

    @property
    def pitch(self) -> float:
        """Width per character (a Latin letter or digit counts half): the font size, roughly.

        The box height alone misleads: the detector pads a short line's box more, so a
        two-character last line looks as tall as a headline.
        """
        units = sum(1.0 if unicodedata.east_asian_width(c) in "WF" else 0.55 for c in self.text)
        return self.width / max(units, 1.0)


@dataclass(frozen=True)
class OcrPage:
    """One OCR'd page: its size, its lines in reading order, and its text."""

    number: int
    """1-based page number (1 for an image)."""
    width: int
    height: int
    lines: tuple[OcrLine, ...]
    """In reading order."""
    text: str
    """Lines of a block joined by ``\\n``, blocks separated by a blank line."""


@functools.cache
def _engine(threads: int | None = None) -> Any:
    """The RapidOCR engine, loaded once per thread count (a read-only model, shared).

    ``threads`` defaults to the CPUs this process may use: onnxruntime's own default
    counts the host's cores and oversubscribes a container limited to fewer.
    """
    try:
        from rapidocr_onnxruntime import RapidOCR
    except ImportError as exc:
        # opencv, which rapidocr needs, loads the system's libGL (Debian/Ubuntu: libgl1).
        missing = "libGL" in str(exc)
        hint = "请安装系统库 libGL：sudo apt install libgl1" if missing else "请安装依赖：pip install -e ."
        raise OcrError(f"无法加载 OCR 引擎（{exc}）；{hint}") from None
    if threads is None:
        threads = min(len(os.sched_getaffinity(0)), 8)
    return RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)


def check_image(data: bytes) -> None:
    """:class:`OcrError` unless ``data`` is an image OCR can read (decoded, not OCR'd: fast)."""
    _open_image(data)


def _open_image(data: bytes) -> Image.Image:
    """Decoded RGB image, or :class:`OcrError` saying why it cannot be read."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise OcrError("空的图片文件")
    try:
        image = Image.open(io.BytesIO(data))
        # Checked before decoding (and below PIL's own bomb limit), with a message that says what to do.
        if image.width * image.height > MAX_PIXELS:
            raise OcrError(
                f"图片太大（{image.width}×{image.height} 像素，上限 {MAX_PIXELS} 像素）；请缩小后再上传"
            )
        image.load()
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise OcrError(f"无法识别的图片（{type(exc).__name__}）；请另存为 PNG 或 JPEG") from None


def _recognise(image: Image.Image, threads: int | None = None) -> list[OcrLine]:
    """Raw OCR lines of ``image`` (no order), boxes as axis-aligned rectangles."""
    result, _ = _engine(threads)(image)
    lines = []
    for quad, text, score in result or []:
        text = str(text).strip()
        if not text:
            continue
        xs = [float(p[0]) for p in quad]
        ys = [float(p[1]) for p in quad]
        lines.append(OcrLine(text, (min(xs), min(ys), max(xs), max(ys)), float(score)))
    return lines


def ocr_image(data: bytes, *, threads: int | None = None) -> OcrPage:
    """OCR an image (PNG, JPEG, TIFF, BMP or WebP bytes): page 1, lines in reading order.

    :class:`OcrError` (a Chinese reason; the caller names the file) when it is not a
    readable image. ``threads``: onnxruntime's intra-op threads (default: this process's CPUs).
    """
    return _ocr(_open_image(data), 1, threads)


def _render_pdf_page(pdf: bytes, index: int, dpi: int = PDF_DPI) -> Image.Image:
    """Page ``index`` (0-based) of ``pdf`` rendered at ``dpi``; :class:`OcrError` when impossible."""
    import pypdfium2 as pdfium

    try:
        document = pdfium.PdfDocument(pdf)
    except pdfium.PdfiumError as exc:
        raise OcrError(f"无法打开 PDF（{exc}）；文件可能已损坏，请重新导出") from None
    try:
        if not 0 <= index < len(document):
            raise OcrError(f"PDF 没有第 {index + 1} 页（共 {len(document)} 页）")
        page = document[index]
        try:
            width, height = (round(side * dpi / 72) for side in page.get_size())
            if width * height > MAX_PIXELS:
                raise OcrError(
                    f"PDF 第 {index + 1} 页太大（{dpi} dpi 下 {width}×{height} 像素）；请检查页面尺寸"
                )
            bitmap = page.render(scale=dpi / 72)
            image: Image.Image = bitmap.to_pil().convert("RGB")
            return image
        finally:
            page.close()
    finally:
        document.close()


def ocr_pdf_page(pdf: bytes, index: int) -> OcrPage:
    """OCR page ``index`` (0-based) of a PDF, rendered with pdfium at 300 dpi.

    The result's boxes are in pixels of that rendering; its ``number`` is ``index + 1``.
    """
    return _ocr(_render_pdf_page(pdf, index), index + 1)


def _ocr(image: Image.Image, number: int, threads: int | None = None) -> OcrPage:
    lines = _recognise(image, threads)
    blocks = layout(lines)
    ordered = tuple(line for block in blocks for line in block)
    text = "\n\n".join("\n".join(_row_texts(block)) for block in blocks)
    return OcrPage(number=number, width=image.width, height=image.height, lines=ordered, text=text)


def page_image(data: bytes, suffix: str, number: int) -> bytes:
    """PNG of page ``number`` (1-based) of a PDF at 300 dpi, or of an image (page 1 only).

    :class:`OcrError` for a page the file does not have or a file that cannot be read.
    """
    if suffix.lower() == ".pdf":
        image = _render_pdf_page(data, number - 1)
    elif number == 1:
        image = _open_image(data)
    else:
        raise OcrError(f"图片只有 1 页，没有第 {number} 页")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def highlight(png: bytes, boxes: Sequence[tuple[float, float, float, float]]) -> bytes:
    """``png`` with a red frame drawn around each box (a citation's lines on the page image)."""
    from PIL import Image, ImageDraw

    image = Image.open(io.BytesIO(png)).convert("RGB")
    draw = ImageDraw.Draw(image)
    pad = 4
    for x0, y0, x1, y1 in boxes:
        draw.rectangle((x0 - pad, y0 - pad, x1 + pad, y1 + pad), outline=(220, 30, 30), width=5)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _key(text: str) -> str:
    """Letters, digits and CJK only, NFKC-folded: OCR and the cleaned article text compare equal."""
    return "".join(c for c in unicodedata.normalize("NFKC", text) if c.isalnum())


def find_lines(page: OcrPage, text: str) -> list[OcrLine]:
    """The lines of ``page`` that hold ``text`` (punctuation and whitespace ignored), for a highlight.

    ``text`` may run over several lines: the lines covering its first occurrence are
    returned. When OCR misread a character of it, its first 12 characters are looked for.
    """
    needle = _key(text)
    if not needle:
        return []
    joined = ""
    spans: list[tuple[int, int]] = []
    for line in page.lines:
        key = _key(line.text)
        spans.append((len(joined), len(joined) + len(key)))
        joined += key
    start = joined.find(needle)
    end = start + len(needle)
    if start < 0:
        start = joined.find(needle[:12])
        end = start + min(len(needle), 12)
    if start < 0:
        return []
    return [line for line, (a, b) in zip(page.lines, spans, strict=True) if a < end and b > start]


# ---- layout: reading order of a newspaper page ---------------------------------------------


def layout(lines: Sequence[OcrLine]) -> list[list[OcrLine]]:
    """Blocks of lines in reading order (see the module docstring for the rules)."""
    if not lines:
        return []
    body = _Body(
        statistics.median(line.height for line in lines), statistics.median(line.pitch for line in lines)
    )
    median_width = statistics.median(line.width for line in lines)
    spanning = [line for line in lines if line.width > _SPAN_FACTOR * median_width]
    # Only lines wider than one column cut bands; on a one-column page none is.
    spanning = spanning if len(spanning) < len(lines) / 2 else []
    spanning.sort(key=lambda line: line.box[1])
    cut_ids = {id(line) for line in spanning}
    rest = [line for line in lines if id(line) not in cut_ids]
    blocks: list[list[OcrLine]] = []
    top = float("-inf")
    for cut in [*spanning, None]:
        bottom = cut.box[1] if cut is not None else float("inf")
        band = [line for line in rest if top <= _centre_y(line) < bottom]
        for column in _columns(band):
            blocks.extend(_column_blocks(column, body))
        if cut is not None:
            blocks.append([cut])
            top = cut.box[3]
    return [block for block in blocks if block]


def _centre_y(line: OcrLine) -> float:
    return (line.box[1] + line.box[3]) / 2


def _columns(lines: list[OcrLine]) -> list[list[OcrLine]]:
    """``lines`` clustered by x-overlap (union-find), columns left to right, each top to bottom."""
    parent = list(range(len(lines)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    order = sorted(range(len(lines)), key=lambda i: lines[i].box[0])
    for n, i in enumerate(order):
        a = lines[i]
        for j in order[n + 1 :]:
            b = lines[j]
            if b.box[0] >= a.box[2]:
                break  # sorted by x0: no later line overlaps ``a``
            overlap = min(a.box[2], b.box[2]) - b.box[0]
            # Half the narrower line: a short last line of a paragraph still joins its column.
            if overlap > 0.5 * min(a.width, b.width):
                parent[find(j)] = find(i)
    groups: dict[int, list[OcrLine]] = {}
    for i, line in enumerate(lines):
        groups.setdefault(find(i), []).append(line)
    columns = [sorted(group, key=lambda line: (line.box[1], line.box[0])) for group in groups.values()]
    columns.sort(key=lambda column: min(line.box[0] for line in column))
    return columns


def _rows(column: list[OcrLine]) -> list[list[OcrLine]]:
    """Boxes of one printed line (OCR may cut a line at a wide space) grouped, top to bottom."""
    rows: list[list[OcrLine]] = []
    for line in column:
        last = rows[-1] if rows else None
        if last is not None and _centre_y(line) < max(other.box[3] for other in last):
            last.append(line)
        else:
            rows.append([line])
    return [sorted(row, key=lambda line: line.box[0]) for row in rows]


@dataclass(frozen=True)
class _Body:
    """The page's body text size: median line height and character pitch, in pixels."""

    height: float
    pitch: float

    def headline(self, row: list[OcrLine]) -> bool:
        """Set in a clearly larger type than the body: taller boxes and wider characters."""
        return any(
            line.height > _HEADLINE_FACTOR * self.height and line.pitch > _HEADLINE_FACTOR * self.pitch
            for line in row
        )


def _column_blocks(column: list[OcrLine], body: _Body) -> list[list[OcrLine]]:
    """One column's lines cut into blocks: at big gaps, paragraph indents and headlines."""
    if not column:
        return []
    left = min(line.box[0] for line in column)
    blocks: list[list[OcrLine]] = []
    previous: list[OcrLine] | None = None
    for row in _rows(column):
        headline = body.headline(row)
        if previous is None:
            blocks.append(list(row))
        else:
            gap = min(line.box[1] for line in row) - max(line.box[3] for line in previous)
            indent = row[0].box[0] - left > _INDENT_FACTOR * body.height
            if (
                gap > _GAP_FACTOR * body.height
                or headline != body.headline(previous)
                or (indent and not headline)
            ):
                blocks.append(list(row))
            else:
                blocks[-1].extend(row)
        previous = row
    return blocks


def _row_texts(block: list[OcrLine]) -> list[str]:
    """A block's printed lines as text: boxes of one line joined (a space only between Latin words)."""
    texts: list[str] = []
    for row in _rows(block):
        out = ""
        for line in row:
            if out and not (_CJK.search(out[-1]) or _CJK.search(line.text[0])):
                out += " "
            out += line.text
        texts.append(out)
    return texts
