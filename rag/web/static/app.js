// The chat page. Everything from the server or the user goes into the page through
// textContent and DOM nodes, never innerHTML: document text is untrusted.
"use strict";

(() => {
  const STORE_KEY = "rag-zh.conversations.v2";
  const OLD_STORE_KEY = "rag-zh.conversation.v1"; // one conversation, before there were several
  const TOKEN_KEY = "rag-zh.admin-token"; // sessionStorage: this tab only, never in a URL
  const MAX_STORED_TURNS = 50;
  const MAX_CONVERSATIONS = 40;
  const TITLE_CHARS = 28;
  // The server's settings, rendered into data attributes of #app (the CSP allows no inline
  // script): the abstention text, how many earlier messages a follow-up is read with, top_k,
  // the document types and size an upload may have, whether uploads are on at all.
  const config = document.getElementById("app").dataset;
  const NOT_FOUND = config.notFound;
  const HISTORY_TURNS = Number(config.historyTurns);
  const TOP_K = Number(config.topK);
  const DOC_TYPES = (config.docTypes || ".txt,.md").split(",").filter(Boolean);
  const MAX_UPLOAD_BYTES = Number(config.maxUploadBytes) || 0;
  const UPLOADS_ENABLED = config.uploadsEnabled === "1";
  const UNREACHABLE = "无法连接服务器，请确认服务正在运行后重试。";
  const INTERRUPTED = "回答中断了，请重试。";
  const LOW_CONFIDENCE = "把握不大，请核对引文";

  const $ = (id) => document.getElementById(id);
  const els = {
    form: $("ask-form"),
    input: $("question"),
    send: $("send"),
    clear: $("clear"),
    messages: $("messages"),
    welcome: $("welcome"),
    examples: $("examples"),
    examplesEmpty: $("examples-empty"),
    chat: $("chat"),
    sidebar: $("sidebar"),
    scrim: $("scrim"),
    menu: $("menu"),
    conversations: $("conversations"),
    panel: $("panel"),
    panelNum: $("panel-num"),
    panelTitle: $("panel-title"),
    panelMeta: $("panel-meta"),
    panelText: $("panel-text"),
    panelLink: $("panel-link"),
    panelClose: $("panel-close"),
    docs: $("docs"),
    docsOpen: $("docs-open"),
    docsClose: $("docs-close"),
    docsCounts: $("docs-counts"),
    docsOff: $("docs-off"),
    docsAdmin: $("docs-admin"),
    tokenForm: $("token-form"),
    token: $("token"),
    tokenState: $("token-state"),
    tokenForget: $("token-forget"),
    uploadForm: $("upload-form"),
    uploadFile: $("upload-file"),
    uploadPick: $("upload-pick"),
    uploadNames: $("upload-names"),
    uploadSend: $("upload-send"),
    docsStatus: $("docs-status"),
    docsStatusText: $("docs-status-text"),
    docsProgress: $("docs-progress"),
    docsError: $("docs-error"),
    docFiles: $("doc-files"),
    docSkippedBox: $("doc-skipped-box"),
    docSkipped: $("doc-skipped"),
  };

  /** A server answer that is an error message for the user (4xx/5xx, or an error event). */
  class ServerError extends Error {}

  let store = loadStore(); // { active: id, conversations: [{ id, title, updated, turns }] }
  let conv = activeConversation();
  let busy = false;
  let activeChip = null;

  // ---- ids and storage -------------------------------------------------------------

  /** A random id; crypto.randomUUID exists only on https or localhost pages. */
  function newId() {
    if (window.crypto && typeof window.crypto.randomUUID === "function") return window.crypto.randomUUID();
    const bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function cleanTurns(turns) {
    if (!Array.isArray(turns)) return [];
    return turns.filter((t) => t && typeof t.question === "string" && t.status !== "pending");
  }

  function makeConversation(turns = []) {
    return { id: newId(), title: "", updated: Date.now(), turns };
  }

  function loadStore() {
    let data = null;
    try {
      data = JSON.parse(localStorage.getItem(STORE_KEY) || "null");
    } catch (_err) {
      data = null;
    }
    const conversations = [];
    if (data && Array.isArray(data.conversations)) {
      for (const c of data.conversations) {
        if (!c || typeof c.id !== "string") continue;
        conversations.push({
          id: c.id,
          title: typeof c.title === "string" ? c.title : "",
          updated: Number(c.updated) || 0,
          turns: cleanTurns(c.turns),
        });
      }
    } else {
      // The page used to keep one conversation under the old key: it becomes the first one.
      try {
        const old = cleanTurns(JSON.parse(localStorage.getItem(OLD_STORE_KEY) || "[]"));
        if (old.length) conversations.push(makeConversation(old));
      } catch (_err) {
        // unreadable: start afresh
      }
    }
    const active = data && typeof data.active === "string" ? data.active : null;
    return { active: conversations.some((c) => c.id === active) ? active : null, conversations };
  }

  /** The conversation shown, made when there is none (a fresh page starts an empty one). */
  function activeConversation() {
    let found = store.conversations.find((c) => c.id === store.active);
    if (!found) {
      found = [...store.conversations].sort((a, b) => b.updated - a.updated)[0];
      if (!found) {
        found = makeConversation();
        store.conversations.push(found);
      }
      store.active = found.id;
    }
    return found;
  }

  function serialisable(limit) {
    const conversations = [...store.conversations]
      .sort((a, b) => b.updated - a.updated)
      .filter((c) => c.turns.length || c.id === store.active)
      .slice(0, limit)
      .map((c) => ({
        id: c.id,
        title: c.title,
        updated: c.updated,
        turns: c.turns.filter((t) => t.status !== "pending").slice(-MAX_STORED_TURNS),
      }));
    return { active: store.active, conversations };
  }

  function saveStore() {
    // Storage full: drop the oldest conversations until the rest fits.
    for (let limit = MAX_CONVERSATIONS; limit >= 1; limit = Math.floor(limit / 2)) {
      try {
        localStorage.setItem(STORE_KEY, JSON.stringify(serialisable(limit)));
        localStorage.removeItem(OLD_STORE_KEY);
        return;
      } catch (_err) {
        // try again with fewer
      }
    }
  }

  function titleOf(c) {
    if (c.title) return c.title;
    const first = c.turns[0];
    if (!first) return "新对话";
    const chars = Array.from(first.question);
    return chars.length > TITLE_CHARS ? `${chars.slice(0, TITLE_CHARS).join("")}…` : first.question;
  }

  function getToken() {
    try {
      return sessionStorage.getItem(TOKEN_KEY) || "";
    } catch (_err) {
      return "";
    }
  }

  function setToken(value) {
    try {
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      else sessionStorage.removeItem(TOKEN_KEY);
    } catch (_err) {
      // storage off: the token lasts until the page is left
    }
    memoryToken = value;
  }

  let memoryToken = getToken();

  // ---- small DOM helpers -----------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  function button(className, text, onClick) {
    const b = el("button", className, text);
    b.type = "button";
    if (onClick) b.addEventListener("click", onClick);
    return b;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  const THUMB = "M7 10v11H3V10h4zm2 11h8.3a2 2 0 0 0 2-1.6l1.5-7A2 2 0 0 0 18.8 10H14l.8-4.2a1.7 1.7 0 0 0-3.1-1.2L9 9.5V21z";

  /** A thumb icon (pointing down when `down`): drawn, so no emoji font is needed. */
  function thumbIcon(down) {
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "16");
    svg.setAttribute("height", "16");
    svg.setAttribute("aria-hidden", "true");
    if (down) svg.setAttribute("class", "flip");
    const path = document.createElementNS(SVG_NS, "path");
    path.setAttribute("d", THUMB);
    path.setAttribute("fill", "currentColor");
    svg.append(path);
    return svg;
  }

  /** Code points, as the server's offsets count them (not UTF-16 units). */
  function codePoints(text) {
    return Array.from(text || "");
  }

  /** Fill `container` with `text`, the code-point span [start, end) wrapped in <mark class=markClass>. */
  function fillHighlighted(container, text, span, markClass = "support") {
    container.replaceChildren();
    const chars = codePoints(text);
    if (!Array.isArray(span) || span.length !== 2) {
      container.append(document.createTextNode(text));
      return;
    }
    const start = Math.max(0, Math.min(chars.length, Number(span[0]) || 0));
    const end = Math.max(start, Math.min(chars.length, Number(span[1]) || 0));
    container.append(
      document.createTextNode(chars.slice(0, start).join("")),
      el("mark", markClass, chars.slice(start, end).join("")),
      document.createTextNode(chars.slice(end).join("")),
    );
  }

  function citedIds(turn) {
    const ids = new Set();
    for (const m of (turn.answer || "").matchAll(/\[(\d+)\]/g)) ids.add(Number(m[1]));
    return ids;
  }

  function citationById(turn, n) {
    return (turn.citations || []).find((c) => c.id === n);
  }

  /** The citations the answer's [n] markers point at (all of them when it has no markers). */
  function citedCitations(turn) {
    const marked = citedIds(turn);
    const cited = (turn.citations || []).filter((c) => marked.has(c.id));
    return cited.length ? cited : turn.citations || [];
  }

  function formatBytes(n) {
    if (n >= 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MB`;
    if (n >= 1024) return `${Math.round(n / 1024)} KB`;
    return `${n} 字节`;
  }

  function hasChinese(text) {
    return /[\u3400-\u9fff]/.test(text || "");
  }

  // ---- the supporting sentence -----------------------------------------------------

  /**
   * Where the short answer sits in its supporting sentence, as code-point offsets, or null.
   * The reader's span is the first citation's highlight, in that citation's passage, which
   * holds the sentence; else (a byline answer) the answer's text is looked up in the sentence.
   */
  function answerSpan(turn) {
    const sentence = turn.answer_sentence || "";
    const chars = codePoints(sentence);
    const first = citationById(turn, 1);
    if (first && Array.isArray(first.highlight) && typeof first.text === "string") {
      const at16 = first.text.indexOf(sentence);
      if (at16 >= 0) {
        const at = codePoints(first.text.slice(0, at16)).length;
        let start = Number(first.highlight[0]) - at;
        let end = Number(first.highlight[1]) - at;
        if (start >= 0 && end <= chars.length && start < end) {
          while (start < end && /\s/.test(chars[start])) start += 1;
          while (end > start && /\s/.test(chars[end - 1])) end -= 1;
          if (start < end) return [start, end];
        }
      }
    }
    const short = (turn.answer || "").replace(/\s*\[\d+\]/g, "").trim();
    const i16 = short ? sentence.indexOf(short) : -1;
    if (i16 < 0) return null;
    const start = codePoints(sentence.slice(0, i16)).length;
    return [start, start + codePoints(short).length];
  }

  /** Under a short (read, not written) answer: the sentence it was read from, the answer marked. */
  function evidence(turn) {
    if (turn.abstained || !turn.answer_sentence || turn.answer_mode === "llm") return null;
    const box = el("div", "evidence");
    box.append(el("span", "evidence-label", "原文"));
    const text = el("span", "evidence-text");
    fillHighlighted(text, turn.answer_sentence, answerSpan(turn), "answer-span");
    box.append(text);
    const first = citationById(turn, 1);
    if (first) box.append(chip(turn, first, "[1]"));
    return box;
  }

  // ---- rendering -------------------------------------------------------------------

  function chip(turn, citation, label) {
    const b = button("chip", label, null);
    b.dataset.turn = turn.id;
    b.dataset.n = String(citation.id);
    b.title = citation.title;
    b.setAttribute("aria-label", `查看来源 ${citation.id}：${citation.title}`);
    b.addEventListener("click", () => openPanel(turn, citation, b));
    return b;
  }

  /** The answer text with each [n] marker turned into a citation chip. */
  function answerNodes(turn) {
    const frag = document.createDocumentFragment();
    const text = turn.answer || "";
    let last = 0;
    for (const m of text.matchAll(/\[(\d+)\]/g)) {
      const citation = citationById(turn, Number(m[1]));
      if (!citation) continue;
      frag.append(document.createTextNode(text.slice(last, m.index)));
      frag.append(chip(turn, citation, `[${citation.id}]`));
      last = m.index + m[0].length;
    }
    frag.append(document.createTextNode(text.slice(last)));
    return frag;
  }

  function sourcesList(turn) {
    const cited = citedCitations(turn);
    if (!cited.length) return null;
    const box = el("div", "sources");
    box.append(el("span", "sources-label", "来源"));
    const list = el("ul", "source-list");
    for (const c of cited) {
      const item = el("li");
      const b = chip(turn, c, `[${c.id}]`);
      const title = button("source-title", c.title, () => openPanel(turn, c, b));
      item.append(b, title);
      list.append(item);
    }
    box.append(list);
    return box;
  }

  function copyText(turn) {
    const lines = [turn.answer || ""];
    const marked = citedIds(turn);
    const cited = (turn.citations || []).filter((c) => marked.has(c.id));
    if (cited.length) {
      lines.push("", "来源：");
      for (const c of cited) lines.push(`[${c.id}] ${c.title}（${c.source}）`);
    }
    return lines.join("\n");
  }

  async function copyToClipboard(text) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch (_err) {
      const area = el("textarea", "visually-hidden");
      area.value = text;
      document.body.append(area);
      area.select();
      let ok = false;
      try {
        ok = document.execCommand("copy");
      } catch (_e) {
        ok = false;
      }
      area.remove();
      return ok;
    }
  }

  /** 👍/👎: sent once to POST /feedback, then shown as recorded (also after a reload). */
  function feedbackBar(turn, c) {
    const box = el("div", "feedback");
    const note = el("span", "feedback-note");
    note.setAttribute("role", "status");
    const up = button("ghost small thumb up", null, () => sendFeedback(turn, c, "up", box));
    up.append(thumbIcon(false), el("span", "visually-hidden", "有帮助"));
    up.title = "答案有帮助";
    up.setAttribute("aria-label", "答案有帮助");
    const down = button("ghost small thumb down", null, () => sendFeedback(turn, c, "down", box));
    down.append(thumbIcon(true), el("span", "visually-hidden", "不对"));
    down.title = "答案不对或没帮助";
    down.setAttribute("aria-label", "答案不对或没帮助");
    box.append(up, down, note);
    showFeedback(box, turn.feedback);
    return box;
  }

  function showFeedback(box, rating, message) {
    const [up, down, note] = box.children;
    up.setAttribute("aria-pressed", String(rating === "up"));
    down.setAttribute("aria-pressed", String(rating === "down"));
    up.disabled = down.disabled = Boolean(rating) || box.dataset.sending === "1";
    note.textContent = message || (rating ? "已记录，谢谢反馈" : "");
    box.dataset.state = rating ? "recorded" : message ? "error" : "";
  }

  async function sendFeedback(turn, c, rating, box) {
    if (turn.feedback || box.dataset.sending === "1") return;
    box.dataset.sending = "1";
    showFeedback(box, null, "正在发送…");
    const body = {
      rating,
      question: turn.question,
      answer: turn.answer || "",
      citations: [...new Set(citedCitations(turn).map((x) => String(x.article_id)))],
      conversation_id: c.id,
      answer_mode: turn.answer_mode || null,
    };
    let message = "";
    try {
      const resp = await fetch("/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      });
      if (resp.ok) {
        turn.feedback = rating;
        saveStore();
      } else {
        const detail = await errorMessage(resp);
        message = hasChinese(detail) ? detail : `反馈没有记录（服务器返回 ${resp.status}），请稍后重试。`;
      }
    } catch (_err) {
      message = "反馈没有发出去：无法连接服务器，请稍后重试。";
    }
    delete box.dataset.sending;
    showFeedback(box, turn.feedback, message);
  }

  function confidenceNode(turn) {
    if (typeof turn.confidence !== "number" || !Number.isFinite(turn.confidence)) return null;
    const pct = Math.round(Math.max(0, Math.min(1, turn.confidence)) * 100);
    const node = el("span", "confidence", `把握 ${pct}%`);
    node.title = "阅读模型对这个答案的把握（0–100%），不是检索得分";
    return node;
  }

  function actions(turn, c) {
    const bar = el("div", "actions");
    const left = el("div", "actions-left");
    const confidence = confidenceNode(turn);
    if (confidence) left.append(confidence);
    const copy = button("ghost small copy", "复制", null);
    copy.addEventListener("click", async () => {
      const ok = await copyToClipboard(copyText(turn));
      copy.textContent = ok ? "已复制" : "复制失败";
      setTimeout(() => {
        copy.textContent = "复制";
      }, 1500);
    });
    bar.append(left, feedbackBar(turn, c), copy);
    return bar;
  }

  function renderBot(turn, c) {
    const bot = el("div", "msg bot");
    bot.dataset.status = turn.status;
    const body = el("div", "answer");
    if (turn.status === "pending") {
      body.classList.add("streaming");
      body.textContent = turn.answer || "";
      if (!turn.answer) body.append(el("span", "thinking", "正在查找资料…"));
      bot.append(body);
      for (const reason of turn.retracted || []) bot.append(el("p", "hint retracted", reason));
      return bot;
    }
    if (turn.status === "error") {
      bot.classList.add("error");
      body.textContent = turn.error || UNREACHABLE;
      bot.append(body);
      const bar = el("div", "actions");
      bar.append(
        button("ghost small", "重试", () => {
          if (busy) return;
          c.turns = c.turns.filter((t) => t !== turn);
          bot.closest("li.turn")?.remove();
          ask(turn.question);
        }),
      );
      bot.append(bar);
      return bot;
    }
    if (turn.abstained) {
      bot.classList.add("notfound");
      body.textContent = turn.answer || NOT_FOUND;
      bot.append(body, el("p", "hint", "可以换个说法再问，或请管理员补充相关资料。"));
      bot.append(actions(turn, c));
      return bot;
    }
    body.append(answerNodes(turn));
    bot.append(body);
    const support = evidence(turn);
    if (support) bot.append(support);
    if (turn.low_confidence) {
      bot.classList.add("low");
      bot.append(el("p", "hint low-confidence", LOW_CONFIDENCE));
    }
    const sources = sourcesList(turn);
    if (sources) bot.append(sources);
    for (const w of turn.warnings || []) bot.append(el("p", "hint", w));
    bot.append(actions(turn, c));
    return bot;
  }

  function renderTurn(turn, c) {
    const item = el("li", "turn");
    item.dataset.id = turn.id;
    const user = el("div", "msg user");
    user.append(el("div", "question", turn.question));
    item.append(user, renderBot(turn, c));
    return item;
  }

  function renderConversations() {
    const shown = [...store.conversations]
      .filter((c) => c.turns.length || c === conv)
      .sort((a, b) => b.updated - a.updated);
    const items = shown.map((c) => {
      const item = el("li");
      const b = button("conversation", null, () => switchTo(c.id));
      b.dataset.id = c.id;
      if (c === conv) b.setAttribute("aria-current", "true");
      b.append(el("span", "conversation-title", titleOf(c)));
      const when = c.turns.length
        ? `${c.turns.length} 问 · ${new Date(c.updated).toLocaleString("zh-CN", {
            month: "numeric",
            day: "numeric",
            hour: "2-digit",
            minute: "2-digit",
          })}`
        : "还没有提问";
      b.append(el("span", "conversation-meta", when));
      item.append(b);
      return item;
    });
    els.conversations.replaceChildren(...items);
  }

  function renderAll() {
    els.messages.replaceChildren(...conv.turns.map((t) => renderTurn(t, conv)));
    els.welcome.hidden = conv.turns.length > 0;
    els.clear.disabled = conv.turns.length === 0 || busy;
    renderConversations();
  }

  function rerender(turn, c) {
    if (c !== conv) return; // another conversation is shown: it renders when switched back to
    const old = els.messages.querySelector(`li.turn[data-id="${CSS.escape(turn.id)}"]`);
    const fresh = renderTurn(turn, c);
    if (old) old.replaceWith(fresh);
    else els.messages.append(fresh);
    els.welcome.hidden = c.turns.length > 0;
  }

  function updateStreaming(turn, c) {
    if (c !== conv) return;
    const item = els.messages.querySelector(`li.turn[data-id="${CSS.escape(turn.id)}"] .answer`);
    if (item) item.textContent = turn.answer;
    scrollToBottom();
  }

  function scrollToBottom() {
    els.chat.scrollTop = els.chat.scrollHeight;
  }

  // ---- conversations ---------------------------------------------------------------

  function switchTo(id) {
    const target = store.conversations.find((c) => c.id === id);
    closeSidebar();
    if (!target || target === conv) return;
    conv = target;
    store.active = id;
    // An empty conversation left behind is dropped (it would only clutter the list).
    store.conversations = store.conversations.filter((c) => c.turns.length || c === conv);
    saveStore();
    closePanel();
    renderAll();
    setBusy(busy);
    scrollToBottom();
  }

  function newConversation() {
    closeSidebar();
    if (conv.turns.length === 0) {
      els.input.focus();
      return;
    }
    const fresh = makeConversation();
    store.conversations.push(fresh);
    switchTo(fresh.id);
    els.input.focus();
  }

  function deleteConversation() {
    if (busy) return;
    store.conversations = store.conversations.filter((c) => c !== conv);
    const fresh = makeConversation();
    store.conversations.push(fresh);
    conv = fresh;
    store.active = fresh.id;
    saveStore();
    closePanel();
    renderAll();
    els.input.focus();
  }

  function openSidebar() {
    els.sidebar.classList.add("open");
    els.scrim.hidden = false;
    els.menu.setAttribute("aria-expanded", "true");
  }

  function closeSidebar() {
    if (!els.sidebar.classList.contains("open")) return;
    els.sidebar.classList.remove("open");
    els.scrim.hidden = els.docs.hidden;
    els.menu.setAttribute("aria-expanded", "false");
  }

  // ---- citation panel --------------------------------------------------------------

  function openPanel(turn, citation, b) {
    closeDocs();
    if (activeChip) activeChip.classList.remove("active");
    activeChip = b;
    b.classList.add("active");
    els.panelNum.textContent = `[${citation.id}]`;
    els.panelTitle.textContent = citation.title;
    const position = String(citation.article_id).split("#").pop();
    els.panelMeta.textContent = `来源：${citation.source} · 第 ${Number(position) + 1} 篇`;
    fillHighlighted(els.panelText, citation.text, citation.highlight);
    const params = new URLSearchParams();
    if (Array.isArray(citation.highlight)) {
      params.set("start", String(citation.start + citation.highlight[0]));
      params.set("end", String(citation.start + citation.highlight[1]));
    } else {
      params.set("start", String(citation.start));
      params.set("end", String(citation.end));
    }
    els.panelLink.href = `/read/${encodeURIComponent(citation.article_id)}?${params}#hl`;
    els.panel.hidden = false;
    document.body.classList.add("panel-open");
    els.panel.focus({ preventScroll: true });
  }

  function closePanel() {
    if (els.panel.hidden) return;
    els.panel.hidden = true;
    document.body.classList.remove("panel-open");
    if (activeChip) {
      activeChip.classList.remove("active");
      if (activeChip.isConnected) activeChip.focus({ preventScroll: true });
      activeChip = null;
    }
  }

  // ---- talking to the server -------------------------------------------------------

  async function errorMessage(resp) {
    try {
      const body = await resp.json();
      if (typeof body.message === "string") return body.message;
      if (typeof body.detail === "string") return body.detail;
      return `服务器返回错误 ${resp.status}`;
    } catch (_err) {
      return `服务器返回错误 ${resp.status}`;
    }
  }

  function parseFrame(frame) {
    let event = "message";
    const data = [];
    for (const line of frame.split("\n")) {
      if (line.startsWith("event:")) event = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    return { event, data: data.length ? JSON.parse(data.join("\n")) : null };
  }

  /**
   * POST /ask/stream: call onDelta with each piece of text and onRetract(reason) when the text
   * so far is withdrawn (an LLM answer that failed its citation check; a replacement follows);
   * resolve to the final answer.
   */
  async function streamAsk(body, onDelta, onRetract) {
    const resp = await fetch("/ask/stream", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify(body),
    });
    if (!resp.ok) throw new ServerError(await errorMessage(resp));
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true }).replace(/\r\n/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        if (!frame.trim()) continue;
        const { event, data } = parseFrame(frame);
        if (event === "delta") onDelta(data.text || "");
        else if (event === "retract") onRetract(data.reason || "");
        else if (event === "answer") return data;
        else if (event === "error") throw new ServerError(data.detail || INTERRUPTED);
      }
    }
    throw new ServerError(INTERRUPTED);
  }

  /** The last HISTORY_TURNS messages of a conversation's finished turns: what a follow-up is read with. */
  function history(c) {
    const out = [];
    for (const t of c.turns.filter((turn) => turn.status === "done")) {
      out.push({ role: "user", content: t.question });
      out.push({ role: "assistant", content: t.answer });
    }
    return HISTORY_TURNS > 0 ? out.slice(-HISTORY_TURNS) : [];
  }

  function setBusy(value) {
    busy = value;
    els.send.disabled = value;
    els.clear.disabled = value || conv.turns.length === 0;
    els.send.textContent = value ? "回答中…" : "提问";
  }

  async function ask(raw) {
    const question = (raw || "").trim();
    if (!question || busy) return;
    const c = conv; // the answer lands in this conversation, even if another is shown meanwhile
    const turn = { id: newId(), question, status: "pending", answer: "", citations: [] };
    const previous = history(c);
    c.turns.push(turn);
    c.updated = Date.now();
    setBusy(true);
    rerender(turn, c);
    renderConversations();
    scrollToBottom();
    try {
      const body = { question, top_k: TOP_K, history: previous, answer_mode: "auto" };
      const onDelta = (text) => {
        turn.answer += text;
        updateStreaming(turn, c);
      };
      const onRetract = (reason) => {
        turn.answer = "";
        turn.retracted = [...(turn.retracted || []), reason];
        rerender(turn, c);
      };
      const final = await streamAsk(body, onDelta, onRetract);
      const warnings = final.warnings || [];
      Object.assign(turn, {
        status: "done",
        answer: final.answer,
        answer_sentence: final.answer_sentence || "",
        abstained: Boolean(final.abstained),
        citations: final.citations || [],
        confidence: typeof final.confidence === "number" ? final.confidence : null,
        low_confidence: Boolean(final.low_confidence),
        // The retraction's reason stays visible, once (the answer usually repeats it).
        warnings: [...(turn.retracted || []).filter((r) => r && !warnings.includes(r)), ...warnings],
        answer_mode: final.answer_mode,
      });
      delete turn.retracted;
    } catch (err) {
      turn.status = "error";
      turn.error = err instanceof ServerError ? err.message : UNREACHABLE;
    } finally {
      c.updated = Date.now();
      setBusy(false);
      saveStore();
      rerender(turn, c);
      renderConversations();
      if (c === conv) scrollToBottom();
    }
  }

  // ---- example questions -----------------------------------------------------------

  function renderExamples(questions) {
    const items = questions.map((q) => {
      const item = el("li");
      const b = button("example", q, null);
      b.dataset.question = q;
      item.append(b);
      return item;
    });
    els.examples.replaceChildren(...items);
    els.examplesEmpty.hidden = questions.length > 0;
  }

  /** The corpus changed: its example questions may have too. */
  async function refreshExamples() {
    try {
      const resp = await fetch("/examples", { headers: { Accept: "application/json" } });
      if (!resp.ok) return;
      const body = await resp.json();
      if (Array.isArray(body.questions)) renderExamples(body.questions.filter((q) => typeof q === "string"));
    } catch (_err) {
      // keep the ones shown
    }
  }

  // ---- documents -------------------------------------------------------------------

  let docsBusy = false;

  function openDocs() {
    closePanel();
    closeSidebar();
    els.docs.hidden = false;
    els.scrim.hidden = false;
    document.body.classList.add("docs-open");
    renderAdmin();
    loadDocuments();
    els.docs.focus({ preventScroll: true });
  }

  function closeDocs() {
    if (els.docs.hidden) return;
    els.docs.hidden = true;
    els.scrim.hidden = !els.sidebar.classList.contains("open");
    document.body.classList.remove("docs-open");
    els.docsOpen.focus({ preventScroll: true });
  }

  function renderAdmin() {
    els.docsOff.hidden = UPLOADS_ENABLED;
    els.docsAdmin.hidden = !UPLOADS_ENABLED;
    const hasToken = Boolean(memoryToken);
    els.tokenForm.hidden = hasToken;
    els.tokenState.hidden = !hasToken;
    els.uploadFile.disabled = !hasToken || docsBusy;
    els.uploadPick.classList.toggle("disabled", els.uploadFile.disabled);
    els.uploadSend.disabled = !hasToken || docsBusy;
    for (const b of els.docFiles.querySelectorAll("button.delete")) b.disabled = !hasToken || docsBusy;
  }

  function showDocsError(message) {
    els.docsError.textContent = message || "";
    els.docsError.hidden = !message;
  }

  /** Progress: `fraction` 0..1 while uploading, null while the server works (indeterminate). */
  function showDocsStatus(text, fraction) {
    if (text === null) {
      els.docsStatus.hidden = true;
      els.docsStatusText.textContent = "";
      return;
    }
    els.docsStatus.hidden = false;
    els.docsStatusText.textContent = text;
    if (typeof fraction === "number") els.docsProgress.value = fraction;
    else els.docsProgress.removeAttribute("value");
    els.docsProgress.hidden = fraction === false;
  }

  function setDocsBusy(value) {
    docsBusy = value;
    els.docs.setAttribute("aria-busy", String(value));
    renderAdmin();
  }

  /** A Chinese message for a failed document request, naming the file and what to do. */
  function adminError(status, detail, name) {
    switch (status) {
      case 401:
        return "管理口令不对，请重新输入（即服务器启动时设置的 RAG_ADMIN_TOKEN）。";
      case 403:
        return "服务器没有开启文档管理：请设置 RAG_ADMIN_TOKEN 后重启服务。";
      case 404:
        return `找不到 ${name}，它可能已被删除；列表已刷新。`;
      case 409:
        if (hasChinese(detail)) return detail;
        if (/missing from/.test(detail)) {
          return `索引里的部分文件已不在服务器的资料文件夹中，为免丢失，索引没有改动：请恢复这些文件，或在服务器上运行 rag build 重建索引（服务器说：${detail}）。`;
        }
        if (/shutting down|shut down/.test(detail)) return `服务器正在关闭，${name} 没有处理；请在服务器重启后重试。`;
        return `${name} 是最后一个文档，不能删除；请先上传其他文档。`;
      case 413:
        return `${name} 太大：上传上限是 ${formatBytes(MAX_UPLOAD_BYTES)}（RAG_MAX_UPLOAD_BYTES）。`;
      case 415:
        return `不支持 ${name} 的文件类型；请上传 ${DOC_TYPES.join("、")} 文件。`;
      default:
        if (status >= 500) return `服务器处理 ${name} 时出错（${status}），请稍后重试或查看服务器日志。`;
        if (hasChinese(detail)) return detail.includes(name) ? detail : `${name}：${detail}`;
        return `无法处理 ${name}：请确认它含有正文（文本文件用 UTF-8 或 GB18030 编码）（服务器说：${detail}）。`;
    }
  }

  function detailOf(body, status) {
    if (body && typeof body.message === "string") return body.message;
    if (body && typeof body.detail === "string") return body.detail;
    return `服务器返回错误 ${status}`;
  }

  function forgetTokenAfter401(status) {
    if (status !== 401) return;
    setToken("");
    renderAdmin();
    els.token.focus();
  }

  async function loadDocuments() {
    try {
      const resp = await fetch("/documents", { headers: { Accept: "application/json" } });
      if (!resp.ok) throw new ServerError(await errorMessage(resp));
      renderDocuments(await resp.json());
    } catch (err) {
      showDocsError(err instanceof ServerError ? `文件列表读取失败：${err.message}` : UNREACHABLE);
    }
  }

  function renderDocuments(listing) {
    const counts = listing.counts || {};
    const files = Array.isArray(listing.files) ? listing.files : [];
    const skipped = Array.isArray(listing.skipped) ? listing.skipped : [];
    const articles = Array.isArray(listing.articles) ? listing.articles : [];
    els.docsCounts.textContent =
      `共 ${counts.documents ?? files.length} 个文件 · ${counts.articles ?? articles.length} 篇文章` +
      (counts.chunks !== undefined ? ` · ${counts.chunks} 个段落` : "");
    const bySource = new Map();
    for (const a of articles) {
      if (!bySource.has(a.source)) bySource.set(a.source, []);
      bySource.get(a.source).push(a);
    }
    els.docFiles.replaceChildren(...files.map((f) => fileItem(f, bySource.get(f.source) || [])));
    if (!files.length) els.docFiles.append(el("li", "hint", "资料库里还没有文件。"));
    // Files in the docs folder that the index does not hold: uploads never index them.
    const unindexed = Array.isArray(listing.unindexed) ? listing.unindexed : [];
    els.docSkipped.replaceChildren(
      ...skipped.map((s) => {
        const item = el("li", "skipped");
        item.dataset.source = s.source;
        item.append(el("span", "file-name", s.source), el("span", "skip-reason", s.reason));
        return item;
      }),
      ...unindexed.map((source) => {
        const item = el("li", "skipped unindexed");
        item.dataset.source = source;
        item.append(
          el("span", "file-name", source),
          el("span", "skip-reason", "在资料文件夹中但不在索引里；请在服务器上运行 rag build 收录"),
        );
        return item;
      }),
    );
    els.docSkippedBox.hidden = skipped.length + unindexed.length === 0;
    renderAdmin();
  }

  function fileItem(file, articles) {
    const item = el("li", "doc-file");
    item.dataset.source = file.source;
    const details = el("details");
    const summary = el("summary");
    summary.append(
      el("span", "file-name", file.source),
      el("span", "file-count", `${file.articles} 篇文章`),
    );
    details.append(summary);
    const list = el("ul", "article-list");
    for (const a of articles) {
      const li = el("li");
      const link = el("a", null, a.title);
      link.href = `/read/${encodeURIComponent(a.id)}`;
      link.target = "_blank";
      link.rel = "noopener";
      li.append(link);
      list.append(li);
    }
    details.append(list);
    item.append(details);
    if (UPLOADS_ENABLED) {
      const del = button("ghost small delete", "删除", null);
      del.setAttribute("aria-label", `删除 ${file.source}`);
      del.addEventListener("click", () => confirmDelete(del, file.source));
      item.append(del);
    }
    return item;
  }

  /** Two clicks (no dialog): the first asks "确认删除？", the second deletes. */
  function confirmDelete(b, source) {
    if (docsBusy) return;
    if (b.dataset.confirm !== "1") {
      b.dataset.confirm = "1";
      b.textContent = "确认删除？";
      b.classList.add("danger");
      setTimeout(() => {
        if (b.isConnected && b.dataset.confirm === "1") {
          delete b.dataset.confirm;
          b.textContent = "删除";
          b.classList.remove("danger");
        }
      }, 5000);
      return;
    }
    deleteDocument(source);
  }

  const JOB_POLL_MS = 400;
  const JOB_STAGES = {
    queued: "排队等候中",
    indexing: "正在更新索引",
    loading: "正在载入新索引",
  };

  /**
   * Follow a document job (the 202 of an upload or delete) until it is done or failed.
   * `onStage` gets the stage's words while it runs; resolves with the job's last state.
   */
  async function waitJob(job, onStage) {
    let state = job;
    for (;;) {
      if (state.status === "done" || state.status === "failed") return state;
      onStage(JOB_STAGES[state.stage] || JOB_STAGES.indexing);
      await new Promise((resolve) => setTimeout(resolve, JOB_POLL_MS));
      const resp = await fetch(`/documents/jobs/${encodeURIComponent(state.id)}`, {
        headers: { Accept: "application/json" },
      });
      if (!resp.ok) throw new ServerError(await errorMessage(resp));
      state = await resp.json();
    }
  }

  /** The Chinese message for a failed job, from the status its error would have had. */
  function jobError(state, name) {
    return adminError(state.error_status || 500, state.error || "", name);
  }

  async function deleteDocument(source) {
    const token = memoryToken;
    if (!token) return;
    showDocsError("");
    setDocsBusy(true);
    showDocsStatus(`正在删除 ${source}，正在更新索引…`, null);
    try {
      const resp = await fetch(`/documents/${encodeURIComponent(source)}`, {
        method: "DELETE",
        headers: { Authorization: `Bearer ${token}`, Accept: "application/json" },
      });
      let body = null;
      try {
        body = await resp.json();
      } catch (_err) {
        body = null;
      }
      if (resp.status === 202 && body && body.job) {
        const state = await waitJob(body.job, (stage) => showDocsStatus(`正在删除 ${source}，${stage}…`, null));
        if (state.status === "done") {
          showDocsStatus(`已删除 ${source}`, false);
          refreshExamples();
        } else {
          showDocsStatus(null);
          showDocsError(jobError(state, source));
        }
      } else if (resp.ok) {
        showDocsStatus(`已删除 ${source}`, false);
        refreshExamples();
      } else {
        showDocsStatus(null);
        showDocsError(adminError(resp.status, detailOf(body, resp.status), source));
        forgetTokenAfter401(resp.status);
      }
    } catch (err) {
      showDocsStatus(null);
      showDocsError(err instanceof ServerError ? `删除 ${source} 的进度读取失败：${err.message}` : UNREACHABLE);
    } finally {
      await loadDocuments();
      setDocsBusy(false);
    }
  }

  /** POST /documents by XMLHttpRequest: fetch() reports no upload progress. */
  function uploadRequest(file, token, onSent) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/documents");
      xhr.setRequestHeader("Authorization", `Bearer ${token}`);
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.addEventListener("progress", (e) => {
        if (e.lengthComputable) onSent(e.loaded / e.total);
      });
      // The bytes are on the server: from here it is the checks, then the job that indexes it.
      xhr.upload.addEventListener("load", () => onSent(1));
      xhr.addEventListener("load", () => {
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch (_err) {
          body = null;
        }
        resolve({ status: xhr.status, body });
      });
      xhr.addEventListener("error", () => reject(new Error(UNREACHABLE)));
      xhr.addEventListener("abort", () => reject(new Error(UNREACHABLE)));
      const form = new FormData();
      form.append("file", file, file.name);
      xhr.send(form);
    });
  }

  function checkFile(file) {
    const lower = file.name.toLowerCase();
    if (!DOC_TYPES.some((s) => lower.endsWith(s))) {
      return `不支持 ${file.name} 的文件类型；请上传 ${DOC_TYPES.join("、")} 文件。`;
    }
    if (MAX_UPLOAD_BYTES && file.size > MAX_UPLOAD_BYTES) {
      return `${file.name} 太大（${formatBytes(file.size)}）：上传上限是 ${formatBytes(MAX_UPLOAD_BYTES)}（RAG_MAX_UPLOAD_BYTES）。`;
    }
    if (file.size === 0) return `${file.name} 是空文件；请选择有正文的文件。`;
    return "";
  }

  function showChosen(files) {
    els.uploadNames.textContent = files.length ? files.map((f) => f.name).join("、") : "未选择文件";
  }

  async function uploadFiles(files) {
    const token = memoryToken;
    if (!token || docsBusy || !files.length) return;
    showDocsError("");
    const problems = files.map(checkFile).filter(Boolean);
    if (problems.length) {
      showDocsError(problems.join(" "));
      return;
    }
    setDocsBusy(true);
    const done = [];
    try {
      for (const [i, file] of files.entries()) {
        const count = files.length > 1 ? `（${i + 1}/${files.length}）` : "";
        showDocsStatus(`正在上传 ${file.name}${count}…`, 0);
        const { status, body } = await uploadRequest(file, token, (fraction) => {
          if (fraction >= 1) showDocsStatus(`正在更新索引…（${file.name}${count}）`, null);
          else showDocsStatus(`正在上传 ${file.name}${count}… ${Math.round(fraction * 100)}%`, fraction);
        });
        if (status === 202 && body && body.job) {
          const state = await waitJob(body.job, (stage) => showDocsStatus(`${stage}…（${file.name}${count}）`, null));
          if (state.status === "done" && state.upload) {
            const added = state.upload;
            const n = Array.isArray(added.articles) ? added.articles.length : 0;
            const renamed = state.renamed ? `，文件名过长或含特殊字符，已保存为 ${added.source}` : "";
            done.push(`${added.replaced ? "已替换" : "已添加"} ${added.source}（${n} 篇文章${renamed}）`);
            continue;
          }
          showDocsError(jobError(state, file.name));
          break;
        }
        showDocsError(adminError(status, detailOf(body, status), file.name));
        forgetTokenAfter401(status);
        break;
      }
    } catch (err) {
      showDocsError(err instanceof ServerError ? `上传进度读取失败：${err.message}` : err.message || UNREACHABLE);
    } finally {
      if (done.length) showDocsStatus(done.join("；"), false);
      else showDocsStatus(null);
      els.uploadForm.reset();
      showChosen([]);
      await loadDocuments();
      setDocsBusy(false);
      if (done.length) refreshExamples();
    }
  }

  // ---- wiring ----------------------------------------------------------------------

  function autoSize() {
    els.input.style.height = "auto";
    els.input.style.height = `${Math.min(els.input.scrollHeight, 160)}px`;
  }

  els.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = els.input.value;
    if (!value.trim() || busy) return;
    els.input.value = "";
    autoSize();
    ask(value);
  });
  els.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      els.form.requestSubmit();
    }
  });
  els.input.addEventListener("input", autoSize);
  els.examples.addEventListener("click", (event) => {
    const b = event.target.closest("button.example");
    if (b) ask(b.dataset.question);
  });
  els.clear.addEventListener("click", deleteConversation);
  for (const b of document.querySelectorAll("button.new-chat")) b.addEventListener("click", newConversation);
  els.menu.addEventListener("click", () => {
    if (els.sidebar.classList.contains("open")) closeSidebar();
    else openSidebar();
  });
  els.scrim.addEventListener("click", () => {
    closeSidebar();
    closeDocs();
  });
  els.panelClose.addEventListener("click", closePanel);
  els.docsOpen.addEventListener("click", openDocs);
  els.docsClose.addEventListener("click", closeDocs);
  els.tokenForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = els.token.value.trim();
    if (!value) {
      showDocsError("请输入管理口令（即服务器的 RAG_ADMIN_TOKEN）。");
      return;
    }
    els.token.value = "";
    setToken(value);
    showDocsError("");
    renderAdmin();
  });
  els.tokenForget.addEventListener("click", () => {
    setToken("");
    showDocsStatus(null);
    renderAdmin();
  });
  els.uploadForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const files = Array.from(els.uploadFile.files || []);
    if (!files.length) {
      showDocsError("请先选择要上传的文件。");
      return;
    }
    uploadFiles(files);
  });
  els.uploadFile.addEventListener("change", () => {
    showDocsError("");
    showChosen(Array.from(els.uploadFile.files || []));
  });
  // Files dropped on the upload box are uploaded at once (with a token entered).
  els.uploadForm.addEventListener("dragover", (event) => {
    if (!memoryToken || docsBusy) return;
    event.preventDefault();
    els.uploadForm.classList.add("dropping");
  });
  els.uploadForm.addEventListener("dragleave", () => els.uploadForm.classList.remove("dropping"));
  els.uploadForm.addEventListener("drop", (event) => {
    event.preventDefault();
    els.uploadForm.classList.remove("dropping");
    const files = Array.from((event.dataTransfer && event.dataTransfer.files) || []);
    if (files.length && memoryToken && !docsBusy) uploadFiles(files);
  });
  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    if (!els.panel.hidden) closePanel();
    else if (!els.docs.hidden) closeDocs();
    else closeSidebar();
  });
  // Another tab changed the conversations: show its version unless an answer is on its way here.
  window.addEventListener("storage", (event) => {
    if (event.key !== STORE_KEY || busy) return;
    const shown = conv.id;
    store = loadStore();
    store.active = store.conversations.some((c) => c.id === shown) ? shown : store.active;
    conv = activeConversation();
    renderAll();
  });

  renderAll();
  saveStore();
  scrollToBottom();
  document.body.dataset.ready = "1";
})();
