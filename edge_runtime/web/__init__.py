"""The pages' files, shared by every page sortline serves (the operator page of ``daemon/`` and
the labelling page of ``labelling/``), and the one way to serve them:

- ``assets/style.css``: the one stylesheet; ``assets/dom.js``: builds elements with text only
  (values from outside never reach a page as markup);
- ``assets/operator.html``/``.js``, ``assets/label.html``/``.js``: the two pages.

:func:`mount` adds ``/static`` and a page at ``/`` to a FastAPI app, with headers that keep a
page from running anything but its own files (Content-Security-Policy ``script-src 'self'``);
:func:`limit_bodies` refuses request bodies over a size before they are read; :class:`HttpServer`
runs an app on uvicorn in a thread.
"""

from __future__ import annotations

import threading
import time
from importlib.resources import files
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

ASSETS = Path(str(files(__package__) / "assets"))
PAGES = ("operator", "label")
# The pages load only their own files; inline scripts and handlers do not run, so even a value
# that reached the page as markup could not act.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
       "object-src 'none'; base-uri 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                    "Referrer-Policy": "no-referrer", "Cache-Control": "no-store"}


def mount(app: FastAPI, page: str) -> None:
    """Serve ``page`` (one of :data:`PAGES`) at ``/`` and the shared files under ``/static``."""
    if page not in PAGES:
        raise ValueError(f"no page {page!r}; one of {', '.join(PAGES)}")
    app.mount("/static", StaticFiles(directory=ASSETS), name="static")

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(ASSETS / f"{page}.html", media_type="text/html; charset=utf-8", headers=SECURITY_HEADERS)



def limit_bodies(app: FastAPI, max_bytes: int) -> None:
    """Refuse (413) a request whose body is declared larger than ``max_bytes``, or is sent without
    a declared length, before any of it is read."""

    @app.middleware("http")
    async def _limit(request: Request, call_next):
        if request.method in ("POST", "PUT", "PATCH"):
            length = request.headers.get("content-length")
            if length is None or not length.isdigit() or int(length) > max_bytes:
                return JSONResponse({"detail": f"a request body of at most {max_bytes} bytes, with its "
                                               f"Content-Length, is accepted (got {length!s:.20})"}, status_code=413)
        return await call_next(request)


class HttpServer:
    """uvicorn serving one app on a thread; :meth:`stop` ends it."""

    def __init__(self, app: FastAPI, host: str, port: int) -> None:
        self.server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning",
                                                    access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, name="http", daemon=True)

    def start(self, timeout_s: float = 10.0) -> HttpServer:
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise OSError("the HTTP server did not start (is its port taken?)")
            time.sleep(0.02)
        return self

    @property
    def port(self) -> int:
        return self.server.servers[0].sockets[0].getsockname()[1]

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
