"""Document formats: reading-order quality and pages per second, in one run.

    .venv/bin/python bench/formats_bench.py [--pages 6]

1. PDF text layer, on multi-column Chinese pages printed by Chromium (``page.pdf()``) from
   HTML with ``column-count: 2``, a running header and a ``- N -`` footer. Compared:
   pypdfium2's own text order, pypdfium2 characters through ``rag.extract``'s column
   layout (what ``rag`` uses), pdfplumber's ``extract_text()`` and pdfplumber characters
   through the same layout. Scored against the known article text (whitespace dropped,
   NFKC): sequence similarity (difflib ratio: reading order), character F1 (content) and
   pages per second.
2. HTML main text: ``rag.extract.html_text`` (selectolax + heuristics) against trafilatura,
   on a saved news page with nav, breadcrumb, share bar, related links and footer:
   similarity to the article text, chrome words leaked, pages per second.
3. DOCX (python-docx) documents per second; images and scanned PDF pages via ``rag.ocr``
   when it imports.

pdfplumber and trafilatura are only needed here (``pip install -e .[dev]``).
"""

from __future__ import annotations

import argparse
import difflib
import io
import logging
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import docx
from playwright.sync_api import sync_playwright

from rag.extract import Char, docx_text, drop_furniture, html_text, lines_to_text, pdf_pages, reading_order
from rag.extract import rows_to_lines as to_lines

log = logging.getLogger("formats_bench")
CHROMIUM = Path("/usr/bin/chromium")
SMALL = "<div style='font-size:9px;width:100%;text-align:center'>"
PLACES = [
    "青禾镇",
    "临江县",
    "东岸社区",
    "白塔街道",
    "星河村",
    "松林湖",
    "城南",
    "西山乡",
    "北湖区",
    "南岭县",
]
THINGS = ["污水处理站", "图书馆分馆", "社区食堂", "蓝莓合作社", "环湖步道", "菜市场", "卫生院", "养老中心"]


def article(i: int) -> tuple[str, str]:
    place, thing = PLACES[i % len(PLACES)], THINGS[i % len(THINGS)]
    title = f"{place}新建{thing}投入使用"
    body = (
        f"本报讯 {place}第{i + 1}座{thing}日前投入使用，总投资{i + 3}百万元，服务周边{i + 12}个村社。"
        f"负责人介绍，{thing}建设历时{i % 7 + 5}个月，采用了节能设计，每年可节约电费约{i + 20}万元。"
        f"今后{place}还将在{i % 5 + 2}个片区推广这一做法，让更多群众就近享受服务。"
        f"居民表示，{thing}离家近、环境好，办事方便了许多，希望今后能够长期办下去。"
    ) * 2
    return title, body


def newspaper_html(pages: int) -> tuple[str, str]:
    """Printable HTML with two articles per page in two columns; returns it and the known text."""
    parts, known = [], []
    for p in range(pages):
        sections = "".join(
            f"<section style='break-before: column'><h2>{t}</h2><p>{b}</p></section>"
            for t, b in (article(2 * p), article(2 * p + 1))
        )
        parts.append(f"<div class='cols' style='break-before: page'>{sections}</div>")
        for t, b in (article(2 * p), article(2 * p + 1)):
            known += [t, b]
    html = f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ font-family: 'Noto Serif CJK SC', 'Noto Sans CJK SC'; font-size: 11pt; margin: 0; }}
.cols {{ column-count: 2; column-gap: 12mm; }} h2 {{ font-size: 17pt; margin: 0 0 6pt 0; }}
p {{ text-indent: 2em; line-height: 1.6; margin: 0; }}
</style></head><body>{"".join(parts)}</body></html>"""
    return html, "".join(known)


def print_pdf(html: str) -> bytes:
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_content(html)
            return page.pdf(
                format="A4",
                display_header_footer=True,
                header_template=f"{SMALL}临江日报 第3版</div>",
                footer_template=f"{SMALL}- <span class='pageNumber'></span> -</div>",
                margin={"top": "20mm", "bottom": "20mm", "left": "16mm", "right": "16mm"},
            )
        finally:
            browser.close()


def norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"(?m)^# ", "", text)
    return re.sub(r"\s+", "", text)


def char_f1(got: str, want: str) -> float:
    g, w = Counter(got), Counter(want)
    overlap = sum((g & w).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / sum(g.values()), overlap / sum(w.values())
    return 2 * precision * recall / (precision + recall)


def score(name: str, run: Callable[[], str], known: str, units: int, repeat: int = 3) -> None:
    start = time.perf_counter()
    for _ in range(repeat):
        text = run()
    seconds = (time.perf_counter() - start) / repeat
    got = norm(text)
    ratio = difflib.SequenceMatcher(None, got, known, autojunk=False).ratio()
    log.info(
        "  %-34s order %.3f  char-F1 %.3f  %7.1f pages/s", name, ratio, char_f1(got, known), units / seconds
    )


def pdfium_raw(data: bytes) -> str:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(data)
    try:
        return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))
    finally:
        doc.close()


def plumber_raw(data: bytes) -> str:
    import pdfplumber

    with pdfplumber.open(io.BytesIO(data)) as pdf:
        return "\n".join(page.extract_text() or "" for page in pdf.pages)


def plumber_layout(data: bytes) -> str:
    import pdfplumber

    with pdfplumber.open(io.BytesIO(data)) as pdf:
        pages = [
            (
                to_lines([Char(c["text"], c["x0"], c["top"], c["x1"], c["bottom"]) for c in page.chars]),
                page.height,
            )
            for page in pdf.pages
        ]
    return "\n".join(lines_to_text(reading_order(lines)) for lines in drop_furniture(pages))


def bench_pdf(pages: int) -> None:
    html, known = newspaper_html(pages)
    data = print_pdf(html)
    known = norm(known)
    log.info("PDF text layer: %d pages, two columns, header and page-number footer", pages)
    score("pypdfium2 get_text_range()", lambda: pdfium_raw(data), known, pages)
    score("pypdfium2 + rag.extract layout", lambda: "\n".join(p.text for p in pdf_pages(data)), known, pages)
    for name, fn in (
        ("pdfplumber extract_text()", plumber_raw),
        ("pdfplumber + rag.extract layout", plumber_layout),
    ):
        try:
            score(name, lambda fn=fn: fn(data), known, pages, repeat=1)  # type: ignore[misc]
        except ImportError:
            log.info("  %-34s not installed (pip install -e .[dev])", name)


HTML_BODY = [
    "白塔街道首家社区食堂日前开张，食堂每天供应午餐六百份，六十岁以上老人就餐可享受八折优惠。",
    "食堂由街道和一家餐饮企业合作运营，菜品每周更新，居民可以通过小程序提前预订。",
    "街道负责人说，下一步将在另外三个社区开设食堂，并提供送餐上门服务，方便行动不便的老人。",
]
HTML_CHROME = ["首页", "网站地图", "版权所有", "关于我们", "相关新闻", "分享到", "热点排行", "城西新建停车场"]


def news_page() -> bytes:
    paragraphs = "".join(f"<p>{p}</p>" for p in HTML_BODY)
    return f"""<!doctype html><html><head><meta charset="gbk"><title>白塔街道社区食堂开张 - 临江新闻网</title>
</head><body><div id="top"><a href="/">首页</a> | <a href="/map">网站地图</a></div>
<div class="nav"><ul><li><a>首页</a></li><li><a>本地</a></li><li><a>关于我们</a></li></ul></div>
<div class="position">当前位置：首页 &gt; 本地新闻</div>
<div class="content"><h1>白塔街道社区食堂开张</h1><div class="time">2024-05-06 来源：临江新闻网</div>
{paragraphs}<div class="bdsharebuttonbox">分享到：微信 微博</div></div>
<div class="right"><h3>热点排行</h3><ul><li><a>城西新建停车场</a></li><li><a>城东公园改造</a></li></ul></div>
<div class="related"><h3>相关新闻</h3><ul><li><a>城西新建停车场</a></li></ul></div>
<div class="foot"><p>版权所有 临江新闻网 关于我们 联系我们 备案号 12345678</p></div>
</body></html>""".encode("gb18030")


def bench_html() -> None:
    page, known = news_page(), norm("白塔街道社区食堂开张" + "".join(HTML_BODY))
    log.info("HTML main text (a GBK news page with nav, sidebar, related links, footer)")

    def leaks(text: str) -> int:
        return sum(word in text for word in HTML_CHROME)

    runs: list[tuple[str, Callable[[], str]]] = [("selectolax + heuristics", lambda: html_text(page))]
    try:
        import trafilatura

        from rag.extract import decode_html

        def with_trafilatura() -> str:
            text = trafilatura.extract(decode_html(page), include_comments=False, include_tables=True) or ""
            meta = trafilatura.extract_metadata(decode_html(page))
            return f"{meta.title if meta else ''}\n{text}"

        runs.append(("trafilatura", with_trafilatura))
    except ImportError:
        log.info("  trafilatura not installed (pip install -e .[dev])")
    for name, run in runs:
        text = run()
        start = time.perf_counter()
        for _ in range(20):
            run()
        per_s = 20 / (time.perf_counter() - start)
        got = norm(text)
        ratio = difflib.SequenceMatcher(None, got, known, autojunk=False).ratio()
        log.info("  %-34s match %.3f  chrome words leaked %d  %7.1f pages/s", name, ratio, leaks(text), per_s)


def bench_docx(docs: int = 20) -> None:
    document = docx.Document()
    for i in range(10):
        title, body = article(i)
        document.add_heading(title, level=1)
        document.add_paragraph(body)
    table = document.add_table(rows=5, cols=3)
    for r, row in enumerate(table.rows):
        for c, cell in enumerate(row.cells):
            cell.text = f"第{r}行第{c}列"
    out = io.BytesIO()
    document.save(out)
    data = out.getvalue()
    start = time.perf_counter()
    for _ in range(docs):
        text = docx_text(data)
    seconds = (time.perf_counter() - start) / docs
    log.info("DOCX: %.1f documents/s (10 articles and a table, %d characters each)", 1 / seconds, len(text))


def bench_ocr() -> None:
    try:
        from rag import ocr
    except ImportError as exc:
        log.info("OCR: rag.ocr not importable (%s): skipped", exc)
        return
    html, _ = newspaper_html(1)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1240, "height": 1754})
            page.set_content(html)
            png = page.screenshot(full_page=False)
        finally:
            browser.close()
    start = time.perf_counter()
    ocr.ocr_image(png)
    log.info("OCR image (1240x1754 screenshot): %.2f pages/s", 1 / (time.perf_counter() - start))
    pdf = print_pdf(html)
    start = time.perf_counter()
    ocr.ocr_pdf_page(pdf, 0)
    log.info("OCR PDF page (rendered at 300 dpi): %.2f pages/s", 1 / (time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=6, help="PDF pages to print and read")
    parser.add_argument("--no-ocr", action="store_true", help="skip the OCR timings")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("pdfminer").setLevel(logging.ERROR)  # pdfplumber warns per glyph on Chromium's fonts
    bench_pdf(args.pages)
    bench_html()
    bench_docx()
    if not args.no_ocr:
        bench_ocr()


if __name__ == "__main__":
    main()
