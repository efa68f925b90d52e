"""A station's watch, put together once for every way a station runs (serve, demo, replay)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sortline.edge_runtime.station.loop import Station
from sortline.edge_runtime.station.observers import Busy, ObservedItem

from .drift import DriftConfig, DriftWatch
from .runner import ItemWatch
from .unsure import QueueConfig, UnsureQueue


@dataclass
class StationWatch:
    """The item watch's thread with the drift watch and the queue of unsure items on it; either
    may be off. The station offers it its items (it is an Observer)."""

    items: ItemWatch
    drift: DriftWatch | None = None
    queue: UnsureQueue | None = None

    @classmethod
    def build(cls, drift: DriftConfig | None = DriftConfig(), queue: QueueConfig | None = None,
              events: Callable[[dict], None] | None = None,
              on_label: Callable[[str, np.ndarray, str], None] | None = None) -> StationWatch:
        watch = DriftWatch(drift, events) if drift is not None else None
        unsure = UnsureQueue(queue, on_label) if queue is not None else None
        if watch is not None and unsure is not None:
            unsure.strangeness = watch.strangeness_of  # the queue runs after the watch, on its thread
        return cls(ItemWatch([c for c in (watch, unsure) if c is not None]), watch, unsure)

    def attach(self, station: Station,
               on_label: Callable[[str, np.ndarray, str], None] | None = None) -> StationWatch:
        """Watch ``station``: the drift watch's alarms to its event log, nothing taken while it is
        busy; queue labels to ``on_label`` (the enrollment store), when given."""
        event_log = station.event_log
        self.items.busy = Busy.of(station)
        if self.drift is not None:
            self.drift.events = event_log.write
        if self.queue is not None and on_label is not None:
            self.queue.on_label = on_label
        return self

    @staticmethod
    def off() -> dict:
        """What a run without a watch reports."""
        return {"drift": {"alarms": [], "watching": False}, "queue": {"kept": 0, "dropped": 0}}

    def offer(self, item: ObservedItem) -> None:
        self.items.offer(item)

    def start(self) -> StationWatch:
        self.items.start()
        return self

    def stop(self, drain: bool = True) -> None:
        if drain:
            self.items.drain()
        self.items.stop()

    def summary(self) -> dict:
        """``drift`` and ``queue`` for a run's JSON summary."""
        w = self.items
        drift = self.drift.summary() if self.drift is not None else self.off()["drift"]
        drift.update(offered=w.offered, watched=w.watched, sampled_out=w.sampled_out, errors=w.errors,
                     busy_ms_per_item=round(1000 * w.busy_s / max(1, w.watched), 3))
        queue = self.queue.summary() if self.queue is not None else self.off()["queue"]
        return {"drift": drift, "queue": queue}
