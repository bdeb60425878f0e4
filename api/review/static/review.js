// The review page: a job's page image with its lines outlined, the doubtful ones first, and
// an editor that saves corrections with PATCH. Plain script, no build step, no library.
// It acts with the review link's token where it has one, else as the API allows
// (HTRQ_AUTH=off). The token comes in the link's fragment (#t=...), which the browser never
// sends to a server; it is kept in this tab's session storage, taken out of the address, and
// sent only in the X-Review-Token header, images included (fetched here, shown as blob: URLs).
// Text from the server is only ever put in the page as text, never as HTML.
"use strict";

(() => {
  const SVG = "http://www.w3.org/2000/svg";
  const CROP_MARGIN = 8; // page pixels around a line in the enlarged crop
  const CROP_MAX_HEIGHT = 120; // CSS pixels
  const CROP_MAX_SCALE = 4;

  const jobId = decodeURIComponent(window.location.pathname.replace(/\/+$/, "").split("/").pop());
  const fragment = new URLSearchParams(window.location.hash.replace(/^#/, ""));
  const storageKey = `htrq-review-token:${jobId}`;

  // The token: from the link's fragment on first load (or the query of a link made before
  // fragments), else from this tab's earlier load; then out of the address bar for good.
  function takeToken() {
    const given = fragment.get("t") || new URLSearchParams(window.location.search).get("t");
    try {
      if (given) window.sessionStorage.setItem(storageKey, given);
      return given || window.sessionStorage.getItem(storageKey);
    } catch (_) {
      return given; // storage refused (private mode): this load only
    }
  }
  const token = takeToken();

  const $ = (id) => document.getElementById(id);
  const el = {
    title: $("title"),
    prev: $("prev-page"),
    next: $("next-page"),
    pageSelect: $("page-select"),
    zoom: $("zoom"),
    counter: $("counter"),
    message: $("message"),
    view: $("page-view"),
    stage: $("stage"),
    image: $("page-image"),
    overlay: $("overlay"),
    reviewHeading: $("review-heading"),
    reviewList: $("review-list"),
    otherHeading: $("other-heading"),
    otherList: $("other-list"),
    editor: $("editor"),
    editorTitle: $("editor-title"),
    editorMeta: $("editor-meta"),
    crop: $("crop"),
    form: $("edit-form"),
    input: $("line-text"),
    modelReading: $("model-reading"),
    readBy: $("read-by"),
    save: $("save"),
    markReviewed: $("mark-reviewed"),
    undo: $("undo"),
    cancel: $("cancel"),
    status: $("editor-status"),
  };

  const state = { job: null, pageIndex: 0, page: null, current: null, busy: false };

  class ApiError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  // URLs relative to this page (/review/{job}), so that a path prefix in front of the API
  // (a reverse proxy) keeps working.
  function apiUrl(path) {
    const url = new URL(`../v1/jobs/${encodeURIComponent(jobId)}${path}`, window.location.href);
    return url;
  }

  async function call(path, options = {}) {
    const headers = { Accept: "application/json" };
    if (token) headers["X-Review-Token"] = token;
    if (options.body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(apiUrl(path), {
      method: options.method || "GET",
      headers,
      body: options.body !== undefined ? JSON.stringify(options.body) : undefined,
      cache: "no-store",
      credentials: "omit",
    });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error ? body.error.message : `HTTP ${response.status}`;
      throw new ApiError(response.status, message);
    }
    return body;
  }

  // The page image, fetched with the token in a header (an <img src> could only carry it in
  // the address); shown through a blob: URL, released when another page is shown.
  let imageObjectUrl = null;
  async function imageUrl(index) {
    const headers = token ? { "X-Review-Token": token } : {};
    const response = await fetch(apiUrl(`/pages/${index}/image`), {
      headers,
      cache: "no-store",
      credentials: "omit",
    });
    if (!response.ok) {
      let message = `HTTP ${response.status}`;
      try {
        const body = await response.json();
        if (body && body.error) message = body.error.message;
      } catch (_) {
        // not JSON: keep the status
      }
      throw new ApiError(response.status, message);
    }
    const url = URL.createObjectURL(await response.blob());
    if (imageObjectUrl) URL.revokeObjectURL(imageObjectUrl);
    imageObjectUrl = url;
    return url;
  }

  function showMessage(text) {
    el.message.textContent = text;
    el.message.hidden = !text;
  }

  // -- lines --------------------------------------------------------------------------------

  const lines = () => (state.page ? state.page.lines : []);
  const doubtful = () => lines().filter((ln) => ln.needs_review);
  const doubtfulWords = (line) => (line.words || []).filter((w) => w.needs_review);
  const percent = (c) => `${Math.round(c * 100)}%`;

  function stateOf(line) {
    if (line.corrected) return "corrected";
    if (line.reviewed) return "checked";
    return line.needs_review ? "to review" : "confident";
  }

  // Red at confidence 0.5 and below, green at 1; lines a person checked are blue.
  function colourOf(line) {
    if (line.corrected || line.reviewed) return "#1d4ed8";
    const t = Math.min(1, Math.max(0, (line.confidence - 0.5) / 0.5));
    return `hsl(${Math.round(t * 120)}, 85%, 35%)`;
  }

  function outlineOf(line) {
    const shape = document.createElementNS(SVG, line.polygon && line.polygon.length >= 3 ? "polygon" : "rect");
    if (shape.tagName === "polygon") {
      shape.setAttribute("points", line.polygon.map(([x, y]) => `${x},${y}`).join(" "));
    } else {
      const [x0, y0, x1, y1] = line.bbox;
      shape.setAttribute("x", x0);
      shape.setAttribute("y", y0);
      shape.setAttribute("width", Math.max(1, x1 - x0));
      shape.setAttribute("height", Math.max(1, y1 - y0));
    }
    shape.dataset.lineIndex = String(line.index);
    shape.setAttribute("stroke", colourOf(line));
    shape.setAttribute("fill", colourOf(line));
    shape.classList.add("line", stateOf(line).replace(" ", "-"));
    if (state.current === line.index) shape.classList.add("current");
    const title = document.createElementNS(SVG, "title");
    title.textContent = `Line ${line.index + 1} (${percent(line.confidence)}, ${stateOf(line)}): ${line.text}`;
    shape.appendChild(title);
    return shape;
  }

  // The doubtful words of a doubtful line, outlined on the page over the line's outline.
  function wordMarksOf(line) {
    return doubtfulWords(line).map((word) => {
      const [x0, y0, x1, y1] = word.box;
      const mark = document.createElementNS(SVG, "rect");
      mark.setAttribute("x", x0);
      mark.setAttribute("y", y0);
      mark.setAttribute("width", Math.max(1, x1 - x0));
      mark.setAttribute("height", Math.max(1, y1 - y0));
      mark.classList.add("doubtful-word");
      mark.dataset.wordOf = String(line.index);
      const title = document.createElementNS(SVG, "title");
      title.textContent = `Doubtful word (${percent(word.confidence)}): ${word.text}`;
      mark.appendChild(title);
      return mark;
    });
  }

  // The line's text with its doubtful words marked (<mark>), as text nodes: never as HTML.
  function textWithMarks(line) {
    const parts = [];
    const words = line.words || [];
    if (!line.needs_review || !words.some((w) => w.needs_review)) return [line.text || "(empty)"];
    words.forEach((word, i) => {
      if (i) parts.push(" ");
      if (word.needs_review) {
        const mark = document.createElement("mark");
        mark.className = "doubtful-word";
        mark.textContent = word.text;
        parts.push(mark);
      } else {
        parts.push(word.text);
      }
    });
    return parts;
  }

  function buttonOf(line) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.className = `line-button ${stateOf(line).replace(" ", "-")}`;
    button.dataset.lineIndex = String(line.index);
    if (state.current === line.index) button.setAttribute("aria-current", "true");
    const head = document.createElement("span");
    head.className = "line-head";
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.setAttribute("aria-hidden", "true");
    swatch.style.backgroundColor = colourOf(line);
    head.append(swatch, `Line ${line.index + 1} · ${percent(line.confidence)} · ${stateOf(line)}`);
    const text = document.createElement("span");
    text.className = "line-text";
    text.append(...textWithMarks(line));
    button.append(head, text);
    button.addEventListener("click", () => openLine(line.index));
    item.appendChild(button);
    return item;
  }

  function renderLines() {
    const page = state.page;
    el.overlay.replaceChildren();
    el.reviewList.replaceChildren();
    el.otherList.replaceChildren();
    if (!page || page.status !== "succeeded") {
      el.counter.textContent = "";
      return;
    }
    // Pages read before sizes were stored have none: their image is that size.
    const width = page.width || el.image.naturalWidth;
    const height = page.height || el.image.naturalHeight;
    el.overlay.setAttribute("viewBox", `0 0 ${width} ${height}`);
    el.overlay.setAttribute("preserveAspectRatio", "none");
    for (const line of lines()) el.overlay.appendChild(outlineOf(line));
    for (const line of doubtful()) el.overlay.append(...wordMarksOf(line));
    const toReview = doubtful();
    for (const line of toReview) el.reviewList.appendChild(buttonOf(line));
    for (const line of lines().filter((ln) => !ln.needs_review)) el.otherList.appendChild(buttonOf(line));
    el.reviewHeading.textContent = `To review (${toReview.length})`;
    el.otherHeading.textContent = `Other lines (${lines().length - toReview.length})`;
    el.counter.textContent =
      toReview.length === 0
        ? `No line left to review on this page (${lines().length} lines)`
        : `${toReview.length} of ${lines().length} lines left to review on this page`;
  }

  // -- pages --------------------------------------------------------------------------------

  function renderPageNav() {
    const pages = state.job ? state.job.pages : [];
    el.pageSelect.replaceChildren();
    for (const p of pages) {
      const option = document.createElement("option");
      option.value = String(p.index);
      option.textContent = `${p.index + 1} of ${pages.length}${p.status === "succeeded" ? "" : ` (${p.status})`}`;
      el.pageSelect.appendChild(option);
    }
    el.pageSelect.value = String(state.pageIndex);
    el.prev.disabled = state.pageIndex <= 0;
    el.next.disabled = state.pageIndex >= pages.length - 1;
  }

  async function loadPage(index) {
    closeEditor(false);
    state.pageIndex = index;
    state.page = null;
    renderPageNav();
    renderLines();
    showMessage("");
    window.history.replaceState(null, "", `#page=${index + 1}`);
    el.image.removeAttribute("src");
    el.image.alt = "";
    try {
      const page = await call(`/pages/${index}`);
      if (state.pageIndex !== index) return; // another page was asked for meanwhile
      state.page = page;
      // Which model read the page: the deployment's, or one the tenant trained on its own
      // corrections (POST /v1/models), whose id the provenance carries.
      const own = page.provenance && page.provenance.model_id ? " (your own model)" : "";
      el.readBy.textContent = page.model ? `Read by ${page.model}${own}` : "";
      if (page.status !== "succeeded") {
        showMessage(`Page ${index + 1} is ${page.status}: it has no reading to review.`);
        renderLines();
        return;
      }
      el.image.alt = `Page ${index + 1}${page.filename ? ` of ${page.filename}` : ""}, with its lines outlined`;
      const src = await imageUrl(index);
      if (state.pageIndex !== index) return;
      await new Promise((resolve, reject) => {
        el.image.onload = resolve;
        el.image.onerror = () => reject(new Error("the page image could not be loaded"));
        el.image.src = src;
      });
      applyZoom();
      renderLines();
    } catch (error) {
      showMessage(explain(error));
    }
  }

  function explain(error) {
    if (error instanceof ApiError && error.status === 401) {
      if (!token) {
        return "Open this page from a review link: the link your document system makes for you " +
          "(POST /v1/jobs/{id}/review-link with its API key). This address has none.";
      }
      return `This review link cannot be used: ${error.message}`;
    }
    return `Something went wrong: ${error.message}`;
  }

  function applyZoom() {
    const zoom = el.zoom.value;
    el.stage.style.width = zoom === "fit" || !el.image.naturalWidth
      ? "100%"
      : `${Math.round(el.image.naturalWidth * Number(zoom))}px`;
    if (state.current !== null) drawCrop(lineAt(state.current));
  }

  // -- the editor ---------------------------------------------------------------------------

  const lineAt = (index) => lines().find((ln) => ln.index === index);

  function openLine(index) {
    const line = lineAt(index);
    if (!line) return;
    state.current = index;
    el.editor.hidden = false;
    el.editorTitle.textContent = `Line ${index + 1} of ${lines().length}`;
    const unsure = line.needs_review ? doubtfulWords(line).map((w) => w.text) : [];
    el.editorMeta.textContent = `Model's confidence ${percent(line.confidence)} · ${stateOf(line)}` +
      (unsure.length ? ` · doubtful: ${unsure.join(", ")}` : "");
    el.modelReading.textContent = line.corrected ? `(the model read: ${line.model_text})` : "";
    el.undo.hidden = !(line.corrected || line.reviewed);
    el.status.textContent = "";
    el.input.value = line.text;
    renderLines();
    drawCrop(line);
    const shape = el.overlay.querySelector(`[data-line-index="${index}"]`);
    if (shape) shape.scrollIntoView({ block: "center", inline: "nearest" });
    el.input.focus();
    el.input.setSelectionRange(line.text.length, line.text.length);
  }

  function closeEditor(refocus = true) {
    const index = state.current;
    state.current = null;
    el.editor.hidden = true;
    renderLines();
    if (refocus && index !== null) {
      const button = document.querySelector(`.line-button[data-line-index="${index}"]`);
      if (button) button.focus();
    }
  }

  function drawCrop(line) {
    if (!line || !el.image.naturalWidth) return;
    const [x0, y0, x1, y1] = line.bbox;
    const sx = Math.max(0, x0 - CROP_MARGIN);
    const sy = Math.max(0, y0 - CROP_MARGIN);
    const sw = Math.max(1, Math.min(el.image.naturalWidth, x1 + CROP_MARGIN) - sx);
    const sh = Math.max(1, Math.min(el.image.naturalHeight, y1 + CROP_MARGIN) - sy);
    const room = Math.max(100, el.editor.clientWidth - 32);
    const scale = Math.min(room / sw, CROP_MAX_HEIGHT / sh, CROP_MAX_SCALE);
    const width = Math.max(1, Math.round(sw * scale));
    const height = Math.max(1, Math.round(sh * scale));
    const ratio = window.devicePixelRatio || 1;
    el.crop.width = Math.round(width * ratio);
    el.crop.height = Math.round(height * ratio);
    el.crop.style.width = `${width}px`;
    el.crop.style.height = `${height}px`;
    const ctx = el.crop.getContext("2d");
    ctx.imageSmoothingQuality = "high";
    ctx.drawImage(el.image, sx, sy, sw, sh, 0, 0, el.crop.width, el.crop.height);
    el.crop.setAttribute("aria-label", `Line ${line.index + 1} as scanned, enlarged`);
  }

  // The next (step 1) or previous (step -1) line still to review, after the current one and
  // round the page; null when there is none but the current.
  function neighbour(step) {
    const candidates = doubtful().map((ln) => ln.index).filter((i) => i !== state.current);
    if (!candidates.length) return null;
    const from = state.current === null ? -1 : state.current;
    if (step > 0) return candidates.find((i) => i > from) ?? candidates[0];
    return [...candidates].reverse().find((i) => i < from) ?? candidates[candidates.length - 1];
  }

  // Save the open line's change, then open the next line to review (or, with ``stay``, the
  // same line again, as it now reads).
  async function save(body, stay = false) {
    if (state.busy || state.current === null) return;
    const index = state.current;
    state.busy = true;
    el.form.setAttribute("aria-busy", "true");
    el.status.textContent = "Saving…";
    try {
      const line = await call(`/pages/${state.pageIndex}/lines/${index}`, { method: "PATCH", body });
      const lines_ = state.page.lines;
      lines_[lines_.findIndex((ln) => ln.index === index)] = line;
      const next = stay ? index : neighbour(1);
      if (next === null) {
        closeEditor(false);
        el.counter.textContent = `All lines of this page are checked (${lines_.length} lines)`;
        (el.next.disabled ? el.pageSelect : el.next).focus();
      } else {
        openLine(next);
      }
    } catch (error) {
      el.status.textContent = error instanceof ApiError && error.status !== 401
        ? `Not saved: ${error.message}`
        : explain(error);
    } finally {
      state.busy = false;
      el.form.removeAttribute("aria-busy");
    }
  }

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const line = lineAt(state.current);
    if (!line) return;
    const typed = el.input.value.normalize("NFC").trim();
    // Unchanged text confirms the line as it reads; anything else is a correction.
    save(typed === line.text ? { reviewed: true } : { text: el.input.value });
  });

  el.input.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.preventDefault();
      closeEditor();
    } else if (event.key === "Tab") {
      const target = neighbour(event.shiftKey ? -1 : 1);
      if (target !== null) {
        event.preventDefault();
        openLine(target);
      }
    }
  });

  el.editor.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && event.target !== el.input) {
      event.preventDefault();
      closeEditor();
    }
  });

  el.markReviewed.addEventListener("click", () => save({ reviewed: true }));
  el.undo.addEventListener("click", () => save({ reviewed: false }, true));
  el.cancel.addEventListener("click", () => closeEditor());
  el.overlay.addEventListener("click", (event) => {
    const shape = event.target.closest("[data-line-index]");
    if (shape) openLine(Number(shape.dataset.lineIndex));
  });
  el.prev.addEventListener("click", () => loadPage(state.pageIndex - 1));
  el.next.addEventListener("click", () => loadPage(state.pageIndex + 1));
  el.pageSelect.addEventListener("change", () => loadPage(Number(el.pageSelect.value)));
  el.zoom.addEventListener("change", applyZoom);
  window.addEventListener("resize", () => {
    if (state.current !== null) drawCrop(lineAt(state.current));
  });

  async function start() {
    if (fragment.has("t") || new URLSearchParams(window.location.search).has("t")) {
      // The token leaves the address bar (and so the history, and any copy of the address).
      const page = fragment.get("page");
      window.history.replaceState(null, "", `${window.location.pathname}${page ? `#page=${page}` : ""}`);
    }
    try {
      state.job = await call("");
    } catch (error) {
      showMessage(explain(error));
      return;
    }
    const job = state.job;
    el.title.textContent = `Review ${job.external_id || `job ${job.id.slice(0, 8)}`}`;
    document.title = `${el.title.textContent} – htrq`;
    const asked = Number(fragment.get("page"));
    const first = Number.isInteger(asked) && asked >= 1 && asked <= job.pages.length ? asked - 1 : 0;
    await loadPage(first);
  }

  start();
})();
