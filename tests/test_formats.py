"""PDF (text layer), DOCX and HTML documents flow into the same articles, index and answers.

Every file is made here: the PDF is printed by Chromium from a two-column Chinese page with
a running header and page-number footer, the DOCX is written by python-docx (a heading and
a table), the HTML page carries navigation, breadcrumb and footer chrome. Each holds the
answer to one question that no other file holds; the questions go to a real server on
loopback over a real index.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docx
import httpx
import pytest
from fake_llm import LoopbackServer
from playwright.sync_api import sync_playwright

from rag.api import create_app
from rag.embedding import Embedder
from rag.index import build_index, load_index
from rag.ingest import parse_document
from rag.models import Article
from rag.settings import Settings

CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "formats-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}

COL1_TITLE = "青禾镇新建三座污水处理站"
COL1 = (
    "本报讯（通讯员 王明）青禾镇今年新建了三座污水处理站，日处理能力达到四千二百吨，"
    "覆盖全镇十八个行政村。镇政府负责人介绍，处理站采用生物膜工艺，出水水质达到一级A标准，"
    "处理后的水用于农田灌溉和河道补水。今后镇里还将建设配套管网三十公里，让更多村民受益。"
)
COL2_TITLE = "临江县图书馆东岸分馆开放"
COL2 = (
    "本报讯（记者 李华）临江县图书馆东岸分馆日前在东岸社区开放，馆内藏书一万二千册，"
    "设有少儿阅览区、老年阅览区和自习室。分馆每周开放六天，周一闭馆，读者凭身份证即可借书。"
    "分馆还与县图书馆通借通还，读者在分馆借的书可以在全县任何一个分馆归还。"
)
PAGE2_TITLE = "城南菜市场完成改造"
PAGE2 = (
    "本报讯（通讯员 赵强）城南菜市场改造工程近日完工，市场内新设摊位二百四十个，"
    "并安装了农药残留快速检测设备。市场管理方表示，改造后的菜市场将实行明码标价，"
    "每天早上六点开门营业。"
)
HEADER = "临江日报 2024年5月6日 星期一"
PDF_QUESTION = ("青禾镇新建的污水处理站日处理能力是多少", "四千二百吨")

DOCX_TITLE = "星河村蓝莓合作社喜获丰收"
DOCX_BODY = (
    "本报讯（通讯员 陈静）星河村蓝莓合作社今年种植蓝莓三百二十亩，鲜果产量达到八十六吨，"
    "带动一百五十户村民增收。合作社理事长说，今年还建成了一座冷库，蓝莓可以保鲜四十天。"
)
DOCX_TABLE = [("品种", "面积", "产量"), ("蓝丰", "二百亩", "五十吨"), ("粉蓝", "一百二十亩", "三十六吨")]
DOCX_QUESTION = ("星河村蓝莓合作社今年种植蓝莓多少亩", "三百二十亩")

HTML_TITLE = "白塔街道社区食堂开张"
HTML_BODY = (
    "白塔街道首家社区食堂日前开张，食堂每天供应午餐六百份，六十岁以上老人就餐可享受八折优惠。",
    "食堂由街道和一家餐饮企业合作运营，菜品每周更新，居民可以通过小程序提前预订。",
)
HTML_QUESTION = ("白塔街道社区食堂每天供应多少份午餐", "六百份")
HTML_CHROME = ("首页", "网站地图", "版权所有", "关于我们", "相关新闻")

SCAN_TITLE = "柳溪村修通进山公路"
SCAN_BODY = (
    "本报讯（通讯员 孙丽）柳溪村进山公路日前修通，公路全长九点三公里，宽六米，"
    "连接村里的五个自然村。村民说，以前进山要走两个小时，现在开车二十分钟就到了。"
)
SCAN_QUESTION = ("柳溪村进山公路全长多少公里", "九点三公里")

UPLOAD_TEXT = (
    "本报讯 松林湖公园新建的环湖步道全长七点六公里，沿途设置了十二个休息驿站，"
    "步道两侧种植了樱花和桂花，市民可以在这里散步和骑行。"
)
UPLOAD_QUESTION = ("松林湖公园环湖步道全长多少公里", "七点六公里")


def _pdf_html(sections: list[tuple[str, str]], second_page: tuple[str, str] | None) -> str:
    """A printable page: column-set articles (one per column), optionally one more on page 2."""
    columns = "".join(
        f"<section style='break-before: column'><h2>{t}</h2><p>{body}</p></section>" for t, body in sections
    )
    page2 = ""
    if second_page:
        title, body = second_page
        page2 = f"<div class='cols' style='break-before: page'><h2>{title}</h2><p>{body}</p></div>"
    return f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ font-family: 'Noto Serif CJK SC', 'Noto Sans CJK SC'; font-size: 12pt; margin: 0; }}
.cols {{ column-count: 2; column-gap: 14mm; }}
h2 {{ font-size: 18pt; margin: 0 0 8pt 0; }}
p {{ text-indent: 2em; line-height: 1.6; margin: 0 0 8pt 0; }}
</style></head><body><div class="cols">{columns}</div>{page2}</body></html>"""


def print_pdf(html: str) -> bytes:
    """Print ``html`` to A4 PDF with Chromium, with a running header and a ``- N -`` footer."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_content(html)
            return page.pdf(
                format="A4",
                display_header_footer=True,
                header_template=f"<div style='font-size:10px;width:100%;text-align:center'>{HEADER}</div>",
                footer_template=(
                    "<div style='font-size:10px;width:100%;text-align:center'>"
                    "- <span class='pageNumber'></span> -</div>"
                ),
                margin={"top": "22mm", "bottom": "22mm", "left": "18mm", "right": "18mm"},
            )
        finally:
            browser.close()


def screenshot_png() -> bytes:
    """A PNG of a Chinese news article rendered by Chromium in Noto CJK at 300 dpi (a "scan")."""
    html = (
        "<html><head><meta charset='utf-8'><style>body { font-family: 'Noto Serif CJK SC', serif;"
        " font-size: 12pt; width: 160mm; margin: 12mm; } h2 { font-size: 18pt; }"
        " p { text-indent: 2em; line-height: 1.6; }</style></head>"
        f"<body><h2>{SCAN_TITLE}</h2><p>{SCAN_BODY}</p></body></html>"
    )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(device_scale_factor=300 / 96)
            page.set_content(html)
            return page.screenshot(full_page=True, type="png")
        finally:
            browser.close()


def make_docx() -> bytes:
    """A DOCX with a Heading 1, a body paragraph and a 3x3 table."""
    document = docx.Document()
    document.add_heading(DOCX_TITLE, level=1)
    document.add_paragraph(DOCX_BODY)
    table = document.add_table(rows=len(DOCX_TABLE), cols=3)
    for row, values in zip(table.rows, DOCX_TABLE, strict=True):
        for cell, value in zip(row.cells, values, strict=True):
            cell.text = value
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_html(charset: str = "utf-8") -> bytes:
    """A news page with nav, breadcrumb, share bar, related links and a footer, in ``charset``."""
    paragraphs = "".join(f"<p>{p}</p>" for p in HTML_BODY)
    page = f"""<!doctype html><html><head><meta charset="{charset}">
<title>{HTML_TITLE} - 临江新闻网</title></head><body>
<header class="site-header"><a href="/">首页</a> <a href="/map">网站地图</a></header>
<nav class="menu"><ul><li>首页</li><li>本地</li><li>国内</li><li>关于我们</li></ul></nav>
<div class="breadcrumb">首页 &gt; 本地新闻 &gt; 正文</div>
<div class="main"><article><h1>{HTML_TITLE}</h1>
<div class="info">2024-05-06 来源：临江新闻网</div>{paragraphs}
<div class="share">分享到：微信 微博</div></article>
<aside class="related"><h3>相关新闻</h3><ul><li><a href="/1">城西新建停车场</a></li></ul></aside></div>
<footer><p>版权所有 临江新闻网 关于我们 联系我们</p></footer>
<script>var tracker = "首页";</script></body></html>"""
    return page.encode("gb18030" if charset.lower() in ("gbk", "gb2312") else charset)


def encrypted_pdf() -> bytes:
    """A PDF under the standard security handler whose user password is not empty."""
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>",
        "<< /Filter /Standard /V 1 /R 2 /O <" + "11" * 32 + "> /U <" + "22" * 32 + "> /P -4 >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += f"{i} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{o:010d} 00000 n \n".encode() for o in offsets)
    ident = "ab" * 16
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R /Encrypt 4 0 R /ID [<{ident}> <{ident}>] >>\n"
        f"startxref\n{xref}\n%%EOF\n"
    ).encode()
    return out


@pytest.fixture(scope="module")
def newspaper_pdf() -> bytes:
    return print_pdf(_pdf_html([(COL1_TITLE, COL1), (COL2_TITLE, COL2)], (PAGE2_TITLE, PAGE2)))


@pytest.fixture(scope="module")
def upload_pdf() -> bytes:
    return print_pdf(_pdf_html([("松林湖环湖步道建成", UPLOAD_TEXT)], None))


BAD_FILES: dict[str, tuple[bytes, str]] = {
    "locked.pdf": (encrypted_pdf(), "PDF 已加密（需要密码）；请先去除密码再添加"),
    "random.pdf": (bytes(range(256)) * 8, "PDF 文件已损坏或不完整，无法打开；请重新导出 PDF"),
    "random.docx": (
        bytes(range(256)) * 8,
        "不是有效的 DOCX 文件（文件已损坏或只是改了扩展名）；请用 Word 另存为 .docx",
    ),
}


@pytest.fixture(scope="module")
def formats_settings(
    settings: Settings, embedder: Embedder, newspaper_pdf: bytes, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    root = tmp_path_factory.mktemp("formats")
    docs = root / "docs"
    docs.mkdir()
    (docs / "报纸第3版.pdf").write_bytes(newspaper_pdf)
    (docs / "来稿.docx").write_bytes(make_docx())
    (docs / "食堂.html").write_bytes(make_html("gb2312"))
    (docs / "柳溪村.png").write_bytes(screenshot_png())
    (docs / "truncated.pdf").write_bytes(newspaper_pdf[: len(newspaper_pdf) // 3])
    for name, (data, _) in BAD_FILES.items():
        (docs / name).write_bytes(data)
    own = settings.model_copy(update={"docs_dir": docs, "index_dir": root / "index", "admin_token": TOKEN})
    build_index(own, embedder)
    return own


@pytest.fixture(scope="module")
def server(formats_settings: Settings, embedder: Embedder) -> Iterator[str]:
    with LoopbackServer(create_app(formats_settings, embedder=embedder), name="formats") as s:
        yield s.url


@pytest.fixture
def client(server: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server, timeout=120) as c:
        yield c


def ask(client: httpx.Client, question: str) -> dict[str, Any]:
    r = client.post("/ask", json={"question": question})
    assert r.status_code == 200, r.text
    return r.json()


def pdf_articles(data: bytes) -> list[Article]:
    return parse_document(data, "报纸第3版.pdf")


# ---- extraction (no model needed) ----


def test_pdf_columns_read_in_order_with_pages_and_no_furniture(newspaper_pdf: bytes) -> None:
    articles = pdf_articles(newspaper_pdf)
    assert [(a.title, a.page) for a in articles] == [(COL1_TITLE, 1), (COL2_TITLE, 1), (PAGE2_TITLE, 2)]
    assert [a.position for a in articles] == [0, 1, 2]  # numbered across the pages
    flat = "".join(COL1.split()), "".join(COL2.split()), "".join(PAGE2.split())
    for article, expected in zip(articles, flat, strict=True):
        # The whole column, its layout lines re-joined (the byline is cut off as byline).
        assert "".join(article.text.split()) in expected
        assert len(article.text) > 0.8 * len(expected)
    assert articles[0].byline and "王明" in articles[0].byline
    everything = "\n".join(a.title + a.text for a in articles)
    assert "临江日报" not in everything and "- 1 -" not in everything and "- 2 -" not in everything
    assert "日处理能力达到四千二百吨" in articles[0].text  # a phrase the layout broke across lines


def test_docx_heading_is_the_title_and_table_rows_are_lines() -> None:
    (article,) = parse_document(make_docx(), "来稿.docx")
    assert article.title == DOCX_TITLE and article.page is None
    assert "星河村蓝莓合作社今年种植蓝莓三百二十亩" in article.text
    lines = article.text.split("\n")
    assert (
        "品种，面积，产量；" in lines
        and "蓝丰，二百亩，五十吨；" in lines
        and "粉蓝，一百二十亩，三十六吨；" in lines
    )


@pytest.mark.parametrize("charset", ["utf-8", "gb2312"])
def test_html_main_text_only_in_its_declared_charset(charset: str) -> None:
    (article,) = parse_document(make_html(charset), "食堂.html")
    assert article.title == HTML_TITLE
    assert article.text == "\n".join(HTML_BODY)
    for chrome in HTML_CHROME:
        assert chrome not in article.text


def test_html_extraction_fetches_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("HTML extraction tried to open a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    assert parse_document(make_html(), "食堂.html")


@pytest.mark.parametrize(("name", "data", "reason"), [(n, d, r) for n, (d, r) in BAD_FILES.items()])
def test_malformed_files_are_document_errors(name: str, data: bytes, reason: str) -> None:
    from rag.ingest import DocumentError

    with pytest.raises(DocumentError) as caught:
        parse_document(data, name)
    assert caught.value.reason == reason and str(caught.value) == f"{name}：{reason}"


# ---- a real index and server ----


def test_build_skips_malformed_files_with_reasons(
    formats_settings: Settings, embedder: Embedder, client: httpx.Client
) -> None:
    listing = client.get("/documents").json()
    assert {f["source"] for f in listing["files"]} == {
        "报纸第3版.pdf",
        "来稿.docx",
        "食堂.html",
        "柳溪村.png",
    }
    skipped = {s["source"]: s["reason"] for s in listing["skipped"]}
    assert skipped == {
        **{n: r for n, (_, r) in BAD_FILES.items()},
        "truncated.pdf": "PDF 文件已损坏或不完整，无法打开；请重新导出 PDF",
    }
    articles = load_index(formats_settings, embedder).articles.values()
    pages = {a.title: a.page for a in articles if a.source == "报纸第3版.pdf"}
    assert pages == {COL1_TITLE: 1, COL2_TITLE: 1, PAGE2_TITLE: 2}
    scanned = [a for a in articles if a.source == "柳溪村.png"]
    assert [(a.title, a.page) for a in scanned] == [(SCAN_TITLE, 1)]


@pytest.mark.parametrize(
    ("source", "question"),
    [
        ("报纸第3版.pdf", PDF_QUESTION),
        ("来稿.docx", DOCX_QUESTION),
        ("食堂.html", HTML_QUESTION),
        ("柳溪村.png", SCAN_QUESTION),  # read by OCR
    ],
)
def test_each_format_answers_its_question(
    client: httpx.Client, source: str, question: tuple[str, str]
) -> None:
    answer = ask(client, question[0])
    assert not answer["abstained"], answer
    assert answer["citations"][0]["source"] == source, answer
    assert question[1] in answer["answer"], answer


def test_pdf_upload_is_a_job_then_searchable(
    client: httpx.Client, formats_settings: Settings, upload_pdf: bytes
) -> None:
    r = client.post("/documents", files={"file": ("步道.pdf", upload_pdf, "application/pdf")}, headers=ADMIN)
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    deadline = time.monotonic() + 300
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
        job = client.get(f"/documents/jobs/{job['id']}").json()
    assert job["status"] == "done", job
    assert (formats_settings.docs_dir / "步道.pdf").read_bytes() == upload_pdf
    answer = ask(client, UPLOAD_QUESTION[0])
    assert answer["citations"][0]["source"] == "步道.pdf", answer
    assert UPLOAD_QUESTION[1] in answer["answer"], answer


@pytest.mark.parametrize(
    ("name", "data", "content_type", "status", "mentions"),
    [
        ("坏.pdf", bytes(range(256)) * 4, "application/pdf", 400, "PDF 文件已损坏"),
        ("锁.pdf", encrypted_pdf(), "application/pdf", 400, "PDF 已加密"),
        ("假.docx", b"not a zip at all", "application/octet-stream", 400, "DOCX"),
        ("page.pdf", b"%PDF-1.4", "text/plain", 415, "page.pdf"),  # the type must fit the suffix
    ],
)
def test_bad_format_uploads_are_refused_and_leave_nothing(
    client: httpx.Client,
    formats_settings: Settings,
    name: str,
    data: bytes,
    content_type: str,
    status: int,
    mentions: str,
) -> None:
    before = sorted(p.name for p in formats_settings.docs_dir.iterdir())
    r = client.post("/documents", files={"file": (name, data, content_type)}, headers=ADMIN)
    assert r.status_code == status, r.text
    assert mentions in r.text
    assert sorted(p.name for p in formats_settings.docs_dir.iterdir()) == before
