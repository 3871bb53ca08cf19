// The chat page. Everything from the server or the user goes into the page through
// textContent and DOM nodes, never innerHTML: document text is untrusted.
"use strict";

(() => {
  const STORE_KEY = "rag-zh.conversation.v1";
  const MAX_STORED_TURNS = 50;
  // The server's settings, rendered into data attributes of #app (the CSP allows no inline
  // script): the abstention text, how many earlier messages a follow-up is read with, top_k.
  const config = document.getElementById("app").dataset;
  const NOT_FOUND = config.notFound;
  const HISTORY_TURNS = Number(config.historyTurns);
  const TOP_K = Number(config.topK);
  const UNREACHABLE = "无法连接服务器，请确认服务正在运行后重试。";
  const INTERRUPTED = "回答中断了，请重试。";

  const $ = (id) => document.getElementById(id);
  const els = {
    form: $("ask-form"),
    input: $("question"),
    send: $("send"),
    clear: $("clear"),
    messages: $("messages"),
    welcome: $("welcome"),
    chat: $("chat"),
    panel: $("panel"),
    panelNum: $("panel-num"),
    panelTitle: $("panel-title"),
    panelMeta: $("panel-meta"),
    panelText: $("panel-text"),
    panelLink: $("panel-link"),
    panelClose: $("panel-close"),
  };

  /** A server answer that is an error message for the user (4xx/5xx, or an error event). */
  class ServerError extends Error {}

  let turns = loadTurns();
  let busy = false;
  let activeChip = null;

  // ---- storage ---------------------------------------------------------------------

  function loadTurns() {
    try {
      const data = JSON.parse(localStorage.getItem(STORE_KEY) || "[]");
      if (!Array.isArray(data)) return [];
      return data.filter((t) => t && typeof t.question === "string" && t.status !== "pending");
    } catch (_err) {
      return [];
    }
  }

  function saveTurns() {
    try {
      const done = turns.filter((t) => t.status !== "pending").slice(-MAX_STORED_TURNS);
      localStorage.setItem(STORE_KEY, JSON.stringify(done));
    } catch (_err) {
      // Storage full or disabled: the conversation just won't survive a reload.
    }
  }

  // ---- small DOM helpers -----------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = text;
    return node;
  }

  /** Slice by code points, as the server's offsets count them (not UTF-16 units). */
  function codePointSlice(chars, start, end) {
    return chars.slice(start, end).join("");
  }

  /** Fill `container` with `text`, the span [start, end) wrapped in <mark>. */
  function fillHighlighted(container, text, span) {
    container.replaceChildren();
    const chars = Array.from(text);
    if (!Array.isArray(span) || span.length !== 2) {
      container.append(document.createTextNode(text));
      return;
    }
    const start = Math.max(0, Math.min(chars.length, Number(span[0]) || 0));
    const end = Math.max(start, Math.min(chars.length, Number(span[1]) || 0));
    const mark = el("mark", "support", codePointSlice(chars, start, end));
    container.append(
      document.createTextNode(codePointSlice(chars, 0, start)),
      mark,
      document.createTextNode(codePointSlice(chars, end, chars.length)),
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

  // ---- rendering -------------------------------------------------------------------

  function chip(turn, citation, label) {
    const button = el("button", "chip", label);
    button.type = "button";
    button.dataset.turn = turn.id;
    button.dataset.n = String(citation.id);
    button.title = citation.title;
    button.setAttribute("aria-label", `查看来源 ${citation.id}：${citation.title}`);
    button.addEventListener("click", () => openPanel(turn, citation, button));
    return button;
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
    const marked = citedIds(turn);
    let cited = (turn.citations || []).filter((c) => marked.has(c.id));
    if (!cited.length) cited = turn.citations || [];
    if (!cited.length) return null;
    const box = el("div", "sources");
    box.append(el("span", "sources-label", "来源"));
    const list = el("ul", "source-list");
    for (const c of cited) {
      const item = el("li");
      const button = chip(turn, c, `[${c.id}]`);
      const title = el("button", "source-title", c.title);
      title.type = "button";
      title.addEventListener("click", () => openPanel(turn, c, button));
      item.append(button, title);
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

  function actions(turn) {
    const bar = el("div", "actions");
    const copy = el("button", "ghost small copy", "复制");
    copy.type = "button";
    copy.addEventListener("click", async () => {
      const ok = await copyToClipboard(copyText(turn));
      copy.textContent = ok ? "已复制" : "复制失败";
      setTimeout(() => {
        copy.textContent = "复制";
      }, 1500);
    });
    bar.append(copy);
    return bar;
  }

  function renderBot(turn) {
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
      const retry = el("button", "ghost small", "重试");
      retry.type = "button";
      retry.addEventListener("click", () => {
        turns = turns.filter((t) => t !== turn);
        ask(turn.question);
      });
      const bar = el("div", "actions");
      bar.append(retry);
      bot.append(bar);
      return bot;
    }
    if (turn.abstained) {
      bot.classList.add("notfound");
      body.textContent = turn.answer || NOT_FOUND;
      bot.append(body, el("p", "hint", "可以换个说法再问，或请管理员补充相关资料。"));
      return bot;
    }
    body.append(answerNodes(turn));
    bot.append(body);
    const sources = sourcesList(turn);
    if (sources) bot.append(sources);
    for (const w of turn.warnings || []) bot.append(el("p", "hint", w));
    bot.append(actions(turn));
    return bot;
  }

  function renderTurn(turn) {
    const item = el("li", "turn");
    item.dataset.id = turn.id;
    const user = el("div", "msg user");
    user.append(el("div", "question", turn.question));
    item.append(user, renderBot(turn));
    return item;
  }

  function renderAll() {
    els.messages.replaceChildren(...turns.map(renderTurn));
    els.welcome.hidden = turns.length > 0;
    els.clear.disabled = turns.length === 0 || busy;
  }

  function rerender(turn) {
    const old = els.messages.querySelector(`li.turn[data-id="${CSS.escape(turn.id)}"]`);
    const fresh = renderTurn(turn);
    if (old) old.replaceWith(fresh);
    else els.messages.append(fresh);
    els.welcome.hidden = turns.length > 0;
  }

  function updateStreaming(turn) {
    const item = els.messages.querySelector(`li.turn[data-id="${CSS.escape(turn.id)}"] .answer`);
    if (item) item.textContent = turn.answer;
    scrollToBottom();
  }

  function scrollToBottom() {
    els.chat.scrollTop = els.chat.scrollHeight;
  }

  // ---- citation panel --------------------------------------------------------------

  function openPanel(turn, citation, button) {
    if (activeChip) activeChip.classList.remove("active");
    activeChip = button;
    button.classList.add("active");
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
    els.panel.hidden = true;
    document.body.classList.remove("panel-open");
    if (activeChip) {
      activeChip.classList.remove("active");
      activeChip.focus({ preventScroll: true });
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

  /** The last HISTORY_TURNS messages of the finished turns: what the server reads a follow-up with. */
  function history() {
    const out = [];
    for (const t of turns.filter((turn) => turn.status === "done")) {
      out.push({ role: "user", content: t.question });
      out.push({ role: "assistant", content: t.answer });
    }
    return HISTORY_TURNS > 0 ? out.slice(-HISTORY_TURNS) : [];
  }

  function setBusy(value) {
    busy = value;
    els.send.disabled = value;
    els.clear.disabled = value || turns.length === 0;
    els.send.textContent = value ? "回答中…" : "提问";
  }

  async function ask(raw) {
    const question = (raw || "").trim();
    if (!question || busy) return;
    const turn = {
      id: `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`,
      question,
      status: "pending",
      answer: "",
      citations: [],
    };
    const previous = history();
    turns.push(turn);
    setBusy(true);
    rerender(turn);
    scrollToBottom();
    try {
      const body = { question, top_k: TOP_K, history: previous, answer_mode: "auto" };
      const onDelta = (text) => {
        turn.answer += text;
        updateStreaming(turn);
      };
      const onRetract = (reason) => {
        turn.answer = "";
        turn.retracted = [...(turn.retracted || []), reason];
        rerender(turn);
      };
      const final = await streamAsk(body, onDelta, onRetract);
      const warnings = final.warnings || [];
      Object.assign(turn, {
        status: "done",
        answer: final.answer,
        abstained: Boolean(final.abstained),
        citations: final.citations || [],
        // The retraction's reason stays visible, once (the answer usually repeats it).
        warnings: [...(turn.retracted || []).filter((r) => r && !warnings.includes(r)), ...warnings],
        answer_mode: final.answer_mode,
      });
      delete turn.retracted;
    } catch (err) {
      turn.status = "error";
      turn.error = err instanceof ServerError ? err.message : UNREACHABLE;
    } finally {
      setBusy(false);
      saveTurns();
      rerender(turn);
      scrollToBottom();
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
  for (const button of document.querySelectorAll("button.example")) {
    button.addEventListener("click", () => ask(button.dataset.question));
  }
  els.clear.addEventListener("click", () => {
    if (busy) return;
    turns = [];
    try {
      localStorage.removeItem(STORE_KEY);
    } catch (_err) {
      // ignore
    }
    closePanel();
    renderAll();
    els.input.focus();
  });
  els.panelClose.addEventListener("click", closePanel);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && !els.panel.hidden) closePanel();
  });

  renderAll();
  scrollToBottom();
  document.body.dataset.ready = "1";
})();
