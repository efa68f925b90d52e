"""What the station is doing: ``/api/status`` (the operator page's one poll), ``/api/lanes`` and
pausing or resuming a lane (token), and the latest items' thumbnails."""

from __future__ import annotations

import logging
import time
from typing import Annotated

import cv2
from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.responses import Response

from sortline.edge_runtime.learning.enroll import EnrollSession
from sortline.edge_runtime.station.loop import THUMBNAILS
from sortline.hardware.protocol import ITEM_ID_MAX, MAX_LANE

from .control import StationControl
from .deps import Control, authorised
from .metrics import copy_counter, histogram
from .models import DecisionOut, EnrollSessionOut, Lane, LaneChanged, Lanes, Status

log = logging.getLogger(__name__)
router = APIRouter(tags=["station"])
LaneNumber = Annotated[int, Path(ge=0, le=MAX_LANE)]


def session_out(session: EnrollSession | None) -> EnrollSessionOut | None:
    if session is None:
        return None
    return EnrollSessionOut(label=session.label, count=session.count, collected=len(session.item_ids),
                            items=list(session.item_ids), done=session.done.is_set())


@router.get("/api/status")
def status(c: Control) -> Status:
    station = c.running.station
    stats = station.stats if station else None
    recent = list(station.recent.decisions)[-20:] if station else []
    return Status(
        ready=c.is_ready, bundle=c.pipeline.version, head_version=c.pipeline.classifier.version,
        labels=list(c.pipeline.labels), runtime=c.pipeline.embedder.name,
        items=stats.items if stats else 0, gate_commands=stats.gate_commands if stats else 0,
        deadline_misses=stats.deadline_misses if stats else 0,
        reasons=copy_counter(stats.reasons) if stats else {},
        exits={str(k): v for k, v in copy_counter(stats.exits).items()} if stats else {},
        lanes={str(k): v for k, v in copy_counter(stats.lanes).items()} if stats else {},
        paused_lanes=sorted(station.paused_lanes) if station else [],
        latency_ms_p50=round(stats.latency_ms.percentile(50), 2) if stats else None,
        latency_ms_p99=round(stats.latency_ms.percentile(99), 2) if stats else None,
        latency_histogram=histogram(stats.latency_ms) if stats else [],
        uptime_s=round(time.monotonic() - c.started, 1),
        faults=station.observed_faults() if station else {},
        recent=[DecisionOut(**d.to_dict()) for d in reversed(recent)],
        enrolling=session_out(c.session),
    )


@router.get("/api/lanes")
def lanes(c: Control) -> Lanes:
    station = c.running.station
    seen = copy_counter(station.stats.lanes) if station else {}
    paused = set(station.paused_lanes) if station else set()
    return Lanes(lanes=[Lane(lane=lane, items=seen.get(lane, 0), paused=lane in paused)
                        for lane in sorted(set(seen) | paused)])


def _lane(c: StationControl, lane: int, pause: bool) -> LaneChanged:
    station = c.running.station
    if pause:
        station.paused_lanes.add(lane)
    else:
        station.paused_lanes.discard(lane)
    log.warning("lane %d %s by the API", lane, "paused" if pause else "resumed")
    return LaneChanged(lane=lane, paused=lane in station.paused_lanes)


@router.post("/api/lanes/{lane}/pause", dependencies=[Depends(authorised)])
def pause_lane(lane: LaneNumber, c: Control) -> LaneChanged:
    """The lane's items go to the safe exit until it is resumed."""
    return _lane(c, lane, pause=True)


@router.post("/api/lanes/{lane}/resume", dependencies=[Depends(authorised)])
def resume_lane(lane: LaneNumber, c: Control) -> LaneChanged:
    return _lane(c, lane, pause=False)


@router.get("/api/items/{item_id}/thumbnail.png", response_class=Response,
            responses={200: {"content": {"image/png": {}}}, 404: {}})
def thumbnail(item_id: Annotated[int, Path(ge=0, le=ITEM_ID_MAX)], c: Control) -> Response:
    """The first view of one of the latest items."""
    station = c.running.station
    image = station.recent.thumbnails.get(item_id) if station else None
    if image is None:
        raise HTTPException(404, f"no view of item {item_id} is kept (the latest {THUMBNAILS} items are)")
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return Response(png.tobytes(), media_type="image/png", headers={"Cache-Control": "max-age=3600"})
