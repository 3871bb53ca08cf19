"""Turn raw newspaper pages (OCR'd or scraped) into clean, titled articles.

A page arrives as lines broken by the print layout, often mid-word, with blank lines
inside paragraphs, several articles per page, headlines before the body on most pages
and after it on some, bylines and photo credits, and (for scraped pages) web chrome.

The pipeline, per file:

1. ``decode``: bytes to text (UTF-8, or GB18030 detected), binary refused.
2. ``_blocks``: NFKC, drop chrome, split into blocks at blank lines and at ``本报讯``.
3. ``_classify`` each block: heading, byline, credit, subtitle or body.
4. ``_merge_broken``: re-join body blocks the layout broke apart.
5. ``_segment``: cut the page into articles, attaching headings before or after.
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

from rag.errors import IngestError
from rag.extract import ExtractError, PageText, docx_text, html_text, pdf_pages
from rag.models import Article, SkippedFile
from rag.textnorm import nfkc

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".md")
PDF_SUFFIXES = (".pdf",)
DOCX_SUFFIXES = (".docx",)
HTML_SUFFIXES = (".html", ".htm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")
"""Read by OCR (``rag.ocr``); without it such a file is skipped with a reason."""
DOC_SUFFIXES = TEXT_SUFFIXES + PDF_SUFFIXES + DOCX_SUFFIXES + HTML_SUFFIXES + IMAGE_SUFFIXES
EXAMPLES_FILE = "questions.txt"
"""The example questions at the docs root: not a document, not listed as skipped."""

_CJK = r"\u3400-\u9fff\uf900-\ufaff"
_TERMINAL = "。！？!?…；;—"
_CLOSERS = "”’」』)）》】\"'"
_NO_HEADING_PUNCT = re.compile(r"[。！？!?；;，,、]")
_NAME = rf"[{_CJK}]{{2,4}}"
_NAMES = rf"{_NAME}(?:[ 、]+{_NAME}){{0,3}}"

_BENBAOXUN = re.compile(r"^本报讯\s*[(（]([^)）]{1,40})[)）]\s*")
_BYLINE_LINE = re.compile(rf"^(?:(?:本报)?(?:通讯员|记者)\s*)+{_NAMES}$")
_NAMES_ONLY = re.compile(rf"^{_NAMES}$")
_PHOTO_CREDIT = re.compile(rf"^{_NAMES}\s*摄$")
_PAREN_CREDIT = re.compile(rf"^[(（](?:{_NAMES}|图片由[^)）]{{1,20}}提供|[^)）]{{0,10}}摄)[)）]$")
_TRAILING_CREDIT = re.compile(rf"\s*(?:[(（]{_NAMES}[)）]|(?:通讯员|记者)\s*{_NAMES}|{_NAMES}\s*摄)$")
_SUBTITLE = re.compile(r"^——\s*\S")

# Web chrome of scraped pages: breadcrumbs, print/zoom buttons, related-link lists.
_CHROME_LINE = re.compile(r"^(?:您当前的位置|当前位置|首页\s*>)")
_CHROME_TOKENS = {"打印", "放大", "原大", "缩小", "|", "正文", "关闭", "分享到"}
_LINK_LIST_HEADERS = {"相关稿件", "专题聚焦", "最热新闻", "本网专稿", "权威发布", "区县新闻", "相关新闻"}
_MD_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*$")


@dataclass
class _Block:
    """A run of non-blank lines between blank lines, with what the layout says about it."""

    lines: list[str]
    gap_before: int = 1
    gap_after: int = 1
    kind: str = "body"  # heading | byline | credit | subtitle | body
    credit: str | None = None  # a credit cut from the end of a body block
    markdown: bool = False  # a ``#`` heading: always a headline

    @property
    def text(self) -> str:
        return _join_lines(self.lines)


@dataclass
class _Draft:
    """An article being assembled while walking a page."""

    headings: list[str] = field(default_factory=list)
    subtitle: str | None = None
    byline: str | None = None
    paragraphs: list[str] = field(default_factory=list)


class DocumentError(IngestError):
    """One document cannot be used: ``source`` names it, ``reason`` says why (one Chinese line).

    The message is ``<source>：<reason>``; a non-strict build lists ``reason`` as the file's
    skip reason and indexes the rest.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}：{reason}")
        self.source = source
        self.reason = reason


REASON_BINARY = "不是文本文件（含二进制内容）；请另存为 UTF-8 文本"
REASON_EMPTY = "空文件"
REASON_NO_TEXT = "没有可索引的正文；请确认文件里有新闻文字"


def unsupported_reason(path: Path) -> str:
    """Why a file of an unknown type is skipped, naming its suffix and the supported ones."""
    suffix = path.suffix.lower()
    kind = f"不支持的文件类型 {suffix}" if suffix else "不支持的文件类型（没有扩展名）"
    return f"{kind}；支持 {'、'.join(DOC_SUFFIXES)}"


def decode(data: bytes, name: str) -> str:
    """Decode a document's bytes: UTF-8 (with or without BOM), else GB18030, else refuse.

    Refusals are :class:`DocumentError` naming ``name``.
    """
    if b"\x00" in data[:8192]:
        raise DocumentError(name, REASON_BINARY)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        raise DocumentError(name, "不是 UTF-8 或 GB18030 编码的文本；请另存为 UTF-8") from None
    cjk = len(re.findall(f"[{_CJK}]", text))
    if cjk < 0.3 * len(text.strip() or "x") * 0.5:
        raise DocumentError(name, "不是 UTF-8 编码，按 GB18030 解码也不像中文；请另存为 UTF-8")
    log.warning("%s：按 GB18030 编码读取；建议另存为 UTF-8", name)
    return text


def _is_ascii_word(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _join_lines(lines: list[str]) -> str:
    """Join layout-broken lines: no space between CJK, one space between Latin words."""
    out = ""
    for line in lines:
        line = line.strip()
        if not line:
            continue
        if out and _is_ascii_word(out[-1]) and _is_ascii_word(line[0]):
            out += " "
        out += line
    return re.sub(r"[ \t]{2,}", " ", out)


def _ends_sentence(text: str) -> bool:
    stripped = text.rstrip(_CLOSERS + " ")
    return bool(stripped) and (stripped[-1] in _TERMINAL or stripped.endswith("——"))


_FULL_WIDTH = str.maketrans({",": "，", ";": "；", ":": "：", "!": "！", "?": "？"})
_CJK_PUNCT = re.compile(rf"(?<=[{_CJK}“”])[,;:!?]|[,;:!?](?=[{_CJK}“”])")
_CJK_PARENS = re.compile(rf"\(([^()\n]*[{_CJK}][^()\n]*)\)")


def _clean_text(text: str) -> str:
    """NFKC (full-width letters and digits folded), then Chinese punctuation restored.

    NFKC spells ，；：（） and …… in ASCII; between Chinese characters readers expect
    the full-width forms, so they are put back one for one (offsets do not move).
    """
    text = nfkc(text).replace("......", "……")
    text = _CJK_PARENS.sub(r"（\1）", text)
    return _CJK_PUNCT.sub(lambda m: m.group().translate(_FULL_WIDTH), text)


def _is_chrome(line: str) -> bool:
    if _CHROME_LINE.match(line):
        return True
    tokens = line.replace("|", " | ").split()
    return bool(tokens) and all(t in _CHROME_TOKENS for t in tokens)


def _blocks(text: str) -> tuple[list[_Block], bool]:
    """Split a page into blocks; returns them and whether the page was a scraped web page."""
    web_page = False
    blocks: list[_Block] = []
    current: list[str] = []
    gap = 0
    in_link_list = False

    def flush() -> None:
        nonlocal current, gap
        if current:
            blocks.append(_Block(lines=current, gap_before=gap))
            current, gap = [], 0

    for raw in _clean_text(text).splitlines():
        line = raw.strip()
        if not line:
            flush()
            gap += 1
            continue
        if _is_chrome(line):
            web_page = True
            flush()
            continue
        if line in _LINK_LIST_HEADERS:
            in_link_list = web_page = True
            flush()
            continue
        if in_link_list and line.startswith(("·", "•")):
            continue
        in_link_list = False
        if line.startswith("本报讯") or _MD_HEADING.match(line):
            flush()
        current.append(line)
        if _MD_HEADING.match(line):
            flush()
    flush()
    for before, after in itertools.pairwise(blocks):
        before.gap_after = after.gap_before
    if blocks:
        blocks[-1].gap_after = 2
    return blocks, web_page


def _heading_like(block: _Block) -> bool:
    text = block.text
    return (
        len(block.lines) <= 2
        and all(len(line) <= 40 for line in block.lines)
        and not _NO_HEADING_PUNCT.search(text)
        and not _BENBAOXUN.match(text)
    )


def _is_wide_layout(blocks: list[_Block]) -> bool:
    """Scraped or reflowed pages keep a paragraph per line; print columns break every ~15 chars."""
    lengths = sorted(len(line) for b in blocks for line in b.lines)
    return bool(lengths) and lengths[len(lengths) // 2] > 50


def _classify(blocks: list[_Block], web_page: bool) -> None:
    """Label each block; see ``_Block.kind``."""
    _label(blocks)
    if web_page or not _is_wide_layout(blocks):
        return
    # On wide pages a short line with no space (``三墩镇成立43支村社“兰里青锐”后``) is
    # usually a paragraph broken by the layout, not a headline: headlines there are
    # two phrases with a space, or stand out by a byline, a picture gap or a credit.
    for i, block in enumerate(blocks):
        if block.kind != "heading" or block.markdown or " " in block.text:
            continue
        prev = blocks[i - 1] if i else None
        nxt = blocks[i + 1] if i + 1 < len(blocks) else None
        supported = (
            prev is None
            or prev.kind in ("heading", "credit")
            or prev.credit is not None
            or (nxt is not None and nxt.kind in ("heading", "byline", "subtitle"))
            or (nxt is not None and bool(_BENBAOXUN.match(nxt.text)))
            or block.gap_before >= 2
            or block.gap_after >= 2
        )
        if not supported:
            block.kind = "body"


def _label(blocks: list[_Block]) -> None:
    for i, block in enumerate(blocks):
        text = block.text
        md = _MD_HEADING.match(text)
        if md:
            block.lines, block.kind, block.markdown = [md.group(1)], "heading", True
        elif _SUBTITLE.match(text) and len(text) <= 40:
            block.kind = "subtitle"
        elif _BYLINE_LINE.match(text):
            block.kind = "byline"
        elif _PHOTO_CREDIT.match(text) or _PAREN_CREDIT.match(text):
            block.kind = "credit"
        elif _heading_like(block):
            previous = blocks[i - 1] if i else None
            # A bare name list right under a headline is the byline (``彭菲 张峰 丁宇红``).
            if (
                previous is not None
                and previous.kind in ("heading", "subtitle")
                and _NAMES_ONLY.match(text)
                and all(len(t) <= 3 for t in text.split())
            ):
                block.kind = "byline"
            else:
                block.kind = "heading"
        else:
            block.kind = "body"
            match = _TRAILING_CREDIT.search(text)
            if match and match.start() > 0 and _ends_sentence(text[: match.start()]):
                block.credit = match.group(0).strip().strip("()（）")
                block.lines = [text[: match.start()]]


def _merge_broken(blocks: list[_Block]) -> list[_Block]:
    """Re-join body text that the layout split across blank lines (``掌`` / ``握``)."""
    merged: list[_Block] = []
    for block in blocks:
        prev = merged[-1] if merged else None
        if (
            prev is not None
            and prev.kind == "body"
            and prev.credit is None
            and block.kind == "body"
            and block.gap_before <= 1
            and not _ends_sentence(prev.text)
            and not _BENBAOXUN.match(block.text)
        ):
            prev.lines = prev.lines + block.lines
            prev.credit = block.credit
            prev.gap_after = block.gap_after
            continue
        merged.append(block)
    return merged


def _join_heading(block: _Block) -> str:
    """A headline printed on two lines: keep a space when the first line is a short phrase."""
    first, *rest = block.lines
    if not rest:
        return first
    sep = " " if len(first) < 12 else ""
    return first + sep + "".join(rest)


def _title_from_text(text: str) -> str:
    first = re.split(r"[。！？!?]", text, maxsplit=1)[0]
    return first if len(first) <= 24 else first[:24] + "…"


class _PageWalker:
    """Walks classified blocks and emits articles; see ``_segment``."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.articles: list[Article] = []
        self.draft = _Draft()

    def close(self, headings: list[str] | None = None) -> None:
        draft = self.draft
        if headings:
            draft.headings = headings
        body = "\n".join(p for p in draft.paragraphs if p)
        if body:
            # The longest heading is the headline; shorter lines above it are the kicker.
            heads = draft.headings
            if heads:
                main = max(range(len(heads)), key=lambda i: len(heads[i]))
                title, kicker = heads[main], " ".join(heads[:main]) or None
                extra = heads[main + 1 :]
                if extra:  # lines under the headline (a photo caption, a deck) stay readable
                    body = "\n".join([*extra, body])
            else:
                title, kicker = _title_from_text(body), None
            self.articles.append(
                Article(
                    source=self.source,
                    position=len(self.articles),
                    title=title,
                    text=body,
                    byline=draft.byline,
                    kicker=kicker,
                    subtitle=draft.subtitle,
                )
            )
        self.draft = _Draft()

    def add_body(self, block: _Block) -> None:
        text = block.text
        match = _BENBAOXUN.match(text)
        if match:
            # Re-read the byline with its line breaks as spaces: two names may be split.
            spaced = _BENBAOXUN.match(" ".join(block.lines))
            byline = (spaced or match).group(1)
            self.draft.byline = self.draft.byline or re.sub(r"\s+", " ", byline).strip()
            text = text[match.end() :]
        self.draft.paragraphs.append(text)
        if block.credit:
            self.draft.byline = self.draft.byline or block.credit


def _heading_group(blocks: list[_Block], i: int) -> int:
    """Index just past the run of heading blocks starting at ``i``."""
    j = i
    while j < len(blocks) and blocks[j].kind == "heading":
        j += 1
    return j


class _Segmenter:
    """Cuts classified blocks into articles.

    Three layouts occur:
    - a scraped web page holds one article: its first headline is the title, later
      short lines are section heads;
    - headlines after the body (``本报讯`` pages set in narrow columns): a headline
      group closes the article before it when it is "strong" (two lines, or kicker
      plus title), follows a credit, or stands before another headline or article;
      a lone short line followed by more body is a section head;
    - headlines before the body (the common case): a headline starts a new article
      unless the page uses bylines or ``本报讯`` and this one has neither, in which
      case it is a section head; a trailing credit or a wide gap (a picture) always
      ends an article.
    """

    def __init__(self, blocks: list[_Block], source: str, web_page: bool) -> None:
        self.blocks = blocks
        self.web_page = web_page
        self.walker = _PageWalker(source)
        first_content = next((b for b in blocks if b.kind not in ("byline", "credit")), None)
        self.headlines_after = first_content is not None and first_content.kind == "body" and not web_page
        self.bylined = any(b.kind == "byline" for b in blocks) or any(
            _BENBAOXUN.match(b.text) for b in blocks
        )

    def articles(self) -> list[Article]:
        """Walk the page once; each block extends, closes or starts an article."""
        i = 0
        while i < len(self.blocks):
            block = self.blocks[i]
            prev = self.blocks[i - 1] if i else None
            after_credit = prev is not None and (prev.kind == "credit" or prev.credit is not None)
            if block.kind == "heading":
                i = self._heading(i, after_credit)
                continue
            self._other(block, after_credit)
            i += 1
        self.walker.close()
        return self.walker.articles

    def _heading(self, i: int, after_credit: bool) -> int:
        """Place the headline group starting at block ``i``; returns the index after it."""
        blocks, draft = self.blocks, self.walker.draft
        end = _heading_group(blocks, i)
        group = [_join_heading(b) for b in blocks[i:end]]
        nxt = blocks[end] if end < len(blocks) else None
        starts_article = nxt is None or nxt.kind in ("byline", "subtitle") or bool(_BENBAOXUN.match(nxt.text))
        has_body = bool(draft.paragraphs)
        if self.web_page:
            if not draft.headings and not has_body:
                draft.headings = group[:1]
                draft.paragraphs.extend(group[1:])
            else:
                draft.paragraphs.extend(group)
        elif not has_body:
            draft.headings.extend(group)
        elif self.headlines_after:
            strong = len(group) > 1 or len(blocks[i].lines) > 1
            nxt_is_heading = nxt is not None and nxt.kind == "heading"
            if len(group) > 1 and after_credit and not starts_article:
                # The credited item took the first headline; the next item on the
                # page is set title-first (``春泥护花`` then ``推进疫苗接种``).
                self.walker.close(group[:1])
                self.walker.draft.headings = group[1:]
            elif strong or after_credit or starts_article or nxt_is_heading:
                self.walker.close(group)
            else:
                draft.paragraphs.extend(group)
        else:
            picture_gap = blocks[i].gap_before >= 2 or blocks[end - 1].gap_after >= 2
            if not self.bylined or starts_article or after_credit or picture_gap:
                self.walker.close()
                self.walker.draft.headings = group
            else:
                draft.paragraphs.extend(group)
        return end

    def _other(self, block: _Block, after_credit: bool) -> None:
        """A subtitle, byline, credit or body block."""
        draft = self.walker.draft
        has_body = bool(draft.paragraphs)
        if block.kind == "subtitle":
            draft.subtitle = block.text
        elif block.kind == "byline":
            if has_body and not self.headlines_after:
                draft.byline = draft.byline or block.text
                self.walker.close()
            else:
                draft.byline = block.text
        elif block.kind == "credit":
            if has_body:
                if not block.text.startswith(("(图片", "（图片")):
                    draft.byline = draft.byline or block.text.strip("()（）")
                # With headlines after the body, the title still follows the credit.
                if not self.headlines_after:
                    self.walker.close()
        else:
            new_article = has_body and (
                bool(_BENBAOXUN.match(block.text))
                or (block.gap_before >= 2 and not self.headlines_after)
                or (after_credit and not self.headlines_after)
            )
            if new_article:
                self.walker.close()
            self.walker.add_body(block)


def parse_page(text: str, source: str) -> list[Article]:
    """Segment one page's text into articles (empty list for a page with no text)."""
    blocks, web_page = _blocks(text)
    _classify(blocks, web_page)
    blocks = _merge_broken(blocks)
    return _Segmenter(blocks, source, web_page).articles()


def document_source(path: Path, docs_dir: Path | None = None) -> str:
    """A document's identity: its path relative to ``docs_dir`` in posix form (``a/x.txt``).

    The docs folder is walked recursively, so the base name alone would let ``a/x.txt`` and
    ``b/x.txt`` overwrite each other; without ``docs_dir`` it is the base name.
    """
    return path.name if docs_dir is None else path.relative_to(docs_dir).as_posix()


def read_bytes(path: Path, source: str) -> bytes:
    """A document's bytes; :class:`DocumentError` naming it when it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DocumentError(source, f"无法读取（{exc.strerror}）；请检查文件权限") from None


def parse_document(data: bytes, source: str) -> list[Article]:
    """Decode and segment one document; :class:`DocumentError` when it holds no article text.

    Unlike :func:`read_document`, an empty file or one with no article text is an error:
    the build lists it as skipped rather than indexing nothing from it silently.
    """
    if not data.strip():
        raise DocumentError(source, REASON_EMPTY)
    articles = document_articles(data, source)
    if not articles:
        raise DocumentError(source, REASON_NO_TEXT)
    return articles


REASON_NO_OCR = (
    "需要 OCR 组件才能读取{what}（rag.ocr 无法加载：{why}）；"
    "请安装 rapidocr-onnxruntime，或改用带文字层的 PDF/文本"
)


def _ocr(source: str, what: str) -> ModuleType:
    """``rag.ocr``, imported on first use; :class:`DocumentError` naming the file when it cannot load."""
    try:
        return importlib.import_module("rag.ocr")
    except ImportError as exc:  # the OCR engine is optional: text formats work without it
        raise DocumentError(source, REASON_NO_OCR.format(what=what, why=exc)) from None


def _ocr_text(source: str, call: str, *args: object) -> str:
    """Run one ``rag.ocr`` function; its failures become a :class:`DocumentError` naming the file."""
    what = "图片" if call == "ocr_image" else "扫描版 PDF 页面"
    ocr = _ocr(source, what)
    try:
        page = getattr(ocr, call)(*args)
    except DocumentError:
        raise
    except IngestError as exc:
        raise DocumentError(source, str(exc)) from None
    except (ValueError, OSError, RuntimeError) as exc:
        log.debug("%s: OCR failed: %r", source, exc)
        raise DocumentError(source, f"{what}无法识别（文件已损坏或不是图片）；请重新导出后再添加") from None
    return str(page.text)


def _pdf_texts(data: bytes, source: str) -> list[PageText]:
    """A PDF's pages as text: its text layer, or OCR for pages without one (scans)."""
    pages = pdf_pages(data)
    out: list[PageText] = []
    for page in pages:
        if page.text.strip() or page.number is None:
            out.append(page)
            continue
        # No text layer: a scanned page. OCR it when rag.ocr is there; else say so if the
        # whole file is scans (a single blank page among text pages is just blank).
        try:
            out.append(PageText(page.number, _ocr_text(source, "ocr_pdf_page", data, page.number - 1)))
        except DocumentError:
            if any(p.text.strip() for p in pages):
                continue
            raise
    return out


def document_texts(data: bytes, source: str) -> list[PageText]:
    """A document's page texts, read by its suffix (text, PDF, DOCX, HTML, image).

    :class:`DocumentError` naming ``source`` when the file cannot be read.
    """
    suffix = Path(source).suffix.lower()
    try:
        if suffix in PDF_SUFFIXES:
            return _pdf_texts(data, source)
        if suffix in DOCX_SUFFIXES:
            return [PageText(None, docx_text(data))]
        if suffix in HTML_SUFFIXES:
            if b"\x00" in data[:8192]:
                raise DocumentError(source, "不是网页文件（含二进制内容）；请保存为 .html 网页")
            return [PageText(None, html_text(data))]
        if suffix in IMAGE_SUFFIXES:
            return [PageText(1, _ocr_text(source, "ocr_image", data))]
    except ExtractError as exc:
        raise DocumentError(source, exc.reason) from None
    return [PageText(None, decode(data, source))]


def check_document(data: bytes, source: str) -> None:
    """What can be told of a document at once, for an upload: :class:`DocumentError` if not usable.

    Text, Word and web pages are read whole (milliseconds). What needs OCR (images, PDF
    pages without a text layer) takes seconds a page, so here an image is only opened and a
    PDF's text layer read; the OCR runs once, in the job that indexes the file.
    """
    if not data.strip():
        raise DocumentError(source, REASON_EMPTY)
    suffix = Path(source).suffix.lower()
    try:
        if suffix in IMAGE_SUFFIXES:
            ocr = _ocr(source, "图片")
            ocr.check_image(data)
            return
        if suffix in PDF_SUFFIXES:
            pdf_pages(data)  # opens, is not encrypted; pages without text are OCR'd later
            return
    except ExtractError as exc:
        raise DocumentError(source, exc.reason) from None
    except IngestError as exc:
        raise DocumentError(source, str(exc)) from None
    if not document_articles(data, source):
        raise DocumentError(source, REASON_NO_TEXT)


def document_articles(data: bytes, source: str) -> list[Article]:
    """Segment each page of a document into articles: ``page`` set for PDFs and scans, positions
    numbered across the whole document (an empty document gives none)."""
    articles: list[Article] = []
    for page in document_texts(data, source):
        for article in parse_page(page.text, source):
            articles.append(dataclasses.replace(article, position=len(articles), page=page.number))
    return articles


def read_document(path: Path, docs_dir: Path | None = None) -> list[Article]:
    """Read and segment one document of any supported type; raises ``IngestError`` naming it.

    The articles' ``source`` is :func:`document_source` of ``path`` in ``docs_dir``; an
    empty page gives no articles.
    """
    source = document_source(path, docs_dir)
    return document_articles(read_bytes(path, source), source)


@dataclass
class DocumentScan:
    """What a docs folder holds: the files to read, and those of a type that is not understood."""

    paths: list[Path]
    """Files of a supported type (:data:`DOC_SUFFIXES`), sorted.

    They may still fail to read: see :func:`parse_document`."""
    skipped: list[SkippedFile]
    """Files of any other type, sorted by source, each with :func:`unsupported_reason`."""


def _check_docs_dir(docs_dir: Path) -> None:
    if docs_dir.is_file():
        raise IngestError(
            f"文档路径 {docs_dir} 是一个文件，不是文件夹；请改用它所在的文件夹：--docs {docs_dir.parent}"
        )
    if not docs_dir.is_dir():
        raise IngestError(
            f"文档文件夹 {docs_dir} 不存在；请用 --docs 指定存放文档"
            "（.txt、.md、.pdf、.docx、.html 等）的文件夹（或设置 RAG_DOCS_DIR）"
        )


def _is_document_candidate(path: Path, docs_dir: Path) -> bool:
    """Neither hidden (a dot name anywhere below ``docs_dir``) nor the root ``questions.txt``."""
    parts = path.relative_to(docs_dir).parts
    if any(part.startswith(".") for part in parts):
        return False
    return parts != (EXAMPLES_FILE,)


def scan_documents(docs_dir: Path) -> DocumentScan:
    """Walk a docs folder: readable-type files to index and unknown-type files to list as skipped.

    Hidden files (and files in hidden folders) and ``questions.txt`` at the root (the
    example questions) are neither.
    """
    _check_docs_dir(docs_dir)
    try:
        files = sorted(p for p in docs_dir.rglob("*") if p.is_file() and _is_document_candidate(p, docs_dir))
    except OSError as exc:
        raise IngestError(f"文档文件夹 {docs_dir} 无法读取（{exc.strerror}）；请检查它的权限") from None
    paths = [p for p in files if p.suffix.lower() in DOC_SUFFIXES]
    skipped = [
        SkippedFile(document_source(p, docs_dir), unsupported_reason(p))
        for p in files
        if p.suffix.lower() not in DOC_SUFFIXES
    ]
    return DocumentScan(paths=paths, skipped=skipped)


def list_documents(docs_dir: Path) -> list[Path]:
    """The supported files of a docs folder, sorted (:attr:`DocumentScan.paths`)."""
    return scan_documents(docs_dir).paths


def no_articles_message(docs_dir: Path, skipped: list[SkippedFile] | tuple[SkippedFile, ...] = ()) -> str:
    """One line: ``docs_dir`` has nothing to index, the files skipped and why, and the fix."""
    message = (
        f"{docs_dir} 中没有可索引的文章（支持 .txt、.md、.pdf、.docx、.html 和图片）；"
        "请放入文档，或用 --docs 指定其他文件夹"
    )
    if skipped:
        message += "（已跳过：" + "；".join(f"{s.source}：{s.reason}" for s in skipped) + "）"
    return message


def load_corpus(docs_dir: Path) -> list[Article]:
    """Every article of every document in ``docs_dir``; an empty corpus is an error."""
    articles: list[Article] = []
    for path in list_documents(docs_dir):
        articles.extend(read_document(path, docs_dir))
    if not articles:
        raise IngestError(no_articles_message(docs_dir))
    return articles
