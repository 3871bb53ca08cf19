"""The chat page in a real browser: Debian's Chromium driven by Playwright against the live server.

Screenshots go to tests/screenshots/ (git-ignored).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

from corpora import indexed_corpus  # noqa: E402
from fake_llm import LoopbackServer  # noqa: E402
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright  # noqa: E402

from rag.api import create_app  # noqa: E402
from rag.embedding import Embedder  # noqa: E402
from rag.models import NOT_FOUND  # noqa: E402
from rag.settings import Settings  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parent / "screenshots"
PAGE_000 = "000_ed8d00c7a0348028.txt"
QUESTION = "锦屏成立了什么联盟"
FOLLOW_UP = "那它的会长是谁？"
ADMIN = {"Authorization": "Bearer test-admin-token"}  # conftest.API_ADMIN_TOKEN
TIMEOUT = 120_000

SEED_EXAMPLES = (
    "锦屏成立了什么联盟",
    "芯·潮夜市大约有多少个摊位",
    "岳林街道辖区有多少家高新技术企业",
    "恒锋工具位于哪里",
)
"""The four questions the page used to show whatever the corpus: each answered only by seeds/."""

# A small corpus that is not seeds/: three invented news articles and a picture the build skips.
NEWS_TOKEN = "news-admin-token"
NEWS_ADMIN = {"Authorization": f"Bearer {NEWS_TOKEN}"}
NEWS_DOCS = {
    "青岚镇茶文化节.txt": (
        "青岚镇举办首届茶文化节\n\n"
        "本报讯（记者 林晓雨）青岚镇首届茶文化节日前在镇文化广场开幕。本届茶文化节为期五天，"
        "共有三十六家茶企参展，现场还举办了手工炒茶比赛和茶艺表演，吸引游客约两万人次。"
        "镇党委负责人表示，青岚镇将以茶文化节为契机，推动茶产业与乡村旅游融合发展。\n"
    ),
    "港城跨海大桥.md": (
        "港城跨海大桥建成通车\n\n"
        "本报讯（通讯员 周海涛）港城跨海大桥昨日正式建成通车。大桥全长八点六公里，设计时速一百公里，"
        "总投资约四十二亿元。大桥通车后，港城至东屿岛的车程由原来的一小时缩短至十五分钟。\n"
    ),
    "梧桐社区老年食堂.txt": (
        "梧桐社区老年食堂开业\n\n"
        "本报讯（通讯员 许文静）梧桐社区老年食堂于本月十日正式开业。食堂位于社区服务中心一楼，"
        "可同时容纳八十人就餐，七十岁以上老人每餐只需支付五元。开业当天，共有九十多位老人前来用餐。\n"
    ),
}
NEWS_PICTURE = "现场照片.png"
TEA_QUESTION = "青岚镇首届茶文化节共有多少家茶企参展"
BRIDGE_QUESTION = "港城跨海大桥全长多少公里"
PARK_FILE = "星河湾湿地公园.txt"
PARK_DOC = (
    "星河湾湿地公园正式开园\n\n"
    "本报讯（通讯员 陈静）星河湾湿地公园昨日正式开园迎客。公园占地约一百二十公顷，"
    "种植了四十多种水生植物，园内建有六公里长的环湖步道。\n"
)
PARK_QUESTION = "星河湾湿地公园种植了多少种水生植物"
PARK_ANSWER = "四十多种"

XSS_DOC = (
    "紫藤湾社区网络安全讲座 <b>加粗</b>\n\n"
    "本报讯（通讯员 王小明）紫藤湾社区近日举办网络安全讲座，讲师演示了<script>alert(1)</script>"
    "这样的恶意脚本，以及<img src=x onerror=alert(1)>这样的图片标签，提醒居民不要点击陌生链接。\n"
)

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)"
)

# Records what the page does that it must not: CSP violations and dialogs (alert from XSS).
WATCH = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation',
  (e) => window.__cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));
"""

# Records the answer text while a turn is still streaming.
STREAM_OBSERVER = """
window.__streamed = [];
new MutationObserver(() => {
  for (const node of document.querySelectorAll('.msg.bot[data-status="pending"] .answer')) {
    if (!node.querySelector('.thinking') && node.textContent) window.__streamed.push(node.textContent);
  }
}).observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true});
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    SHOTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield b
        b.close()


class Watched:
    """A page plus what it did: dialogs opened, requests made."""

    def __init__(self, page: Page, base: str) -> None:
        self.page = page
        self.base = base
        self.dialogs: list[str] = []
        self.requests: list[str] = []
        page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        page.on("request", lambda r: self.requests.append(r.url))

    def check_clean(self) -> None:
        assert self.dialogs == []
        assert self.page.evaluate("window.__cspViolations") == []
        outside = [u for u in self.requests if not u.startswith((self.base, "data:"))]
        assert outside == []


def finished_job(api: httpx.Client, r: httpx.Response, timeout: float = 300) -> dict:
    """Follow an upload's or delete's 202 to the end of its job; returns the job (status done)."""
    assert r.status_code == 202, r.text
    job = r.json()["job"]
    deadline = time.monotonic() + timeout
    while job["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
        job = api.get(f"/documents/jobs/{job['id']}").json()
    assert job["status"] == "done", job
    return job


def open_page(browser: Browser, base: str, **context: Any) -> Watched:
    ctx = browser.new_context(base_url=base, locale="zh-CN", **context)
    ctx.set_default_timeout(TIMEOUT)
    ctx.add_init_script(WATCH)
    w = Watched(ctx.new_page(), base)
    w.page.goto("/")
    expect(w.page.locator("body[data-ready='1']")).to_be_attached()
    return w


def ask(page: Page, question: str) -> Any:
    """Type a question, send it with Enter, wait for the finished answer; returns the turn locator."""
    n = page.locator("li.turn").count()
    box = page.locator("#question")
    box.fill(question)
    box.press("Enter")
    turn = page.locator("li.turn").nth(n)
    expect(turn.locator(".msg.user")).to_have_text(question)
    turn.locator(".msg.bot[data-status='done']").wait_for()
    return turn


@pytest.fixture
def watched(browser: Browser, live_server: str) -> Iterator[Watched]:
    w = open_page(browser, live_server, viewport={"width": 1280, "height": 860})
    yield w
    w.page.context.close()


@pytest.fixture(scope="session")
def news_settings(
    settings: Settings, embedder: Embedder, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """A docs folder that is not seeds/ (NEWS_DOCS and a picture), its own index and admin token."""
    files: dict[str, str | bytes] = {**NEWS_DOCS, NEWS_PICTURE: b"\x89PNG\r\n\x1a\n" + bytes(64)}
    root = tmp_path_factory.mktemp("news")
    return indexed_corpus(settings, embedder, root, files, admin_token=NEWS_TOKEN)


@pytest.fixture(scope="session")
def news_server(news_settings: Settings, embedder: Embedder) -> Iterator[str]:
    """The live server over the news corpus; yields its base URL."""
    with LoopbackServer(create_app(news_settings, embedder=embedder), name="news") as server:
        yield server.url


@pytest.fixture
def news(browser: Browser, news_server: str) -> Iterator[Watched]:
    w = open_page(browser, news_server, viewport={"width": 1280, "height": 860})
    yield w
    w.page.context.close()


def test_ask_streams_and_cites_the_supporting_sentence(watched: Watched, live_server: str) -> None:
    page = watched.page
    served = httpx.get(f"{live_server}/examples", timeout=60).json()["questions"]
    assert served
    expect(page.locator("button.example")).to_have_text(served)
    page.screenshot(path=SHOTS / "desktop_welcome.png")

    page.evaluate(STREAM_OBSERVER)
    turn = ask(page, QUESTION)
    answer = turn.locator(".answer")
    streamed = page.evaluate("window.__streamed")
    assert streamed, "the answer text never showed while the turn was streaming"
    assert streamed[-1] == answer.text_content()
    assert "[1]" in (answer.text_content() or "")

    expected = httpx.post(f"{live_server}/ask", json={"question": QUESTION}, timeout=120).json()
    first = expected["citations"][0]
    lo, hi = first["highlight"]
    sentence = first["text"][lo:hi]

    chip = answer.locator("button.chip", has_text="[1]")
    chip.click()
    panel = page.locator("#panel")
    expect(panel).to_be_visible()
    expect(page.locator("#panel-num")).to_have_text("[1]")
    expect(page.locator("#panel-title")).to_have_text(first["title"])
    expect(page.locator("#panel-meta")).to_contain_text(PAGE_000)
    mark = page.locator("#panel-text mark")
    expect(mark).to_have_count(1)
    expect(mark).to_have_text(sentence)
    expect(page.locator("#panel-text")).to_have_text(first["text"])
    page.screenshot(path=SHOTS / "desktop_citation.png")

    href = page.locator("#panel-link").get_attribute("href") or ""
    assert href.startswith(f"/read/{quote(first['article_id'], safe='')}?")
    page.goto(href)
    expect(page.locator("#article-title")).to_have_text(first["title"])
    expect(page.locator("mark#hl")).to_have_text(sentence)
    expect(page.locator(".source")).to_have_text(PAGE_000)
    page.screenshot(path=SHOTS / "read_page.png", full_page=True)
    watched.check_clean()


def test_follow_up_sends_history_and_the_conversation_survives_a_reload(watched: Watched) -> None:
    page = watched.page
    first = ask(page, QUESTION)
    first_answer = first.locator(".answer").text_content()

    with page.expect_request("**/ask/stream") as request_info:
        second = ask(page, FOLLOW_UP)
    sent = json.loads(request_info.value.post_data or "{}")
    assert sent["question"] == FOLLOW_UP
    assert sent["history"][0] == {"role": "user", "content": QUESTION}
    assert sent["history"][1]["role"] == "assistant"
    assert sent["history"][1]["content"] == first_answer
    assert second.locator(".answer").text_content()

    page.reload()
    turns = page.locator("li.turn")
    expect(turns).to_have_count(2)
    expect(turns.nth(0).locator(".msg.user")).to_have_text(QUESTION)
    expect(turns.nth(0).locator(".answer")).to_have_text(first_answer or "")
    expect(turns.nth(1).locator(".msg.user")).to_have_text(FOLLOW_UP)
    expect(page.locator("#welcome")).to_be_hidden()
    turns.nth(0).locator("button.chip").first.click()  # chips still work after a reload
    expect(page.locator("#panel mark")).to_have_count(1)
    page.screenshot(path=SHOTS / "desktop_conversation.png")
    page.keyboard.press("Escape")
    expect(page.locator("#panel")).to_be_hidden()

    page.locator("#clear").click()
    expect(turns).to_have_count(0)
    expect(page.locator("#welcome")).to_be_visible()
    page.reload()
    expect(page.locator("li.turn")).to_have_count(0)
    watched.check_clean()


def test_copy_button(watched: Watched) -> None:
    page = watched.page
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    turn = ask(page, QUESTION)
    turn.locator("button.copy").click()
    expect(turn.locator("button.copy")).to_have_text("已复制")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith(turn.locator(".answer").text_content() or "")
    assert "来源：" in copied and PAGE_000 in copied


def test_xss_document_renders_as_text(watched: Watched, live_server: str) -> None:
    page = watched.page
    with httpx.Client(base_url=live_server, timeout=120, headers=ADMIN) as api:
        r = api.post("/documents", files={"file": ("xss.txt", XSS_DOC.encode(), "text/plain")})
        doc_id = finished_job(api, r)["upload"]["articles"][0]["id"]
        try:
            turn = ask(page, "紫藤湾社区举办了什么讲座")
            titles = turn.locator(".source-title")
            target = titles.filter(has_text="紫藤湾").first
            target.click()
            passage = page.locator("#panel-text")
            expect(passage).to_contain_text("<script>alert(1)</script>")
            expect(passage).to_contain_text("<img src=x onerror=alert(1)>")
            expect(page.locator("#panel-title")).to_contain_text("<b>加粗</b>")
            assert page.locator("#panel img, #messages img, #panel script, #messages script").count() == 0
            assert page.locator("#panel b, #messages b").count() == 0
            page.screenshot(path=SHOTS / "xss_as_text.png")

            page.goto(f"/read/{quote(doc_id, safe='')}")
            expect(page.locator("#article-text")).to_contain_text("<script>alert(1)</script>")
            expect(page.locator("#article-text")).to_contain_text("<img src=x onerror=alert(1)>")
            assert page.locator("article img, article script").count() == 0
        finally:
            finished_job(api, api.delete(f"/documents/{quote(doc_id, safe='')}"))
    assert watched.dialogs == []
    watched.check_clean()


def test_unreachable_server_and_nothing_found(watched: Watched) -> None:
    page = watched.page
    page.route("**/ask/stream", lambda route: route.abort("connectionrefused"))
    turn = ask_expecting(page, QUESTION, "error")
    expect(turn.locator(".msg.bot")).to_contain_text("无法连接服务器")
    page.screenshot(path=SHOTS / "unreachable.png")
    page.unroute("**/ask/stream")
    turn.locator("button", has_text="重试").click()  # the failed turn is replaced, not kept
    expect(page.locator("li.turn")).to_have_count(1)
    page.locator("li.turn .msg.bot[data-status='done']").wait_for()
    expect(page.locator("li.turn .msg.user")).to_have_text(QUESTION)

    # An abstention from the server (its exact wording comes from rag.models.NOT_FOUND).
    final = answer_json("火星上有几个锦屏街道", NOT_FOUND, abstained=True)
    page.route(
        "**/ask/stream", lambda route: fulfil_sse(route, [("delta", {"text": NOT_FOUND}), ("answer", final)])
    )
    turn = ask(page, "火星上有几个锦屏街道")
    expect(turn.locator(".msg.bot.notfound")).to_contain_text(NOT_FOUND)


def answer_json(question: str, answer: str, abstained: bool = False, warnings: tuple[str, ...] = ()) -> dict:
    """An /ask answer as the server sends it, for canned streams."""
    return {
        "question": question,
        "answer": answer,
        "answer_sentence": "",
        "abstained": abstained,
        "answer_mode": "extractive",
        "citations": [],
        "warnings": list(warnings),
        "timings_ms": {"retrieve": 1, "answer": 1, "total": 2},
    }


def fulfil_sse(route: Route, events: list[tuple[str, dict]]) -> None:
    body = "".join(
        f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n" for name, data in events
    )
    route.fulfill(status=200, headers={"Content-Type": "text/event-stream"}, body=body)


RETRACTED = "这段由模型写的文字没有通过引用核对"
REASON = "LLM answer was not supported by the passages; extractive answer"


# Records, from the mutation records themselves, the texts a pending answer showed (those
# still attached when the observer runs: a retraction re-renders the turn, so what it
# withdrew stays in the detached answer) and every retraction notice. A canned stream
# arrives in one piece, so the final DOM alone would not tell what was shown on the way.
RETRACT_OBSERVER = """
window.__texts = [];
window.__notices = [];
new MutationObserver((records) => {
  for (const record of records) {
    for (const node of record.addedNodes) {
      const parent = node.parentElement;
      const pending = parent && parent.matches('.msg.bot[data-status="pending"] .answer');
      if (node.nodeType === Node.TEXT_NODE && pending) {
        window.__texts.push(node.data);
      }
      if (node.nodeType === Node.ELEMENT_NODE) {
        for (const hint of node.querySelectorAll('.msg.bot[data-status="pending"] .hint.retracted')) {
          window.__notices.push(hint.textContent);
        }
      }
    }
  }
}).observe(document.getElementById('messages'), {subtree: true, childList: true});
"""


def test_a_retraction_clears_the_streamed_text_and_warns(watched: Watched) -> None:
    page = watched.page
    final = answer_json("锦屏成立了什么联盟", "抽取式的答案", warnings=(REASON,))
    events = [
        ("delta", {"text": RETRACTED[:6]}),
        ("delta", {"text": RETRACTED[6:]}),
        ("retract", {"reason": REASON}),
        ("delta", {"text": "抽取式的答案"}),
        ("answer", final),
    ]
    page.route("**/ask/stream", lambda route: fulfil_sse(route, events))
    page.evaluate(RETRACT_OBSERVER)
    turn = ask(page, "锦屏成立了什么联盟")
    texts = page.evaluate("window.__texts")
    assert RETRACTED in texts  # it was shown while streaming ...
    assert texts[-1] == "抽取式的答案"  # ... then cleared and replaced, not appended to
    assert page.evaluate("window.__notices") == [REASON]  # the reason showed at once
    expect(turn.locator(".answer")).to_have_text("抽取式的答案")
    expect(turn.locator(".hint", has_text=REASON)).to_have_count(1)  # shown once
    watched.check_clean()


def test_the_page_sends_what_the_server_configures(watched: Watched, api_settings: Settings) -> None:
    page = watched.page
    sent: list[dict] = []

    def canned(route: Route) -> None:
        body = json.loads(route.request.post_data or "{}")
        sent.append(body)
        answer = f"第{len(sent)}个答案"
        fulfil_sse(route, [("delta", {"text": answer}), ("answer", answer_json(body["question"], answer))])

    page.route("**/ask/stream", canned)
    for n in range(1, 6):
        ask(page, f"第{n}个问题")
    last = sent[-1]
    assert last["top_k"] == api_settings.top_k
    assert last["answer_mode"] == "auto"
    # The last RAG_HISTORY_TURNS messages of the four finished turns (eight messages).
    expected = [m for n in range(1, 5) for m in (("user", f"第{n}个问题"), ("assistant", f"第{n}个答案"))]
    assert [(m["role"], m["content"]) for m in last["history"]] == expected[-api_settings.history_turns :]


def ask_expecting(page: Page, question: str, status: str) -> Any:
    n = page.locator("li.turn").count()
    page.locator("#question").fill(question)
    page.locator("#send").click()
    turn = page.locator("li.turn").nth(n)
    turn.locator(f".msg.bot[data-status='{status}']").wait_for()
    return turn


def test_phone_layout(browser: Browser, live_server: str) -> None:
    w = open_page(
        browser,
        live_server,
        viewport={"width": 375, "height": 812},
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
    )
    page = w.page
    try:
        page.screenshot(path=SHOTS / "phone_welcome.png")
        turn = ask(page, QUESTION)
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.screenshot(path=SHOTS / "phone_answer.png")
        turn.locator(".answer button.chip").first.tap()
        panel = page.locator("#panel")
        expect(panel).to_be_visible()
        box = panel.bounding_box()
        assert box is not None and box["width"] <= 375 and box["x"] >= 0
        expect(page.locator("#panel mark")).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.screenshot(path=SHOTS / "phone_citation.png")
        page.locator("#panel-close").tap()

        # The conversation list slides in from the menu button; a tap beside it closes it.
        sidebar = page.locator("#sidebar")
        expect(sidebar).to_be_hidden()
        page.locator("#menu").tap()
        expect(sidebar).to_be_visible()
        expect(sidebar.locator("button.conversation")).to_have_count(1)
        page.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().left >= 0")
        box = sidebar.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375
        page.screenshot(path=SHOTS / "phone_conversations.png")
        page.locator("#scrim").tap(position={"x": 360, "y": 400})
        expect(sidebar).to_be_hidden()

        page.locator("#docs-open").tap()
        docs = page.locator("#docs")
        expect(docs.locator("li.doc-file").first).to_be_visible()
        box = docs.bounding_box()
        assert box is not None and box["x"] >= 0 and box["width"] <= 375
        assert page.evaluate("document.documentElement.scrollWidth") <= 375
        page.screenshot(path=SHOTS / "phone_documents.png")
        w.check_clean()
    finally:
        page.context.close()


def test_api_docs_render_offline(browser: Browser, live_server: str) -> None:
    """Swagger UI works on an intranet: every asset comes from this server."""
    ctx = browser.new_context(base_url=live_server, locale="zh-CN")
    ctx.set_default_timeout(TIMEOUT)
    ctx.add_init_script(WATCH)
    w = Watched(ctx.new_page(), live_server)
    try:
        w.page.goto("/docs")
        expect(w.page.locator(".opblock-summary-path[data-path='/ask']")).to_be_visible()
        w.page.screenshot(path=SHOTS / "api_docs.png")
        w.check_clean()
        assert httpx.get(f"{live_server}/redoc", timeout=30).status_code == 404
    finally:
        ctx.close()


# ---- Over a corpus that is not seeds/ -------------------------------------------------


def bare(answer: str) -> str:
    """An answer without its [n] markers."""
    return re.sub(r"\s*\[\d+\]", "", answer).strip()


def test_examples_come_from_the_served_corpus(news: Watched, news_server: str) -> None:
    page = news.page
    served = httpx.get(f"{news_server}/examples", timeout=60).json()
    questions = served["questions"]
    assert served["origin"] == "titles"  # the news folder has no questions.txt
    assert questions and not set(questions) & set(SEED_EXAMPLES)
    examples = page.locator("button.example")
    expect(examples).to_have_text(questions)
    page.screenshot(path=SHOTS / "news_welcome.png")

    # Each example is answered from the news corpus, not "not found".
    sources = set()
    for n, question in enumerate(questions):
        if n:
            page.locator("#new-chat").click()
        page.locator("button.example", has_text=question).click()
        turn = page.locator("li.turn").first
        expect(turn.locator(".msg.user")).to_have_text(question)
        bot = turn.locator(".msg.bot[data-status='done']")
        bot.wait_for()
        expect(bot).not_to_have_class(re.compile(r"\bnotfound\b"))
        first = turn.locator(".source-title").first
        first.click()
        meta = page.locator("#panel-meta").text_content() or ""
        sources |= {name for name in NEWS_DOCS if name in meta}
        page.keyboard.press("Escape")
    assert len(sources) >= min(2, len(questions))  # varied sources
    news.check_clean()


def test_the_supporting_sentence_under_the_answer(news: Watched, news_server: str) -> None:
    page = news.page
    expected = httpx.post(f"{news_server}/ask", json={"question": TEA_QUESTION}, timeout=120).json()
    assert not expected["abstained"] and expected["answer_sentence"]
    turn = ask(page, TEA_QUESTION)
    expect(turn.locator(".answer")).to_have_text(expected["answer"])
    evidence = turn.locator(".msg.bot .evidence")
    expect(evidence).to_be_visible()
    expect(evidence.locator(".evidence-text")).to_have_text(expected["answer_sentence"])
    mark = evidence.locator("mark")
    expect(mark).to_have_count(1)
    expect(mark).to_have_text(bare(expected["answer"]))  # 三十六家
    # The sentence sits below the answer inside the bubble.
    answer_box = turn.locator(".answer").bounding_box()
    evidence_box = evidence.bounding_box()
    assert answer_box and evidence_box and evidence_box["y"] >= answer_box["y"] + answer_box["height"] - 1

    # The answer's confidence, never the citations' fusion scores.
    bot_text = turn.locator(".msg.bot").text_content() or ""
    for c in expected["citations"]:
        assert f"{c['score']:.3f}" not in bot_text and str(c["score"]) not in bot_text
    confidence = expected.get("confidence")
    if confidence is None:
        expect(turn.locator(".confidence")).to_have_count(0)
    else:
        expect(turn.locator(".confidence")).to_have_text(f"把握 {round(confidence * 100)}%")
    if expected.get("low_confidence"):
        expect(turn.locator(".low-confidence")).to_have_text("把握不大，请核对引文")
    else:
        expect(turn.locator(".low-confidence")).to_have_count(0)
    page.screenshot(path=SHOTS / "news_answer_sentence.png")

    # A low-confidence answer says so; a sentence from the documents is text, never markup.
    sentence = "据称<img src=x onerror=alert(1)>共有三十六家茶企参展。"
    low = answer_json(TEA_QUESTION, "三十六家 [1]")
    low.update(answer_sentence=sentence, confidence=0.21, low_confidence=True, citations=[])
    page.route("**/ask/stream", lambda route: fulfil_sse(route, [("answer", low)]))
    turn = ask(page, TEA_QUESTION)
    expect(turn.locator(".low-confidence")).to_have_text("把握不大，请核对引文")
    expect(turn.locator(".confidence")).to_have_text("把握 21%")
    expect(turn.locator(".evidence-text")).to_have_text(sentence)
    expect(turn.locator(".evidence mark")).to_have_text("三十六家")
    assert page.locator("#messages img").count() == 0
    news.check_clean()


# Records every text the documents panel's status line showed (the index update can be quick).
STATUS_OBSERVER = """
window.__status = [];
new MutationObserver(() => {
  const text = document.getElementById('docs-status-text').textContent;
  if (text && window.__status[window.__status.length - 1] !== text) window.__status.push(text);
}).observe(document.getElementById('docs-status'), {subtree: true, childList: true, characterData: true});
"""


def check_listing(page: Page, news_server: str) -> dict:
    """The documents panel lists what GET /documents says: files with article counts, skipped files."""
    docs = page.locator("#docs")
    listing = httpx.get(f"{news_server}/documents", timeout=60).json()
    files = docs.locator("#doc-files li.doc-file")
    expect(files).to_have_count(len(listing["files"]))
    for f in listing["files"]:
        row = files.filter(has=page.locator(".file-name", has_text=f["source"]))
        expect(row.locator(".file-count")).to_have_text(f"{f['articles']} 篇文章")
    skipped = docs.locator("#doc-skipped li", has_text=NEWS_PICTURE)
    expect(skipped).to_be_visible()
    reason = next(s["reason"] for s in listing["skipped"] if s["source"] == NEWS_PICTURE)
    expect(skipped.locator(".skip-reason")).to_have_text(reason)
    expect(page.locator("#docs-counts")).to_contain_text(f"{listing['counts']['articles']} 篇文章")
    expect(page.locator("#upload-send")).to_be_disabled()  # no token yet
    return listing


def refused_with_a_wrong_token(page: Page, park: Path, news_server: str, listing: dict) -> None:
    """A wrong token: a Chinese message, the token asked for again, nothing changed on the server."""
    page.locator("#token").fill("wrong-token")
    page.locator("#token-save").click()
    page.locator("#upload-file").set_input_files(park)
    page.locator("#upload-send").click()
    expect(page.locator("#docs-error")).to_contain_text("管理口令不对")
    expect(page.locator("#token-form")).to_be_visible()
    assert httpx.get(f"{news_server}/documents", timeout=60).json()["counts"] == listing["counts"]


def upload_from_the_page(w: Watched, park: Path) -> Any:
    """Upload `park` with the right token; returns its row in the list once it is there."""
    page = w.page
    page.locator("#token").fill(NEWS_TOKEN)
    page.locator("#token").press("Enter")
    expect(page.locator("#token-state")).to_be_visible()
    assert page.evaluate("sessionStorage.getItem('rag-zh.admin-token')") == NEWS_TOKEN
    page.evaluate(STATUS_OBSERVER)
    with page.expect_request("**/documents") as upload_info:
        page.locator("#upload-file").set_input_files(park)
        page.locator("#upload-send").click()
    request = upload_info.value
    assert request.method == "POST"
    assert request.headers["authorization"] == f"Bearer {NEWS_TOKEN}"
    row = page.locator("#doc-files li.doc-file").filter(has=page.locator(".file-name", has_text=park.name))
    expect(row).to_have_count(1)
    expect(row.locator(".file-count")).to_have_text("1 篇文章")
    expect(page.locator("#docs-status-text")).to_contain_text(f"已添加 {park.name}")
    shown = page.evaluate("window.__status")
    assert any("正在更新索引" in t for t in shown), shown  # shown while the job ran
    # The upload is a job: answered 202, then polled until done, then the list refreshed.
    assert any(re.search(r"/documents/jobs/[0-9a-f]{32}$", u) for u in w.requests), w.requests
    expect(page.locator("#docs-error")).to_be_hidden()
    # The token never leaves the tab's sessionStorage but in the Authorization header.
    assert NEWS_TOKEN not in page.url
    assert NEWS_TOKEN not in (page.evaluate("JSON.stringify(localStorage)") or "")
    assert all(NEWS_TOKEN not in u for u in w.requests)
    return row


def delete_from_the_page(page: Page, row: Any, news_server: str, source: str) -> None:
    delete = row.locator("button.delete")
    delete.click()
    expect(delete).to_have_text("确认删除？")  # asked first, no dialog
    with page.expect_request(f"**/documents/{quote(source, safe='')}") as delete_info:
        delete.click()
    assert delete_info.value.method == "DELETE"
    expect(row).to_have_count(0)
    expect(page.locator("#docs-status-text")).to_contain_text(f"已删除 {source}")
    sources = [f["source"] for f in httpx.get(f"{news_server}/documents", timeout=60).json()["files"]]
    assert source not in sources


def test_upload_and_delete_from_the_page(news: Watched, news_server: str, tmp_path: Path) -> None:
    page = news.page
    before = ask(page, PARK_QUESTION)
    assert PARK_ANSWER not in (before.locator(".answer").text_content() or "")

    page.locator("#docs-open").click()
    expect(page.locator("#docs")).to_be_visible()
    listing = check_listing(page, news_server)
    park = tmp_path / PARK_FILE
    park.write_text(PARK_DOC, encoding="utf-8")
    refused_with_a_wrong_token(page, park, news_server, listing)
    try:
        row = upload_from_the_page(news, park)
        page.screenshot(path=SHOTS / "documents_uploaded.png")
        page.locator("#docs-close").click()
        after = ask(page, PARK_QUESTION)
        expect(after.locator(".answer")).to_contain_text(PARK_ANSWER)
        expect(after.locator(".evidence mark")).to_have_text(PARK_ANSWER)

        page.locator("#docs-open").click()
        delete_from_the_page(page, row, news_server, PARK_FILE)
    finally:
        httpx.delete(f"{news_server}/documents/{quote(PARK_FILE, safe='')}", headers=NEWS_ADMIN, timeout=120)

    page.locator("#docs-close").click()
    gone = ask(page, PARK_QUESTION)
    assert PARK_ANSWER not in (gone.locator(".answer").text_content() or "")
    # The token is kept in this tab's storage: a reload does not ask for it again.
    page.reload()
    page.locator("#docs-open").click()
    expect(page.locator("#token-state")).to_be_visible()
    news.check_clean()


def test_document_errors_are_in_chinese(news: Watched, news_server: str) -> None:
    page = news.page
    garbled = bytes(range(256)) * 4
    refused = httpx.post(
        f"{news_server}/documents",
        headers=NEWS_ADMIN,
        files={"file": ("乱码.txt", garbled, "text/plain")},
        timeout=120,
    )
    assert refused.status_code == 400
    reason = refused.json()["message"]
    page.locator("#docs-open").click()
    page.locator("#token").fill(NEWS_TOKEN)
    page.locator("#token-save").click()
    # Wrong type: refused by the page before it is sent.
    page.locator("#upload-file").set_input_files(
        {"name": "表格.xlsx", "mimeType": "application/octet-stream", "buffer": b"PK\x03\x04" + bytes(16)}
    )
    page.locator("#upload-send").click()
    expect(page.locator("#docs-error")).to_have_text(
        "不支持 表格.xlsx 的文件类型；请上传 .txt、.md、.pdf、.docx、.html、."
        "htm、.png、.jpg、.jpeg、.tif、.tiff、.bmp、.webp 文件。"
    )
    # A file the server cannot read (binary under a .txt name): the server's 400, in Chinese.
    page.locator("#upload-file").set_input_files(
        {"name": "乱码.txt", "mimeType": "text/plain", "buffer": garbled}
    )
    with page.expect_response("**/documents") as response_info:
        page.locator("#upload-send").click()
    assert response_info.value.status == 400
    error = page.locator("#docs-error")
    expect(error).to_contain_text("乱码.txt")
    expect(error).to_contain_text(reason)  # the server's reason, with what to do
    expect(page.locator("#docs")).to_have_attribute("aria-busy", "false")  # the list is refreshed
    # Deleting a file someone else removed meanwhile: 404, said in Chinese, list refreshed.
    page.route(
        "**/documents/*",
        lambda route: (
            route.fulfill(status=404, json={"detail": "no document", "message": "no document"})
            if route.request.method == "DELETE"
            else route.continue_()
        ),
    )
    row = page.locator("#doc-files li.doc-file").first
    name = row.locator(".file-name").text_content() or ""
    row.locator("button.delete").click()
    row.locator("button.delete").click()
    expect(error).to_have_text(f"找不到 {name}，它可能已被删除；列表已刷新。")
    page.screenshot(path=SHOTS / "documents_error.png")
    news.check_clean()


XSS_UPLOAD_NAME = '<img src=x onerror=alert("name")><script>alert(2)</script>湿地.md'
XSS_UPLOAD_DOC = (
    '# 鹭鸣湾<img src=x onerror=alert("title")>观鸟节<script>alert(3)</script>\n\n'
    "本报讯（通讯员 郑雨桐）鹭鸣湾首届观鸟节近日开幕，共有二百六十名观鸟爱好者参加。"
    '主办方提醒，<img src=x onerror=alert("body")>和<script>alert(4)</script>都只是演示文字，'
    '[点我领奖](javascript:alert(5)) 与 <a href="javascript:alert(6)">这个链接</a> 也不要点击。\n'
)
XSS_UPLOAD_QUESTION = "鹭鸣湾首届观鸟节共有多少名观鸟爱好者参加"


def test_a_document_uploaded_with_xss_in_its_name_title_and_body_shows_as_text(
    news: Watched, news_server: str
) -> None:
    """Uploaded through the page: the name, title and body show as text and nothing fires."""
    page = news.page
    page.locator("#docs-open").click()
    page.locator("#token").fill(NEWS_TOKEN)
    page.locator("#token-save").click()
    page.locator("#upload-file").set_input_files(
        {"name": XSS_UPLOAD_NAME, "mimeType": "text/markdown", "buffer": XSS_UPLOAD_DOC.encode()}
    )
    page.locator("#upload-send").click()
    status = page.locator("#docs-status-text")
    expect(status).to_contain_text("已添加")
    listed = httpx.get(f"{news_server}/documents", timeout=60).json()
    (source,) = [a["source"] for a in listed["articles"] if "观鸟节" in a["title"]]
    try:
        (title,) = [a["title"] for a in listed["articles"] if a["source"] == source]
        assert "<img src=x" in title and "<script>" in title  # kept as text by the server
        row = page.locator("#doc-files li.doc-file").filter(has=page.locator(".file-name", has_text=source))
        expect(row).to_have_count(1)
        row.locator("summary").click()
        expect(row.locator(".article-list a")).to_have_text(title)
        expect(status).to_contain_text(source)
        assert page.locator("#docs img, #docs script").count() == 0
        assert page.locator("a[href^='javascript:' i]").count() == 0

        page.locator("#docs-close").click()
        turn = ask(page, XSS_UPLOAD_QUESTION)
        expect(turn.locator(".answer")).to_contain_text("二百六十")
        turn.locator(".source-title").filter(has_text="观鸟节").first.click()
        passage = page.locator("#panel-text")
        expect(passage).to_contain_text('<img src=x onerror=alert("body")>')
        expect(passage).to_contain_text("<script>alert(4)</script>")
        expect(page.locator("#panel-title")).to_contain_text('<img src=x onerror=alert("title")>')
        assert page.locator("#panel img, #messages img, #panel script, #messages script").count() == 0
        assert page.locator("a[href^='javascript:' i]").count() == 0
        page.screenshot(path=SHOTS / "xss_upload_as_text.png")

        article_id = next(a["id"] for a in listed["articles"] if a["source"] == source)
        page.goto(f"/read/{quote(article_id, safe='')}")
        expect(page.locator("#article-text")).to_contain_text("javascript:alert(5)")
        expect(page.locator("#article-text")).to_contain_text("<script>alert(4)</script>")
        assert page.locator("article img, article script, a[href^='javascript:' i]").count() == 0
    finally:
        with httpx.Client(base_url=news_server, timeout=120, headers=NEWS_ADMIN) as api:
            finished_job(api, api.delete(f"/documents/{quote(source, safe='')}"))
    assert news.dialogs == []
    news.check_clean()


def test_two_conversations(news: Watched) -> None:
    page = news.page
    first = ask(page, TEA_QUESTION)
    first_answer = first.locator(".answer").text_content() or ""
    conversations = page.locator("#conversations button.conversation")
    expect(conversations).to_have_count(1)
    expect(conversations.first).to_contain_text(TEA_QUESTION)

    page.locator("#new-chat").click()
    expect(page.locator("li.turn")).to_have_count(0)
    expect(page.locator("#welcome")).to_be_visible()
    with page.expect_request("**/ask/stream") as request_info:
        second = ask(page, BRIDGE_QUESTION)
    assert json.loads(request_info.value.post_data or "{}")["history"] == []  # a new conversation
    second_answer = second.locator(".answer").text_content() or ""
    expect(conversations).to_have_count(2)
    expect(conversations.first).to_contain_text(BRIDGE_QUESTION)  # the latest first
    expect(conversations.first).to_have_attribute("aria-current", "true")

    conversations.filter(has_text=TEA_QUESTION).click()
    turns = page.locator("li.turn")
    expect(turns).to_have_count(1)
    expect(turns.first.locator(".msg.user")).to_have_text(TEA_QUESTION)
    expect(turns.first.locator(".answer")).to_have_text(first_answer)
    # A follow-up here is read with this conversation's history only.
    with page.expect_request("**/ask/stream") as request_info:
        ask(page, "游客有多少人次？")
    sent = json.loads(request_info.value.post_data or "{}")
    assert [m["content"] for m in sent["history"]] == [TEA_QUESTION, first_answer]
    page.screenshot(path=SHOTS / "two_conversations.png")

    conversations.filter(has_text=BRIDGE_QUESTION).click()
    expect(turns).to_have_count(1)
    expect(turns.first.locator(".msg.user")).to_have_text(BRIDGE_QUESTION)
    expect(turns.first.locator(".answer")).to_have_text(second_answer)

    page.reload()  # both kept in the browser; the one shown stays shown
    expect(conversations).to_have_count(2)
    expect(turns).to_have_count(1)
    expect(turns.first.locator(".msg.user")).to_have_text(BRIDGE_QUESTION)
    conversations.filter(has_text=TEA_QUESTION).click()
    expect(turns).to_have_count(2)

    page.locator("#clear").click()  # deletes the conversation shown, not the other one
    expect(turns).to_have_count(0)
    expect(conversations).to_have_count(2)  # the other one and the new empty one
    expect(conversations.filter(has_text=TEA_QUESTION)).to_have_count(0)
    page.reload()
    conversations.filter(has_text=BRIDGE_QUESTION).click()
    expect(turns).to_have_count(1)
    news.check_clean()


def test_a_thumbs_up_reaches_the_feedback_store(news: Watched, news_server: str) -> None:
    page = news.page
    turn = ask(page, BRIDGE_QUESTION)
    answer = turn.locator(".answer").text_content() or ""
    with page.expect_response("**/feedback") as response_info:
        turn.locator("button.thumb.up").click()
    assert response_info.value.status == 201
    feedback_id = response_info.value.json()["id"]
    expect(turn.locator(".feedback-note")).to_have_text("已记录，谢谢反馈")
    expect(turn.locator("button.thumb.up")).to_have_attribute("aria-pressed", "true")
    expect(turn.locator("button.thumb.down")).to_be_disabled()
    page.screenshot(path=SHOTS / "feedback_recorded.png")

    conversation_id = page.evaluate("JSON.parse(localStorage.getItem('rag-zh.conversations.v2')).active")
    r = httpx.get(f"{news_server}/feedback", headers=NEWS_ADMIN, timeout=60)
    assert r.status_code == 200
    rows = [json.loads(line) for line in r.text.splitlines() if line.strip()]
    row = next(x for x in rows if x["id"] == feedback_id)
    assert row["rating"] == "up"
    assert row["question"] == BRIDGE_QUESTION
    assert row["answer"] == answer
    assert row["conversation_id"] == conversation_id
    assert row["answer_mode"] == "extractive"
    assert row["citations"] and all(c.split("#")[0] == "港城跨海大桥.md" for c in row["citations"])

    page.reload()  # shown as recorded after a reload, and not sent twice
    turn = page.locator("li.turn").first
    expect(turn.locator("button.thumb.up")).to_have_attribute("aria-pressed", "true")
    expect(turn.locator("button.thumb.up")).to_be_disabled()
    news.check_clean()
