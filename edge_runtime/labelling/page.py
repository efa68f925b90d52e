"""``sortline label REC``: a local page to label a recording's items by keyboard.

It shows each item's views in RGB and NIR and its sensor trace; a digit key gives the class,
``s`` or → skips, ← goes back, ``u`` or Backspace undoes the last label. Each label is written
to ``REC/labels.jsonl`` (:class:`LabelBook`) before the page moves on, so nothing is lost if the
browser or this process is closed. Served by FastAPI, like the operator page, on 127.0.0.1
only, with the page's files from ``web/assets`` (``label.html``, ``label.js``, the shared
stylesheet). Every request's item id and view number are checked against the recording, and
frames are read only from the recording's own ``frames/`` folder. Class names reach the page as
text, whatever characters they hold (``model/labels.py``: what a label may contain).
"""

from __future__ import annotations

import json
from pathlib import Path as FilePath
from typing import Annotated, Literal

from fastapi import FastAPI, HTTPException, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, StrictInt

from sortline.edge_runtime import web
from sortline.edge_runtime.learning.store import StoreError, check_label
from sortline.hardware.protocol import ITEM_ID_MAX, ScaleReading, TapReading

from .book import LabelBook, LabelError, recording_items

MAX_BODY = 4096
MAX_CLASSES = 34  # keys 1-9, a-z without s and u (skip, undo), 0
ItemId = Annotated[int, Path(ge=0, le=ITEM_ID_MAX)]


class LabelSession:
    """What the page works on: the recording's items (views on disk, readings matched), the
    classes to choose from, and the label book."""

    def __init__(self, recording: FilePath, classes: list[str]) -> None:
        self.root = FilePath(recording)
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


class _Label(BaseModel):
    model_config = ConfigDict(extra="forbid")
    item_id: StrictInt
    label: str | None


class _Undo(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelState(BaseModel):
    recording: str
    sensor: str
    classes: list[str]
    items: list[dict]
    labelled: int
    total: int


class Labelled(BaseModel):
    ok: bool = True
    item_id: int | None
    label: str | None = None


def build_label_app(session: LabelSession) -> FastAPI:
    app = FastAPI(title="sortline label", version="1", docs_url=None, redoc_url=None)

    @app.exception_handler(RequestValidationError)
    async def malformed(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"msg": "malformed request", "loc": ()}
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "body"
        return JSONResponse({"detail": f"{where}: {first['msg']}"}, status_code=400)

    @app.exception_handler(LabelError)
    @app.exception_handler(StoreError)
    async def refused(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.get("/api/state")
    def state() -> LabelState:
        return LabelState(**session.state())

    @app.get("/api/item/{item_id}")
    def item(item_id: ItemId) -> dict:
        found = session.item(item_id)
        if found is None:
            raise HTTPException(404, "no such item")
        return found

    @app.get("/frames/{item_id}/v{view}.{kind}.png", response_class=FileResponse)
    def frame(item_id: ItemId, view: Annotated[int, Path(ge=0, le=99)], kind: Literal["rgb", "nir"]) -> FileResponse:
        file = session.root / "frames" / f"{item_id:06d}" / f"v{view}.{kind}.png"
        if item_id not in session.items or not file.is_file():
            raise HTTPException(404, "no such frame")
        return FileResponse(file, media_type="image/png", headers={"Cache-Control": "no-store"})

    @app.post("/api/label")
    def label(body: _Label) -> Labelled:
        if body.item_id not in session.items:
            raise HTTPException(400, f"item {body.item_id} is not in the recording")
        if body.label is not None and body.label not in session.classes:
            raise HTTPException(400, f"{body.label!r:.40} is not one of the classes")
        session.book.set(body.item_id, body.label)
        return Labelled(item_id=body.item_id, label=body.label)

    @app.post("/api/undo")
    def undo(_: _Undo) -> Labelled:
        return Labelled(item_id=session.book.undo())

    web.limit_bodies(app, MAX_BODY)
    web.mount(app, "label")
    return app


def serve_label_page(session: LabelSession, port: int = 0, host: str = "127.0.0.1") -> web.HttpServer:
    """Start the page's server on a thread; returns it (``.port``; ``.stop()`` ends it)."""
    return web.HttpServer(build_label_app(session), host, port).start()
