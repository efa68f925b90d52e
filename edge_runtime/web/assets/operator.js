// The operator page: polls /api/status and /api/heads once a second and drives enrollment,
// lanes and rollback with the token the operator types (kept in this tab's sessionStorage only).
"use strict";
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
function say(text, ok) { $("message").textContent = text || ""; $("message").className = "message" + (ok ? " ok" : ""); }
function rows(entries, cls) {
  return entries.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {className: cls(k, v)}, v)));
}
function decisionRow(d) {
  const thumb = el("img", {alt: "", src: `/api/items/${encodeURIComponent(d.item_id)}/thumbnail.png`});
  thumb.onerror = () => { thumb.style.visibility = "hidden"; };
  return el("tr", {}, el("td", {}, thumb), el("td", {}, d.item_id), el("td", {}, d.label ?? "—"),
            el("td", {}, d.label ? Number(d.confidence).toFixed(2) : ""), el("td", {}, d.exit),
            el("td", {className: d.reason === "confident" ? "" : "safe"}, d.reason), el("td", {}, "v" + d.head_version));
}
function laneRow([lane, n], paused) {
  const stopped = paused.has(Number(lane)), action = stopped ? "resume" : "pause";
  const button = el("button", {dataset: {lane, action}}, action);
  button.onclick = () => act(() => post(`/api/lanes/${encodeURIComponent(lane)}/${action}`),
                             r => `lane ${r.lane} ${r.paused ? "paused: its items go to the safe exit" : "resumed"}`);
  return el("tr", {}, el("td", {}, "lane " + lane), el("td", {}, n + " items"),
            el("td", {className: stopped ? "alarm" : ""}, stopped ? "paused" : "running"), el("td", {}, button));
}
function headRow(v) {
  let last = el("td", {}, "current");
  if (!v.current) {
    const button = el("button", {dataset: {v: v.version}}, "roll back");
    button.onclick = () => act(() => post("/api/heads/rollback", {version: v.version}), () => "rolled back");
    last = el("td", {}, button);
  }
  return el("tr", {className: v.current ? "current" : ""}, el("td", {}, "v" + v.version),
            el("td", {}, v.note || `${v.labels} classes, ${v.examples} examples`), last);
}
function latency(s) {
  $("latency").textContent = `p50 ${s.latency_ms_p50} ms · p99 ${s.latency_ms_p99} ms`;
  const most = Math.max(1, ...s.latency_histogram.map(b => b[1]));
  fill($("bars"), s.latency_histogram.map(b =>
    el("div", {className: "bar", title: `${b[1]} items`, style: {height: Math.round(88 * b[1] / most) + "px"}})));
  fill($("bars-x"), s.latency_histogram.map(b =>
    el("span", {}, b[0] === null ? "more" : b[0] >= 1000 ? b[0] / 1000 + "s" : b[0])));
}
async function refresh() {
  const [, s] = await get("/api/status");
  $("ready").textContent = s.ready ? "ready" : "not ready";
  $("ready").className = "pill" + (s.ready ? "" : " bad");
  $("bundle").textContent = s.bundle + " · " + s.runtime;
  $("head").textContent = "head v" + s.head_version + " (" + s.labels.length + " classes)";
  $("counts").textContent = `${s.items} items · ${s.deadline_misses} late · up ${Math.round(s.uptime_s)} s`;
  fill($("decisions"), s.recent.map(decisionRow));
  fill($("exits"), [...rows(Object.entries(s.exits).map(([k, v]) => ["exit " + k, v]), () => ""),
                    ...rows(Object.entries(s.reasons), k => k === "confident" ? "" : "safe")]);
  fill($("faults"), rows(Object.entries(s.faults), (k, v) => v ? "alarm" : ""));
  const paused = new Set(s.paused_lanes);
  fill($("lanes"), Object.entries(s.lanes).map(entry => laneRow(entry, paused)));
  latency(s);
  const e = s.enrolling;
  $("enroll-state").textContent = e ? `${e.label}: ${e.collected} of ${e.count} items${e.done ? " — done" : ""}` : "";
  const [status, h] = await get("/api/heads");
  fill($("heads"), status !== 200 ? [el("tr", {}, el("td", {}, h.detail))] : h.heads.map(headRow));
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
refresh().catch(err => say(err.message));
setInterval(() => refresh().catch(err => say(err.message)), 1000);
