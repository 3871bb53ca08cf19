"""The JSON API against a real uvicorn server over the seed corpus (see ``live_server`` in conftest)."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from html import escape as html_escape
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from bad_docs import BAD_REASONS, GOOD_NAME, GOOD_QUESTION, write_bad_docs
from fake_llm import LoopbackServer
from fastapi.testclient import TestClient

from rag.api import create_app
from rag.api.schemas import MAX_HISTORY_MESSAGES
from rag.api.security import CSP
from rag.api.service import safe_filename
from rag.embedding import Embedder
from rag.errors import QuestionError
from rag.index import build_index
from rag.ingest import DOC_SUFFIXES, document_source, list_documents
from rag.models import NOT_FOUND
from rag.retrieval import MAX_QUESTION_CHARS, check_question
from rag.settings import Settings

ADMIN = {"Authorization": "Bearer test-admin-token"}  # conftest.API_ADMIN_TOKEN
PAGE_000 = "000_ed8d00c7a0348028.txt"

LIBRARY_DOC = (
    "青石岭村建成“星光书屋”乡村图书馆\n\n"
    "本报讯（通讯员 林晓雨）日前，青石岭村建成了一座名为“星光书屋”的乡村图书馆，"
    "馆内共有藏书8600册，每天向村民免费开放。村党支部书记周海涛说，书屋今后还将开设少儿阅读课堂。\n"
)
LIBRARY_QUESTION = "青石岭村建成的乡村图书馆叫什么名字"

XSS_DOC = (
    "紫藤湾社区网络安全讲座 <b>加粗</b>\n\n"
    "本报讯（通讯员 王小明）紫藤湾社区近日举办网络安全讲座，讲师演示了<script>alert(1)</script>"
    "这样的恶意脚本，以及<img src=x onerror=alert(1)>这样的图片标签，提醒居民不要点击陌生链接。\n"
)


@pytest.fixture(scope="module")
def client(live_server: str, api_settings: Settings) -> Iterator[httpx.Client]:
    assert ADMIN["Authorization"] == f"Bearer {api_settings.admin_token}"
    with httpx.Client(base_url=live_server, timeout=120) as c:
        yield c


def upload(
    client: httpx.Client, name: str, data: bytes, content_type: str = "text/plain", **kw
) -> httpx.Response:
    return client.post(
        "/documents",
        files={"file": (name, data, content_type)},
        headers=kw.pop("headers", ADMIN),
    )


def job_result(client: httpx.Client, r: httpx.Response, status: str = "done", timeout: float = 300) -> dict:
    """An upload's or delete's 202, followed to its job's end: the job's last state (``status`` checked)."""
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    assert r.headers["location"] == f"/documents/jobs/{job['id']}"
    deadline = time.monotonic() + timeout
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = client.get(f"/documents/jobs/{job['id']}").json()
    assert job["status"] == status, job
    return job


def sse_events(text: str) -> list[tuple[str, dict]]:
    events = []
    for frame in text.split("\n\n"):
        if not frame.strip():
            continue
        name = re.search(r"^event: (.*)$", frame, re.MULTILINE)
        data = re.search(r"^data: (.*)$", frame, re.MULTILINE)
        assert name and data, frame
        events.append((name.group(1), json.loads(data.group(1))))
    return events


# ---- /ask -----------------------------------------------------------------------------


def test_ask_answers_with_citations(client: httpx.Client) -> None:
    r = client.post("/ask", json={"question": "锦屏成立了什么联盟"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "question",
        "answer",
        "answer_sentence",
        "abstained",
        "answer_mode",
        "citations",
        "warnings",
        "timings_ms",
        "confidence",
        "low_confidence",
    }
    assert body["question"] == "锦屏成立了什么联盟"
    assert 0 < body["confidence"] < 1  # the reader's margin through a logistic: never exactly 0 or 1
    assert body["low_confidence"] == (body["confidence"] < Settings().low_confidence)
    assert body["answer_mode"] == "extractive"  # no LLM configured
    assert not body["abstained"]
    assert "创新服务联盟" in body["answer"] + body["answer_sentence"]
    assert set(body["timings_ms"]) == {"retrieve", "answer", "total"}
    cites = body["citations"]
    assert 1 <= len(cites) <= 5
    assert [c["id"] for c in cites] == list(range(1, len(cites) + 1))
    for n in re.findall(r"\[(\d+)\]", body["answer"]):
        assert 1 <= int(n) <= len(cites)
    first = cites[0]
    assert first["source"] == PAGE_000
    assert first["article_id"].startswith(PAGE_000 + "#")
    lo, hi = first["highlight"]
    assert 0 <= lo < hi <= len(first["text"])
    assert first["end"] - first["start"] == len(first["text"])


FOLLOW_UP = "董事长是谁？"
FOLLOW_UP_HISTORY = [
    {"role": "user", "content": "恒锋工具位于哪里？"},
    {"role": "assistant", "content": "海盐县武原街道。"},
]
CHAIRMAN = "陈尔容"  # 恒锋工具's: the corpus names other 董事长 too, so only the history says whose


def test_ask_top_k_and_history(client: httpx.Client) -> None:
    # Alone, "董事长是谁" has several answers in the corpus, and it gets another one ...
    alone = client.post("/ask", json={"question": FOLLOW_UP, "top_k": 3}).json()
    assert not alone["abstained"] and CHAIRMAN not in alone["answer"]
    # ... after a question about 恒锋工具 it gets 恒锋工具's: the history is read, not just accepted.
    r = client.post("/ask", json={"question": FOLLOW_UP, "top_k": 3, "history": FOLLOW_UP_HISTORY})
    assert r.status_code == 200, r.text
    body = r.json()
    assert 1 <= len(body["citations"]) <= 3
    assert CHAIRMAN in body["answer"]
    assert "恒锋工具" in body["citations"][0]["text"]


def test_top_k_defaults_to_the_setting(client: httpx.Client, api_settings: Settings) -> None:
    hits = client.get("/search", params={"q": "锦屏"}).json()["hits"]
    assert len(hits) == api_settings.top_k
    body = client.post("/ask", json={"question": "锦屏成立了什么联盟"}).json()
    assert len(body["citations"]) == api_settings.top_k
    explicit = client.post("/ask", json={"question": "锦屏成立了什么联盟", "top_k": None}).json()
    assert len(explicit["citations"]) == api_settings.top_k


def test_old_mode_field_still_works(client: httpx.Client) -> None:
    for field in ("answer_mode", "mode"):
        r = client.post("/ask", json={"question": "锦屏成立了什么联盟", field: "extractive"})
        assert r.status_code == 200, r.text
        assert r.json()["answer_mode"] == "extractive"


def test_history_is_bounded_as_a_payload(client: httpx.Client) -> None:
    turn = {"role": "user", "content": "锦屏"}
    ok = client.post(
        "/ask", json={"question": "锦屏成立了什么联盟", "history": [turn] * MAX_HISTORY_MESSAGES}
    )
    assert ok.status_code == 200, ok.text
    r = client.post("/ask", json={"question": "锦屏", "history": [turn] * (MAX_HISTORY_MESSAGES + 1)})
    assert r.status_code == 422
    assert "history" in r.json()["message"]


def library_message(question: str) -> str:
    with pytest.raises(QuestionError) as info:
        check_question(question)
    return str(info.value)


@pytest.mark.parametrize(
    "question", ["", "   \n\t ", "问" * (MAX_QUESTION_CHARS + 1), " " + "问" * (MAX_QUESTION_CHARS + 1)]
)
def test_question_errors_have_the_library_message(client: httpx.Client, question: str) -> None:
    """One message per problem, whether pydantic or the library finds it."""
    expected = library_message(question)
    for path in ("/ask", "/ask/stream"):
        r = client.post(path, json={"question": question})
        assert r.status_code == 422, r.text
        assert r.json()["message"] == f"question: {expected}"
        assert r.json()["detail"][0]["msg"] == expected
    r = client.get("/search", params={"q": question})
    assert r.status_code == 422, r.text
    assert r.json()["message"] == f"q: {expected}"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        ({"question": ""}, 422, "question"),
        ({"question": "   \n\t "}, 422, "question"),
        ({"question": "问" * 2001}, 422, "question"),
        ({}, 422, "question"),
        ({"question": 5}, 422, "question"),
        ({"question": "锦屏", "top_k": 0}, 422, "top_k"),
        ({"question": "锦屏", "top_k": 21}, 422, "top_k"),
        ({"question": "锦屏", "top_k": "many"}, 422, "top_k"),
        ({"question": "锦屏", "answer_mode": "magic"}, 422, "answer_mode"),
        ({"question": "锦屏", "mode": "magic"}, 422, "mode"),
        (
            {"question": "锦屏", "history": [{"role": "system", "content": "x"}]},
            422,
            "history",
        ),
        (["锦屏"], 422, "body"),
    ],
)
def test_ask_rejects_bad_input(client: httpx.Client, body: object, status: int, field: str) -> None:
    r = client.post("/ask", json=body)
    assert r.status_code == status, r.text
    payload = r.json()
    assert field in payload["message"]
    assert isinstance(payload["detail"], list)


def test_ask_rejects_malformed_json_and_wrong_content_type(
    client: httpx.Client,
) -> None:
    r = client.post(
        "/ask",
        content='{"question": "锦屏'.encode(),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 400
    assert "JSON" in r.json()["message"]
    r = client.post("/ask", data={"question": "锦屏"})
    assert r.status_code == 415
    assert "application/json" in r.json()["detail"]
    r = client.post("/ask", content="锦屏".encode(), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_ask_stream_sends_deltas_then_the_answer(client: httpx.Client) -> None:
    with client.stream("POST", "/ask/stream", json={"question": "锦屏成立了什么联盟"}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    names = [name for name, _ in events]
    assert names[-1] == "answer"
    assert names[:-1] and set(names[:-1]) == {"delta"}
    final = events[-1][1]
    assert "".join(data["text"] for name, data in events if name == "delta") == final["answer"]
    assert final["citations"][0]["source"] == PAGE_000


def test_ask_stream_validates_before_streaming(client: httpx.Client) -> None:
    r = client.post("/ask/stream", json={"question": " "})
    assert r.status_code == 422
    assert "question" in r.json()["message"]


def test_32_concurrent_asks_all_succeed(live_server: str) -> None:
    questions = [
        "锦屏成立了什么联盟",
        "恒锋工具位于哪里",
        "芯·潮夜市大约有多少个摊位",
        "岳林街道辖区有多少家高新技术企业",
    ]
    barrier = threading.Barrier(32)

    def one(i: int) -> tuple[int, dict]:
        with httpx.Client(base_url=live_server, timeout=300) as c:
            barrier.wait()
            r = c.post("/ask", json={"question": questions[i % len(questions)]})
            return r.status_code, r.json()

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    assert [status for status, _ in results] == [200] * 32
    assert all(body["citations"] for _, body in results)


# ---- /search, /documents, /healthz ---------------------------------------------------


@pytest.mark.parametrize("param", ["retrieval_mode", "mode"])
@pytest.mark.parametrize("mode", ["hybrid", "dense", "bm25"])
def test_search(client: httpx.Client, mode: str, param: str) -> None:
    r = client.get("/search", params={"q": "锦屏 联盟", "k": 3, param: mode})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["retrieval_mode"] == mode
    hits = body["hits"]
    assert 1 <= len(hits) <= 3
    assert [h["rank"] for h in hits] == list(range(1, len(hits) + 1))
    assert {
        "chunk_id",
        "article_id",
        "source",
        "title",
        "text",
        "start",
        "end",
        "score",
    } <= set(hits[0])


@pytest.mark.parametrize(
    "params",
    [
        {"q": ""},
        {"q": "  "},
        {"q": "锦屏", "k": 0},
        {"q": "锦屏", "k": 51},
        {"q": "锦屏", "mode": "x"},
        {"q": "锦屏", "retrieval_mode": "x"},
        {},
    ],
)
def test_search_rejects_bad_input(client: httpx.Client, params: dict) -> None:
    r = client.get("/search", params=params)
    assert r.status_code == 422, r.text


def test_documents_list_and_read(client: httpx.Client, api_settings: Settings) -> None:
    r = client.get("/documents")
    assert r.status_code == 200
    listing = r.json()
    assert set(listing) == {"files", "skipped", "articles", "counts", "unindexed", "unindexed_hint"}
    assert listing["unindexed"] == [] and listing["unindexed_hint"] is None
    docs = listing["articles"]
    assert len(docs) > 5
    files = {f["source"]: f for f in listing["files"]}
    docs_dir = api_settings.docs_dir
    assert set(files) == {document_source(p, docs_dir) for p in list_documents(docs_dir)}
    assert PAGE_000 in files and listing["skipped"] == []
    for f in files.values():
        assert set(f) == {"source", "articles", "chunks"} and f["chunks"] >= f["articles"] >= 1
    assert files[PAGE_000]["articles"] == sum(d["source"] == PAGE_000 for d in docs)
    counts = listing["counts"]
    assert counts["documents"] == len(files) and counts["articles"] == len(docs)
    assert counts["chunks"] == sum(f["chunks"] for f in files.values())
    first = next(d for d in docs if d["id"] == f"{PAGE_000}#0")
    assert first == {
        "id": f"{PAGE_000}#0",
        "source": PAGE_000,
        "title": first["title"],
        "position": 0,
    }
    r = client.get(f"/documents/{quote(first['id'], safe='')}")
    assert r.status_code == 200
    article = r.json()
    assert article["title"] == first["title"]
    assert {"kicker", "subtitle", "byline", "source", "text"} <= set(article)
    assert "创新服务联盟" in article["text"]


@pytest.mark.parametrize("doc_id", ["nope", f"{PAGE_000}%2399", "..%2F..%2Fetc%2Fpasswd"])
def test_unknown_document_is_404(client: httpx.Client, doc_id: str) -> None:
    r = client.get(f"/documents/{doc_id}")
    assert r.status_code == 404
    assert "detail" in r.json()
    assert client.get(f"/read/{doc_id}").status_code == 404


def test_healthz(client: httpx.Client) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["model"]
    assert body["counts"]["articles"] > 5
    assert body["built_at"]


def test_openapi_documents_the_routes(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    for path in [
        "/ask",
        "/search",
        "/documents",
        "/documents/{doc_id}",
        "/documents/jobs/{job_id}",
        "/healthz",
        "/v1/chat/completions",
    ]:
        assert path in paths
    upload_202 = paths["/documents"]["post"]["responses"]["202"]
    assert "Location" in upload_202["headers"]
    assert upload_202["content"]["application/json"]["schema"]["$ref"].endswith("/JobAccepted")
    assert "202" in paths["/documents/{doc_id}"]["delete"]["responses"]
    ask = schema["components"]["schemas"]["AskResponse"]["properties"]
    assert {"question", "answer", "citations", "timings_ms"} <= set(ask)
    assert client.get("/docs").status_code == 200


# ---- the page and security headers ---------------------------------------------------


@pytest.mark.parametrize(
    "path",
    ["/", "/healthz", "/static/app.js", "/documents/nope", f"/read/{PAGE_000}%230"],
)
def test_security_headers_everywhere(client: httpx.Client, path: str) -> None:
    r = client.get(path)
    assert r.headers["content-security-policy"] == CSP
    assert "'unsafe-inline'" not in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["x-frame-options"] == "DENY"


def test_security_headers_on_errors_and_posts(client: httpx.Client) -> None:
    for r in [
        client.post("/ask", json={}),
        client.post("/ask", json={"question": "锦屏"}),
    ]:
        assert r.headers["content-security-policy"] == CSP
    # Swagger UI is the one page allowed its CDN bundle and inline bootstrap.
    docs = client.get("/docs")
    assert "'unsafe-inline'" in docs.headers["content-security-policy"]
    assert docs.headers["x-frame-options"] == "DENY"


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.inline_script = False
        self.handlers: list[str] = []
        self.styles: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts.append(a)
            self._in_script = True
        if tag == "style" or "style" in a:
            self.styles.append(tag)
        self.handlers += [k for k in a if k.startswith("on")]

    def handle_endtag(self, tag: str) -> None:
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_script = True


def test_page_has_no_inline_script_and_nothing_external(client: httpx.Client) -> None:
    r = client.get("/")
    assert r.status_code == 200
    html = r.text
    assert 'name="viewport"' in html
    tags = _Tags()
    tags.feed(html)
    assert tags.scripts and all(s.get("src", "").startswith("/static/") for s in tags.scripts)
    assert not tags.inline_script and not tags.handlers and not tags.styles
    examples = client.get("/examples").json()["questions"]
    assert examples and all(html_escape(q) in html for q in examples)  # the corpus's own examples
    web = Path(__file__).resolve().parent.parent / "rag" / "web"
    assert (web / "static" / "app.js").is_file()
    for path in [*web.rglob("*.html"), *web.rglob("*.js"), *web.rglob("*.css")]:
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(src|href)=[\"']?(https?:)?//", text), path
        assert "@import" not in text and "url(http" not in text, path
        if path.suffix == ".js":
            assert not re.search(r"\.(inner|outer)HTML\s*=|insertAdjacentHTML|document\.write|\beval\(", text)


# ---- adding and removing documents ---------------------------------------------------


class _AppConfig(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.data: dict[str, str | None] = {}
        self.maxlength: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "div" and a.get("id") == "app":
            self.data = {k: v for k, v in a.items() if k.startswith("data-")}
        if tag == "textarea" and a.get("id") == "question":
            self.maxlength = a.get("maxlength")


def test_page_gets_its_settings_from_the_server(client: httpx.Client, api_settings: Settings) -> None:
    page = _AppConfig()
    page.feed(client.get("/").text)
    assert page.data == {
        "data-not-found": NOT_FOUND,
        "data-history-turns": str(api_settings.history_turns),
        "data-top-k": str(api_settings.top_k),
        "data-max-question-chars": str(MAX_QUESTION_CHARS),
        "data-doc-types": ",".join(DOC_SUFFIXES),  # every format the ingest reads
        "data-max-upload-bytes": str(api_settings.max_upload_bytes),
        "data-uploads-enabled": "1",  # the test server has an admin token
    }
    assert page.maxlength == str(MAX_QUESTION_CHARS)
    script = client.get("/static/app.js").text
    assert NOT_FOUND not in script  # one source of truth: rag.models
    assert "answer_mode" in script


def test_upload_then_answer_then_delete(client: httpx.Client, api_settings: Settings) -> None:
    body = job_result(client, upload(client, "星光书屋.txt", LIBRARY_DOC.encode()))["upload"]
    assert body["source"] == "星光书屋.txt"
    assert body["articles"] and body["articles"][0]["id"] == "星光书屋.txt#0"
    assert (api_settings.docs_dir / "星光书屋.txt").read_text(encoding="utf-8") == LIBRARY_DOC
    try:
        answer = client.post("/ask", json={"question": LIBRARY_QUESTION}).json()
        assert answer["citations"][0]["source"] == "星光书屋.txt"
        assert "星光书屋" in answer["citations"][0]["text"]
        assert any(d["source"] == "星光书屋.txt" for d in client.get("/documents").json()["articles"])
    finally:
        deleted = job_result(
            client, client.delete(f"/documents/{quote('星光书屋.txt#0', safe='')}", headers=ADMIN)
        )
    assert deleted["delete"]["deleted"] == "星光书屋.txt"
    assert not (api_settings.docs_dir / "星光书屋.txt").exists()
    answer = client.post("/ask", json={"question": LIBRARY_QUESTION}).json()
    assert all(c["source"] != "星光书屋.txt" for c in answer["citations"])
    assert client.get(f"/documents/{quote('星光书屋.txt#0', safe='')}").status_code == 404
    assert client.delete("/documents/星光书屋.txt", headers=ADMIN).status_code == 404


def test_upload_replaces_a_file_of_the_same_name(client: httpx.Client) -> None:
    try:
        first = upload(client, "replace_me.md", "# 初版标题\n\n初版内容：柳塘村修好了一条路。".encode())
        assert job_result(client, first)["upload"]["replaced"] is False
        r = upload(client, "replace_me.md", "# 修订标题\n\n修订内容：柳塘村建好了一座桥。".encode())
        assert job_result(client, r)["upload"]["replaced"] is True
        titles = [
            d["title"] for d in client.get("/documents").json()["articles"] if d["source"] == "replace_me.md"
        ]
        assert titles == ["修订标题"]
    finally:
        job_result(client, client.delete("/documents/replace_me.md", headers=ADMIN))


def test_upload_needs_the_admin_token(client: httpx.Client, api_settings: Settings) -> None:
    data = LIBRARY_DOC.encode()
    assert upload(client, "a.txt", data, headers={}).status_code == 401
    r = upload(client, "a.txt", data, headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert (
        client.delete(f"/documents/{PAGE_000}", headers={"Authorization": "Bearer wrong"}).status_code == 401
    )
    assert not (api_settings.docs_dir / "a.txt").exists()
    assert (api_settings.docs_dir / PAGE_000).exists()


def test_uploads_are_off_without_a_token(api_settings: Settings, embedder: Embedder) -> None:
    no_token = api_settings.model_copy(update={"admin_token": None})
    with TestClient(create_app(no_token, embedder=embedder)) as c:
        r = c.post(
            "/documents",
            files={"file": ("a.txt", LIBRARY_DOC.encode(), "text/plain")},
            headers=ADMIN,
        )
        assert r.status_code == 403
        assert "RAG_ADMIN_TOKEN" in r.json()["detail"]
        assert c.delete(f"/documents/{PAGE_000}", headers=ADMIN).status_code == 403
        assert c.get("/healthz").json()["uploads_enabled"] is False
    assert not (api_settings.docs_dir / "a.txt").exists()


@pytest.mark.parametrize(
    ("name", "data", "content_type", "status", "mentions"),
    [
        ("bad.pdf", b"%PDF-1.4 ...", "application/pdf", 400, "bad.pdf"),  # a PDF, but broken
        ("sheet.xlsx", b"PK\x03\x04", "application/octet-stream", 415, "sheet.xlsx"),
        ("noext", "文字".encode(), "text/plain", 415, "noext"),
        (
            "picture.txt",
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            "text/plain",
            400,
            "picture.txt",
        ),
        ("latin.txt", bytes(range(128, 256)) * 4, "text/plain", 400, "latin.txt"),
        ("image.txt", "文字".encode(), "image/png", 415, "image.txt"),
        ("empty.txt", b"", "text/plain", 400, "empty.txt"),
        # A name that is only dots, spaces or a suffix is a bad name (400), not a bad type.
        ("..", "文字".encode(), "text/plain", 400, ".."),
        ("../.txt", "文字".encode(), "text/plain", 400, ".txt"),
        (".txt", "文字".encode(), "text/plain", 400, ".txt"),
        ("   ", "文字".encode(), "text/plain", 400, "no name"),
    ],
)
def test_bad_uploads_are_refused_and_leave_nothing(
    client: httpx.Client,
    api_settings: Settings,
    name: str,
    data: bytes,
    content_type: str,
    status: int,
    mentions: str,
) -> None:
    before = sorted(p.name for p in api_settings.docs_dir.iterdir())
    r = upload(client, name, data, content_type)
    assert r.status_code == status, r.text
    assert mentions in r.json()["detail"]
    assert sorted(p.name for p in api_settings.docs_dir.iterdir()) == before


def test_upload_size_limit(client: httpx.Client, api_settings: Settings) -> None:
    big = ("锦屏" * (api_settings.max_upload_bytes // 6 + 10)).encode()
    assert len(big) > api_settings.max_upload_bytes
    r = upload(client, "big.txt", big)
    assert r.status_code == 413
    assert not (api_settings.docs_dir / "big.txt").exists()


def test_upload_must_be_multipart(client: httpx.Client) -> None:
    r = client.post("/documents", json={"file": "x"}, headers=ADMIN)
    assert r.status_code == 415


def test_path_escapes_stay_in_the_docs_folder(client: httpx.Client, api_settings: Settings) -> None:
    root = api_settings.docs_dir.parent
    for raw in ["../../escape.txt", "..\\..\\escape.txt", "/etc/escape.txt"]:
        r = upload(client, raw, "逃逸测试：这份文件只能保存在资料文件夹里。".encode())
        assert job_result(client, r)["upload"]["source"] == "escape.txt"
        assert (api_settings.docs_dir / "escape.txt").is_file()
        assert not (root / "escape.txt").exists() and not (root.parent / "escape.txt").exists()
    assert not Path("/etc/escape.txt").exists()
    job_result(client, client.delete("/documents/escape.txt", headers=ADMIN))
    assert not (api_settings.docs_dir / "escape.txt").exists()
    # Deleting goes by indexed names only: no path reaches the file system.
    assert client.delete("/documents/..%2Fdocs%2F" + PAGE_000, headers=ADMIN).status_code == 404
    assert (api_settings.docs_dir / PAGE_000).exists()


@pytest.mark.parametrize(
    ("raw", "safe"),
    [
        ("报道.txt", "报道.txt"),
        ("../../a b.TXT", "a_b.txt"),
        ("C:\\x\\y\\note.md", "note.md"),
        (".hidden.txt", "hidden.txt"),
        ("a;rm -rf $HOME.txt", "a_rm_-rf_HOME.txt"),
        ("x..y.md", "x.y.md"),
    ],
)
def test_safe_filename(raw: str, safe: str) -> None:
    assert safe_filename(raw) == safe


def test_xss_document_is_served_as_text(client: httpx.Client) -> None:
    doc_id = job_result(client, upload(client, "xss.txt", XSS_DOC.encode()))["upload"]["articles"][0]["id"]
    try:
        article = client.get(f"/documents/{quote(doc_id, safe='')}").json()
        assert "<script>alert(1)</script>" in article["text"]
        page = client.get(f"/read/{quote(doc_id, safe='')}")
        assert page.status_code == 200
        assert "<script>alert" not in page.text and "<img src=x" not in page.text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
        assert "&lt;img src=x onerror=alert(1)&gt;" in page.text
    finally:
        job_result(client, client.delete(f"/documents/{quote(doc_id, safe='')}", headers=ADMIN))


def test_unexpected_errors_are_json_with_headers(
    api_settings: Settings, embedder: Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(api_settings, embedder=embedder), raise_server_exceptions=False) as c:
        answerer = c.app.state.service.engine.answerer  # type: ignore[attr-defined]

        def broken(*args: object, **kwargs: object) -> Iterator[str]:
            raise RuntimeError("boom")
            yield ""

        monkeypatch.setattr(answerer, "answer_stream", broken)
        monkeypatch.setattr(answerer, "answer", broken)
        r = c.post("/ask", json={"question": "锦屏成立了什么联盟"})
        assert r.status_code == 500
        internal = "internal server error; see the server log"
        assert r.json() == {"detail": internal, "message": internal}
        assert r.headers["content-security-policy"] == CSP
        assert "boom" not in r.text
        chat = {"model": "rag-zh", "messages": [{"role": "user", "content": "锦屏成立了什么联盟"}]}
        v1 = c.post("/v1/chat/completions", json=chat)
        assert v1.status_code == 500 and "boom" not in v1.text
        error = {"message": internal, "type": "server_error", "param": None, "code": None}
        assert v1.json()["error"] == error
        events = sse_events(c.post("/ask/stream", json={"question": "锦屏成立了什么联盟"}).text)
        assert events == [("error", {"detail": "internal error while answering; see the server log"})]


def test_documents_in_subfolders_keep_their_own_identity(
    settings: Settings, embedder: Embedder, tmp_path: Path
) -> None:
    """``a/x.txt`` and ``b/x.txt`` are two documents: listed, read and deleted by their paths."""
    from rag.index import build_index

    docs = tmp_path / "docs"
    (docs / "a").mkdir(parents=True)
    (docs / "b").mkdir()
    (docs / "a" / "x.txt").write_text(LIBRARY_DOC, encoding="utf-8")
    (docs / "b" / "x.txt").write_text(XSS_DOC, encoding="utf-8")
    two = settings.model_copy(update={"docs_dir": docs, "index_dir": tmp_path / "index", "admin_token": "t"})
    build_index(two, embedder)
    admin = {"Authorization": "Bearer t"}
    with (
        LoopbackServer(create_app(two, embedder=embedder)) as server,
        httpx.Client(base_url=server.url, timeout=120) as c,
    ):
        listed = {f["source"]: f for f in c.get("/documents").json()["files"]}
        assert set(listed) == {"a/x.txt", "b/x.txt"}
        assert c.get("/healthz").json()["counts"]["documents"] == 2
        b = c.get(f"/documents/{quote('b/x.txt#0', safe='')}").json()
        assert b["source"] == "b/x.txt" and "紫藤湾" in b["text"]
        answer = c.post("/ask", json={"question": LIBRARY_QUESTION}).json()
        assert answer["citations"][0]["source"] == "a/x.txt"

        # An upload named x.txt lands at the top: a third document, neither is replaced.
        r = c.post(
            "/documents", files={"file": ("x.txt", "# 顶层\n\n顶层文件的内容。".encode())}, headers=admin
        )
        added = job_result(c, r)["upload"]
        assert added["source"] == "x.txt" and added["replaced"] is False
        assert {f["source"] for f in c.get("/documents").json()["files"]} == {"a/x.txt", "b/x.txt", "x.txt"}

        deleted = job_result(c, c.delete("/documents/a/x.txt", headers=admin))["delete"]
        assert deleted["deleted"] == "a/x.txt"
        assert deleted["articles"] == ["a/x.txt#0"]
        assert not (docs / "a" / "x.txt").exists()
        assert (docs / "b" / "x.txt").is_file() and (docs / "x.txt").is_file()
        assert {f["source"] for f in c.get("/documents").json()["files"]} == {"b/x.txt", "x.txt"}
        assert c.delete("/documents/a/x.txt", headers=admin).status_code == 404


def test_the_last_document_cannot_be_deleted(settings: Settings, embedder: Embedder, tmp_path: Path) -> None:
    from rag.index import build_index

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "only.txt").write_text(LIBRARY_DOC, encoding="utf-8")
    one = settings.model_copy(update={"docs_dir": docs, "index_dir": tmp_path / "index", "admin_token": "t"})
    build_index(one, embedder)
    with TestClient(create_app(one, embedder=embedder)) as c:
        r = c.delete("/documents/only.txt", headers={"Authorization": "Bearer t"})
        assert r.status_code == 409
        assert "last document" in r.json()["detail"]
    assert (docs / "only.txt").is_file()


# ---- a docs folder with bad files: skipped, listed with why, the rest served -----------


@pytest.fixture(scope="session")
def bad_docs_server(
    settings: Settings, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Settings]]:
    """A live server over a good file, a binary renamed .md, a PNG and an empty file."""
    root = tmp_path_factory.mktemp("bad-docs")
    bad = settings.model_copy(
        update={
            "docs_dir": write_bad_docs(root / "docs"),
            "index_dir": root / "index",
            "admin_token": "bad-docs-token",
        }
    )
    build_index(bad, embedder)  # what `rag serve` does first when there is no index
    with LoopbackServer(create_app(bad, embedder=embedder), name="bad-docs") as server:
        yield server.url, bad


def test_documents_lists_the_skipped_files_with_why(bad_docs_server: tuple[str, Settings]) -> None:
    url, bad = bad_docs_server
    admin = {"Authorization": f"Bearer {bad.admin_token}"}
    with httpx.Client(base_url=url, timeout=120) as c:
        listing = c.get("/documents").json()
        assert listing["skipped"] == [{"source": n, "reason": BAD_REASONS[n]} for n in sorted(BAD_REASONS)]
        assert [f["source"] for f in listing["files"]] == [GOOD_NAME]
        assert {d["source"] for d in listing["articles"]} == {GOOD_NAME}
        assert listing["counts"]["documents"] == 1
        assert listing["files"][0]["articles"] == len(listing["articles"]) == listing["counts"]["articles"]
        answer = c.post("/ask", json={"question": GOOD_QUESTION}).json()
        assert answer["citations"][0]["source"] == GOOD_NAME

        # A rebuild from the page (an upload) lists them again, from its own manifest.
        r = c.post(
            "/documents",
            files={"file": ("more.txt", "# 新闻\n\n本报讯 某县博物馆新增展品三百件。".encode())},
            headers=admin,
        )
        job_result(c, r)
        after = c.get("/documents").json()
        assert [f["source"] for f in after["files"]] == [GOOD_NAME, "more.txt"]
        assert {s["source"] for s in after["skipped"]} == set(BAD_REASONS)
        # A skipped .md can be deleted by its name, as a listed file; then it is no longer skipped.
        job_result(c, c.delete("/documents/binary.md", headers=admin))
        assert "binary.md" not in {s["source"] for s in c.get("/documents").json()["skipped"]}
        assert not (bad.docs_dir / "binary.md").exists()
