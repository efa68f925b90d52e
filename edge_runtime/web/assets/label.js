// The labelling page: each item's views and sensor trace; a key gives the class, s or → skips,
// ← goes back, u or Backspace undoes. Every label is saved by the server before the page moves on.
"use strict";
let state = null, pos = 0;
async function api(path, body) {
  const r = await fetch(path, body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                                        body: JSON.stringify(body)});
  const data = await r.json();
  if (!r.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail ?? r.status));
  return data;
}
function say(text) { $("status").textContent = text || ""; }
async function refresh() {
  state = await api("/api/state");
  $("rec").textContent = state.recording + " · " + state.sensor;
  $("progress").textContent = state.labelled + " / " + state.total + " labelled";
}
function firstUnlabelled(from) {
  for (let i = from; i < state.items.length; i++) if (!state.items[i].label) return i;
  return Math.min(from, state.items.length - 1);
}
function drawTrace(item) {
  const chart = $("trace"), W = 640, H = 170, pad = 28;
  if (!item.trace.length) {
    fill(chart, [svg("text", {x: 20, y: 90, fill: "#889"}, `no ${item.sensor} readings`)]); return;
  }
  const xs = item.trace.map(p => p.x), ys = item.trace.map(p => p.y);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || 1, y1 = Math.max(...ys, 1e-9);
  const sx = x => pad + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - 2 * pad);
  const sy = y => H - pad - y / y1 * (H - 2 * pad);
  const unit = item.sensor === "taps" ? "peak N per tap" : "grams over time";
  fill(chart, [
    svg("polyline", {points: item.trace.map(p => `${sx(p.x)},${sy(p.y)}`).join(" "), fill: "none",
                     stroke: "#2a7a3b", "stroke-width": 2}),
    ...item.trace.map(p => svg("circle", {cx: sx(p.x), cy: sy(p.y), r: 3.5, fill: "#1c2430"})),
    svg("text", {x: pad, y: 16, fill: "#556", "font-size": 12}, `${item.sensor}: ${unit} (max ${y1.toFixed(1)})`),
  ]);
}
function view(item, v, kind) {
  const caption = el("figcaption", {}, `view ${v.k} ${kind.toUpperCase()}`);
  const picture = v[kind]
    ? el("img", {alt: `view ${v.k} ${kind}`, src: `/frames/${encodeURIComponent(item.id)}/v${v.k}.${kind}.png`})
    : el("div", {className: "missing"}, `view ${v.k} lost`);
  return el("figure", {}, picture, caption);
}
async function show() {
  const entry = state.items[pos];
  if (!entry) { $("item-title").textContent = "no items"; return; }
  const item = await api("/api/item/" + encodeURIComponent(entry.id));
  $("item-title").textContent = `item ${item.id} (${pos + 1} of ${state.total})`;
  $("label-now").textContent = item.label || "—";
  fill($("views"), item.views.flatMap(v => ["rgb", "nir"].filter(k => k === "rgb" || v.nir).map(k => view(item, v, k))));
  fill($("classes"), state.classes.map((c, i) => {
    const row = el("div", {className: "cls" + (c === item.label ? " chosen" : "")}, el("kbd", {}, KEYS[i]), c);
    row.onclick = () => label(c);
    return row;
  }));
  drawTrace(item);
}
async function label(name) {
  try {
    await api("/api/label", {item_id: state.items[pos].id, label: name});
    await refresh(); pos = firstUnlabelled(pos + 1 < state.items.length ? pos + 1 : pos); say(""); await show();
  } catch (e) { say(e.message); }
}
document.addEventListener("keydown", async ev => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey || !state) return;
  const k = ev.key.toLowerCase(), i = KEYS.indexOf(k);
  if (k === "s" || ev.key === "ArrowRight") { pos = Math.min(pos + 1, state.items.length - 1); await show(); }
  else if (ev.key === "ArrowLeft") { pos = Math.max(pos - 1, 0); await show(); }
  else if (k === "u" || ev.key === "Backspace") {
    ev.preventDefault();
    try { const r = await api("/api/undo", {}); await refresh();
          if (r.item_id !== null) pos = state.items.findIndex(x => x.id === r.item_id); await show(); }
    catch (e) { say(e.message); }
  } else if (i >= 0 && i < state.classes.length) await label(state.classes[i]);
});
(async () => { await refresh(); pos = firstUnlabelled(0); await show(); document.body.dataset.ready = "1"; })()
  .catch(e => say(e.message));
