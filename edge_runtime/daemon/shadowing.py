"""Candidates in the shadow over HTTP: ``GET /api/shadow`` (the candidate against the live version:
agreement, confusion, both accuracies on the labelled items, the promotion policy's verdict, the
rollback watch), and with the token ``POST /api/shadow/head`` (shadow a stored head version),
``/api/shadow/bundle`` (shadow a bundle; serve only), ``/api/shadow/promote``,
``/api/shadow/rollback`` and ``/api/shadow/stop``. A refit through the API becomes a candidate
when the station's ``[shadow]`` is on (learning.py)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Depends, HTTPException

from sortline.edge_runtime.model.bundle import json_finite
from sortline.edge_runtime.watch import HeadCandidate, Shadow

from .control import StationControl
from .deps import Control, Engine, authorised
from .models import ShadowBundle, ShadowChange, ShadowHead, ShadowOut

log = logging.getLogger(__name__)
router = APIRouter(tags=["shadow"])
changes = APIRouter(tags=["shadow"], dependencies=[Depends(authorised)])


def shadow_of(c: StationControl) -> Shadow:
    if c.watch is None or c.watch.shadow is None:
        raise HTTPException(409, "this station runs no shadow ([shadow] enabled = true in the station file)")
    return c.watch.shadow


def shadow_out(c: StationControl) -> ShadowOut:
    if c.watch is None or c.watch.shadow is None:
        return ShadowOut(enabled=False)
    status = json_finite(c.watch.shadow.status())
    return ShadowOut(enabled=True, sampled_out=c.watch.shadow_items.sampled_out, **status)


@router.get("/api/shadow")
def shadow(c: Control) -> ShadowOut:
    return shadow_out(c)


@changes.post("/api/shadow/head")
def shadow_head(body: ShadowHead, c: Control, engine: Engine) -> ShadowOut:
    """Run a stored head version beside the live one (it is loaded and checked first)."""
    runner = shadow_of(c)
    classifier = engine.classifier(body.version)
    if classifier is None:
        raise HTTPException(409, "the bundle has no head of its own")
    if classifier.version == c.pipeline.classifier.version:
        raise HTTPException(409, f"head version {body.version} is the live one")
    runner.start(HeadCandidate(classifier))
    log.warning("head version %d shadowed through the API", body.version)
    return shadow_out(c)


@changes.post("/api/shadow/bundle")
def shadow_bundle(body: ShadowBundle, c: Control) -> ShadowOut:
    """Run a bundle beside the live one: verified, signed as the station requires, not older than
    the live one unless forced; it embeds the captured views itself."""
    runner = shadow_of(c)
    if c.bundle_candidate is None:
        raise HTTPException(409, "this station cannot load a bundle to shadow (only `sortline serve` can)")
    runner.start(c.bundle_candidate(body.path, body.force))
    return shadow_out(c)


@changes.post("/api/shadow/promote")
def promote(body: ShadowChange, c: Control) -> ShadowOut:
    shadow_of(c).promote("operator", body.why or "promoted through the API")
    return shadow_out(c)


@changes.post("/api/shadow/rollback")
def rollback(body: ShadowChange, c: Control) -> ShadowOut:
    shadow_of(c).rollback("operator", body.why or "rolled back through the API")
    return shadow_out(c)


@changes.post("/api/shadow/stop")
def stop(c: Control) -> ShadowOut:
    shadow_of(c).stop("stopped through the API")
    return shadow_out(c)


router.include_router(changes)
