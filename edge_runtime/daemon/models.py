"""The API's request and response bodies (pydantic), so that ``/openapi.json`` describes every
route and a response cannot drift from what the page and scripts read."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictInt

from sortline.edge_runtime.model.labels import MAX_LABEL_CHARS
from sortline.hardware.protocol import MAX_EXIT

Label = Annotated[str, Field(min_length=1, max_length=MAX_LABEL_CHARS)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests ---------------------------------------------------------------------------------


class EnrollStart(_Body):
    label: Label
    count: Annotated[StrictInt, Field(ge=1, le=1000)]


class Refit(_Body):
    exits: dict[Label, Annotated[StrictInt, Field(ge=0, le=MAX_EXIT)]] = {}
    force: bool = False
    shadow: bool | None = None  # the new head runs in the shadow first (default: when [shadow] is on)


class Reload(_Body):
    path: Annotated[str, Field(min_length=1, max_length=4096)] | None = None  # default: the station file's
    force: bool = False  # load a bundle older than the live one


class ShadowHead(_Body):
    version: Annotated[StrictInt, Field(ge=0)]


class ShadowBundle(Reload):
    pass


class ShadowChange(_Body):
    why: Annotated[str, Field(max_length=500)] = ""


class Rollback(_Body):
    version: Annotated[StrictInt, Field(ge=0)] | None = None


# --- responses --------------------------------------------------------------------------------


class Health(BaseModel):
    ok: bool = True


class Readiness(BaseModel):
    ready: bool


class DecisionOut(BaseModel):
    item_id: int
    exit: int
    reason: str
    label: str | None
    confidence: float
    probabilities: list[float]
    head_version: int


class EnrollSessionOut(BaseModel):
    label: str
    count: int
    collected: int
    items: list[int]
    done: bool


class Status(BaseModel):
    ready: bool
    bundle: str
    head_version: int
    labels: list[str]
    runtime: str
    items: int
    gate_commands: int
    deadline_misses: int
    reasons: dict[str, int]
    exits: dict[str, int]
    lanes: dict[str, int]
    paused_lanes: list[int]
    latency_ms_p50: float | None
    latency_ms_p99: float | None
    latency_histogram: list[tuple[float | None, int]]  # [upper bound ms (None: the overflow), items]
    uptime_s: float
    faults: dict[str, int]
    recent: list[DecisionOut]
    enrolling: EnrollSessionOut | None


class Lane(BaseModel):
    lane: int
    items: int
    paused: bool


class Lanes(BaseModel):
    lanes: list[Lane]


class LaneChanged(BaseModel):
    ok: bool = True
    lane: int
    paused: bool


class HeadVersion(BaseModel):
    version: int
    current: bool
    note: str | None = None  # the bundle's own head
    created: str | None = None
    parent: int | None = None
    labels: int | None = None
    examples: int | None = None
    metrics: dict = {}


class Heads(BaseModel):
    current: int
    serving: int
    heads: list[HeadVersion]


class RolledBack(BaseModel):
    ok: bool = True
    head_version: int
    swapped: bool  # that version serves now


class EnrollState(BaseModel):
    session: EnrollSessionOut | None


class EnrollStarted(BaseModel):
    ok: bool = True
    session: EnrollSessionOut


class Committed(BaseModel):
    ok: bool = True
    label: str
    added: int
    duplicates: list[dict]
    lookalikes: list[dict]


class Refitted(BaseModel):
    ok: bool = True
    head_version: int
    labels: list[str]
    seconds: float
    check: dict
    swapped: bool  # the new version serves now
    shadowed: bool = False  # a candidate in the shadow, not live yet


class Reloaded(BaseModel):
    ok: bool = True
    bundle: str
    previous: str
    head_version: int


class Done(BaseModel):
    ok: bool = True


# --- the watch (daemon/watching.py) -----------------------------------------------------------


class QueueLabel(_Body):
    label: Label


class AlarmOut(BaseModel):
    kind: str  # "camera" or "items"
    statistic: str
    camera: int | None
    at_item: int
    cleared_at_item: int | None
    value: float
    threshold: float
    advice: str  # what the operator should do


class MonitorOut(BaseModel):
    kind: str
    statistic: str
    camera: int | None
    value: float
    threshold: float
    alarm: bool


class DriftOut(BaseModel):
    enabled: bool
    watching: bool  # a reference is learnt; False while it is being learnt
    reference_items: int  # collected so far
    reference_needed: int
    active: list[AlarmOut]
    alarms: list[AlarmOut]  # all of this run, the latest last
    monitors: list[MonitorOut]
    sampled_out: int  # items the watch let pass under load


class QueueItemOut(BaseModel):
    key: str
    item_id: int
    uncertainty: float
    reasons: list[str]
    label: str | None
    views: list[int]
    decision: dict


class QueueOut(BaseModel):
    enabled: bool
    classes: list[str]  # the labels the page offers (the head's)
    items: list[QueueItemOut]  # ranked: unlabelled by uncertainty and diversity, then labelled
    kept: int
    dropped: int
    queued: int
    labelled: int


class ShadowOut(BaseModel):
    """A candidate against the live version (watch/shadow.py's statistics, as they are)."""

    enabled: bool
    candidate: str | None = None
    kind: str | None = None
    live: dict | None = None
    shadowed: int = 0
    sampled_out: int = 0
    errors: int = 0
    auto: bool = False
    ready: bool = False
    why: str = ""
    stats: dict = {}
    rollout: dict | None = None
    history: list[dict] = []
