// fewsam studio: the page. Plain JavaScript and one canvas, no build step, nothing from the internet.
// The server owns the data; the page keeps an editable copy of each slice's label it touched
// (a "draft", with its undo/redo history) until it is saved.
(function () {
  "use strict";

  const TOKEN = new URLSearchParams(location.search).get("token");
  const PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#ffe119", "#f58231", "#911eb4", "#46f0f0", "#f032e6",
                   "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8", "#800000", "#aaffc3"];
  const UNDO_DEPTH = 50;
  const POLL_MS = 800;
  const $ = (id) => document.getElementById(id);

  const state = {
    info: null, classes: [], colours: {}, caseId: null, z: 0, slice: null, drafts: new Map(),
    tool: "brush", cls: 1, brush: 6, zoom: 1, window: null, hidden: new Set(), job: null,
    show: { label: true, pred: true, gt: false }, opacity: { label: 0.55, pred: 0.4, gt: 0.9 },
    base: null, frame: null, painting: null, levelDrag: null, cursor: null, polling: null, suggestion: null,
    labelError: null,
  };

  // --- talking to the server -------------------------------------------------------------------

  function showMessage(text, kind) {
    const el = $("message");
    el.textContent = text;
    el.className = kind || "info";
    el.title = text;
  }

  async function api(method, path, options) {
    const opts = options || {};
    const headers = {};
    if (TOKEN) headers["X-Fewsam-Token"] = TOKEN;
    let body;
    if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; body = JSON.stringify(opts.json); }
    if (opts.bytes !== undefined) { headers["Content-Type"] = "application/octet-stream"; body = opts.bytes; }
    let response;
    try {
      response = await fetch(path, { method, headers, body });
    } catch (failure) {  // no answer at all: the server stopped (Ctrl+C, a restart) or the network is gone
      const error = new Error("the studio server does not answer (stopped, or restarting?), so this was not done; " +
                              "start it again, then retry: edits not yet saved stay in this page");
      error.status = 0;
      showMessage(error.message, "error");
      throw error;
    }
    const data = await response.json().catch(() => ({ detail: response.statusText }));
    if (!response.ok) {
      const error = new Error(data.detail || `${response.status} ${response.statusText}`);
      error.status = response.status;
      showMessage(error.message, "error");
      throw error;
    }
    return data;
  }

  const q = (params) => "?" + new URLSearchParams(params).toString();

  function bytesOf(b64) {
    const text = atob(b64);
    const out = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
    return out;
  }

  // --- dataset, cases and classes --------------------------------------------------------------

  async function loadInfo() {
    state.info = await api("GET", "/api/info");
    state.classes = state.info.classes;
    state.classes.forEach((c, i) => { state.colours[c.value] = hexToRgb(PALETTE[i % PALETTE.length]); });
    if (!state.classes.some((c) => c.value === state.cls) && state.classes.length) state.cls = state.classes[0].value;
    $("dataset-name").textContent = `${state.info.name} (${state.info.layout}) - project ${state.info.project}`;
    renderCases();
    renderClasses();
    showJob(state.info.job);
    return state.info;
  }

  function caseInfo(id) { return state.info.cases.find((c) => c.id === id); }

  function renderCases() {
    const list = $("cases");
    list.textContent = "";
    for (const c of state.info.cases) {
      const li = document.createElement("li");
      li.dataset.case = c.id;
      li.className = c.id === state.caseId ? "current" : "";
      const name = document.createElement("span");
      name.textContent = c.id;
      const count = document.createElement("span");
      count.className = "count" + (c.labelled.length ? " has" : "");
      count.textContent = c.error ? "unreadable" : `${c.labelled.length}/${c.slices}`;
      if (c.error) li.title = c.error;
      if (c.predicted) {
        const badge = document.createElement("span");
        badge.className = "badge";
        badge.textContent = "P";
        badge.title = "predicted by the latest fit";
        count.prepend(badge, " ");
      }
      li.append(name, count);
      li.addEventListener("click", () => (c.error ? showMessage(c.error, "error")
        : openSlice(c.id, c.labelled.length ? c.labelled[0] : Math.floor(c.slices / 2))));
      list.append(li);
    }
  }

  function renderClasses() {
    const list = $("classes");
    list.textContent = "";
    state.classes.forEach((c, i) => {
      const li = document.createElement("li");
      li.className = c.value === state.cls ? "active" : "";
      li.dataset.value = c.value;
      const visible = document.createElement("input");
      visible.type = "checkbox";
      visible.checked = !state.hidden.has(c.value);
      visible.title = "show this class";
      visible.addEventListener("click", (e) => {
        e.stopPropagation();
        if (visible.checked) state.hidden.delete(c.value); else state.hidden.add(c.value);
        render();
      });
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = PALETTE[i % PALETTE.length];
      const name = document.createElement("span");
      name.textContent = `${c.value} ${c.name}`;
      const key = document.createElement("span");
      key.className = "key";
      key.textContent = i < 9 ? String(i + 1) : "";
      li.append(visible, swatch, name, key);
      li.addEventListener("click", () => selectClass(c.value));
      list.append(li);
    });
  }

  function selectClass(value) {
    state.cls = value;
    if (state.tool === "eraser") selectTool("brush");
    renderClasses();
  }

  function hexToRgb(hex) {
    const n = parseInt(hex.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }

  // --- slices ----------------------------------------------------------------------------------

  const draftKey = (caseId, z) => `${caseId}\u0000${z}`;

  async function openSlice(caseId, z) {
    const data = await api("GET", "/api/slice" + q({ case: caseId, z }));
    const pixels = data.height * data.width;
    const slice = {
      case: data.case, z: data.z, slices: data.slices, h: data.height, w: data.width, channels: data.channels,
      image: new Float32Array(bytesOf(data.image).buffer), labelled: data.labelled, entropy: data.entropy,
      fit: data.fit, gt: data.dataset_label ? bytesOf(data.dataset_label) : null,
      pred: data.prediction ? bytesOf(data.prediction) : null, saved: bytesOf(data.label),
    };
    if (slice.saved.length !== pixels) throw new Error("the server sent a label of the wrong size");
    const changedCase = caseId !== state.caseId;
    state.caseId = caseId;
    state.z = z;
    state.slice = slice;
    // A draft without unsaved edits follows the saved label (another tab may have saved it since); one
    // with edits keeps the revision it was painted on, so that its save cannot silently replace that tab's.
    const kept = state.drafts.get(draftKey(caseId, z));
    if (!kept || (!kept.dirty && kept.revision !== data.revision)) {
      state.drafts.set(draftKey(caseId, z), { label: slice.saved.slice(), saved: slice.saved, undo: [], redo: [],
                                              dirty: false, revision: data.revision });
    }
    if (changedCase || !state.window) setWindow(data.window[0], data.window[1], data.window);
    if (changedCase) sayLabelError(data.dataset_label_error);
    if (changedCase) fitZoom();
    state.base = null;
    renderCases();
    renderStrip();
    render();
    updateSliceStatus();
    return slice;
  }

  const draft = () => state.drafts.get(draftKey(state.caseId, state.z));

  // A case opened without its dataset label (the server could not read it) says why; the next case
  // clears that line, which no longer applies, unless another message has replaced it since.
  function sayLabelError(error) {
    if (error) showMessage(error, "error");
    else if (state.labelError && $("message").textContent === state.labelError) showMessage("", "info");
    state.labelError = error || null;
  }

  function renderStrip() {
    const strip = $("slice-strip");
    strip.textContent = "";
    const c = caseInfo(state.caseId);
    if (!c) return;
    for (let z = 0; z < c.slices; z++) {
      const b = document.createElement("button");
      b.textContent = z;
      b.dataset.z = z;
      const d = state.drafts.get(draftKey(state.caseId, z));
      b.className = [c.labelled.includes(z) ? "labelled" : "", c.predicted ? "predicted" : "",
                     z === state.z ? "current" : ""].join(" ");
      b.title = `slice ${z}` + (c.labelled.includes(z) ? ", labelled" : "") + (d && d.dirty ? ", unsaved edits" : "");
      if (d && d.dirty) b.textContent = z + "*";
      b.addEventListener("click", () => openSlice(state.caseId, z));
      strip.append(b);
    }
    $("slice-label").textContent = `${state.z + 1} / ${c.slices}`;
  }

  function updateSliceStatus() {
    const s = state.slice;
    if (!s) return;
    const d = draft();
    const parts = [`${s.case} slice ${s.z}`, `${s.w} x ${s.h}`, s.labelled ? "labelled" : "not labelled"];
    if (d.dirty) parts.push("unsaved edits (S saves)");
    if (s.pred) parts.push(`prediction of ${s.fit}, mean entropy ${s.entropy.toFixed(3)}`);
    $("slice-status").textContent = parts.join(" | ");
    $("accept").disabled = !s.pred;
    $("unmark").disabled = !s.labelled;
    $("undo").disabled = !d.undo.length;
    $("redo").disabled = !d.redo.length;
  }

  function step(delta) {
    if (!state.slice) return;
    const z = Math.min(state.slice.slices - 1, Math.max(0, state.z + delta));
    if (z !== state.z) openSlice(state.caseId, z);
  }

  // --- window / level and zoom ----------------------------------------------------------------

  function setWindow(lo, hi, defaults) {
    if (defaults) state.defaultWindow = defaults.slice();
    const [dlo, dhi] = state.defaultWindow;
    const span = Math.max(dhi - dlo, 1e-6);
    state.window = [lo, Math.max(hi, lo + span / 1000)];
    const width = state.window[1] - state.window[0];
    const level = (state.window[0] + state.window[1]) / 2;
    $("win-width").value = Math.round(Math.min(1000, Math.max(0, (width / (3 * span)) * 1000)));
    $("win-level").value = Math.round(Math.min(1000, Math.max(0, ((level - (dlo - span)) / (3 * span)) * 1000)));
    state.base = null;
  }

  function windowFromSliders() {
    const [dlo, dhi] = state.defaultWindow;
    const span = Math.max(dhi - dlo, 1e-6);
    const width = Math.max(span / 1000, ($("win-width").value / 1000) * 3 * span);
    const level = dlo - span + ($("win-level").value / 1000) * 3 * span;
    state.window = [level - width / 2, level + width / 2];
    state.base = null;
    render();
  }

  function fitZoom() {
    const wrap = $("canvas-wrap");
    const s = state.slice;
    const fit = Math.min((wrap.clientWidth - 8) / s.w, (wrap.clientHeight - 8) / s.h);
    // An image more than 4x the view (a 4000 px wide scan) opens at the smallest zoom, not at 100%; only
    // a view without a size yet (fit 0 or less) falls back to 100%.
    setZoom(fit > 0 ? Math.max(0.25, Math.min(16, Math.floor(fit * 4) / 4)) : 1);
  }

  function setZoom(zoom) {
    state.zoom = Math.max(0.25, Math.min(16, zoom));
    const canvas = $("view");
    if (state.slice) {
      canvas.style.width = `${state.slice.w * state.zoom}px`;
      canvas.style.height = `${state.slice.h * state.zoom}px`;
    }
    $("zoom-label").textContent = `${Math.round(state.zoom * 100)}%`;
  }

  // --- drawing ---------------------------------------------------------------------------------

  function baseImage() {
    if (state.base) return state.base;
    const s = state.slice;
    const [lo, hi] = state.window;
    const scale = 255 / (hi - lo);
    const out = new Uint8ClampedArray(s.w * s.h * 4);
    for (let i = 0, n = s.w * s.h; i < n; i++) {
      if (s.channels === 3) {
        out[4 * i] = (s.image[3 * i] - lo) * scale;
        out[4 * i + 1] = (s.image[3 * i + 1] - lo) * scale;
        out[4 * i + 2] = (s.image[3 * i + 2] - lo) * scale;
      } else {
        const v = (s.image[i] - lo) * scale;
        out[4 * i] = v; out[4 * i + 1] = v; out[4 * i + 2] = v;
      }
      out[4 * i + 3] = 255;
    }
    state.base = out;
    return out;
  }

  function edge(layer, i, w, h) {
    const x = i % w, y = (i - x) / w, v = layer[i];
    return (x > 0 && layer[i - 1] !== v) || (x < w - 1 && layer[i + 1] !== v) ||
           (y > 0 && layer[i - w] !== v) || (y < h - 1 && layer[i + w] !== v);
  }

  // Blend one label layer: filled at ``alpha``, its outline at ``outline`` (0: none).
  function blend(pixels, layer, alpha, outline) {
    const { w, h } = state.slice;
    for (let i = 0, n = w * h; i < n; i++) {
      const v = layer[i];
      if (!v || state.hidden.has(v)) continue;
      const colour = state.colours[v];
      if (!colour) continue;
      const a = outline && edge(layer, i, w, h) ? outline : alpha;
      if (!a) continue;
      pixels[4 * i] += (colour[0] - pixels[4 * i]) * a;
      pixels[4 * i + 1] += (colour[1] - pixels[4 * i + 1]) * a;
      pixels[4 * i + 2] += (colour[2] - pixels[4 * i + 2]) * a;
    }
  }

  // Draw at most once per frame: a brush stroke or a window drag asks for many redraws per frame.
  function render() {
    if (state.frame) return;
    state.frame = requestAnimationFrame(() => { state.frame = null; draw(); });
  }

  function draw() {
    const s = state.slice;
    if (!s) return;
    const canvas = $("view");
    if (canvas.width !== s.w || canvas.height !== s.h) { canvas.width = s.w; canvas.height = s.h; setZoom(state.zoom); }
    const pixels = new Uint8ClampedArray(baseImage());
    if (state.show.gt && s.gt) blend(pixels, s.gt, 0, state.opacity.gt);
    if (state.show.pred && s.pred) blend(pixels, s.pred, state.opacity.pred, Math.min(1, state.opacity.pred + 0.4));
    if (state.show.label) blend(pixels, draft().label, state.opacity.label, 0);
    const ctx = canvas.getContext("2d");
    ctx.putImageData(new ImageData(pixels, s.w, s.h), 0, 0);
    if (state.cursor && state.tool !== "fill") {
      ctx.strokeStyle = state.tool === "eraser" ? "#fff" : PALETTE[classIndex(state.cls) % PALETTE.length];
      ctx.lineWidth = Math.max(0.5, 1 / state.zoom);
      ctx.beginPath();
      ctx.arc(state.cursor[0] + 0.5, state.cursor[1] + 0.5, state.brush / 2, 0, 2 * Math.PI);
      ctx.stroke();
    }
  }

  const classIndex = (value) => Math.max(0, state.classes.findIndex((c) => c.value === value));

  // --- labelling -------------------------------------------------------------------------------

  function pixelAt(event) {
    const canvas = $("view");
    const rect = canvas.getBoundingClientRect();
    const x = Math.floor(((event.clientX - rect.left) / rect.width) * canvas.width);
    const y = Math.floor(((event.clientY - rect.top) / rect.height) * canvas.height);
    return [x, y];
  }

  function remember() {
    const d = draft();
    d.undo.push(d.label.slice());
    if (d.undo.length > UNDO_DEPTH) d.undo.shift();
    d.redo = [];
  }

  function sameLabels(a, b) {
    if (a.length !== b.length) return false;
    for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
    return true;
  }

  function changed() {
    const d = draft();
    d.dirty = !sameLabels(d.label, d.saved);
    render();
    renderStrip();
    updateSliceStatus();
  }

  // A disc of diameter ``brush`` pixels around (cx, cy); size 1 is one pixel, 2 a plus, 3 a 3x3 square.
  // From size 2 on, a stroke of stamps is 4-connected, so a drawn outline closes for the fill tool.
  function stamp(label, cx, cy, value) {
    const { w, h } = state.slice;
    const r = state.brush / 2;
    const reach = Math.floor(r);
    for (let dy = -reach; dy <= reach; dy++) {
      for (let dx = -reach; dx <= reach; dx++) {
        if (state.brush > 1 && dx * dx + dy * dy > r * r) continue;
        const x = Math.round(cx + dx), y = Math.round(cy + dy);
        if (x >= 0 && y >= 0 && x < w && y < h) label[y * w + x] = value;
      }
    }
  }

  function strokeTo(x, y) {
    const label = draft().label;
    const value = state.tool === "eraser" ? 0 : state.cls;
    const [px, py] = state.painting;
    const steps = Math.max(1, Math.ceil(Math.hypot(x - px, y - py)));
    for (let i = 1; i <= steps; i++) stamp(label, px + ((x - px) * i) / steps, py + ((y - py) * i) / steps, value);
    state.painting = [x, y];
  }

  // Fill the 4-connected region of equal value around (x, y) with the current class: click inside
  // a contour drawn with the brush to fill it.
  function fill(x, y) {
    const { w, h } = state.slice;
    const label = draft().label;
    const from = label[y * w + x];
    if (from === state.cls) return false;
    const stack = [y * w + x];
    label[y * w + x] = state.cls;
    while (stack.length) {
      const i = stack.pop();
      const px = i % w, py = (i - px) / w;
      for (const j of [px > 0 ? i - 1 : -1, px < w - 1 ? i + 1 : -1, py > 0 ? i - w : -1, py < h - 1 ? i + w : -1]) {
        if (j >= 0 && label[j] === from) { label[j] = state.cls; stack.push(j); }
      }
    }
    return true;
  }

  function onPointerDown(event) {
    if (!state.slice) return;
    const [x, y] = pixelAt(event);
    if (event.button === 2) {
      state.levelDrag = { x: event.clientX, y: event.clientY, window: state.window.slice() };
    } else if (event.button === 0) {
      if (state.tool === "fill") {
        if (x < 0 || y < 0 || x >= state.slice.w || y >= state.slice.h) return;
        remember();
        if (fill(x, y)) changed(); else draft().undo.pop();
        return;
      }
      remember();
      state.painting = [x, y];
      strokeTo(x, y);
      changed();
    } else {
      return;
    }
    $("view").setPointerCapture(event.pointerId);
    event.preventDefault();
  }

  function onPointerMove(event) {
    if (!state.slice) return;
    const [x, y] = pixelAt(event);
    state.cursor = [x, y];
    if (state.painting) {
      strokeTo(x, y);
      render();
    } else if (state.levelDrag) {
      const d = state.levelDrag;
      const span = Math.max(state.defaultWindow[1] - state.defaultWindow[0], 1e-6);
      const width = Math.max(span / 1000, (d.window[1] - d.window[0]) * Math.exp((event.clientX - d.x) / 200));
      const level = (d.window[0] + d.window[1]) / 2 - ((event.clientY - d.y) / 300) * span;
      setWindow(level - width / 2, level + width / 2);
      render();
    } else {
      render();
    }
  }

  function onPointerUp() {
    if (state.painting) { state.painting = null; changed(); }
    state.levelDrag = null;
  }

  // Undo and redo move the current label between the two stacks, in opposite directions.
  function moveHistory(from, to) {
    const d = draft();
    if (!d || !d[from].length) return;
    d[to].push(d.label);
    d.label = d[from].pop();
    changed();
  }

  function undo() { moveHistory("undo", "redo"); }

  function redo() { moveHistory("redo", "undo"); }

  async function save() {
    if (!state.slice) return;
    const s = state.slice;
    const d = draft();
    let result;
    try {
      result = await api("PUT", "/api/label" + q({ case: s.case, z: s.z, h: s.h, w: s.w, base: d.revision }),
                         { bytes: d.label });
    } catch (error) {
      // Another tab saved this slice since it was loaded here (the message says so): a second save
      // replaces that version on purpose.
      if (error.status === 409) d.revision = (await api("GET", "/api/slice" + q({ case: s.case, z: s.z }))).revision;
      throw error;
    }
    d.revision = result.revision;
    d.dirty = false;
    s.labelled = true;
    s.saved = d.label.slice();
    d.saved = s.saved;
    caseInfo(s.case).labelled = result.labelled;
    renderCases();
    renderStrip();
    updateSliceStatus();
    showMessage(`saved ${s.case} slice ${s.z}: ${result.labelled.length} labelled slice(s) in this case`, "ok");
  }

  // Accepting puts the prediction in place of the slice's label: never over unsaved edits (they would be
  // dropped), and over a saved label only when the user confirms (the server refuses it otherwise).
  async function accept() {
    const s = state.slice;
    if (!s || !s.pred) return;
    if (draft().dirty) {
      showMessage(`${s.case} slice ${s.z} has unsaved edits; save them (S) or undo them before accepting the ` +
                  "prediction", "error");
      return;
    }
    const replace = s.labelled;
    if (replace && !window.confirm(`${s.case} slice ${s.z} is labelled. Replace your label with the prediction?`)) {
      showMessage(`kept your label of ${s.case} slice ${s.z}`, "info");
      return;
    }
    const result = await api("POST", "/api/accept" + q({ case: s.case, z: s.z, replace }));
    state.drafts.delete(draftKey(s.case, s.z));
    caseInfo(s.case).labelled = result.labelled;
    await openSlice(s.case, s.z);
    showMessage(`accepted the prediction of ${s.case} slice ${s.z}; correct it with the brush and save`, "ok");
  }

  async function unmark() {
    const s = state.slice;
    if (!s) return;
    const result = await api("DELETE", "/api/label" + q({ case: s.case, z: s.z }));
    caseInfo(s.case).labelled = result.labelled;
    s.labelled = false;
    renderCases();
    renderStrip();
    updateSliceStatus();
  }

  // --- fitting, predicting, suggesting, exporting ---------------------------------------------

  function unsavedCount() {
    let n = 0;
    state.drafts.forEach((d) => { if (d.dirty) n += 1; });
    return n;
  }

  let fitClicks = 0;

  async function startFit() {
    // A double click sends two requests; the server starts one and refuses the other, but their
    // answers may arrive in either order: only the latest click's outcome is shown, so "fit started"
    // never hides the refusal that came after it.
    const click = ++fitClicks;
    const body = { steps: Number($("fit-steps").value), views: Number($("fit-views").value),
                   cases: state.caseId ? [state.caseId] : [], all_cases: $("fit-all").checked };
    const job = await api("POST", "/api/fit", { json: body });
    showJob(job);
    if (click !== fitClicks) return;
    const unsaved = unsavedCount();
    showMessage(`fit started` + (unsaved ? `; ${unsaved} slice(s) with unsaved edits are not part of it` : ""), "info");
  }

  async function startPredict() {
    if (!state.caseId) return;
    const job = await api("POST", "/api/predict", { json: { cases: [state.caseId], all_cases: $("fit-all").checked } });
    showMessage("predicting", "info");
    showJob(job);
  }

  // With no job since the server started, the fit the project already holds (a restart keeps it and its
  // predictions): "no fit yet" beside a prediction drawn from it would read as a fit lost.
  function describeLatestFit() {
    const latest = state.info && state.info.latest_fit;
    if (!latest) return "no fit yet";
    const parts = [`latest fit ${latest.fit}`];
    if (typeof latest.labelled_slices === "number") parts.push(`${latest.labelled_slices} labelled slice(s)`);
    if (typeof latest.best_score === "number") parts.push(`Dice on labelled slices ${latest.best_score.toFixed(3)}`);
    return parts.join(" - ");
  }

  function describeJob(job) {
    if (!job || job.state === "idle") return describeLatestFit();
    const parts = [`${job.kind} ${job.id}: ${job.state}`];
    if (job.kind === "fit" && job.steps) {
      parts.push(`step ${job.step}/${job.steps}`);
      if (job.loss !== null && job.loss !== undefined) parts.push(`loss ${job.loss.toFixed(3)}`);
      if (job.dice !== null && job.dice !== undefined) parts.push(`Dice on labelled slices ${job.dice.toFixed(3)}`);
    }
    if ((job.state === "running" || job.state === "interrupted") && job.message) parts.push(job.message);
    if (job.state === "failed") parts.push(job.resumable && job.message ? job.message : job.error);
    return parts.join(" - ");
  }

  function showJob(job) {
    const previous = state.job;
    state.job = job;
    const status = $("job-status");
    status.textContent = describeJob(job);
    status.className = job && job.state === "failed" ? "failed" : "";
    const bar = $("job-progress");
    if (job && job.kind === "fit" && job.steps) { bar.max = job.steps; bar.value = job.step || 0; }
    else if (job && job.cases_total) { bar.max = job.cases_total; bar.value = job.cases_done || 0; }
    else { bar.max = 1; bar.value = job && job.state === "done" ? 1 : 0; }
    const running = job && job.state === "running";
    $("cancel-job").disabled = !running;
    $("resume-job").disabled = !(job && (job.state === "interrupted" || job.state === "failed") && job.resumable);
    if (running && !state.polling) state.polling = setInterval(pollJob, POLL_MS);
    if (!running && state.polling) { clearInterval(state.polling); state.polling = null; }
    if (previous && previous.state === "running" && job && job.id === previous.id && !running) jobEnded(job);
  }

  async function pollJob() {
    try { showJob(await api("GET", "/api/job")); } catch (error) { /* shown by api() */ }
  }

  async function jobEnded(job) {
    if (job.state === "failed") {
      showMessage(job.resumable && job.message ? job.message : `${job.kind} failed: ${job.error}`, "error");
      return;
    }
    if (job.state === "cancelled") {
      showMessage(job.message, "info");
      return;
    }
    await loadInfo();
    if (state.caseId) await openSlice(state.caseId, state.z);
    showMessage(`${job.kind} finished` + (job.result && job.result.predicted ?
      `; predicted ${job.result.predicted.length} case(s)` : ""), "ok");
  }

  async function cancelJob() {
    showJob(await api("DELETE", "/api/job"));
  }

  async function resumeJob() {
    const job = await api("POST", "/api/job/resume");
    showMessage(`${job.kind} resumed`, "info");
    showJob(job);
  }

  async function suggest() {
    const s = await api("GET", "/api/suggest");
    state.suggestion = s;
    $("suggest-status").textContent = `${s.case} slice ${s.z}: mean entropy ${s.entropy.toFixed(3)}`;
    await openSlice(s.case, s.z);
  }

  async function exportLabels() {
    const r = await api("POST", "/api/export");
    $("export-status").textContent = `${r.slices} slice(s) of ${r.cases} case(s) in ${r.folder}`;
    showMessage(`exported to ${r.folder}`, "ok");
  }

  // --- controls --------------------------------------------------------------------------------

  function selectTool(tool) {
    state.tool = tool;
    for (const b of document.querySelectorAll("[data-tool]")) b.classList.toggle("active", b.dataset.tool === tool);
    render();
  }

  function setBrush(size) {
    state.brush = Math.max(1, Math.min(64, size));
    $("brush-size").value = state.brush;
    $("brush-size-value").textContent = state.brush;
    render();
  }

  function toggleLayer(name) {
    state.show[name] = !state.show[name];
    $(`show-${name}`).checked = state.show[name];
    render();
  }

  const quietly = (fn) => (...args) => Promise.resolve(fn(...args)).catch(() => {});

  function onKey(event) {
    if (event.target.tagName === "INPUT" && event.target.type !== "checkbox" && event.target.type !== "range") return;
    const key = event.key;
    const ctrl = event.ctrlKey || event.metaKey;
    if (ctrl && key.toLowerCase() === "z") { event.preventDefault(); if (event.shiftKey) redo(); else undo(); return; }
    if (ctrl && key.toLowerCase() === "y") { event.preventDefault(); redo(); return; }
    if (ctrl && key.toLowerCase() === "s") { event.preventDefault(); quietly(save)(); return; }
    if (ctrl || event.altKey) return;
    const handled = {
      b: () => selectTool("brush"), e: () => selectTool("eraser"), f: () => selectTool("fill"),
      "[": () => setBrush(state.brush - 1), "]": () => setBrush(state.brush + 1),
      s: quietly(save), a: quietly(accept), n: quietly(suggest), r: () => { setWindow(...state.defaultWindow); render(); },
      h: () => toggleLayer("label"), p: () => toggleLayer("pred"), g: () => toggleLayer("gt"),
      ArrowUp: () => step(-1), ArrowDown: () => step(1), PageUp: () => step(-1), PageDown: () => step(1),
      "+": () => setZoom(state.zoom * 1.25), "=": () => setZoom(state.zoom * 1.25), "-": () => setZoom(state.zoom / 1.25),
    }[key.length === 1 ? key.toLowerCase() : key];
    if (handled) { event.preventDefault(); handled(); return; }
    if (/^[1-9]$/.test(key) && state.classes[Number(key) - 1]) selectClass(state.classes[Number(key) - 1].value);
  }

  function bind() {
    const canvas = $("view");
    canvas.addEventListener("pointerdown", onPointerDown);
    canvas.addEventListener("pointermove", onPointerMove);
    canvas.addEventListener("pointerup", onPointerUp);
    canvas.addEventListener("pointercancel", onPointerUp);
    canvas.addEventListener("pointerleave", () => { state.cursor = null; render(); });
    canvas.addEventListener("contextmenu", (e) => e.preventDefault());
    $("canvas-wrap").addEventListener("wheel", (e) => {
      e.preventDefault();
      if (e.ctrlKey) setZoom(state.zoom * (e.deltaY < 0 ? 1.25 : 0.8)); else step(e.deltaY > 0 ? 1 : -1);
    }, { passive: false });
    for (const b of document.querySelectorAll("[data-tool]")) b.addEventListener("click", () => selectTool(b.dataset.tool));
    $("brush-size").addEventListener("input", (e) => setBrush(Number(e.target.value)));
    $("undo").addEventListener("click", undo);
    $("redo").addEventListener("click", redo);
    $("save").addEventListener("click", quietly(save));
    $("accept").addEventListener("click", quietly(accept));
    $("unmark").addEventListener("click", quietly(unmark));
    $("prev-slice").addEventListener("click", () => step(-1));
    $("next-slice").addEventListener("click", () => step(1));
    $("zoom-in").addEventListener("click", () => setZoom(state.zoom * 1.25));
    $("zoom-out").addEventListener("click", () => setZoom(state.zoom / 1.25));
    $("win-width").addEventListener("input", windowFromSliders);
    $("win-level").addEventListener("input", windowFromSliders);
    $("win-reset").addEventListener("click", () => { setWindow(...state.defaultWindow); render(); });
    for (const name of ["label", "pred", "gt"]) {
      $(`show-${name}`).addEventListener("change", (e) => { state.show[name] = e.target.checked; render(); });
      $(`opacity-${name}`).addEventListener("input", (e) => { state.opacity[name] = e.target.value / 100; render(); });
    }
    $("fit").addEventListener("click", quietly(startFit));
    $("predict").addEventListener("click", quietly(startPredict));
    $("cancel-job").addEventListener("click", quietly(cancelJob));
    $("resume-job").addEventListener("click", quietly(resumeJob));
    $("suggest").addEventListener("click", quietly(suggest));
    $("export").addEventListener("click", quietly(exportLabels));
    document.addEventListener("keydown", onKey);
    window.addEventListener("beforeunload", (e) => { if (unsavedCount()) { e.preventDefault(); e.returnValue = ""; } });
  }

  async function start() {
    bind();
    selectTool("brush");
    setBrush(state.brush);
    const info = await loadInfo();
    $("fit-steps").value = info.defaults.steps;
    $("fit-steps").max = info.defaults.max_steps;
    $("fit-views").value = info.defaults.views;
    const readable = info.cases.filter((c) => !c.error);  // a damaged file leaves the other cases to label
    const first = readable.find((c) => c.labelled.length) || readable[0];
    if (first) await openSlice(first.id, first.labelled.length ? first.labelled[0] : Math.floor(first.slices / 2));
    document.body.dataset.ready = "true";
  }

  // For scripted checks (the browser test) and the console: the page's state and actions.
  window.studio = { state, openSlice, save, accept, suggest, startFit, exportLabels, selectTool, selectClass, setBrush,
                    setZoom, draft, draw };
  start().catch((error) => showMessage(`the studio could not start: ${error.message}`, "error"));
})();
