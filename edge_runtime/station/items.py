"""An open item's life in the loop: its times, when it is ready, and how it is decided."""

from __future__ import annotations

import dataclasses
import heapq
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sortline.edge_runtime.model.fusion import Reading, ReadingLimits
from sortline.edge_runtime.model.pipeline import DEFAULT_LIMITS, ERROR, LATE, OVERLOAD, PAUSED, Decision, ItemPipeline
from sortline.hardware.protocol import ItemArrival

from .flow import FlowResult

log = logging.getLogger(__name__)


@dataclass
class OpenItem:
    """An item announced and not yet decided. Times are on this station's clock."""

    arrival: ItemArrival
    received_at: float  # when its announcement was read
    announced_at: float  # when the controller announced it (its clock, converted)
    deadline_at: float  # its gate
    decide_by: float  # the latest decision that still reaches the gate in time
    sensor_until: float  # the longest wait for its sensor readings
    result: FlowResult | None = None  # embeddings back from the flow
    pipeline: ItemPipeline | None = None  # the bundle that decides it (the station's at its announcement)
    paused: bool = False  # its lane is paused: the safe exit, without looking

    @classmethod
    def announced(cls, arrival: ItemArrival, at: float, announced_at: float, margin_s: float, sensor_wait_s: float,
                  pipeline: ItemPipeline) -> OpenItem:
        """An item just announced: its gate and the latest decision that reaches it, on this
        station's clock, and how long it may wait for its sensor readings."""
        deadline_at = announced_at + arrival.deadline_ms / 1000
        decide_by = deadline_at - margin_s
        return cls(arrival, at, announced_at, deadline_at, decide_by,
                   sensor_until=min(at + sensor_wait_s, decide_by), pipeline=pipeline)

    def ready(self, now: float, readings_complete: bool) -> bool:
        if now >= self.decide_by:
            return True
        if self.result is None:
            return False
        return self.result.shed or readings_complete or now >= self.sensor_until


class Agenda:
    """Which open items to look at: those whose time has come (a heap of times, stale entries
    skipped) and those whose readings or embeddings changed, so a step costs what changed, not
    what is open."""

    def __init__(self) -> None:
        self._timers: list[tuple[float, int]] = []
        self._touched: set[int] = set()

    def schedule(self, item_id: int, *times: float) -> None:
        for at in times:
            heapq.heappush(self._timers, (at, item_id))

    def touch(self, item_ids: Iterable[int]) -> None:
        self._touched.update(item_ids)

    def next_at(self) -> float | None:
        return self._timers[0][0] if self._timers else None

    def candidates(self, now: float) -> list[int]:
        due, self._touched = list(self._touched), set()
        while self._timers and self._timers[0][0] <= now:
            due.append(heapq.heappop(self._timers)[1])
        return due


@dataclass(frozen=True)
class Outcome:
    decision: Decision
    late: bool = False  # decided after its gate: sent to the safe exit, counted as a miss
    overload: bool = False  # no embeddings in time: sent to the safe exit


def decide(pipeline: ItemPipeline, item: OpenItem, readings: Sequence[Reading], now: float,
           clock: Callable[[], float], limits: ReadingLimits = DEFAULT_LIMITS) -> Outcome:
    """The item's one decision. Too late to steer, or not embedded in time: the safe exit. A
    decision that fails sends the item to the safe exit too; the line goes on."""
    item_id = item.arrival.item_id
    if item.paused:
        return Outcome(pipeline.safe(item_id, PAUSED))
    if now >= item.deadline_at:
        return Outcome(pipeline.safe(item_id, LATE), late=True)
    if item.result is None or item.result.shed:
        return Outcome(pipeline.safe(item_id, OVERLOAD), overload=True)
    try:
        decision = pipeline.decide(item_id, item.result.embeddings, readings, limits)
    except Exception:  # one bad item must not stop the line
        log.exception("item %s: decision failed; sending it to the safe exit", item_id)
        decision = pipeline.safe(item_id, ERROR)
    if clock() > item.deadline_at:
        return Outcome(dataclasses.replace(decision, exit=pipeline.policy.safe_exit, reason=LATE), late=True)
    return Outcome(decision)


def event_record(outcome: Outcome, item: OpenItem, readings: int, decide_ms: float, done: float,
                 sent: bool, bundle: str) -> dict:
    """The item's line in the event log, with where its time went."""
    result = item.result
    stages = {**(result.times_ms if result is not None else {}), "decide": decide_ms}
    compute_ms = stages.get("capture", 0.0) + stages.get("embed", 0.0) / stages.get("batch_items", 1) + decide_ms
    return {
        **outcome.decision.to_dict(),
        "lane": item.arrival.lane,
        "latency_ms": round((done - item.announced_at) * 1000, 3),
        "compute_ms": round(compute_ms, 3),
        "stages_ms": {k: round(v, 3) for k, v in stages.items()},
        "readings": readings,
        "views": 0 if result is None or result.embeddings is None else int(result.embeddings.shape[0]),
        "capture_errors": list(result.errors) if result is not None else [],
        "sent": sent,
        "bundle": bundle,
    }
