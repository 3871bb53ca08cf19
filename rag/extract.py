"""Text out of PDF (text layer), DOCX and HTML files, as page text ready for ``parse_page``.

Every extractor returns :class:`PageText` items: the text of one page (a PDF page; the
whole document for DOCX and HTML), with paragraphs separated by blank lines and headings
written as markdown ``# `` lines, which the segmenter in ``rag.ingest`` always takes as
headlines. Malformed files raise :class:`rag.ingest.DocumentError`-compatible
:class:`ExtractError` with a one-line Chinese reason.

PDF (pypdfium2, chosen over pdfplumber by ``bench/formats_bench.py``): characters with their
boxes are grouped into rows, rows cut at wide gaps into line segments, segments clustered by
x into columns between full-width lines (headlines spanning columns), each column read top
to bottom. Running headers/footers (the same text at the same height on most pages) and
lone page numbers (``- 3 -``, ``第3版``) in the page margins are dropped.
"""

from __future__ import annotations

import io
import itertools
import logging
import re
import statistics
import zipfile
from collections import Counter
from dataclasses import dataclass

log = logging.getLogger(__name__)


class ExtractError(Exception):
    """A file of a known type that cannot be read: ``reason`` is one Chinese line."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PageText:
    """The text of one page (1-based ``number``; None for formats without pages)."""

    number: int | None
    text: str


@dataclass
class Char:
    """One character with its box, top-down page coordinates (points)."""

    ch: str
    x0: float
    top: float
    x1: float
    bottom: float


@dataclass
class Line:
    """A run of characters on one row of one column."""

    chars: list[Char]

    @property
    def x0(self) -> float:
        """Left edge."""
        return self.chars[0].x0

    @property
    def x1(self) -> float:
        """Right edge."""
        return self.chars[-1].x1

    @property
    def top(self) -> float:
        """Top (smallest y)."""
        return min(c.top for c in self.chars)

    @property
    def bottom(self) -> float:
        """Bottom (largest y)."""
        return max(c.bottom for c in self.chars)

    @property
    def size(self) -> float:
        """The median character height: the font size, near enough."""
        return statistics.median(c.bottom - c.top for c in self.chars)

    @property
    def text(self) -> str:
        """The characters, with a space where a gap separates two Latin words."""
        out = ""
        prev: Char | None = None
        for c in self.chars:
            # Spaces are not drawn: a gap between two Latin words stands for one.
            gap = c.x0 - prev.x1 if prev is not None else 0.0
            if (
                gap > 0.2 * (c.bottom - c.top)
                and out[-1:].isalnum()
                and out[-1:].isascii()
                and c.ch.isascii()
            ):
                out += " "
            out += c.ch
            prev = c
        return out.strip()


# ---- PDF ------------------------------------------------------------------------------

_PAGE_NUMBER = re.compile(
    r"^(?:[-—–_·•\s]*\d{1,4}[-—–_·•\s]*|第\s*\d{1,4}\s*[版页]|\d{1,4}\s*/\s*\d{1,4}|page\s*\d{1,4}"
    r"|第\s*[一二三四五六七八九十百零〇]{1,4}\s*[版页])$",
    re.IGNORECASE,
)
MARGIN = 0.1
"""Headers and footers live in the top and bottom tenth of a page."""
ROW_TOLERANCE = 0.5
"""Characters whose vertical centres differ by under half a character height share a row."""
GUTTER = 1.2
"""A horizontal gap wider than this many character widths separates two columns."""
FURNITURE_SIZE = 0.85
"""Margin lines set smaller than this share of the body text size are headers or footers."""
HEADING_SIZE = 1.2
"""Lines at least this much larger than the body text are headings."""


def rows_to_lines(chars: list[Char]) -> list[Line]:
    """Group characters into rows by their vertical centre, then cut each row at column gutters."""
    chars = sorted((c for c in chars if c.ch.strip()), key=lambda c: ((c.top + c.bottom) / 2, c.x0))
    rows: list[list[Char]] = []
    for c in chars:
        centre, height = (c.top + c.bottom) / 2, c.bottom - c.top
        if rows:
            last = rows[-1]
            last_centre = statistics.fmean((x.top + x.bottom) / 2 for x in last[-3:])
            if abs(centre - last_centre) <= ROW_TOLERANCE * max(height, 1.0):
                last.append(c)
                continue
        rows.append([c])
    lines: list[Line] = []
    for row in rows:
        row.sort(key=lambda c: c.x0)
        current = [row[0]]
        for c in row[1:]:
            width = max(c.x1 - c.x0, current[-1].x1 - current[-1].x0, 1.0)
            if c.x0 - current[-1].x1 > GUTTER * width:
                lines.append(Line(current))
                current = []
            current.append(c)
        lines.append(Line(current))
    return lines


def column_lefts(lines: list[Line]) -> list[float]:
    """The left edges of a page's columns: x0 values many lines start at (indents folded in)."""
    if not lines:
        return []
    size = statistics.median(ln.size for ln in lines)
    starts = sorted(ln.x0 for ln in lines)
    clusters: list[list[float]] = [[starts[0]]]
    for x in starts[1:]:
        if x - clusters[-1][-1] > 4 * size:  # a paragraph indent (2 characters) stays in its column
            clusters.append([])
        clusters[-1].append(x)
    enough = max(2, len(lines) // 10)
    lefts = [c[0] for c in clusters if len(c) >= enough]
    return lefts or [starts[0]]


def _column_of(line: Line, lefts: list[float]) -> int:
    """The column a line belongs to, or -1 for a line crossing a column's left edge."""
    if any(line.x0 + line.size < left < line.x1 - line.size for left in lefts):
        return -1
    return max((i for i, left in enumerate(lefts) if left <= line.x0 + line.size), default=0)


def reading_order(lines: list[Line]) -> list[Line]:
    """Lines in reading order: columns left to right within bands cut by column-spanning lines.

    A line that crosses a column's left edge (a headline over two columns) ends the band
    above it and is read where it stands; within a band, each column is read top to bottom.
    """
    lefts = column_lefts(lines)
    ordered: list[Line] = []
    band: list[list[Line]] = [[] for _ in lefts]
    for line in sorted(lines, key=lambda ln: ln.top):
        column = _column_of(line, lefts)
        if column < 0:
            for members in band:
                ordered.extend(members)
                members.clear()
            ordered.append(line)
        else:
            band[column].append(line)
    for members in band:
        ordered.extend(members)
    return ordered


def _furniture_key(line: Line, height: float) -> tuple[str, int] | None:
    """A margin line's text (digits folded) and coarse height: equal keys on most pages repeat."""
    if MARGIN * height < line.top and line.bottom < (1 - MARGIN) * height:
        return None
    return re.sub(r"\d+", "#", line.text), round(line.top / 5)


def drop_furniture(pages: list[tuple[list[Line], float]]) -> list[list[Line]]:
    """Drop running headers/footers and page numbers from each page's lines.

    ``pages`` holds each page's lines and its height. A margin line is furniture when it is
    a lone page number, set smaller than the body text, or when its text (digits folded)
    recurs at the same height on at least half of the pages (two at least).
    """
    seen: Counter[tuple[str, int]] = Counter()
    for lines, height in pages:
        seen.update({k for ln in lines if (k := _furniture_key(ln, height)) is not None})
    repeated = max(2, (len(pages) + 1) // 2)
    sizes = [ln.size for lines, _ in pages for ln in lines]
    body = statistics.median(sizes) if sizes else 0.0
    kept: list[list[Line]] = []
    for lines, height in pages:
        keep = []
        for line in lines:
            key = _furniture_key(line, height)
            # Small print in the margin is a running head even on a one-page file.
            small = line.size < FURNITURE_SIZE * body
            if key is not None and (_PAGE_NUMBER.match(line.text) or seen[key] >= repeated or small):
                continue
            keep.append(line)
        kept.append(keep)
    return kept


def lines_to_text(lines: list[Line]) -> str:
    """Page text from lines in reading order: headings as ``# `` lines, paragraphs at blank lines.

    A paragraph ends at a wider line pitch than its column's usual one, before an indented
    line (the two-character indent of Chinese paragraphs), or after a line that stops short
    of its column's right edge.
    """
    if not lines:
        return ""
    body = statistics.median(ln.size for ln in lines)
    lefts = column_lefts(lines)
    column = {id(ln): _column_of(ln, lefts) for ln in lines}
    rights = {c: max(ln.x1 for ln in lines if column[id(ln)] == c) for c in set(column.values())}
    pitches = [b.top - a.top for a, b in itertools.pairwise(lines) if 0 < b.top - a.top < 3 * body]
    pitch = statistics.median(pitches) if pitches else 1.5 * body
    out: list[str] = []
    prev: Line | None = None
    for line in lines:
        c = column[id(line)]
        if line.size >= HEADING_SIZE * body:
            out.extend(["", f"# {line.text}", ""])
            prev = None
            continue
        if prev is not None:
            left = lefts[c] if c >= 0 else line.x0
            step = line.top - prev.top
            indented = line.x0 - left > 1.5 * line.size
            short = rights[column[id(prev)]] - prev.x1 > 2 * prev.size
            if step < 0 or step > 1.4 * pitch or indented or short or c != column[id(prev)]:
                out.append("")
        out.append(line.text)
        prev = line
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip() + "\n"


def pdf_chars(data: bytes) -> list[tuple[list[Char], float, float]]:
    """Each page's characters (with boxes, top-down) and its width and height, via pypdfium2.

    :class:`ExtractError` for a file PDFium cannot open (damaged, or protected by a password).
    """
    import ctypes

    import pypdfium2 as pdfium
    import pypdfium2.raw as raw

    try:
        doc = pdfium.PdfDocument(data)
    except pdfium.PdfiumError as exc:
        if "password" in str(exc).lower():
            raise ExtractError("PDF 已加密（需要密码）；请先去除密码再添加") from None
        raise ExtractError("PDF 文件已损坏或不完整，无法打开；请重新导出 PDF") from None
    pages: list[tuple[list[Char], float, float]] = []
    try:
        for index in range(len(doc)):
            page = doc[index]
            width, height = page.get_size()
            textpage = page.get_textpage()
            chars: list[Char] = []
            # Loose boxes span the font's ascent to descent: one height for every glyph of a
            # line (a comma's tight box sits below the line and would start a row of its own).
            box = raw.FS_RECTF()
            for i in range(textpage.count_chars()):
                code = raw.FPDFText_GetUnicode(textpage, i)
                if not code or raw.FPDFText_IsGenerated(textpage, i) == 1:
                    continue
                raw.FPDFText_GetLooseCharBox(textpage, i, ctypes.byref(box))
                chars.append(Char(chr(code), box.left, height - box.top, box.right, height - box.bottom))
            pages.append((chars, width, height))
            textpage.close()
            page.close()
    except pdfium.PdfiumError:
        raise ExtractError("PDF 文件已损坏，无法读取页面；请重新导出 PDF") from None
    finally:
        doc.close()
    return pages


def pdf_pages(data: bytes) -> list[PageText]:
    """The text of each page of a PDF's text layer in reading order (empty text: no text layer)."""
    pages = pdf_chars(data)
    per_page = [(rows_to_lines(chars), height) for chars, _, height in pages]
    kept = drop_furniture(per_page)
    return [PageText(n, lines_to_text(reading_order(lines))) for n, lines in enumerate(kept, 1)]


# ---- DOCX -----------------------------------------------------------------------------

_HEADING_STYLE = re.compile(r"^(?:title|heading\s*\d|标题(?:\s*\d)?|subtitle|副标题)$", re.IGNORECASE)
_ROW_END = "。！？!?；;…"


def _row_text(cells: list[str]) -> str:
    """A table row as one line: cells joined by ``，``, ending in ``；`` so it stays its own line."""
    seen: list[str] = []
    for cell in cells:
        cell = re.sub(r"\s+", " ", cell).strip()
        if cell and (not seen or seen[-1] != cell):  # a merged cell repeats in each column it spans
            seen.append(cell)
    if not seen:
        return ""
    row = "，".join(seen)
    return row if row[-1] in _ROW_END else row + "；"


def docx_text(data: bytes) -> str:
    """A DOCX file's text: paragraphs in order, heading styles as ``# `` lines, tables row by row."""
    import docx
    from docx.document import Document as DocumentObject
    from docx.oxml.ns import qn
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    if not zipfile.is_zipfile(io.BytesIO(data)):
        raise ExtractError("不是有效的 DOCX 文件（文件已损坏或只是改了扩展名）；请用 Word 另存为 .docx")
    try:
        document: DocumentObject = docx.Document(io.BytesIO(data))
    except (KeyError, ValueError, zipfile.BadZipFile, OSError) as exc:
        log.debug("docx: %s", exc)
        raise ExtractError("DOCX 文件已损坏，无法读取；请用 Word 另存为 .docx") from None
    except Exception as exc:  # noqa: BLE001  (python-docx raises assorted lxml/zip errors on junk)
        log.debug("docx: %r", exc)
        raise ExtractError("DOCX 文件已损坏，无法读取；请用 Word 另存为 .docx") from None
    blocks: list[str] = []
    for element in document.element.body.iterchildren():
        if element.tag == qn("w:p"):
            paragraph = Paragraph(element, document)
            text = paragraph.text.strip()
            if not text:
                continue
            style = paragraph.style.name if paragraph.style is not None else ""
            blocks.append(f"# {text}" if _HEADING_STYLE.match(style or "") else text)
        elif element.tag == qn("w:tbl"):
            table = Table(element, document)
            rows = [_row_text([cell.text for cell in row.cells]) for row in table.rows]
            blocks.extend(r for r in rows if r)
    return "\n\n".join(blocks) + "\n"


# ---- HTML -----------------------------------------------------------------------------

_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_\-]+)""", re.IGNORECASE)
_CHROME_TAGS = "script, style, noscript, nav, header, footer, aside, form, iframe, svg, template, button"
_CHROME_NAME = re.compile(
    r"nav|menu|footer|header|breadcrumb|crumb|share|comment|related|sidebar|side-bar|toolbar|copyright|"
    r"advert|banner|login|subscribe|recommend|hot|rank|tags?\b|pagination|pager",
    re.IGNORECASE,
)
_TITLE_SUFFIX = re.compile(r"\s*[-_|—–]\s*[^-_|—–]{1,30}$")


def decode_html(data: bytes) -> str:
    """An HTML page's text in its declared charset (``<meta charset>``); else UTF-8, else GB18030.

    GB2312 and GBK are read as GB18030, their superset (pages declaring GB2312 often use GBK
    characters).
    """
    declared = _META_CHARSET.search(data[:4096])
    encodings = ["utf-8", "gb18030"]
    if declared:
        name = declared.group(1).decode("ascii").lower()
        name = "gb18030" if name in ("gb2312", "gbk", "gb18030", "x-gbk") else name
        encodings.insert(0, name)
    for encoding in encodings:
        try:
            return data.decode(encoding)
        except (UnicodeDecodeError, LookupError):
            continue
    raise ExtractError("网页编码无法识别（不是声明的编码，也不是 UTF-8 或 GB18030）；请另存为 UTF-8")


def _is_chrome(node: object) -> bool:
    attrs = getattr(node, "attributes", {}) or {}
    names = " ".join(str(attrs.get(k) or "") for k in ("class", "id", "role"))
    return bool(names) and bool(_CHROME_NAME.search(names))


def html_text(data: bytes) -> str:
    """A web page's main text: ``# title`` then the paragraphs of its densest content block.

    Chrome (scripts, navigation, header/footer, sidebars, share bars, related-link lists) is
    removed by tag and by class/id names; the main block is the element whose ``<p>``
    children hold the most text. The title is the first ``<h1>``, else ``<title>`` less a
    trailing `` - 站点名``.
    """
    from selectolax.lexbor import LexborHTMLParser as HTMLParser

    tree = HTMLParser(decode_html(data))
    if tree.body is None:
        raise ExtractError("不是有效的网页（没有 <body>）；请保存完整的网页 .html")
    h1 = tree.css_first("h1")
    title_node = tree.css_first("title")
    title = h1.text(strip=True) if h1 is not None else ""
    if not title and title_node is not None:
        title = _TITLE_SUFFIX.sub("", title_node.text(strip=True))
    for node in tree.css(_CHROME_TAGS):
        node.decompose()
    # Collect first, then remove outermost only: removing while walking (or removing a node
    # inside one already removed) frees memory the walk still uses.
    chrome = [n for n in tree.body.traverse() if n.tag not in ("body", "html", "-text") and _is_chrome(n)]
    marked = {n.mem_id for n in chrome}
    outermost = []
    for node in chrome:
        parent, inside = node.parent, False
        while parent is not None and not inside:
            inside, parent = parent.mem_id in marked, parent.parent
        if not inside:
            outermost.append(node)
    for node in outermost:
        node.decompose()
    best, best_score = tree.body, 0
    for node in tree.body.traverse():
        if node.tag not in ("div", "article", "section", "main", "td"):
            continue
        score = sum(len(p.text(strip=True)) for p in node.css("p"))
        # Ties go to the later node in document order: the innermost element holding that text.
        if score and score >= best_score:
            best, best_score = node, score
    paragraphs: list[str] = []
    for node in best.css("p, h2, h3, h4, li, tr, blockquote, pre"):
        text = re.sub(r"\s+", " ", node.text(separator=" ", strip=True)).strip()
        if not text or text == title:
            continue
        paragraphs.append(f"# {text}" if node.tag in ("h2", "h3", "h4") and len(text) <= 40 else text)
    if not paragraphs and best_score == 0:
        text = best.text(separator="\n", strip=True)
        paragraphs = [ln.strip() for ln in text.splitlines() if ln.strip()]
    head = [f"# {title}"] if title else []
    return "\n\n".join(head + paragraphs) + "\n"
