// stembridge web surface. Data-driven: the server's "schema" message says which decks, stems, parameters, macros,
// scenes and features exist; "values" carry parameter changes from every source; the page sets parameters with
// {"t":"set"} / {"t":"setn"} exactly as OSC would. Plain JS, no dependencies, nothing fetched from elsewhere.
"use strict";

const S = {
  ws: null, schema: null, values: {}, decks: [], overviews: {}, meters: {}, meterDirty: false,
  bind: {},          // path -> [update functions]
  touching: {},      // path -> pointer count: incoming values for a path being moved are not drawn over the finger
  retry: 500, wakeLock: null, wantWake: localStorage.getItem("stembridge.wake") === "1",
  stats: { meterMsgs: 0, meterFrames: 0, valueMsgs: 0, errors: 0 },
  lastErrors: [],
};
window.__stembridge = S; // for tests and benchmarks

const $ = (sel, el = document) => el.querySelector(sel);
const el = (tag, cls, text) => { const e = document.createElement(tag); if (cls) e.className = cls; if (text !== undefined) e.textContent = text; return e; };

// ---- the engine's fader curve (bridge/params.py): gain_db = 60 * log10(level / 0.8), silence at -120 dB ----
function levelToDb(level) {
  const f = S.schema ? S.schema.fader : { unity_level: 0.8, db_per_decade: 60, silence_db: -120 };
  if (!(level > 0)) return f.silence_db;
  return Math.max(f.silence_db, f.db_per_decade * Math.log10(level / f.unity_level));
}
function dbToLevel(db) {
  const f = S.schema ? S.schema.fader : { unity_level: 0.8, db_per_decade: 60, silence_db: -120 };
  if (db <= f.silence_db) return 0;
  return Math.min(1, f.unity_level * Math.pow(10, db / f.db_per_decade));
}
// 0..1 position of a value on a control, as ParamSpec.to_normalized
function toNorm(spec, v) {
  if (spec.kind === "bool") return v ? 1 : 0;
  v = Math.min(Math.max(Number(v), spec.min), spec.max);
  if (spec.scale === "fader") { const lo = dbToLevel(spec.min), hi = dbToLevel(spec.max); return hi > lo ? (dbToLevel(v) - lo) / (hi - lo) : 0; }
  if (spec.scale === "log") return Math.log(v / spec.min) / Math.log(spec.max / spec.min);
  return (v - spec.min) / (spec.max - spec.min);
}
const fmtDb = (db) => (db <= -120 ? "-inf" : (db > 0 ? "+" : "") + db.toFixed(1)) + " dB";
const fmtTime = (s) => { if (!(s >= 0)) return "-:--"; const m = Math.floor(s / 60); return m + ":" + (s - 60 * m).toFixed(1).padStart(4, "0"); };

// ---- the socket ----
function connect() {
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws";
  const ws = new WebSocket(url);
  S.ws = ws;
  ws.onopen = () => { S.retry = 500; setConn(true); };
  ws.onclose = () => {
    setConn(false);
    if (S.ws === ws) setTimeout(connect, S.retry);
    S.retry = Math.min(5000, S.retry * 2);
  };
  ws.onmessage = (ev) => {
    let m; try { m = JSON.parse(ev.data); } catch (e) { return; }
    const h = HANDLERS[m.t]; if (h) h(m);
  };
}
function send(msg) { if (S.ws && S.ws.readyState === 1) { S.ws.send(JSON.stringify(msg)); return true; } return false; }
function setParam(path, value) { S.values[path] = value; send({ t: "set", path, value }); }
function setNorm(path, x) { send({ t: "setn", path, x }); }

function setConn(on) {
  const c = $("#conn"); c.classList.toggle("on", on); c.classList.toggle("off", !on);
  c.textContent = on ? "live" : "offline";
  if (!on) banner("Disconnected from stembridge: reconnecting...", "error"); else banner(null);
}
function banner(text, kind) {
  const b = $("#banner");
  if (!text) { if (b.dataset.kind !== "dry") { b.hidden = true; } return; }
  b.textContent = text; b.className = kind || ""; b.dataset.kind = kind || ""; b.hidden = false;
}

const HANDLERS = {
  schema(m) {
    const same = S.schema && JSON.stringify(S.schema.stems) === JSON.stringify(m.stems) &&
      JSON.stringify(S.schema.decks) === JSON.stringify(m.decks) && JSON.stringify(S.schema.macros) === JSON.stringify(m.macros) &&
      JSON.stringify(S.schema.features) === JSON.stringify(m.features);
    const first = !S.schema;
    S.schema = m;
    if (!same) build(); else { buildScenes(); fillCrates(); }
    if (first && m.features && m.features.crate) send({ t: "osc", address: "/stembridge/crate/list", args: [] });
    for (const p in S.values) update(p);
  },
  values(m) {
    S.stats.valueMsgs++;
    for (const p in m.v) { S.values[p] = m.v[p]; if (!S.touching[p]) update(p); }
  },
  meters(m) { S.meters = m.m; S.meterDirty = true; S.stats.meterMsgs++; },
  decks(m) { S.decks = m.decks; S.decksAt = performance.now(); drawDecks(); },
  overview(m) { S.overviews[m.deck] = m; drawOverview(m.deck); },
  status(m) { drawStatus(m.s); },
  error(m) { S.stats.errors++; S.lastErrors.push(m); if (S.lastErrors.length > 20) S.lastErrors.shift(); console.warn("stembridge:", m.code, m.message); },
  warning(m) { S.lastErrors.push(m); if (S.lastErrors.length > 20) S.lastErrors.shift(); },
  osc(m) { if (m.address === "/stembridge/crate/list") fillCrates(); },
  scene(m) { if (m.action === "stored") flash(`stored scene ${m.name}`); },
  pong() {},
};

function flash(text) { const b = $("#banner"); if (!b.hidden && b.dataset.kind) return; banner(text, "info"); setTimeout(() => banner(null), 1500); }
function update(path) { const fns = S.bind[path]; if (fns) for (const f of fns) f(S.values[path]); }
function bindPath(path, fn) { (S.bind[path] = S.bind[path] || []).push(fn); if (path in S.values) fn(S.values[path]); }

// ---- building the surface from the schema ----
function build() {
  S.bind = {};
  const main = $("#decks"); main.textContent = "";
  const sc = S.schema;
  for (const d of sc.decks) main.appendChild(buildDeck(d, sc));
  buildScenes(); fillCrates(); buildKeymap();
}

function buildDeck(d, sc) {
  const node = $("#deck-tpl").content.firstElementChild.cloneNode(true);
  const base = `deck/${d.n}`;
  node.dataset.deck = d.n;
  $(".deck-n", node).textContent = d.n;
  $(".deck-name", node).textContent = d.name;
  const play = $(".play", node), cue = $(".cue", node), loop = $(".loop", node);
  play.onclick = () => { const st = deckState(d.n); setParam(`${base}/transport/play`, !(st && st.playing)); };
  cue.onclick = () => setParam(`${base}/transport/cue`, true);
  loop.onclick = () => { const st = deckState(d.n); setParam(`${base}/transport/loop`, !(st && st.loop)); };
  if (d.kind === "input") { for (const b of [play, cue, loop]) b.hidden = true; $(".overview", node).hidden = true; }
  // seek on the overview
  const ov = $(".overview", node);
  ov.addEventListener("pointerdown", (e) => {
    const st = deckState(d.n); if (!st || !st.duration_s) return;
    const r = ov.getBoundingClientRect();
    setParam(`${base}/transport/seek_s`, Math.max(0, Math.min(1, (e.clientX - r.left) / r.width)) * st.duration_s);
  });
  // deck level: the fader curve over level_db (setn through its "fader" scale)
  const lvl = $(".deck-level .hfader", node), out = $(".deck-level output", node), spec = sc.params[`${base}/level_db`];
  if (spec) {
    const draw = fader(lvl, "h", (x) => setNorm(`${base}/level_db`, x), `${base}/level_db`, () => 0.8);
    bindPath(`${base}/level_db`, (v) => { draw(toNorm(spec, v)); out.textContent = fmtDb(v); });
  } else $(".deck-level", node).hidden = true;
  // load from the crate, where the engine has one
  if (sc.features && sc.features.load) {
    const load = $(".load", node); load.hidden = false;
    $(".load-prev", node).onclick = () => send({ t: "osc", address: `/stembridge/deck/${d.n}/load_prev`, args: [] });
    $(".load-next", node).onclick = () => send({ t: "osc", address: `/stembridge/deck/${d.n}/load_next`, args: [] });
    $(".load-go", node).onclick = () => { const v = $(".crate", node).value; if (v) send({ t: "osc", address: `/stembridge/deck/${d.n}/load`, args: [v] }); };
  }
  const stems = $(".stems", node);
  for (const stem of sc.stems) stems.appendChild(buildStem(d.n, stem, sc));
  return node;
}

function buildStem(n, stem, sc) {
  const node = $("#stem-tpl").content.firstElementChild.cloneNode(true);
  const base = `deck/${n}/stem/${stem}`;
  node.dataset.stem = stem;
  $(".stem-name", node).textContent = stem;
  const vf = $(".vfader", node), db = $(".db", node);
  const draw = fader(vf, "v", (x) => setParam(`${base}/level`, x), `${base}/level`, () => sc.fader.unity_level);
  bindPath(`${base}/level`, (v) => draw(v));
  bindPath(`${base}/gain_db`, (v) => { db.textContent = fmtDb(v); });
  const mute = $(".mute", node), solo = $(".solo", node);
  mute.onclick = () => setParam(`${base}/mute`, !S.values[`${base}/mute`]);
  solo.onclick = () => setParam(`${base}/solo`, !S.values[`${base}/solo`]);
  bindPath(`${base}/mute`, (v) => mute.classList.toggle("on", !!v));
  bindPath(`${base}/solo`, (v) => solo.classList.toggle("on", !!v));
  const macro = sc.macros[`${n}/${stem}`];
  if (macro) {
    const box = $(".macro", node); box.hidden = false;
    $(".macro-label", node).textContent = macro.label;
    const first = macro.targets[0], spec = sc.params[first];
    const drawM = fader($(".hfader", box), "h", (x) => { for (const t of macro.targets) setNorm(t, x); }, first,
      () => toNorm(spec, spec.default));
    bindPath(first, (v) => drawM(toNorm(spec, v)));
  }
  const meter = $(".meter", node);
  meter.dataset.deck = n; meter.dataset.stem = stem;
  return node;
}

// A fader: relative drag (a touch never jumps the value), each pointer on its own (two faders at once),
// double-tap resets. orient "v" or "h"; onMove(x 0..1); returns draw(x).
function fader(elem, orient, onMove, path, resetTo) {
  const fill = $(".fill", elem), thumb = $(".thumb", elem);
  let x = 0, drag = null, lastTap = 0;
  const draw = (v) => {
    x = Math.max(0, Math.min(1, Number(v) || 0));
    if (orient === "v") { fill.style.height = (x * 100) + "%"; if (thumb) thumb.style.bottom = (x * 100) + "%"; }
    else fill.style.width = (x * 100) + "%";
  };
  const size = () => { const r = elem.getBoundingClientRect(); return orient === "v" ? r.height : r.width; };
  elem.addEventListener("pointerdown", (e) => {
    e.preventDefault();
    try { elem.setPointerCapture(e.pointerId); } catch (err) { /* a pointer the browser no longer tracks */ }
    const now = performance.now();
    if (now - lastTap < 300) { draw(resetTo()); onMove(x); lastTap = 0; return; }
    lastTap = now;
    drag = { id: e.pointerId, start: orient === "v" ? e.clientY : e.clientX, x0: x, fine: e.shiftKey };
    S.touching[path] = (S.touching[path] || 0) + 1;
    elem.classList.add("touching");
  });
  elem.addEventListener("pointermove", (e) => {
    if (!drag || e.pointerId !== drag.id) return;
    const pos = orient === "v" ? e.clientY : e.clientX;
    const delta = (orient === "v" ? drag.start - pos : pos - drag.start) / size() * (drag.fine ? 0.2 : 1);
    const nx = Math.max(0, Math.min(1, drag.x0 + delta));
    if (nx !== x) { draw(nx); onMove(nx); }
  });
  const end = (e) => {
    if (!drag || e.pointerId !== drag.id) return;
    drag = null; elem.classList.remove("touching");
    S.touching[path] = Math.max(0, (S.touching[path] || 1) - 1);
    if (!S.touching[path]) { delete S.touching[path]; update(path); }
  };
  elem.addEventListener("pointerup", end);
  elem.addEventListener("pointercancel", end);
  elem.addEventListener("keydown", (e) => {
    const step = e.shiftKey ? 0.01 : 0.05;
    if (e.key === "ArrowUp" || e.key === "ArrowRight") { draw(x + step); onMove(x); e.preventDefault(); e.stopPropagation(); }
    if (e.key === "ArrowDown" || e.key === "ArrowLeft") { draw(x - step); onMove(x); e.preventDefault(); e.stopPropagation(); }
  });
  return draw;
}

function buildScenes() {
  const list = $("#scene-list"); list.textContent = "";
  (S.schema.scenes || []).forEach((name, i) => {
    const b = el("button", "scene", name);
    b.title = i < 8 ? `F${i + 1}` : "";
    b.onclick = () => recallScene(name);
    list.appendChild(b);
  });
}
function recallScene(name) {
  const fade = Math.max(0, Math.min(600, Number($("#fade").value) || 0));
  send({ t: "scene", action: "recall", name, fade_s: fade });
}
function fillCrates() {
  const items = (S.schema && S.schema.crate) || [];
  for (const sel of document.querySelectorAll("select.crate")) {
    const keep = sel.value; sel.textContent = "";
    for (const path of items) { const o = el("option", "", path.split("/").pop()); o.value = path; sel.appendChild(o); }
    if (keep) sel.value = keep;
  }
}
function buildKeymap() {
  const t = $("#keymap"); t.textContent = "";
  for (const [keys, what] of S.schema.keymap || []) { const tr = el("tr"); tr.appendChild(el("td", "", keys)); tr.appendChild(el("td", "", what)); t.appendChild(tr); }
}

// ---- decks, overviews, status ----
function deckState(n) { return S.decks.find((d) => d.n === n); }
function drawDecks() {
  for (const st of S.decks) {
    const node = document.querySelector(`.deck[data-deck="${st.n}"]`); if (!node) continue;
    if (st.name) $(".deck-name", node).textContent = st.name;
    $(".play", node).classList.toggle("on", !!st.playing);
    $(".play", node).textContent = st.playing ? "pause" : "play";
    $(".loop", node).classList.toggle("on", !!st.loop);
  }
}
function playhead(st) {
  if (!st || !(st.duration_s > 0)) return null;
  let pos = st.position_s || 0;
  if (st.playing && S.decksAt) pos += (performance.now() - S.decksAt) / 1000;
  if (st.loop && st.loop_end_s > st.loop_start_s && pos > st.loop_end_s) pos = st.loop_start_s + (pos - st.loop_start_s) % (st.loop_end_s - st.loop_start_s);
  return Math.min(pos, st.duration_s);
}
function drawOverview(n) {
  const node = document.querySelector(`.deck[data-deck="${n}"]`); if (!node) return;
  const canvas = $(".overview canvas", node), ov = S.overviews[n], st = deckState(n);
  const w = canvas.clientWidth * devicePixelRatio, h = canvas.clientHeight * devicePixelRatio;
  if (!w || !h) return;
  if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, w, h);
  const pos = playhead(st), frac = pos !== null ? pos / st.duration_s : null;
  if (ov && ov.peaks.length) {
    const k = ov.peaks.length, mid = h / 2;
    for (let i = 0; i < w; i++) {
      const j = Math.floor(i / w * k), played = frac !== null && i / w < frac;
      const p = ov.peaks[j] / 255 * mid, r = ov.rms[j] / 255 * mid;
      g.fillStyle = played ? "#2d4a66" : "#3f6a92"; g.fillRect(i, mid - p, 1, 2 * p);
      g.fillStyle = played ? "#5d7d9c" : "#8cc4f2"; g.fillRect(i, mid - r, 1, 2 * r);
    }
  }
  if (st && st.loop && st.duration_s) {
    g.fillStyle = "rgba(255,201,64,.18)";
    g.fillRect(st.loop_start_s / st.duration_s * w, 0, (st.loop_end_s - st.loop_start_s) / st.duration_s * w, h);
  }
  if (frac !== null) { g.fillStyle = "#fff"; g.fillRect(Math.round(frac * w) - 1, 0, 2 * devicePixelRatio, h); }
  $(".deck-time", node).textContent = st && st.duration_s ? `${fmtTime(pos)} / ${fmtTime(st.duration_s)}` : (st ? st.kind || "" : "");
}
function drawStatus(s) {
  const parts = [];
  const item = (label, value, bad) => parts.push(`${label} <b class="${bad ? "bad" : ""}">${value}</b>`);
  if ("latency_ms" in s) item("latency", s.latency_ms.toFixed(1) + " ms");
  if ("deadline_misses" in s) item("misses", s.deadline_misses, s.deadline_misses > 0);
  if ("xruns" in s) item("xruns", s.xruns, s.xruns > 0);
  if ("cpu_pct" in s) item("CPU", Math.round(s.cpu_pct) + "%", s.cpu_pct > 85);
  if ("callback_ms_p99" in s) item("callback p99", s.callback_ms_p99.toFixed(2) + " ms");
  if (s.web) item("web", `${s.web.clients} client(s)`, s.web.rate_limited > 0);
  $("#status").innerHTML = parts.join(" &middot; ");
  const b = $("#banner");
  if (s.worker_failures > 0) {
    b.textContent = `The separation worker failed (${s.worker_failures} time(s)): the dry mix plays; restart stembridge live.`;
    b.className = "error"; b.dataset.kind = "dry"; b.hidden = false;
  } else if (s.misses_now > 0) {
    b.textContent = `Separation fell back to the dry mix: ${s.misses_now} deadline miss(es) just now (the worker is ` +
      `late; the dry signal plays on the ${s.dry_stem || "dry"} bus until separation fades back in).`;
    b.className = ""; b.dataset.kind = "dry"; b.hidden = false;
  } else if (b.dataset.kind === "dry") { b.dataset.kind = ""; b.hidden = true; }
}

// ---- meters (30 Hz from the server; drawn on animation frames) ----
const METER_FLOOR_DB = -60, METER_TOP_DB = 6;
const meterY = (amp, h) => { const db = amp > 0 ? 20 * Math.log10(amp) : -200; return h * (1 - Math.max(0, Math.min(1, (db - METER_FLOOR_DB) / (METER_TOP_DB - METER_FLOOR_DB)))); };
function drawMeters() {
  for (const c of document.querySelectorAll("canvas.meter")) {
    const d = S.meters[c.dataset.deck]; const v = d && d[c.dataset.stem];
    const g = c.getContext("2d"), h = c.height, w = c.width;
    g.clearRect(0, 0, w, h);
    if (!v) continue;
    const yr = meterY(v[1], h), yp = meterY(v[0], h);
    g.fillStyle = v[0] >= 1 ? "#ff5a4f" : "#3ddc84"; g.fillRect(0, yr, w, h - yr);
    g.fillStyle = v[0] >= 1 ? "#ff5a4f" : "#e8eaf0"; g.fillRect(0, yp, w, 2);
    g.fillStyle = "#5a6272"; g.fillRect(0, meterY(1, h), w, 1);
  }
}
function frame() {
  if (S.meterDirty) { S.meterDirty = false; drawMeters(); S.stats.meterFrames++; }
  for (const st of S.decks) if (st.playing || !S.drawn) drawOverview(st.n);
  S.drawn = true;
  requestAnimationFrame(frame);
}

// ---- keyboard map (listed on the page from the schema) ----
const MUTE_KEYS = ["1234", "5678"], SOLO_KEYS = ["qwer", "tyui"], PLAY_KEYS = ["z", "n"], CUE_KEYS = ["x", "m"];
document.addEventListener("keydown", (e) => {
  if (!S.schema || e.ctrlKey || e.metaKey || e.altKey || e.target.tagName === "INPUT" || e.target.tagName === "SELECT") return;
  const k = e.key.toLowerCase(), stems = S.schema.stems;
  for (let d = 0; d < 2; d++) {
    const n = d + 1; if (n > S.schema.decks.length) break;
    let i = MUTE_KEYS[d].indexOf(k);
    if (i >= 0 && i < stems.length) { const p = `deck/${n}/stem/${stems[i]}/mute`; setParam(p, !S.values[p]); update(p); return; }
    i = SOLO_KEYS[d].indexOf(k);
    if (i >= 0 && i < stems.length) { const p = `deck/${n}/stem/${stems[i]}/solo`; setParam(p, !S.values[p]); update(p); return; }
    if (k === PLAY_KEYS[d]) { const st = deckState(n); setParam(`deck/${n}/transport/play`, !(st && st.playing)); return; }
    if (k === CUE_KEYS[d]) { setParam(`deck/${n}/transport/cue`, true); return; }
  }
  const f = /^f([1-8])$/.exec(k);
  if (f) { const name = (S.schema.scenes || [])[Number(f[1]) - 1]; if (name) { recallScene(name); e.preventDefault(); } return; }
  if (k === "escape") for (const p in S.values) if (p.endsWith("/solo") && S.values[p]) setParam(p, false);
});

// ---- staying awake on stage (Screen Wake Lock needs a secure context: https or localhost) ----
async function wake(on) {
  const b = $("#wake");
  S.wantWake = on; localStorage.setItem("stembridge.wake", on ? "1" : "0");
  if (!on) { if (S.wakeLock) { await S.wakeLock.release().catch(() => {}); S.wakeLock = null; } b.classList.remove("on"); return; }
  if (!("wakeLock" in navigator)) { b.textContent = window.isSecureContext ? "no wake lock" : "wake lock needs https"; return; }
  try {
    S.wakeLock = await navigator.wakeLock.request("screen");
    b.classList.add("on");
    S.wakeLock.addEventListener("release", () => { b.classList.remove("on"); });
  } catch (err) { b.textContent = "wake lock refused"; }
}
$("#wake").onclick = () => wake(!(S.wakeLock && !S.wakeLock.released));
document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible" && S.wantWake) wake(true); });
document.addEventListener("pointerdown", () => { if (S.wantWake && !S.wakeLock) wake(true); }, { once: true });

$("#keys-toggle").onclick = () => { const k = $("#keys"); k.hidden = !k.hidden; localStorage.setItem("stembridge.keys", k.hidden ? "0" : "1"); };
if (localStorage.getItem("stembridge.keys") === "1") $("#keys").hidden = false;
const fadeBox = $("#fade");
fadeBox.value = localStorage.getItem("stembridge.fade") || fadeBox.value;
fadeBox.onchange = () => localStorage.setItem("stembridge.fade", fadeBox.value);
$("#store").onclick = () => {
  const name = $("#store-name").value.trim();
  if (/^[A-Za-z0-9_-]{1,64}$/.test(name)) send({ t: "scene", action: "store", name }); else flash("scene names: letters, digits, _ or -");
};
window.addEventListener("resize", () => { for (const st of S.decks) drawOverview(st.n); });

connect();
requestAnimationFrame(frame);
