"""The chat page in a real browser: Debian's Chromium driven by Playwright against the live server.

Screenshots go to tests/screenshots/ (git-ignored).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

playwright_api = pytest.importorskip("playwright.sync_api")

from playwright.sync_api import Browser, Page, Route, expect, sync_playwright  # noqa: E402

from rag.models import NOT_FOUND  # noqa: E402
from rag.settings import Settings  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).resolve().parent / "screenshots"
PAGE_000 = "000_ed8d00c7a0348028.txt"
QUESTION = "锦屏成立了什么联盟"
FOLLOW_UP = "那它的会长是谁？"
ADMIN = {"Authorization": "Bearer test-admin-token"}  # conftest.API_ADMIN_TOKEN
TIMEOUT = 120_000

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


def test_ask_streams_and_cites_the_supporting_sentence(watched: Watched, live_server: str) -> None:
    page = watched.page
    examples = page.locator("button.example")
    expect(examples).to_have_count(4)
    expect(examples.first).to_have_text(QUESTION)
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
        assert r.status_code == 201, r.text
        doc_id = r.json()["articles"][0]["id"]
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
            api.delete(f"/documents/{quote(doc_id, safe='')}")
    assert watched.dialogs == []
    watched.check_clean()


def test_unreachable_server_and_nothing_found(watched: Watched) -> None:
    page = watched.page
    page.route("**/ask/stream", lambda route: route.abort("connectionrefused"))
    turn = ask_expecting(page, QUESTION, "error")
    expect(turn.locator(".msg.bot")).to_contain_text("无法连接服务器")
    page.screenshot(path=SHOTS / "unreachable.png")
    page.unroute("**/ask/stream")

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
