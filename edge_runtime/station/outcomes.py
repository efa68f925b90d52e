"""What comes of each decided item: its one gate command, its line in the event log, its place
in the counters, and what the operator sees of the latest items."""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

import numpy as np

from sortline.edge_runtime.model.fusion import Reading
from sortline.edge_runtime.model.pipeline import UNANNOUNCED, Decision, ItemPipeline

from .events import EventLog
from .gate import GateChannel
from .items import OpenItem, Outcome, event_record
from .observers import ObservedItem, Observer, ResultSink
from .stats import StationStats

log = logging.getLogger(__name__)


class Outcomes:
    """Sends and records each decision; the loop only decides when."""

    def __init__(self, gate: GateChannel, log: EventLog, stats: StationStats, recent: Recent,
                 observers: Sequence[Observer] = (), sinks: Sequence[ResultSink] = ()) -> None:
        self.gate, self.log, self.stats, self.recent = gate, log, stats, recent
        self.observers = tuple(observers)
        self.sinks = tuple(sinks)

    def decided(self, item: OpenItem, outcome: Outcome, readings: Sequence[Reading], started: float, done: float,
                sensor_rejected: bool) -> None:
        self.stats.deadline_misses += outcome.late
        self.stats.overload += outcome.overload
        sent = self.gate.send(item.arrival.item_id, outcome.decision.exit, done, item.deadline_at)
        self.book(outcome.decision)
        record = event_record(outcome, item, len(readings), (done - started) * 1000, done, sent,
                              item.pipeline.version)
        if sensor_rejected:
            record["sensor_rejected"] = True  # decided on its views: a reading for it was garbage
        self.stats.latency_ms.add(record["latency_ms"])
        self.stats.compute_ms.add(record["compute_ms"])
        self.log.write(record)
        self._publish(record)
        if self.observers:
            self._show(item, outcome.decision, readings)

    def _publish(self, record: dict) -> None:
        for sink in self.sinks:
            try:
                sink.result(record)
            except Exception:  # a publisher's fault is never the line's
                log.exception("result sink %r refused item %s", sink, record.get("item_id"))

    def _show(self, item: OpenItem, decision: Decision, readings: Sequence[Reading]) -> None:
        """Hand the decided item to its observers (after its command has gone)."""
        result = item.result
        capture = result.capture if result is not None else None
        observed = ObservedItem(item.arrival.item_id, item.arrival.lane, decision, item.pipeline,
                                result.embeddings if result is not None else None,
                                capture.views if capture is not None else (), tuple(readings))
        for observer in self.observers:
            try:
                observer.offer(observed)
            except Exception:  # a watcher's fault is never the line's
                log.exception("observer %r refused item %s", observer, observed.item_id)

    def unannounced(self, pipeline: ItemPipeline, item_id: int, now: float, deadline_at: float) -> None:
        decision = pipeline.safe(item_id, UNANNOUNCED)
        sent = self.gate.send(item_id, decision.exit, now, deadline_at)
        self.book(decision)
        record = {**decision.to_dict(), "sent": sent, "bundle": pipeline.version}
        self.log.write(record)
        self._publish(record)

    def book(self, decision: Decision) -> None:
        self.stats.reasons[decision.reason] += 1
        self.stats.exits[decision.exit] += 1
        self.recent.add(decision)


class Recent:
    """What the station keeps of its latest items for the operator: decisions and first views;
    and who hears of each decision as it is made (``on_decision``)."""

    def __init__(self, decisions: int, thumbnails: int, on_decision: Callable[[Decision], None] | None) -> None:
        self.decisions: deque[Decision] = deque(maxlen=decisions)
        self.thumbnails: OrderedDict[int, np.ndarray] = OrderedDict()
        self.max_thumbnails = thumbnails
        self.on_decision = on_decision

    def add(self, decision: Decision) -> None:
        self.decisions.append(decision)
        if self.on_decision is not None:
            self.on_decision(decision)

    def thumbnail(self, item_id: int, image: np.ndarray) -> None:
        self.thumbnails[item_id] = image
        while len(self.thumbnails) > self.max_thumbnails:
            self.thumbnails.popitem(last=False)
