// digitlab draw-a-digit page: pointer-event drawing, live predictions, probability bars,
// and the 28×28 image the model saw; in "number" mode a wide canvas to write a number of
// several digits, read by /api/number, with each digit's confidence.
// No dependencies; talks only to this server's /api.
"use strict";

(() => {
  const pad = document.getElementById("pad");
  const ctx = pad.getContext("2d");
  const predictionEl = document.getElementById("prediction");
  const confidenceEl = document.getElementById("confidence");
  const barsEl = document.getElementById("bars");
  const preview = document.getElementById("preview");
  const previewCtx = preview.getContext("2d");
  const statusEl = document.getElementById("status");
  const fileInput = document.getElementById("file");
  const digitsEl = document.getElementById("digits");
  const previewBox = document.querySelector(".preview-box");

  const SIZES = { digit: [280, 280], number: [700, 200] };   // canvas pixels per mode
  const ENDPOINTS = { digit: "/api/predict", number: "/api/number" };
  const HINTS = {
    digit: ["Draw a digit", "Draw one digit (0–9) in the box with the mouse, a pen or a finger."],
    number: ["Write a number", "Write a number of several digits, left to right, in the wide box."],
  };
  const THROTTLE_MS = 150;                      // at most ~7 requests/s while drawing
  let mode = "digit";

  // thick, like MNIST's ~2.8 px strokes in 28 px: a twelfth of the height a digit can take
  function strokeWidth() { return Math.round(Math.min(pad.width, pad.height) / 12); }

  let version = 0;          // bumped on every change of the drawing
  let clearedAt = 0;        // results for versions <= this are stale (drawing was cleared)
  let shownVersion = 0;     // version whose result is on screen
  let hasInk = false;
  let drawing = false;
  let pointerId = null;
  let last = null;
  let inFlight = false;
  let timer = null;
  let lastSent = 0;
  let lastResult = null;
  let requests = 0;         // predictions asked for (tests check live updates)

  // a server started with --token: open the page as /#token=TOKEN (the fragment never leaves the browser)
  const token = new URLSearchParams(location.hash.slice(1)).get("token");
  const auth = token ? { Authorization: `Bearer ${token}` } : {};

  // ------------------------------------------------------------------ drawing

  function resetPaper() {
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, pad.width, pad.height);
  }

  function pos(e) {
    const r = pad.getBoundingClientRect();
    return { x: (e.clientX - r.left) * pad.width / r.width, y: (e.clientY - r.top) * pad.height / r.height };
  }

  function dot(p) {
    ctx.fillStyle = "#000";
    ctx.beginPath();
    ctx.arc(p.x, p.y, strokeWidth() / 2, 0, 2 * Math.PI);
    ctx.fill();
  }

  function segment(a, b) {
    ctx.strokeStyle = "#000";
    ctx.lineWidth = strokeWidth();
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x, b.y);
    ctx.stroke();
  }

  function changed() {
    version += 1;
    hasInk = true;
  }

  pad.addEventListener("pointerdown", (e) => {
    if (e.pointerType === "mouse" && e.button !== 0) return;
    if (drawing) return;                       // one pointer at a time
    e.preventDefault();
    pad.setPointerCapture(e.pointerId);
    drawing = true;
    pointerId = e.pointerId;
    last = pos(e);
    dot(last);
    changed();
    schedule();
  });

  pad.addEventListener("pointermove", (e) => {
    if (!drawing || e.pointerId !== pointerId) return;
    e.preventDefault();
    const events = (e.getCoalescedEvents && e.getCoalescedEvents().length) ? e.getCoalescedEvents() : [e];
    for (const ev of events) {
      const p = pos(ev);
      segment(last, p);
      last = p;
    }
    changed();
    schedule();
  });

  function endStroke(e) {
    if (!drawing || e.pointerId !== pointerId) return;
    drawing = false;
    pointerId = null;
    last = null;
    if (timer !== null) { clearTimeout(timer); timer = null; }
    requestPrediction();                       // the finished stroke: predict now
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);
  pad.addEventListener("lostpointercapture", endStroke);

  function clearAll() {
    resetPaper();
    version += 1;
    clearedAt = version;
    shownVersion = version;
    hasInk = false;
    lastResult = null;
    if (timer !== null) { clearTimeout(timer); timer = null; }
    predictionEl.textContent = "–";
    predictionEl.dataset.label = "";
    predictionEl.dataset.number = "";
    predictionEl.dataset.version = String(version);
    confidenceEl.textContent = "";
    renderBars(null);
    renderDigits([]);
    previewCtx.clearRect(0, 0, 28, 28);
    setStatus("Ready.");
  }
  document.getElementById("clear").addEventListener("click", clearAll);
  document.addEventListener("keydown", (e) => { if (e.key === "Escape") clearAll(); });

  // ------------------------------------------------------------------ predictions

  function schedule() {                        // throttled prediction while drawing
    if (timer !== null) return;
    const wait = Math.max(0, THROTTLE_MS - (performance.now() - lastSent));
    timer = setTimeout(() => { timer = null; requestPrediction(); }, wait);
  }

  function requestPrediction() {
    if (!hasInk || inFlight) return;           // a running request re-checks when it ends
    send(version, { image: pad.toDataURL("image/png") });
  }

  async function send(v, payload) {
    inFlight = true;
    requests += 1;
    lastSent = performance.now();
    try {
      const r = await fetch(ENDPOINTS[mode], {
        method: "POST",
        headers: { "Content-Type": "application/json", ...auth },
        body: JSON.stringify(payload),
      });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(body.detail || `HTTP ${r.status}`);
      if (v > clearedAt && v >= shownVersion) show(body, v);
    } catch (err) {
      setStatus(`Prediction failed: ${err.message}`, true);
    } finally {
      inFlight = false;
      if (hasInk && version !== v) {           // the drawing changed meanwhile
        if (drawing) schedule(); else requestPrediction();
      }
    }
  }

  function show(res, v) {
    if (mode === "number") { showNumber(res, v); return; }
    shownVersion = v;
    lastResult = res;
    if (res.label == null) {                   // the server abstained (nothing drawn)
      predictionEl.textContent = "–";
    } else {
      predictionEl.textContent = res.name != null ? String(res.name) : String(res.label);  // class name
    }
    predictionEl.dataset.label = res.label == null ? "" : String(res.label);
    predictionEl.dataset.version = String(v);
    confidenceEl.textContent = res.label == null ? "no digit found" : `${(100 * res.confidence).toFixed(1)}% sure`;
    renderBars(res.probabilities);               // null when the server abstained: empty bars
    renderPreview(res.preprocessed);
    setStatus(`${res.elapsed_ms} ms on the server`);
  }

  function showNumber(res, v) {
    shownVersion = v;
    lastResult = res;
    predictionEl.textContent = res.number == null ? "–" : res.number;
    predictionEl.dataset.number = res.number == null ? "" : res.number;
    predictionEl.dataset.label = "";
    predictionEl.dataset.version = String(v);
    confidenceEl.textContent = res.number == null ? "no number found"
      : `${(100 * res.confidence).toFixed(1)}% sure of the whole number`;
    renderDigits(res.digits || []);
    setStatus(`${res.elapsed_ms} ms on the server`);
  }

  function renderDigits(digits) {              // one line per digit read: the digit and its confidence
    digitsEl.replaceChildren(...digits.map((d) => {
      const li = document.createElement("li");
      li.dataset.label = d.label == null ? "" : String(d.label);
      li.dataset.confidence = d.confidence == null ? "" : String(d.confidence);
      const digit = document.createElement("span");
      digit.className = "digit";
      digit.textContent = d.label == null ? "?" : String(d.label);
      const track = document.createElement("span");
      track.className = "track";
      const fill = document.createElement("span");
      fill.className = "fill";
      fill.style.width = `${(100 * (d.confidence || 0)).toFixed(1)}%`;
      track.appendChild(fill);
      const pct = document.createElement("span");
      pct.className = "pct";
      pct.textContent = d.confidence == null ? "not a digit" : `${(100 * d.confidence).toFixed(1)}%`;
      li.append(digit, track, pct);
      return li;
    }));
  }

  // ------------------------------------------------------------------ modes

  function setMode(m) {
    if (!(m in SIZES) || m === mode) return;
    mode = m;
    [pad.width, pad.height] = SIZES[m];         // resizing also empties the canvas
    pad.classList.toggle("wide", m === "number");
    pad.setAttribute("aria-label", m === "number" ? "drawing area: write a number here"
                                                  : "drawing area: draw a digit here");
    document.getElementById("title").textContent = HINTS[m][0];
    document.getElementById("hint").textContent = HINTS[m][1];
    for (const [id, active] of [["mode-digit", m === "digit"], ["mode-number", m === "number"]]) {
      const b = document.getElementById(id);
      b.classList.toggle("active", active);
      b.setAttribute("aria-pressed", String(active));
    }
    barsEl.hidden = m === "number";
    previewBox.hidden = m === "number";
    digitsEl.hidden = m !== "number";
    clearAll();
  }
  document.getElementById("mode-digit").addEventListener("click", () => setMode("digit"));
  document.getElementById("mode-number").addEventListener("click", () => setMode("number"));

  function setStatus(text, isError = false) {
    statusEl.textContent = text;
    statusEl.classList.toggle("error", isError);
  }

  // ------------------------------------------------------------------ bars and preview

  const bars = [];
  for (let d = 0; d < 10; d++) {
    const li = document.createElement("li");
    li.id = `bar-${d}`;
    li.innerHTML = '<span class="digit"></span><span class="track"><span class="fill"></span></span>' +
                   '<span class="pct"></span>';
    li.querySelector(".digit").textContent = String(d);
    barsEl.appendChild(li);
    bars.push({ li, fill: li.querySelector(".fill"), pct: li.querySelector(".pct") });
  }

  function renderBars(probs) {
    const top = probs ? probs.indexOf(Math.max(...probs)) : -1;
    bars.forEach((b, d) => {
      const p = probs ? probs[d] : 0;
      b.fill.style.width = `${(100 * p).toFixed(1)}%`;
      b.pct.textContent = probs ? `${(100 * p).toFixed(1)}%` : "";
      b.li.dataset.probability = String(p);
      b.li.classList.toggle("top", d === top);
    });
  }

  function renderPreview(pixels) {
    const img = previewCtx.createImageData(28, 28);
    for (let y = 0; y < 28; y++) {
      for (let x = 0; x < 28; x++) {
        const i = 4 * (28 * y + x);
        const v = pixels[y][x];
        img.data[i] = v; img.data[i + 1] = v; img.data[i + 2] = v; img.data[i + 3] = 255;
      }
    }
    previewCtx.putImageData(img, 0, 0);
  }

  // ------------------------------------------------------------------ file upload

  fileInput.addEventListener("change", async () => {
    const file = fileInput.files[0];
    if (!file) return;
    const form = new FormData();
    form.append("file", file);
    setStatus(`Uploading ${file.name}…`);
    try {
      const r = await fetch(ENDPOINTS[mode], { method: "POST", body: form, headers: auth });
      const body = await r.json().catch(() => ({}));
      if (!r.ok) throw new Error(body.detail || `HTTP ${r.status}`);
      clearAll();
      show(body, version);
      predictionEl.dataset.version = "file";
      setStatus(`${file.name}: ${body.elapsed_ms} ms on the server`);
    } catch (err) {
      setStatus(`${file.name}: ${err.message}`, true);
    } finally {
      fileInput.value = "";
    }
  });

  // ------------------------------------------------------------------ start

  fetch("/api/models", { headers: auth }).then((r) => r.json()).then((m) => {
    const info = (m.models || [])[0] || {};
    const acc = info.metrics && info.metrics.test_accuracy;
    const dataset = info.dataset || "mnist";
    document.getElementById("model-name").textContent =
      `Model: ${info.model || "?"}${acc ? ` (${(100 * acc).toFixed(2)}% on the ${dataset} test set)` : ""}.`;
    if (Array.isArray(info.class_names)) {     // bars labelled with the model's class names
      info.class_names.forEach((name, d) => {
        if (bars[d]) bars[d].li.querySelector(".digit").textContent = String(name);
      });
    }
  }).catch(() => {});

  resetPaper();
  renderBars(null);

  // hooks for automated tests and curious users
  window.digitlab = {
    version: () => version,
    busy: () => drawing || inFlight || timer !== null || (hasInk && shownVersion !== version),
    mode: () => mode,
    setMode: setMode,
    lastResult: () => lastResult,
    requests: () => requests,
    clear: clearAll,
  };
})();
