"""OCR of scans (rag.ocr): accuracy, column order, PDFs, bad images and the page-image route.

A two-column page of known seed articles is rendered by Chromium at 300 dpi (Noto CJK) and
OCR'd once per module by the real RapidOCR engine; the route test builds a real index
(real embedding model) over a folder holding that scan and serves it on loopback.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import SEEDS_DIR
from fake_llm import LoopbackServer
from PIL import Image

from rag.embedding import Embedder
from rag.evaluation.ocr import OcrSample, char_accuracy, chromium, normalise, render_png, samples_from_docs
from rag.ingest import parse_page
from rag.ocr import (
    OcrError,
    OcrLine,
    OcrPage,
    find_lines,
    layout,
    ocr_image,
    ocr_pdf_page,
    page_image,
)
from rag.settings import Settings

pytestmark = pytest.mark.integration  # drives Chromium and the OCR models


@pytest.fixture(scope="module")
def sample() -> OcrSample:
    """Two seed articles side by side (the first page ``rag eval --ocr`` measures)."""
    return samples_from_docs(SEEDS_DIR, 1)[0]


@pytest.fixture(scope="module")
def scan(sample: OcrSample) -> bytes:
    """The sample page as a 300 dpi PNG screenshot."""
    with chromium() as browser:
        return render_png(browser, sample.html())


@pytest.fixture(scope="module")
def scanned(scan: bytes) -> OcrPage:
    return ocr_image(scan)


def test_accuracy_on_a_rendered_two_column_page(sample: OcrSample, scan: bytes, scanned: OcrPage) -> None:
    assert char_accuracy(scanned.text, sample.reference) >= 0.98
    assert scanned.number == 1
    assert (scanned.width, scanned.height) == Image.open(io.BytesIO(scan)).size


def test_columns_are_read_left_then_right(sample: OcrSample, scanned: OcrPage) -> None:
    text = normalise(scanned.text)
    left, right = (normalise(column.paragraphs[0])[:12] for column in sample.columns)
    assert left in text and right in text
    assert text.index(left) < text.index(right)
    # The left column is read to its end before the right one starts.
    left_end = normalise(sample.columns[0].paragraphs[-1])[-8:]
    assert text.index(left_end) < text.index(right)


def test_articles_come_out_one_at_a_time(sample: OcrSample, scanned: OcrPage) -> None:
    articles = parse_page(scanned.text, "page.png")
    assert len(articles) == 2
    for article, column in zip(articles, sample.columns, strict=True):
        assert char_accuracy(article.title, column.title) >= 0.9  # OCR may drop a quote mark
        assert char_accuracy(article.text, "".join(column.paragraphs)) >= 0.97


def test_lines_keep_their_positions(sample: OcrSample, scanned: OcrPage) -> None:
    middle = scanned.width / 2
    first_right = normalise(sample.columns[1].paragraphs[0])[:12]
    [line, *_] = find_lines(scanned, first_right)
    assert line.box[0] > middle  # the right column's first line is on the right half
    x0, y0, x1, y1 = line.box
    assert 0 <= x0 < x1 <= scanned.width and 0 <= y0 < y1 <= scanned.height
    assert all(0 < line.confidence <= 1 for line in scanned.lines)


def test_a_scanned_pdf_page(sample: OcrSample, scan: bytes) -> None:
    out = io.BytesIO()
    Image.open(io.BytesIO(scan)).convert("RGB").save(out, format="PDF", resolution=300)
    pdf = out.getvalue()
    page = ocr_pdf_page(pdf, 0)
    assert page.number == 1
    assert char_accuracy(page.text, sample.reference) >= 0.98
    with pytest.raises(OcrError, match="没有第 2 页"):
        ocr_pdf_page(pdf, 1)
    png = page_image(pdf, ".pdf", 1)
    assert Image.open(io.BytesIO(png)).format == "PNG"


@pytest.mark.parametrize(
    "data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40], ids=["empty", "text", "cut"]
)
def test_a_bad_image_is_an_ocr_error(data: bytes) -> None:
    with pytest.raises(OcrError, match="图片"):
        ocr_image(data)


def test_a_bad_pdf_is_an_ocr_error() -> None:
    with pytest.raises(OcrError, match="PDF"):
        ocr_pdf_page(b"%PDF-1.4 broken", 0)


def _line(text: str, x0: float, y0: float, x1: float, y1: float) -> OcrLine:
    return OcrLine(text, (x0, y0, x1, y1), 0.99)


def test_layout_bands_columns_and_headlines() -> None:
    """A headline across both columns, then two columns of two paragraphs each."""
    lines = [
        _line("右栏第一行", 620, 200, 1100, 240),
        _line("左栏第一段第一行", 140, 200, 580, 240),
        _line("左栏第一段第二行", 60, 255, 580, 295),
        _line("右栏第二行", 580, 255, 1100, 295),
        _line("左栏第二段", 140, 310, 580, 350),  # indented two characters: a new paragraph
        _line("通栏大标题在这里", 60, 60, 1100, 150),
        _line("右栏隔得很远的一段", 580, 420, 1100, 460),  # a big gap: a new block
    ]
    blocks = [[line.text for line in block] for block in layout(lines)]
    assert blocks == [
        ["通栏大标题在这里"],
        ["左栏第一段第一行", "左栏第一段第二行"],
        ["左栏第二段"],
        ["右栏第一行", "右栏第二行"],
        ["右栏隔得很远的一段"],
    ]


# ---- the page-image route --------------------------------------------------------------


@pytest.fixture(scope="module")
def scan_server(
    settings: Settings, embedder: Embedder, scan: bytes, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The app over a folder of one seed page and the scan, its index built for real."""
    from rag.api import create_app
    from rag.index import build_index

    root = tmp_path_factory.mktemp("scans")
    docs = root / "docs"
    docs.mkdir()
    shutil.copy(SEEDS_DIR / "000_ed8d00c7a0348028.txt", docs)
    (docs / "scan.png").write_bytes(scan)
    (root / "outside.png").write_bytes(scan)
    update = {"docs_dir": docs, "index_dir": root / "index", "admin_token": UPLOAD_TOKEN}
    local = settings.model_copy(update=update)
    build_index(local, embedder)
    (docs / "unindexed.png").write_bytes(scan)  # in the folder, not in the index
    with LoopbackServer(create_app(local, embedder=embedder), settings=local) as server:
        yield server.url


def test_the_page_image_of_an_indexed_scan(scan_server: str, scan: bytes, sample: OcrSample) -> None:
    answer = httpx.get(f"{scan_server}/page-images/1", params={"source": "scan.png"}, timeout=60)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(answer.content))
    assert image.format == "PNG"
    assert image.size == Image.open(io.BytesIO(scan)).size

    quote = sample.columns[1].paragraphs[0][:30]
    marked = httpx.get(
        f"{scan_server}/page-images/1", params={"source": "scan.png", "highlight": quote}, timeout=60
    )
    assert marked.status_code == 200
    red = Image.open(io.BytesIO(marked.content)).convert("RGB")
    plain = image.convert("RGB")
    # The frame is drawn on the right half, where that quote is printed, and nowhere else.
    diff = [
        x
        for x in range(0, red.width, 7)
        for y in range(0, red.height, 7)
        if red.getpixel((x, y)) != plain.getpixel((x, y))
    ]
    assert diff and min(diff) > red.width / 2


@pytest.mark.parametrize(
    "number,source",
    [
        (1, "000_ed8d00c7a0348028.txt"),  # indexed, but not a scan
        (2, "scan.png"),  # an image has one page
        (1, "unindexed.png"),  # in the folder, not indexed
        (1, "../outside.png"),  # never a path from the request
        (1, "missing.png"),
    ],
)
def test_no_page_image_for_anything_else(scan_server: str, number: int, source: str) -> None:
    answer = httpx.get(f"{scan_server}/page-images/{number}", params={"source": source}, timeout=60)
    assert answer.status_code == 404
    assert answer.headers["content-type"].startswith("application/json")


def test_the_scan_is_indexed_with_its_page(scan_server: str, sample: OcrSample) -> None:
    listing = httpx.get(f"{scan_server}/documents", timeout=30).json()
    titles = [a["title"] for a in listing["articles"] if a["source"] == "scan.png"]
    assert len(titles) == 2
    for title, column in zip(titles, sample.columns, strict=True):
        assert char_accuracy(title, column.title) >= 0.9
    read = httpx.get(f"{scan_server}/read/scan.png%230", timeout=30)
    assert read.status_code == 200
    assert "/page-images/1?source=scan.png" in read.text


UPLOAD_TOKEN = "ocr-upload-token"


def test_an_uploaded_scan_is_checked_at_once_and_read_by_its_job(
    scan_server: str, scan: bytes, sample: OcrSample
) -> None:
    """The request only opens the image; the seconds of OCR run once, in the job."""
    import time

    auth = {"Authorization": f"Bearer {UPLOAD_TOKEN}"}
    broken = httpx.post(
        f"{scan_server}/documents",
        files={"file": ("坏图.png", scan[: len(scan) // 3], "image/png")},
        headers=auth,
        timeout=60,
    )
    assert broken.status_code == 400
    assert broken.json()["message"].startswith("坏图.png")
    accepted = httpx.post(
        f"{scan_server}/documents",
        files={"file": ("扫描件.png", scan, "image/png")},
        headers=auth,
        timeout=60,
    )
    assert accepted.status_code == 202, accepted.text
    job_url = f"{scan_server}{accepted.headers['location']}"
    deadline = time.monotonic() + 180
    while (job := httpx.get(job_url, timeout=30).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.5)
    assert job["status"] == "done", job
    titles = [a["title"] for a in job["upload"]["articles"]]
    assert len(titles) == 2 and char_accuracy(titles[0], sample.columns[0].title) >= 0.9


def test_ocr_needs_no_network_code() -> None:
    """The engine's package has no download path: its models are files inside it."""
    import rapidocr_onnxruntime

    package = Path(rapidocr_onnxruntime.__file__).parent
    assert sorted(p.name for p in (package / "models").glob("*.onnx"))
    sources = "\n".join(p.read_text(encoding="utf-8") for p in package.rglob("*.py"))
    for needle in ("urllib", "requests", "urlretrieve", "http.client", "socket"):
        assert needle not in sources
