"""The operator page the daemon serves at ``/``: one HTML file, no build step, no external
assets. It polls ``/api/status`` and ``/api/heads`` once a second and drives the enrollment and
rollback calls with the token the operator types (kept in the tab's sessionStorage only)."""

OPERATOR_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sortline station</title>
<style>
 body { font: 14px system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1c2430; }
 header { background: #1c2430; color: #fff; padding: 10px 18px; display: flex; gap: 22px; align-items: baseline;
          flex-wrap: wrap; }
 header h1 { font-size: 17px; margin: 0; }
 .pill { padding: 1px 8px; border-radius: 9px; background: #2a7a3b; }
 .pill.bad { background: #b3261e; }
 main { padding: 14px 18px; display: grid; grid-template-columns: 1.6fr 1fr; gap: 16px; }
 section { background: #fff; border-radius: 6px; padding: 10px 14px; box-shadow: 0 1px 2px #0002; }
 section + section { margin-top: 12px; }
 h2 { font-size: 14px; margin: 0 0 8px; color: #445; text-transform: uppercase; letter-spacing: .04em; }
 table { border-collapse: collapse; width: 100%; }
 td, th { padding: 3px 6px; text-align: left; border-bottom: 1px solid #eef0f3; font-variant-numeric: tabular-nums; }
 th { color: #667; font-weight: 600; }
 td img { width: 36px; height: 36px; object-fit: cover; border-radius: 3px; display: block; }
 .safe { color: #b35c00; }
 .alarm { color: #b3261e; font-weight: 600; }
 .bars { display: flex; align-items: flex-end; gap: 3px; height: 90px; }
 .bar { background: #2a7a3b; width: 22px; min-height: 1px; }
 .bars-x { display: flex; gap: 3px; font-size: 10px; color: #667; }
 .bars-x span { width: 22px; text-align: center; }
 input, button { font: inherit; padding: 3px 7px; }
 button { cursor: pointer; }
 .row { display: flex; gap: 8px; align-items: center; flex-wrap: wrap; margin: 6px 0; }
 #message { min-height: 1.2em; color: #b3261e; }
 #message.ok { color: #2a7a3b; }
 .current { font-weight: 700; }
</style></head>
<body>
<header><h1>sortline station</h1><span id="ready" class="pill">…</span><span id="bundle"></span>
 <span id="head"></span><span id="counts"></span></header>
<main>
 <div>
  <section><h2>Latest decisions</h2>
   <table><thead><tr><th></th><th>item</th><th>class</th><th>confidence</th><th>exit</th><th>reason</th>
   <th>head</th></tr></thead><tbody id="decisions"></tbody></table></section>
 </div>
 <div>
  <section><h2>Lanes</h2><table><tbody id="lanes"></tbody></table></section>
  <section><h2>Exits and reasons</h2><table><tbody id="exits"></tbody></table></section>
  <section><h2>Decision latency</h2><div id="latency"></div><div class="bars" id="bars"></div>
   <div class="bars-x" id="bars-x"></div></section>
  <section><h2>Faults</h2><table><tbody id="faults"></tbody></table></section>
  <section><h2>Enroll a new item</h2>
   <div class="row"><input id="token" type="password" placeholder="API token" size="18"></div>
   <div class="row"><input id="label" placeholder="class name" size="14">
    <input id="count" type="number" min="1" max="1000" value="5" style="width:4em">
    <button id="start">present the next items</button></div>
   <div class="row" id="enroll-state"></div>
   <div class="row"><button id="commit">keep them</button><button id="cancel">discard</button>
    exit <input id="exit" type="number" min="0" max="255" value="1" style="width:4em">
    <label><input id="force" type="checkbox"> force</label><button id="refit">refit the head</button></div>
   <div id="message"></div></section>
  <section><h2>Head versions</h2><table><tbody id="heads"></tbody></table></section>
 </div>
</main>
<script>
const $ = id => document.getElementById(id);
const esc = s => String(s ?? "").replace(/[&<>"']/g, c => `&#${c.charCodeAt(0)};`);
$("token").value = sessionStorage.getItem("sortline-token") || "";
$("token").onchange = () => sessionStorage.setItem("sortline-token", $("token").value);
async function get(path) { const r = await fetch(path); return [r.status, await r.json()]; }
async function post(path, body) {
  const r = await fetch(path, {method: "POST", headers: {"Content-Type": "application/json",
    "Authorization": "Bearer " + $("token").value}, body: JSON.stringify(body || {})});
  const data = await r.json();
  if (!r.ok) throw new Error(typeof data.detail === "string" ? data.detail : JSON.stringify(data.detail));
  return data;
}
function say(text, ok) { $("message").textContent = text || ""; $("message").className = ok ? "ok" : ""; }
function rows(obj, cls) {
  return Object.entries(obj).map(([k, v]) => `<tr><td>${esc(k)}</td><td class="${cls(k, v)}">${v}</td></tr>`).join("");
}
async function refresh() {
  const [, s] = await get("/api/status");
  $("ready").textContent = s.ready ? "ready" : "not ready";
  $("ready").className = "pill" + (s.ready ? "" : " bad");
  $("bundle").textContent = s.bundle + " · " + s.runtime;
  $("head").textContent = "head v" + s.head_version + " (" + s.labels.length + " classes)";
  $("counts").textContent = `${s.items} items · ${s.deadline_misses} late · up ${Math.round(s.uptime_s)} s`;
  $("decisions").innerHTML = s.recent.map(d => `<tr><td><img alt="" src="/api/items/${d.item_id}/thumbnail.png"
     onerror="this.style.visibility='hidden'"></td><td>${d.item_id}</td><td>${esc(d.label ?? "—")}</td>
     <td>${d.label ? d.confidence.toFixed(2) : ""}</td><td>${d.exit}</td>
     <td class="${d.reason === "confident" ? "" : "safe"}">${esc(d.reason)}</td>
     <td>v${d.head_version}</td></tr>`).join("");
  $("exits").innerHTML = rows(Object.fromEntries(Object.entries(s.exits).map(([k, v]) => ["exit " + k, v])), () => "")
    + rows(s.reasons, k => k === "confident" ? "" : "safe");
  $("faults").innerHTML = rows(s.faults, (k, v) => v ? "alarm" : "");
  const paused = new Set(s.paused_lanes);
  $("lanes").innerHTML = Object.entries(s.lanes).map(([lane, n]) => `<tr><td>lane ${lane}</td><td>${n} items</td>
    <td class="${paused.has(Number(lane)) ? "alarm" : ""}">${paused.has(Number(lane)) ? "paused" : "running"}</td>
    <td><button data-lane="${lane}" data-action="${paused.has(Number(lane)) ? "resume" : "pause"}">
    ${paused.has(Number(lane)) ? "resume" : "pause"}</button></td></tr>`).join("");
  for (const b of document.querySelectorAll("#lanes button"))
    b.onclick = () => act(() => post(`/api/lanes/${b.dataset.lane}/${b.dataset.action}`),
                          r => `lane ${r.lane} ${r.paused ? "paused: its items go to the safe exit" : "resumed"}`);
  $("latency").textContent = `p50 ${s.latency_ms_p50} ms · p99 ${s.latency_ms_p99} ms`;
  const most = Math.max(1, ...s.latency_histogram.map(b => b[1]));
  $("bars").innerHTML = s.latency_histogram.map(b =>
    `<div class="bar" title="${b[1]} items" style="height:${Math.round(88 * b[1] / most)}px"></div>`).join("");
  $("bars-x").innerHTML = s.latency_histogram.map(b =>
    `<span>${b[0] === null ? "more" : b[0] >= 1000 ? b[0] / 1000 + "s" : b[0]}</span>`).join("");
  const e = s.enrolling;
  $("enroll-state").textContent = e ? `${e.label}: ${e.collected} of ${e.count} items${e.done ? " — done" : ""}` : "";
  const [status, h] = await get("/api/heads");
  $("heads").innerHTML = status !== 200 ? `<tr><td>${esc(h.detail)}</td></tr>` : h.heads.map(v =>
    `<tr class="${v.current ? "current" : ""}"><td>v${v.version}</td><td>${v.note || (v.labels + " classes, "
     + v.examples + " examples")}</td><td>${v.current ? "current" : `<button data-v="${v.version}">roll back</button>`}
     </td></tr>`).join("");
  for (const b of document.querySelectorAll("#heads button"))
    b.onclick = () => act(() => post("/api/heads/rollback", {version: Number(b.dataset.v)}), "rolled back");
  document.body.dataset.ready = "1";
}
async function act(call, done) {
  try { const r = await call(); say(done(r), true); await refresh(); }
  catch (err) { say(err.message); }
}
$("start").onclick = () => act(() => post("/api/enroll", {label: $("label").value, count: Number($("count").value)}),
                                () => "present the items now");
$("commit").onclick = () => act(() => post("/api/enroll/commit"), r => `${r.added} examples of ${r.label} kept`);
$("cancel").onclick = () => act(() => post("/api/enroll/cancel"), () => "discarded");
$("refit").onclick = () => act(() => post("/api/refit", {exits: {[$("label").value]: Number($("exit").value)},
                                                        force: $("force").checked}),
                               r => `head v${r.head_version} is live`);
refresh(); setInterval(() => refresh().catch(err => say(err.message)), 1000);
</script></body></html>
"""
