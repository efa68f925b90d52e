"""A station's watch, put together once for every way a station runs (serve, demo, replay)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sortline.edge_runtime.learning.enroll import Enroller
from sortline.edge_runtime.station.loop import Station
from sortline.edge_runtime.station.observers import Busy, ObservedItem

from .candidates import Host, StationHost
from .drift import DriftConfig, DriftWatch
from .runner import ItemWatch
from .shadow import ShadowLog, ShadowPolicy
from .shadowing import Shadow
from .unsure import OnLabel, QueueConfig, UnsureQueue


@dataclass
class StationWatch:
    """The item watch's thread with the drift watch and the queue of unsure items on it, and the
    shadow of a candidate on a thread of its own; any may be off. The station offers it its items
    (it is an Observer)."""

    items: ItemWatch
    drift: DriftWatch | None = None
    queue: UnsureQueue | None = None
    shadow: Shadow | None = None
    shadow_items: ItemWatch | None = None

    @classmethod
    def build(cls, drift: DriftConfig | None = DriftConfig(), queue: QueueConfig | None = None,
              events: Callable[[dict], None] | None = None,
              on_label: OnLabel | None = None,
              shadow: ShadowPolicy | None = None, shadow_log: Path | None = None) -> StationWatch:
        watch = DriftWatch(drift, events) if drift is not None else None
        unsure = UnsureQueue(queue, on_label) if queue is not None else None
        if watch is not None and unsure is not None:
            unsure.strangeness = watch.strangeness_of  # the queue runs after the watch, on its thread
            unsure.drifting = watch.items_drifting
        runner = Shadow(shadow, ShadowLog(shadow_log), events=events, drift=watch) if shadow is not None else None
        if runner is not None and unsure is not None:
            unsure.on_labelled = runner.label  # the operator's labels join the shadow log
        return cls(ItemWatch([c for c in (watch, unsure) if c is not None]), watch, unsure, runner,
                   ItemWatch([runner], name="shadow") if runner is not None else None)

    def attach(self, station: Station, on_label: OnLabel | None = None,
               enroller: Enroller | None = None, host: Host | None = None) -> StationWatch:
        """Watch ``station``: the drift watch's alarms and the shadow's events to its event log,
        nothing taken while it is busy; queue labels to ``on_label`` (the enrollment store), when
        given; promotions through ``host`` (default: the station itself, and ``enroller``'s store)."""
        event_log = station.event_log
        self.items.busy = Busy.of(station)
        if self.drift is not None:
            self.drift.events = event_log.write
        if self.queue is not None and on_label is not None:
            self.queue.on_label = on_label
        if self.shadow is not None:
            self.shadow.host = host or StationHost(station, enroller)
            self.shadow.events = event_log.write
            self.shadow_items.busy = Busy.of(station)
        return self

    @staticmethod
    def off() -> dict:
        """What a run without a watch reports."""
        return {"drift": {"alarms": [], "watching": False}, "queue": {"kept": 0, "dropped": 0}}

    def _runners(self) -> list[ItemWatch]:
        return [w for w in (self.items, self.shadow_items) if w is not None]

    def offer(self, item: ObservedItem) -> None:
        for runner in self._runners():
            runner.offer(item)

    def start(self) -> StationWatch:
        for runner in self._runners():
            runner.start()
        return self

    def drain(self, timeout_s: float = 10.0) -> None:
        for runner in self._runners():
            runner.drain(timeout_s)

    def stop(self, drain: bool = True) -> None:
        if drain:
            self.drain()
        for runner in self._runners():
            runner.stop()
        if self.shadow is not None:
            self.shadow.log.close()

    def summary(self) -> dict:
        """``drift`` and ``queue`` (and ``shadow`` when it runs) for a run's JSON summary."""
        w = self.items
        drift = self.drift.summary() if self.drift is not None else self.off()["drift"]
        drift.update(offered=w.offered, watched=w.watched, sampled_out=w.sampled_out, errors=w.errors,
                     busy_ms_per_item=round(1000 * w.busy_s / max(1, w.watched), 3))
        queue = self.queue.summary() if self.queue is not None else self.off()["queue"]
        out = {"drift": drift, "queue": queue}
        if self.shadow is not None:
            s = self.shadow_items
            out["shadow"] = {**self.shadow.status(), "offered": s.offered, "watched": s.watched,
                             "sampled_out": s.sampled_out}
        return out
