"""The station daemon's HTTP side: health, Prometheus metrics and a control API (FastAPI on
uvicorn, in a thread of ``sortline serve``).

- ``GET /healthz``: the process answers. ``GET /readyz``: the station takes items (503 before
  its model is checked and its links are open, and after its loop has stopped).
- ``GET /metrics``: Prometheus text, ``sortline_`` names, read from the station's own counters
  at each scrape (``StationCollector``): nothing is counted twice.
- ``GET /api/status``, ``GET /api/heads``, ``GET /api/enroll``: what the station is doing.
- ``POST /api/enroll`` (start: the next ``count`` items become examples of ``label``),
  ``POST /api/enroll/commit``, ``POST /api/enroll/cancel``, ``POST /api/refit``,
  ``POST /api/heads/rollback``: they change the station, and need ``Authorization: Bearer
  <token>`` (the station file's ``[api] token`` or ``SORTLINE_API_TOKEN``); without a token
  configured every such call is refused (401). ``/openapi.json`` describes them all.

Bound to 127.0.0.1 unless the station file's ``[api] host`` says otherwise.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

import cv2
import uvicorn
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily
from pydantic import BaseModel, ConfigDict, Field, StrictInt

from sortline.hardware.protocol import MAX_EXIT, MAX_LANE

from .control import StationControl
from .enroll import Enroller, EnrollSession, HeadWatcher
from .errors import SortlineError
from .memory import BUNDLE_VERSION
from .operator_page import OPERATOR_PAGE
from .pipeline import ItemPipeline
from .station.loop import THUMBNAILS
from .station.wiring import RunningStation

log = logging.getLogger(__name__)
LATENCY_BUCKETS_S = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0)


Label = Annotated[str, Field(min_length=1, max_length=200)]


class _EnrollStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: Label
    count: Annotated[StrictInt, Field(ge=1, le=1000)]


class _Refit(BaseModel):
    model_config = ConfigDict(extra="forbid")
    exits: dict[Label, Annotated[StrictInt, Field(ge=0, le=MAX_EXIT)]] = {}
    force: bool = False


class _Reload(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: Annotated[str, Field(min_length=1, max_length=4096)] | None = None  # default: the station file's


class _Rollback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: Annotated[StrictInt, Field(ge=0)] | None = None


class StationCollector:
    """Prometheus metrics from the station's counters, read when scraped."""

    def __init__(self, control: StationControl) -> None:
        self.control = control

    def collect(self) -> Iterator:
        c = self.control
        station = c.running.station
        if station is None:
            return
        stats = station.stats
        yield _counter("sortline_items", "Items announced to the station.", stats.items)
        yield _counter("sortline_gate_commands", "Gate commands sent (one per item).", stats.gate_commands)
        yield _counter("sortline_deadline_misses", "Decisions that missed their gate.", stats.deadline_misses)
        yield _counter("sortline_gate_retransmissions", "Gate commands sent again.", stats.retransmissions)
        reasons = CounterMetricFamily("sortline_decisions", "Decisions, by why the item got its exit.",
                                      labels=["reason"])
        for reason, n in sorted(_copy(stats.reasons).items()):
            reasons.add_metric([reason], n)
        yield reasons
        exits = CounterMetricFamily("sortline_exits", "Items sent to each exit.", labels=["exit"])
        for exit_, n in sorted(_copy(stats.exits).items()):
            exits.add_metric([str(exit_)], n)
        yield exits
        faults = CounterMetricFamily("sortline_faults", "Faults the station saw, by kind (rejected inputs "
                                     "included: out_of_range, implausible_readings, inbox_overflow).",
                                     labels=["kind"])
        for kind, n in sorted(station.observed_faults().items()):
            faults.add_metric([kind], n)
        yield faults
        latency = stats.latency_ms
        counts = latency.cumulative([b * 1000 for b in LATENCY_BUCKETS_S])
        buckets = [(str(b), n) for b, n in zip(LATENCY_BUCKETS_S, counts)] + [("+Inf", latency.count)]
        histogram = HistogramMetricFamily("sortline_decision_latency_seconds",
                                          "From an item's announcement to its gate command.")
        histogram.add_metric([], buckets, sum_value=latency.sum / 1000)
        yield histogram
        queue = GaugeMetricFamily("sortline_queue_depth", "Items waiting in the station.", labels=["queue"])
        queue.add_metric(["flow"], station.flow.depth)
        queue.add_metric(["open"], station.open_items)
        queue.add_metric(["inbox"], station.inbox_depth)
        yield queue
        yield GaugeMetricFamily("sortline_head_version", "The head version deciding items (0: the bundle's).",
                                value=c.pipeline.classifier.version)
        info = InfoMetricFamily("sortline_bundle", "The bundle the station runs.")
        info.add_metric([], {"version": c.pipeline.version, "runtime": c.pipeline.embedder.name})
        yield info
        yield GaugeMetricFamily("sortline_ready", "1 while the station takes items.", value=float(c.is_ready))
        yield GaugeMetricFamily("sortline_uptime_seconds", "Seconds since the daemon started.",
                                value=time.monotonic() - c.started)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _copy(counter: dict) -> dict:
    """A snapshot of a counter the station's loop may be adding to."""
    for _ in range(5):
        try:
            return dict(counter)
        except RuntimeError:  # changed size during the copy
            continue
    return {}


def build_app(control: StationControl, token: str | None) -> FastAPI:
    app = FastAPI(title="sortline station", version="1", docs_url=None, redoc_url=None,  # no CDN assets offline
                  description="Health, metrics and control of a sortline camera station.")
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StationCollector(control))

    def authorised(request: Request) -> None:
        if not token:
            raise HTTPException(401, "no API token is configured on this station ([api] token or "
                                     "SORTLINE_API_TOKEN): changes through the API are off")
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "a valid 'Authorization: Bearer <token>' header is needed",
                                headers={"WWW-Authenticate": "Bearer"})

    mutating = [Depends(authorised)]

    def enroller() -> Enroller:
        if control.enroller is None:
            raise HTTPException(409, "this station has no store ([station] store in the station file)")
        return control.enroller

    @app.exception_handler(SortlineError)
    async def refused(_: Request, exc: SortlineError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return OPERATOR_PAGE

    @app.get("/api/items/{item_id}/thumbnail.png", responses={200: {"content": {"image/png": {}}}})
    def thumbnail(item_id: int) -> Response:
        station = control.running.station
        image = station.thumbnails.get(item_id) if station else None
        if image is None:
            raise HTTPException(404, f"no view of item {item_id} is kept (the latest {THUMBNAILS} items are)")
        ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        return Response(png.tobytes(), media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True}

    @app.get("/readyz")
    def readyz() -> JSONResponse:
        ready = control.is_ready
        return JSONResponse({"ready": ready}, status_code=200 if ready else 503)

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/api/status")
    def status() -> dict:
        station = control.running.station
        stats = station.stats if station else None
        recent = list(station.decisions)[-20:] if station else []
        return {
            "ready": control.is_ready,
            "bundle": control.pipeline.version,
            "head_version": control.pipeline.classifier.version,
            "labels": list(control.pipeline.labels),
            "runtime": control.pipeline.embedder.name,
            "items": stats.items if stats else 0,
            "gate_commands": stats.gate_commands if stats else 0,
            "deadline_misses": stats.deadline_misses if stats else 0,
            "reasons": _copy(stats.reasons) if stats else {},
            "exits": {str(k): v for k, v in _copy(stats.exits).items()} if stats else {},
            "lanes": {str(k): v for k, v in _copy(stats.lanes).items()} if stats else {},
            "paused_lanes": sorted(station.paused_lanes) if station else [],
            "latency_ms_p50": round(stats.latency_ms.percentile(50), 2) if stats else None,
            "latency_ms_p99": round(stats.latency_ms.percentile(99), 2) if stats else None,
            "latency_histogram": _histogram(stats.latency_ms) if stats else [],
            "uptime_s": round(time.monotonic() - control.started, 1),
            "faults": station.observed_faults() if station else {},
            "recent": [d.to_dict() for d in reversed(recent)],
            "enrolling": _session(control.session),
        }

    @app.get("/api/lanes")
    def lanes() -> dict:
        station = control.running.station
        seen = _copy(station.stats.lanes) if station else {}
        paused = set(station.paused_lanes) if station else set()
        return {"lanes": [{"lane": lane, "items": seen.get(lane, 0), "paused": lane in paused}
                          for lane in sorted(set(seen) | paused)]}

    @app.post("/api/lanes/{lane}/{action}", dependencies=mutating)
    def lane(lane: int, action: str) -> dict:
        if not 0 <= lane <= MAX_LANE or action not in ("pause", "resume"):
            raise HTTPException(404, f"POST /api/lanes/<0..{MAX_LANE}>/pause or /resume")
        station = control.running.station
        if action == "pause":
            station.paused_lanes.add(lane)
        else:
            station.paused_lanes.discard(lane)
        log.warning("lane %d %s by the API", lane, "paused" if action == "pause" else "resumed")
        return {"ok": True, "lane": lane, "paused": lane in station.paused_lanes}

    @app.get("/api/heads")
    def heads() -> dict:
        engine = enroller()
        current = engine.store.current
        rows = [{"version": BUNDLE_VERSION, "note": "the bundle's own head"}] + [r.summary()
                                                                                 for r in engine.store.heads()]
        return {"current": current, "serving": control.pipeline.classifier.version,
                "heads": [{**row, "current": row["version"] == current} for row in rows]}

    @app.post("/api/heads/rollback", dependencies=mutating)
    def rollback(body: _Rollback) -> dict:
        version = enroller().rollback(body.version)
        with control.lock:
            swapped = control.watcher.poll() if control.watcher else False
        return {"ok": True, "head_version": version, "swapped": swapped}

    @app.get("/api/enroll")
    def enroll_state() -> dict:
        return {"session": _session(control.session)}

    @app.post("/api/enroll", dependencies=mutating)
    def enroll_start(body: _EnrollStart) -> dict:
        engine = enroller()
        if control.session is not None and not control.session.done.is_set():
            raise HTTPException(409, f"already enrolling {control.session.label!r}; commit or cancel it first")
        control.session = engine.collect(control.pipeline, body.label, body.count)
        return {"ok": True, "session": _session(control.session)}

    @app.post("/api/enroll/cancel", dependencies=mutating)
    def enroll_cancel() -> dict:
        if control.session is not None:
            control.session.cancel()
        control.session = None
        return {"ok": True}

    @app.post("/api/enroll/commit", dependencies=mutating)
    def enroll_commit() -> dict:
        if control.session is None:
            raise HTTPException(409, "no enrollment to commit: POST /api/enroll first")
        report = control.session.commit()
        control.session = None
        return {"ok": True, "label": report.label, "added": len(report.ids), "duplicates": report.duplicates,
                "lookalikes": report.lookalikes}

    @app.post("/api/bundle/reload", dependencies=mutating)
    def reload(body: _Reload) -> dict:
        if control.reload is None:
            raise HTTPException(409, "this station cannot reload its bundle (only `sortline serve` can)")
        previous = control.pipeline.version
        control.reload(body.path)
        return {"ok": True, "bundle": control.pipeline.version, "previous": previous,
                "head_version": control.pipeline.classifier.version}

    @app.post("/api/refit", dependencies=mutating)
    def refit(body: _Refit) -> dict:
        report = enroller().refit(exits=body.exits or None, force=body.force)
        with control.lock:
            swapped = control.watcher.poll() if control.watcher else False
        return {"ok": True, "head_version": report.version, "labels": list(report.labels),
                "seconds": report.seconds, "check": report.metrics, "swapped": swapped}

    return app


def _histogram(latency) -> list[list[float]]:
    """[upper bound ms, items in the bucket] over LATENCY_BUCKETS_S, and the overflow."""
    bounds = [b * 1000 for b in LATENCY_BUCKETS_S]
    cumulative = latency.cumulative(bounds) + [latency.count]
    counts = [cumulative[0]] + [b - a for a, b in zip(cumulative, cumulative[1:])]
    return [[bound, n] for bound, n in zip([*bounds, None], counts)]


def _session(session: EnrollSession | None) -> dict | None:
    if session is None:
        return None
    return {"label": session.label, "count": session.count, "collected": len(session.item_ids),
            "items": list(session.item_ids), "done": session.done.is_set()}


@dataclass(frozen=True)
class ApiSettings:
    host: str = "127.0.0.1"
    port: int = 8750  # 0: any free port
    token: str | None = None

    def start(self, running: RunningStation, pipeline: ItemPipeline, enroller: Enroller | None = None,
              watcher: HeadWatcher | None = None, ready: threading.Event | None = None) -> ApiServer:
        """The API of ``running``, served until :meth:`ApiServer.stop`."""
        return self.serve(StationControl(running, pipeline, enroller, watcher, ready, started=time.monotonic()))

    def serve(self, control: StationControl) -> ApiServer:
        server = ApiServer(build_app(control, self.token), self.host, self.port).start()
        log.info("HTTP API on http://%s:%d/ (changes %s)", self.host, server.port,
                 "need its token" if self.token else "off: no token configured")
        return server


class ApiServer:
    """uvicorn on a thread; :meth:`stop` ends it."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, name="api", daemon=True)

    def start(self, timeout_s: float = 10.0) -> ApiServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError("the HTTP API did not start (is its port taken?)")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
