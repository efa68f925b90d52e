"""The watch over HTTP: ``GET /api/drift`` (alarms and every statistic against its threshold),
``POST /api/drift/reference`` (token: the line is good now, learn a new reference), and the queue
of unsure items: ``GET /api/queue`` (ranked), ``GET /api/queue/{key}/v{k}.{rgb|nir}.png``,
``POST /api/queue/{key}/label`` (token: the label becomes an example in the enrollment store)."""

from __future__ import annotations

import logging
import re
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query
from fastapi.responses import FileResponse

from sortline.edge_runtime.watch import QueueError, UnsureQueue
from sortline.edge_runtime.watch.unsure import KEY, Entry

from .control import StationControl
from .deps import Control, authorised
from .models import AlarmOut, DriftOut, MonitorOut, QueueItemOut, QueueLabel, QueueOut

log = logging.getLogger(__name__)
router = APIRouter(tags=["watch"])
Key = Annotated[str, Path(pattern=KEY.pattern, max_length=40)]


def item_out(e: Entry) -> QueueItemOut:
    return QueueItemOut(key=e.key, item_id=e.item_id, uncertainty=round(e.uncertainty, 4), reasons=e.reasons,
                        label=e.label, views=[v for v in e.decision.get("views", []) if isinstance(v, int)],
                        decision={k: e.decision.get(k) for k in ("label", "confidence", "reason", "exit", "lane")})


def drift_out(c: StationControl) -> DriftOut:
    drift = c.watch.drift if c.watch is not None else None
    if drift is None:
        return DriftOut(enabled=False, watching=False, reference_items=0, reference_needed=0, active=[], alarms=[],
                        monitors=[], sampled_out=0)
    got, needed = drift.reference_progress
    alarms = [AlarmOut(**a) for a in drift.summary()["alarms"]]
    return DriftOut(enabled=True, watching=drift.watching, reference_items=got, reference_needed=needed,
                    active=[a for a in alarms if a.cleared_at_item is None], alarms=alarms[-100:],
                    monitors=[MonitorOut(**m) for m in drift.statistics()], sampled_out=c.watch.items.sampled_out)


@router.get("/api/drift")
def drift(c: Control) -> DriftOut:
    return drift_out(c)


@router.post("/api/drift/reference", dependencies=[Depends(authorised)])
def mark_good(c: Control) -> DriftOut:
    """The line is good now: the watch learns a new reference from the next items (alarms clear)."""
    if c.watch is None or c.watch.drift is None:
        raise HTTPException(409, "this station runs no drift watch")
    c.watch.drift.mark_good()
    log.warning("the line was marked as good through the API: a new drift reference is learnt")
    return drift_out(c)


def _queue(c: StationControl) -> UnsureQueue:
    if c.watch is None or c.watch.queue is None:
        raise HTTPException(409, "this station keeps no queue of unsure items ([queue] folder in the station file)")
    return c.watch.queue


@router.get("/api/queue")
def queue(c: Control, limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> QueueOut:
    unsure = c.watch.queue if c.watch is not None else None
    if unsure is None:
        return QueueOut(enabled=False, classes=list(c.pipeline.labels), items=[], kept=0, dropped=0, queued=0,
                        labelled=0)
    summary = unsure.summary()
    items = [item_out(e) for e in unsure.ranked()[:limit]]
    return QueueOut(enabled=True, classes=list(c.pipeline.labels), items=items, kept=summary["kept"],
                    dropped=summary["dropped"], queued=summary["queued"], labelled=summary["labelled"])


@router.get("/api/queue/{key}/{name}", response_class=FileResponse,
            responses={200: {"content": {"image/png": {}}}, 404: {}})
def queue_view(key: Key, name: Annotated[str, Path(pattern=r"^v\d{1,2}\.(rgb|nir)\.png$")], c: Control) -> FileResponse:
    """One view of a queued item."""
    match = re.match(r"^v(\d+)\.(rgb|nir)\.png$", name)
    kind: Literal["rgb", "nir"] = match.group(2)  # type: ignore[assignment]
    try:
        path = _queue(c).view_path(key, int(match.group(1)), kind)
    except QueueError as exc:
        raise HTTPException(404, str(exc)) from exc
    return FileResponse(path, media_type="image/png")


@router.post("/api/queue/{key}/label", dependencies=[Depends(authorised)])
def label(key: Key, body: QueueLabel, c: Control) -> QueueItemOut:
    """Give a queued item its class; it becomes an example in the enrollment store (refit to use it)."""
    try:
        entry = _queue(c).label(key, body.label)
    except QueueError as exc:
        raise HTTPException(404, str(exc)) from exc
    log.info("queue item %s labelled %s through the API", key, body.label)
    return item_out(entry)
