// The story page's script (served as a file: the CSP forbids inline script).
// Everything the API returns is data: it reaches the DOM only through textContent,
// Option(text) and dataset, never parsed as HTML (issue 13, item 5: stored XSS).
"use strict";
const $ = (id) => document.getElementById(id);
const sevClass = (s) => s >= 0.7 ? "sev-high" : s >= 0.4 ? "sev-mid" : "sev-low";
const sevColor = (s) => s >= 0.7 ? "#c0392b" : s >= 0.4 ? "#e67e22" : "#f1c40f";
function fmtTime(ns) {
  const ms = ns / 1e6;
  if (ns > 1e17) return new Date(ms).toISOString().substr(11, 12);        // epoch feed time
  const s = ms / 1000, h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);  // since midnight
  return `${String(h).padStart(2, "0")}:${String(m).padStart(2, "0")}:${(s % 60).toFixed(3).padStart(6, "0")}`;
}
async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: ${r.status}`);
  return r.json();
}
const QUERYABLE = /^[A-Za-z0-9._-]{1,16}$/;  // the API's symbol charset (others are listed, never queried)
function el(tag, cls, text) {  // an element with a class and text content (never markup)
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
async function loadSymbols() {
  const syms = await getJSON("/api/symbols");
  const sel = $("symbol"), cur = sel.value;
  const names = syms.map((s) => String(s.symbol));
  if (names.join("\n") !== [...sel.options].map((o) => o.value).join("\n")) {
    sel.replaceChildren(...names.map((n) => new Option(n, n)));
    sel.value = names.includes(cur) ? cur : (names.find((n) => QUERYABLE.test(n)) || "");
  }
  return QUERYABLE.test(sel.value) ? sel.value : "";
}
function draw(sums, stories) {
  const c = $("chart"), g = c.getContext("2d"), W = c.width, H = c.height;
  g.clearRect(0, 0, W, H);
  const pts = sums.filter((s) => s.mid_tick !== null);  // (null: a side empty or the book crossed)
  document.body.dataset.plotted = String(pts.length);
  document.body.dataset.marked = "0";
  if (!pts.length) { g.fillText("no summaries yet", 20, 20); return; }
  const t0 = pts[0].start_ns, t1 = Math.max(pts[pts.length - 1].end_ns, t0 + 1);
  const tick = pts[0].tick_size || 1;
  const mids = pts.map((p) => p.mid_tick), spreads = pts.map((p) => p.spread_mean).filter((v) => v !== null);
  const lo = Math.min(...mids), hi = Math.max(...mids) + 1e-9;
  const smax = Math.max(...spreads, 1);
  const L = 70, R = W - 50, T = 20, midH = H * 0.62, spT = midH + 40, B = H - 30;
  const x = (t) => L + (R - L) * (t - t0) / (t1 - t0);
  const y = (m) => midH - (midH - T) * (m - lo) / (hi - lo);
  const ys = (s) => B - (B - spT) * s / smax;
  g.strokeStyle = "#ccc"; g.strokeRect(L, T, R - L, midH - T); g.strokeRect(L, spT, R - L, B - spT);
  g.fillStyle = "#333"; g.font = "12px sans-serif";
  g.fillText((hi * tick).toFixed(2), 4, T + 10); g.fillText((lo * tick).toFixed(2), 4, midH);
  g.fillText("mid", L + 4, T + 14); g.fillText("spread (ticks, mean)", L + 4, spT + 14);
  g.fillText(smax.toFixed(1), R + 4, spT + 10); g.fillText(fmtTime(t0), L, H - 8);
  g.fillText(fmtTime(t1), R - 80, H - 8);
  let marked = 0;
  for (const s of stories) {  // stories first, under the lines
    if (s.end_ns < t0 || s.start_ns > t1) continue;
    marked++;
    g.fillStyle = sevColor(s.severity) + "55";
    const xa = x(Math.max(s.start_ns, t0)), xb = Math.max(x(Math.min(s.end_ns, t1)), xa + 2);
    g.fillRect(xa, T, xb - xa, B - T);
  }
  document.body.dataset.marked = String(marked);
  g.strokeStyle = "#1f77b4"; g.lineWidth = 1.5; g.beginPath();
  pts.forEach((p, i) => { const px = x(p.end_ns), py = y(p.mid_tick); i ? g.lineTo(px, py) : g.moveTo(px, py); });
  g.stroke();
  g.strokeStyle = "#2ca02c"; g.beginPath();
  let pen = false;  // a null spread (crossed or one-sided book) is a gap, not a zero
  for (const p of pts) {
    if (p.spread_mean === null) { pen = false; continue; }
    const px = x(p.end_ns), py = ys(p.spread_mean);
    pen ? g.lineTo(px, py) : g.moveTo(px, py);
    pen = true;
  }
  g.stroke();
  document.body.dataset.spreads = String(spreads.length);
}
function list(stories) {  // (newest first, as fetched)
  const items = stories.map((s) => {
    const sev = Number(s.severity), d = el("div", `story ${sevClass(sev)}`);
    d.dataset.id = String(s.id);
    d.append(el("div", "", String(s.text)),
             el("div", "t", `${fmtTime(s.start_ns)} - ${fmtTime(s.end_ns)} · ${s.kind} · severity ` +
                            `${sev.toFixed(2)} · ${s.signal_ids.length} signal(s)`));
    return d;
  });
  $("stories").replaceChildren(...(items.length ? items : [el("p", "", "no stories in this window")]));
}
async function refresh() {
  try {
    const sym = await loadSymbols();
    if (!sym) { $("status").textContent = $("symbol").value ? "that symbol cannot be queried" : "no data yet"; return; }
    const since = $("since").value, q = `symbol=${encodeURIComponent(sym)}&since=${encodeURIComponent(since)}`;
    const [sums, stories] = await Promise.all([getJSON(`/api/summaries?${q}&points=900&limit=5000`),
                                              getJSON(`/api/stories?${q}&order=desc&limit=500`)]);
    draw(sums, stories); list(stories);
    document.body.dataset.loaded = "1";
    document.body.dataset.stories = String(stories.length);
    document.body.dataset.points = String(sums.length);
    $("status").textContent = `${sums.length} summaries, ${stories.length} stories · ${new Date().toLocaleTimeString()}`;
  } catch (e) { $("status").textContent = String(e); }
}
$("symbol").onchange = refresh; $("since").onchange = refresh;
{  // a link can name them: /?symbol=AMZN&since=1h
  const u = new URLSearchParams(location.search);
  if (u.get("symbol")) $("symbol").replaceChildren(new Option(u.get("symbol"), u.get("symbol")));
  if (u.get("since")) {
    const v = u.get("since");
    if (![...$("since").options].some((o) => o.value === v) && /^\d+(\.\d+)?(ms|s|m|h|d)$/.test(v))
      $("since").add(new Option(v, v));
    $("since").value = v;
  }
}
refresh(); setInterval(refresh, 2000);
