"""``sortline label REC``: a local page to label a recording's items by keyboard.

It shows each item's views in RGB and NIR and its sensor trace; a digit key gives the class,
``s`` or → skips, ← goes back, ``u`` or Backspace undoes the last label. Each label is written
to ``REC/labels.jsonl`` (:class:`LabelBook`) before the page moves on, so nothing is lost if the
browser or this process is closed. Served by the standard library's threading HTTP server on
127.0.0.1 only; every request's item id and view number are checked against the recording, and
frames are read only from the recording's own ``frames/`` folder.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from sortline.hardware.protocol import ScaleReading, TapReading

from .labels import LabelBook, LabelError, recording_items
from .memory import StoreError, check_label

log = logging.getLogger(__name__)
MAX_BODY = 4096
MAX_CLASSES = 34  # keys 1-9, a-z without s and u (skip, undo), 0
_FRAME = re.compile(r"^/frames/(\d{1,15})/v(\d{1,2})\.(rgb|nir)\.png$")
_ITEM = re.compile(r"^/api/item/(\d{1,15})$")


class LabelSession:
    """What the page works on: the recording's items (views on disk, readings matched), the
    classes to choose from, and the label book."""

    def __init__(self, recording: Path, classes: list[str]) -> None:
        self.root = Path(recording)
        data = recording_items(self.root)
        self.sensor = data.sensor
        self.items = {item.item_id: item for item in data.items}
        self.order = sorted(self.items)
        self.book = LabelBook(self.root)
        known = list(dict.fromkeys([*classes, *sorted(set(self.book.labels.values()))]))
        if not known:
            raise LabelError("no classes to label with: give --classes a,b,c (or label some items from a CSV first)")
        if len(known) > MAX_CLASSES:
            raise LabelError(f"{len(known)} classes: the page's keys label at most {MAX_CLASSES} (1-9, a-z but s and "
                             "u, 0)")
        self.classes = [check_label(c) for c in known]

    def state(self) -> dict:
        labels = self.book.labels
        return {"recording": self.root.name, "sensor": self.sensor, "classes": self.classes,
                "items": [{"id": i, "label": labels.get(i)} for i in self.order],
                "labelled": sum(i in labels for i in self.order), "total": len(self.order)}

    def item(self, item_id: int) -> dict | None:
        item = self.items.get(item_id)
        if item is None:
            return None
        trace = []
        for r in item.readings:
            if isinstance(r, TapReading):
                trace.append({"x": r.index, "y": r.peak_n, "rebound": r.rebound})
            elif isinstance(r, ScaleReading):
                trace.append({"x": r.t_ms, "y": r.grams, "stable": r.stable})
        views = json.loads((self.root / "frames" / f"{item_id:06d}" / "capture.json").read_text())["views"]
        return {"id": item_id, "label": self.book.labels.get(item_id), "sensor": self.sensor, "trace": trace,
                "views": [{"k": k, "rgb": "rgb" in v and "corrupt" not in v, "nir": "nir" in v}
                          for k, v in enumerate(views)]}


class _Handler(BaseHTTPRequestHandler):
    session: LabelSession  # set on the subclass made per server

    def log_message(self, fmt: str, *args: object) -> None:
        log.debug("label page: " + fmt, *args)

    def _send(self, status: int, body: bytes, kind: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, data: object, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
        path = self.path.split("?", 1)[0]
        if path == "/":
            self._send(HTTPStatus.OK, PAGE.encode(), "text/html; charset=utf-8")
        elif path == "/api/state":
            self._json(self.session.state())
        elif m := _ITEM.match(path):
            item = self.session.item(int(m.group(1)))
            self._json(item) if item else self._json({"error": "no such item"}, HTTPStatus.NOT_FOUND)
        elif m := _FRAME.match(path):
            item_id, k, kind = int(m.group(1)), int(m.group(2)), m.group(3)
            file = self.session.root / "frames" / f"{item_id:06d}" / f"v{k}.{kind}.png"
            if item_id in self.session.items and file.is_file():
                self._send(HTTPStatus.OK, file.read_bytes(), "image/png")
            else:
                self._json({"error": "no such frame"}, HTTPStatus.NOT_FOUND)
        else:
            self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)

    def do_POST(self) -> None:  # noqa: N802
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 <= length <= MAX_BODY:
                raise ValueError(f"a body of {length} bytes")
            body = json.loads(self.rfile.read(length) or b"{}")
            if self.path == "/api/label":
                item_id, label = int(body["item_id"]), body["label"]
                if item_id not in self.session.items:
                    raise ValueError(f"item {item_id} is not in the recording")
                if label is not None and label not in self.session.classes:
                    raise ValueError(f"{label!r:.40} is not one of the classes")
                self.session.book.set(item_id, label)
                self._json({"ok": True, "item_id": item_id, "label": label})
            elif self.path == "/api/undo":
                self._json({"ok": True, "item_id": self.session.book.undo()})
            else:
                self._json({"error": "not found"}, HTTPStatus.NOT_FOUND)
        except (ValueError, KeyError, TypeError, LabelError, StoreError) as exc:
            self._json({"ok": False, "error": str(exc)}, HTTPStatus.BAD_REQUEST)


def serve_label_page(session: LabelSession, port: int = 0, host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Start the page's server on a thread; returns it (``server.server_address`` has the port;
    ``server.shutdown()`` stops it)."""
    handler = type("LabelHandler", (_Handler,), {"session": session})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="label-page", daemon=True).start()
    return server


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sortline label</title>
<style>
 body { font: 15px system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1c2430; }
 header { background: #1c2430; color: #fff; padding: 10px 18px; display: flex; gap: 24px; align-items: baseline; }
 header h1 { font-size: 17px; margin: 0; }
 #progress { font-variant-numeric: tabular-nums; }
 main { padding: 14px 18px; display: grid; grid-template-columns: 1fr 300px; gap: 18px; }
 .views { display: flex; flex-wrap: wrap; gap: 10px; }
 figure { margin: 0; background: #fff; padding: 6px; border-radius: 6px; box-shadow: 0 1px 2px #0002; }
 figure img { width: 150px; height: 150px; object-fit: contain; image-rendering: pixelated; display: block; }
 figcaption { font-size: 12px; color: #556; text-align: center; }
 .missing { width: 150px; height: 150px; display: grid; place-items: center; color: #a33; background: #fee; }
 aside { background: #fff; border-radius: 6px; padding: 12px; box-shadow: 0 1px 2px #0002; }
 .cls { display: flex; gap: 8px; padding: 5px 8px; border-radius: 4px; margin: 3px 0; cursor: pointer; }
 .cls kbd { background: #e6e8ec; border-radius: 3px; padding: 0 6px; font-family: ui-monospace, monospace; }
 .cls.current { background: #2a7a3b; color: #fff; }
 .cls.current kbd { background: #fff3; color: #fff; }
 #item-title { font-size: 18px; margin: 0 0 10px; }
 #label-now { font-weight: 600; }
 svg { background: #fff; border-radius: 6px; box-shadow: 0 1px 2px #0002; margin-top: 12px; }
 .help { color: #556; font-size: 13px; line-height: 1.6; }
 #status { color: #a33; min-height: 1.2em; }
</style></head>
<body>
<header><h1>sortline label</h1><span id="rec"></span><span id="progress"></span></header>
<main>
 <section>
  <h2 id="item-title"></h2>
  <div>label: <span id="label-now">—</span></div>
  <div class="views" id="views"></div>
  <svg id="trace" width="640" height="170"></svg>
 </section>
 <aside>
  <div id="classes"></div>
  <p class="help">digit / letter: label and go on · <kbd>s</kbd> or → skip · ← back ·
   <kbd>u</kbd> or Backspace undo</p>
  <p id="status"></p>
 </aside>
</main>
<script>
const KEYS = "123456789abcdefghijklmnopqrtvwxyz0";  // not s or u: they skip and undo
let state = null, pos = 0;
async function api(path, body) {
  const r = await fetch(path, body === undefined ? {} : {method: "POST", headers: {"Content-Type": "application/json"},
                                                        body: JSON.stringify(body)});
  const data = await r.json();
  if (!r.ok) throw new Error(data.error || r.status);
  return data;
}
function say(text) { document.getElementById("status").textContent = text || ""; }
async function refresh() {
  state = await api("/api/state");
  document.getElementById("rec").textContent = state.recording + " · " + state.sensor;
  document.getElementById("progress").textContent = state.labelled + " / " + state.total + " labelled";
}
function firstUnlabelled(from) {
  for (let i = from; i < state.items.length; i++) if (!state.items[i].label) return i;
  return Math.min(from, state.items.length - 1);
}
function drawTrace(item) {
  const svg = document.getElementById("trace"), W = 640, H = 170, pad = 28;
  if (!item.trace.length) {
    svg.innerHTML = `<text x="20" y="90" fill="#889">no ${item.sensor} readings</text>`; return;
  }
  const xs = item.trace.map(p => p.x), ys = item.trace.map(p => p.y);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || 1, y1 = Math.max(...ys, 1e-9);
  const sx = x => pad + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (W - 2 * pad);
  const sy = y => H - pad - y / y1 * (H - 2 * pad);
  const pts = item.trace.map(p => `${sx(p.x)},${sy(p.y)}`).join(" ");
  const unit = item.sensor === "taps" ? "peak N per tap" : "grams over time";
  svg.innerHTML = `<polyline points="${pts}" fill="none" stroke="#2a7a3b" stroke-width="2"/>` +
    item.trace.map(p => `<circle cx="${sx(p.x)}" cy="${sy(p.y)}" r="3.5" fill="#1c2430"/>`).join("") +
    `<text x="${pad}" y="16" fill="#556" font-size="12">${item.sensor}: ${unit} (max ${y1.toFixed(1)})</text>`;
}
async function show() {
  const entry = state.items[pos];
  if (!entry) { document.getElementById("item-title").textContent = "no items"; return; }
  const item = await api("/api/item/" + entry.id);
  document.getElementById("item-title").textContent = `item ${item.id} (${pos + 1} of ${state.total})`;
  document.getElementById("label-now").textContent = item.label || "—";
  const views = document.getElementById("views");
  views.innerHTML = "";
  for (const v of item.views) for (const kind of ["rgb", "nir"]) {
    if (kind === "nir" && !v.nir) continue;
    const fig = document.createElement("figure");
    fig.innerHTML = v[kind] ? `<img alt="view ${v.k} ${kind}" src="/frames/${item.id}/v${v.k}.${kind}.png">`
                            : `<div class="missing">view ${v.k} lost</div>`;
    fig.innerHTML += `<figcaption>view ${v.k} ${kind.toUpperCase()}</figcaption>`;
    views.appendChild(fig);
  }
  document.getElementById("classes").innerHTML = state.classes.map((c, i) =>
    `<div class="cls${c === item.label ? " current" : ""}" data-label="${c}"><kbd>${KEYS[i]}</kbd>${c}</div>`).join("");
  for (const el of document.querySelectorAll(".cls")) el.onclick = () => label(el.dataset.label);
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
(async () => { await refresh(); pos = firstUnlabelled(0); await show(); document.body.dataset.ready = "1"; })();
</script></body></html>
"""
