"""The station daemon's HTTP side (FastAPI on uvicorn, in a thread of ``sortline serve``), built
from routers by concern:

- ``metrics.py``: ``GET /healthz``, ``GET /readyz``, ``GET /metrics`` (Prometheus);
- ``status.py``: ``GET /api/status``, ``GET /api/lanes``, ``POST /api/lanes/{lane}/pause|resume``,
  the latest items' thumbnails;
- ``learning.py``: head versions and rollback, enrollment, the refit, the bundle's hot reload;
- ``shadowing.py``: a candidate beside the live version: ``GET /api/shadow``, shadow a head or a
  bundle, promote, roll back, stop;
- ``watching.py``: ``GET /api/drift``, ``POST /api/drift/reference``, the queue of unsure items
  (``GET /api/queue``, its views, ``POST /api/queue/{key}/label``);
- ``web``: the operator page at ``/`` and its files under ``/static``.

Routes that change the station need ``Authorization: Bearer <token>`` (the station file's
``[api] token`` or ``SORTLINE_API_TOKEN``); without a token configured every such call is refused
(401). Every response has a typed model, so ``/openapi.json`` describes them all. Bound to
127.0.0.1 unless the station file's ``[api] host`` says otherwise.
"""

from __future__ import annotations

import logging
import threading
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from sortline.edge_runtime import web
from sortline.edge_runtime.errors import SortlineError
from sortline.edge_runtime.learning.enroll import Enroller, HeadWatcher
from sortline.edge_runtime.model.pipeline import ItemPipeline
from sortline.edge_runtime.station.wiring import RunningStation
from sortline.edge_runtime.watch import StationWatch
from sortline.edge_runtime.web import HttpServer

from . import learning, metrics, shadowing, status, watching
from .config import ApiSettings
from .control import StationControl

log = logging.getLogger(__name__)
MAX_BODY = 64 * 1024  # the largest request body: a refit's exits for every class fit well within it


def build_app(control: StationControl, token: str | None) -> FastAPI:
    app = FastAPI(title="sortline station", version="1", docs_url=None, redoc_url=None,  # no CDN assets offline
                  description="Health, metrics and control of a sortline camera station.")
    app.state.control, app.state.token = control, token
    app.state.registry = metrics.registry(control)

    @app.exception_handler(SortlineError)
    async def refused(_: Request, exc: SortlineError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    for router in (metrics.router, status.router, learning.router, watching.router, shadowing.router):
        app.include_router(router)
    web.limit_bodies(app, MAX_BODY)
    web.mount(app, "operator")
    return app


def serve_api(settings: ApiSettings, control: StationControl) -> HttpServer:
    """The API of a station's control, served until :meth:`HttpServer.stop`."""
    server = HttpServer(build_app(control, settings.token), settings.host, settings.port).start()
    log.info("HTTP API on http://%s:%d/ (changes %s)", settings.host, server.port,
             "need its token" if settings.token else "off: no token configured")
    return server


def start_api(settings: ApiSettings, running: RunningStation, pipeline: ItemPipeline,
              enroller: Enroller | None = None, watcher: HeadWatcher | None = None,
              ready: threading.Event | None = None, watch: StationWatch | None = None) -> HttpServer:
    """The API of ``running`` (a station that ``serve`` did not start: the demo, a replay)."""
    return serve_api(settings, StationControl(running, pipeline, enroller, watcher, ready, started=time.monotonic(),
                                              watch=watch))
