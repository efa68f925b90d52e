"""Learning on the station through the API: head versions and rollback, enrollment of the next
items as examples of a new class, the refit, and the hot reload of a bundle. Every route that
changes the station needs the token."""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException

from sortline.edge_runtime.learning.store import BUNDLE_VERSION
from sortline.edge_runtime.watch import HeadCandidate

from .control import StationControl
from .deps import Control, Engine, authorised
from .models import (
    Committed,
    Done,
    EnrollStart,
    EnrollStarted,
    EnrollState,
    Heads,
    HeadVersion,
    Refit,
    Refitted,
    Reload,
    Reloaded,
    Rollback,
    RolledBack,
)
from .status import session_out

router = APIRouter(tags=["learning"])
changes = APIRouter(tags=["learning"], dependencies=[Depends(authorised)])


def _swap(c: StationControl, version: int) -> bool:
    """Put the store's current head live now, if it changed; True when ``version`` is the head
    serving afterwards (the daemon's own poll, every 0.2 s, may have swapped it in first)."""
    with c.lock:
        if c.watcher is not None:
            c.watcher.poll()
        return c.pipeline.classifier.version == version


@router.get("/api/heads")
def heads(c: Control, engine: Engine) -> Heads:
    current = engine.store.current
    rows = [HeadVersion(version=BUNDLE_VERSION, current=current == BUNDLE_VERSION, note="the bundle's own head")]
    rows += [HeadVersion(**r.summary(), current=r.version == current) for r in engine.store.heads()]
    return Heads(current=current, serving=c.pipeline.classifier.version, heads=rows)


@changes.post("/api/heads/rollback")
def rollback(body: Rollback, c: Control, engine: Engine) -> RolledBack:
    """Make a version current (default: the current one's parent)."""
    version = engine.rollback(body.version)
    return RolledBack(head_version=version, swapped=_swap(c, version))


@router.get("/api/enroll")
def enroll_state(c: Control) -> EnrollState:
    return EnrollState(session=session_out(c.session))


@changes.post("/api/enroll")
def enroll_start(body: EnrollStart, c: Control, engine: Engine) -> EnrollStarted:
    """The next ``count`` items the station decides become examples of ``label``."""
    if c.session is not None and not c.session.done.is_set():
        raise HTTPException(409, f"already enrolling {c.session.label!r}; commit or cancel it first")
    c.session = engine.collect(c.pipeline, body.label, body.count)
    return EnrollStarted(session=session_out(c.session))


@changes.post("/api/enroll/cancel")
def enroll_cancel(c: Control) -> Done:
    if c.session is not None:
        c.session.cancel()
    c.session = None
    return Done()


@changes.post("/api/enroll/commit")
def enroll_commit(c: Control) -> Committed:
    if c.session is None:
        raise HTTPException(409, "no enrollment to commit: POST /api/enroll first")
    report = c.session.commit()
    c.session = None
    return Committed(label=report.label, added=len(report.ids), duplicates=report.duplicates,
                     lookalikes=report.lookalikes)


@changes.post("/api/refit")
def refit(body: Refit, c: Control, engine: Engine) -> Refitted:
    """A new head version from every stored example, checked, and made current; or, when the
    station runs a shadow (and ``shadow`` is not false), run beside the live head as a candidate."""
    shadow = c.watch.shadow if c.watch is not None else None
    if body.shadow and shadow is None:
        raise HTTPException(409, "this station runs no shadow ([shadow] enabled = true in the station file)")
    candidate = shadow is not None and body.shadow is not False
    report = engine.refit(exits=body.exits or None, force=body.force, activate=not candidate)
    if candidate:
        shadow.start(HeadCandidate(engine.classifier(report.version)))
    return Refitted(head_version=report.version, labels=list(report.labels), seconds=report.seconds,
                    check=report.metrics, swapped=False if candidate else _swap(c, report.version), shadowed=candidate)


@changes.post("/api/bundle/reload")
def reload(body: Reload, c: Control) -> Reloaded:
    """Load, check and warm up a bundle (default: the station file's), then decide with it."""
    if c.reload is None:
        raise HTTPException(409, "this station cannot reload its bundle (only `sortline serve` can)")
    previous = c.pipeline.version
    c.reload(body.path, body.force)
    return Reloaded(bundle=c.pipeline.version, previous=previous, head_version=c.pipeline.classifier.version)


router.include_router(changes)
