// The drawing page: records strokes as Quick, Draw! raw data ([xs, ys, ts] per stroke, ts in ms
// since the first point), asks the server a few times a second while drawing and at once when a
// stroke ends, and shows the top classes and the nearest gallery items.
"use strict";

(() => {
  const THROTTLE_MS = 250;  // at most about four requests a second while the pen moves
  const LINE_WIDTH = 4;     // CSS pixels on the page (the server draws with the model's own settings)

  const canvas = document.getElementById("canvas");
  const context = canvas.getContext("2d");
  const buttons = {undo: byId("undo"), clear: byId("clear"), download: byId("download")};
  const state = {strokes: [], current: null, t0: null, model: null, lastEventAt: 0, lastSentAt: -Infinity,
                 timer: null, controller: null, sent: 0, shown: 0, top: null};
  // What tests and benchmarks read: latencies (ms from the last pointer event to the shown answer).
  const sketchApp = window.sketchApp = {
    latencies: [], updates: 0, ready: false,
    drawing: () => allStrokes().map(s => [s.xs.slice(), s.ys.slice(), s.ts.slice()]),
    topClass: () => state.top && state.top.class,
  };

  function byId(id) { return document.getElementById(id); }
  function round2(v) { return Math.round(v * 100) / 100; }
  function allStrokes() { return state.current ? state.strokes.concat([state.current]) : state.strokes; }

  // ---------------------------------------------------------------- canvas
  function resize() {
    const ratio = window.devicePixelRatio || 1;
    const box = canvas.getBoundingClientRect();
    canvas.width = Math.round(box.width * ratio);
    canvas.height = Math.round(box.height * ratio);
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    redraw();
  }

  function redraw() {
    context.clearRect(0, 0, canvas.width, canvas.height);
    context.lineWidth = LINE_WIDTH;
    context.lineCap = "round";
    context.lineJoin = "round";
    context.strokeStyle = "#111";
    for (const stroke of allStrokes()) {
      context.beginPath();
      context.moveTo(stroke.xs[0], stroke.ys[0]);
      for (let i = 0; i < stroke.xs.length; i++) context.lineTo(stroke.xs[i], stroke.ys[i]);
      if (stroke.xs.length === 1) context.lineTo(stroke.xs[0] + 0.01, stroke.ys[0]);
      context.stroke();
    }
  }

  function addPoint(stroke, event) {
    const box = canvas.getBoundingClientRect();
    const x = round2(event.clientX - box.left), y = round2(event.clientY - box.top);
    if (state.t0 === null) state.t0 = event.timeStamp;
    const n = stroke.xs.length;
    if (n && stroke.xs[n - 1] === x && stroke.ys[n - 1] === y) return;
    stroke.xs.push(x);
    stroke.ys.push(y);
    stroke.ts.push(Math.max(0, Math.round(event.timeStamp - state.t0)));
    context.beginPath();
    context.moveTo(stroke.xs[Math.max(0, n - 1)], stroke.ys[Math.max(0, n - 1)]);
    context.lineTo(x + (n ? 0 : 0.01), y);
    context.stroke();
  }

  canvas.addEventListener("pointerdown", event => {
    if (state.current || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    canvas.setPointerCapture(event.pointerId);
    state.current = {pointer: event.pointerId, xs: [], ys: [], ts: []};
    addPoint(state.current, event);
    state.lastEventAt = performance.now();
    updateButtons();
  });

  canvas.addEventListener("pointermove", event => {
    if (!state.current || event.pointerId !== state.current.pointer) return;
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const e of (events.length ? events : [event])) addPoint(state.current, e);
    state.lastEventAt = performance.now();
    schedule();
  });

  function endStroke(event) {
    if (!state.current || event.pointerId !== state.current.pointer) return;
    if (event.type === "pointerup") addPoint(state.current, event);
    state.strokes.push(state.current);
    state.current = null;
    state.lastEventAt = performance.now();
    updateButtons();
    send(true);
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);

  // ---------------------------------------------------------------- asking the server
  function schedule() {
    const wait = state.lastSentAt + THROTTLE_MS - performance.now();
    if (wait <= 0 && !state.controller) { send(false); return; }
    if (!state.timer) state.timer = setTimeout(() => { state.timer = null; schedule(); }, Math.max(wait, 20));
  }

  async function send(final) {
    if (state.timer) { clearTimeout(state.timer); state.timer = null; }
    if (state.controller) state.controller.abort();  // a newer drawing makes the answer in flight stale
    const strokes = allStrokes();
    if (!strokes.length) { show(null, null); return; }
    const controller = state.controller = new AbortController();
    const number = ++state.sent;
    const eventAt = state.lastEventAt;
    state.lastSentAt = performance.now();
    const body = JSON.stringify({drawing: strokes.map(s => [s.xs, s.ys, s.ts])});
    try {
      // One request, one pass of the model: the classes and the gallery neighbours together.
      const found = await fetch("/api/recognize", {method: "POST", body, signal: controller.signal,
                                                   headers: {"Content-Type": "application/json"}}).then(answer);
      if (number < state.shown) return;
      state.shown = number;
      show(found.classes, found.results);
      const latency = performance.now() - eventAt;
      sketchApp.latencies.push({ms: latency, final, points: strokes.reduce((n, s) => n + s.xs.length, 0)});
      sketchApp.updates += 1;
      setStatus(`answered in ${Math.round(latency)} ms`);
    } catch (error) {
      if (error.name === "AbortError") return;
      setStatus(error.message, true);
    } finally {
      if (state.controller === controller) state.controller = null;
    }
  }

  async function answer(response) {
    const data = await response.json().catch(() => ({error: `HTTP ${response.status}`}));
    if (!response.ok) throw new Error(data.error || `HTTP ${response.status}`);
    return data;
  }

  // ---------------------------------------------------------------- showing answers
  function show(classes, results) {
    const list = byId("guesses");
    list.replaceChildren();
    state.top = classes && classes.length ? classes[0] : null;
    for (const guess of (classes || [])) {
      const item = document.createElement("li");
      item.dataset.class = guess.class;
      item.dataset.probability = guess.probability;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${(100 * guess.probability).toFixed(1)}%`;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = guess.class;
      const value = document.createElement("span");
      value.className = "probability";
      value.textContent = `${(100 * guess.probability).toFixed(1)}%`;
      item.append(bar, name, value);
      list.append(item);
    }
    const grid = byId("results");
    grid.replaceChildren();
    for (const result of (results || [])) {
      const figure = document.createElement("figure");
      figure.dataset.class = result.class;
      let picture;
      if (result.thumbnail) {
        picture = document.createElement("img");
        picture.src = result.thumbnail;
        picture.alt = result.class;
        picture.loading = "lazy";
      } else {
        picture = document.createElement("div");
        picture.className = "none";
        picture.title = "the index holds no thumbnail of this item";
      }
      const caption = document.createElement("figcaption");
      caption.textContent = result.class;
      figure.append(picture, caption);
      grid.append(figure);
    }
    if (!classes && !results) setStatus("");
  }

  function setStatus(text, isError = false) {
    const status = byId("status");
    status.textContent = text;
    status.classList.toggle("error", isError);
  }

  function updateButtons() {
    const empty = !state.strokes.length && !state.current;
    buttons.undo.disabled = buttons.clear.disabled = buttons.download.disabled = empty;
  }

  // ---------------------------------------------------------------- buttons
  buttons.undo.addEventListener("click", () => {
    state.strokes.pop();
    if (!state.strokes.length) state.t0 = null;
    redraw();
    updateButtons();
    send(true);
  });

  buttons.clear.addEventListener("click", () => {
    state.strokes = [];
    state.t0 = null;
    redraw();
    updateButtons();
    send(true);
  });

  buttons.download.addEventListener("click", () => {
    // One line of Quick, Draw!'s raw format; `word` is the top guess, `recognized` whether it had p >= 0.5.
    const now = new Date().toISOString().replace("T", " ").replace("Z", " UTC");
    const record = {word: state.top ? state.top.class : "", countrycode: "", timestamp: now,
                    recognized: Boolean(state.top && state.top.probability >= 0.5),
                    key_id: String(Date.now()) + String(Math.floor(Math.random() * 1000)).padStart(3, "0"),
                    drawing: sketchApp.drawing()};
    const link = document.createElement("a");
    link.href = URL.createObjectURL(new Blob([JSON.stringify(record) + "\n"], {type: "application/x-ndjson"}));
    link.download = "drawing.ndjson";
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 1000);
  });

  // ---------------------------------------------------------------- start
  async function start() {
    try {
      state.model = await fetch("/api/model").then(answer);
    } catch (error) {
      setStatus(`cannot reach the model: ${error.message}`, true);
      return;
    }
    const m = state.model;
    const parts = [`${m.kind} model`, `${m.image_size} px`];
    if (m.classifies) parts.push(`${m.class_names.length} classes: ${m.class_names.join(", ")}`);
    if (m.search) parts.push(`gallery of ${m.index.count.toLocaleString("en")} items`);
    byId("model-line").textContent = parts.join(" \u00b7 ");
    byId("guesses-panel").hidden = !m.classifies;
    byId("results-panel").hidden = !m.search;
    resize();
    window.addEventListener("resize", resize);
    sketchApp.ready = true;
  }

  start();
})();
