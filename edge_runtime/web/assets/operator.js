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
  await refreshWatch();
  await refreshShadow();
  document.body.dataset.ready = "1";
}
// --- drift alarms and the queue of unsure items -------------------------------------------------
let queueSelected = null, queueClasses = [];
function alarmText(a) {
  const where = a.camera === null ? "items" : "camera " + a.camera;
  return [el("b", {}, `${where} · ${a.statistic}`), ` since item ${a.at_item}: ${a.advice}`];
}
async function refreshWatch() {
  const [, d] = await get("/api/drift");
  const banner = $("drift-banner");
  banner.hidden = !d.active.length;
  fill(banner, d.active.flatMap((a, i) => [...(i ? [el("br")] : []), ...alarmText(a)]));
  $("drift-state").textContent = !d.enabled ? "no drift watch on this station"
    : d.watching ? `${d.monitors.length} statistics watched; alarms: ${d.active.length} up, ${d.alarms.length} this run`
    : `learning the reference: ${d.reference_items} of ${d.reference_needed} items`;
  const [, q] = await get("/api/queue");
  queueClasses = q.classes;
  $("queue-state").textContent = !q.enabled ? "no queue on this station"
    : `${q.queued} items kept (${q.labelled} labelled), ${q.dropped} not kept; a key gives the selected item its class`;
  const open = q.items.filter(x => !x.label);
  if (!open.some(x => x.key === queueSelected)) queueSelected = open.length ? open[0].key : null;
  fill($("queue"), q.items.slice(0, 12).map(queueRow));
  const chosen = q.items.find(x => x.key === queueSelected);
  fill($("queue-views"), chosen ? chosen.views.map(v => el("img", {alt: `view ${v}`,
    src: `/api/queue/${encodeURIComponent(chosen.key)}/v${v}.rgb.png`})) : []);
  $("queue-views").className = "row queue-views";
  fill($("queue-classes"), chosen ? queueClasses.map((c, i) => {
    const chip = el("span", {className: "chip", dataset: {cls: c}}, el("kbd", {}, KEYS[i]), c);
    chip.onclick = () => labelQueued(c);
    return chip;
  }) : []);
}
function queueRow(x) {
  const thumb = el("img", {alt: "", src: `/api/queue/${encodeURIComponent(x.key)}/v${x.views[0] ?? 0}.rgb.png`});
  const row = el("tr", {className: x.key === queueSelected ? "selected" : "", dataset: {key: x.key}},
                 el("td", {}, thumb), el("td", {}, x.item_id), el("td", {}, x.reasons.join(", ")),
                 el("td", {}, Number(x.uncertainty).toFixed(2)), el("td", {}, x.decision.label ?? "—"),
                 el("td", {className: x.label ? "" : "safe"}, x.label ?? "—"));
  row.onclick = () => { if (!x.label) { queueSelected = x.key; refreshWatch(); } };
  return row;
}
async function labelQueued(name) {
  if (!queueSelected) return;
  const key = queueSelected;
  await act(() => post(`/api/queue/${encodeURIComponent(key)}/label`, {label: name}),
            r => `item ${r.item_id} labelled ${r.label}`);
}
document.addEventListener("keydown", async ev => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey || ev.target.tagName === "INPUT") return;
  const i = KEYS.indexOf(ev.key.toLowerCase());
  if (i >= 0 && i < queueClasses.length && queueSelected) await labelQueued(queueClasses[i]);
});
// --- a candidate in the shadow, side by side with the live version --------------------------------
function percent(x) { return x === null || x === undefined ? "—" : (100 * x).toFixed(1) + " %"; }
async function refreshShadow() {
  const [, sh] = await get("/api/shadow");
  for (const id of ["promote", "shadow-rollback", "shadow-stop"]) $(id).disabled = !sh.enabled;
  if (!sh.enabled) {
    $("shadow-state").textContent = "no shadow on this station ([shadow] enabled = true in its station file)";
    fill($("shadow-compare"), []); fill($("shadow-classes"), []); $("shadow-verdict").textContent = "";
    return;
  }
  const s = sh.stats, live = sh.live || {};
  $("shadow-state").textContent = sh.candidate
    ? `${sh.candidate} beside ${live.bundle} head v${live.head}: ${sh.shadowed} items (${sh.sampled_out} let pass under load)`
    : `no candidate; live: ${live.bundle} head v${live.head}`;
  const pair = (name, a, b) => el("tr", {}, el("td", {}, name), el("td", {}, a), el("td", {}, b));
  fill($("shadow-compare"), sh.candidate || s.items ? [
    pair("version", `head v${live.head}`, sh.candidate ?? "—"),
    pair(`accuracy on ${s.labelled} labelled items`, percent(s.live_accuracy), percent(s.shadow_accuracy)),
    pair("right where the other is wrong", s.live_only_right ?? 0, s.shadow_only_right ?? 0),
    pair("unsure", percent(s.live_unsure_rate), percent(s.shadow_unsure_rate)),
    pair("unknown", percent(s.live_unknown_rate), percent(s.shadow_unknown_rate)),
    pair("agreement", percent(s.agreement), "")] : []);
  fill($("shadow-classes"), Object.entries(s.agreement_per_class || {}).map(([outcome, v]) =>
    el("tr", {}, el("td", {}, outcome), el("td", {}, v.items), el("td", {}, percent(v.agreement)))));
  const r = sh.rollout;
  $("shadow-verdict").textContent = (sh.candidate ? `promotion${sh.auto ? " (automatic)" : ""}: `
    + (sh.ready ? "ready — " : "not yet — ") + sh.why : "")
    + (r ? ` Latest promotion: ${r.version} at item ${r.at_item} by ${r.by}; `
       + (r.ended ?? `watched ${r.items} of ${r.window_items} items`) + "." : "");
}
$("promote").onclick = () => act(() => post("/api/shadow/promote", {why: "promoted on the operator page"}),
                                 r => `${r.rollout.version} is live`);
$("shadow-rollback").onclick = () => act(() => post("/api/shadow/rollback", {why: "rolled back on the operator page"}),
                                         r => `${r.rollout.previous} is live again`);
$("shadow-stop").onclick = () => act(() => post("/api/shadow/stop"), () => "the candidate is stopped");
$("mark-good").onclick = () => act(() => post("/api/drift/reference"), () => "a new reference is being learnt");

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
                               r => r.shadowed ? `head v${r.head_version} runs in the shadow` : `head v${r.head_version} is live`);
refresh().catch(err => say(err.message));
setInterval(() => refresh().catch(err => say(err.message)), 1000);
