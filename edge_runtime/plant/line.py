"""The running station as the plant network acts on it and reads it: lanes paused and resumed
(one lane, or all of them: a halt), the counters for the stats, the alarms to report."""

from __future__ import annotations

import logging
from typing import Protocol

from sortline.edge_runtime.station.loop import Station

from .messages import LaneCommand

log = logging.getLogger(__name__)


class DriftAlarms(Protocol):
    """The drift watch, as far as the plant reads it (watch/drift.py's DriftWatch)."""

    def summary(self) -> dict: ...


class Line(Protocol):
    """What the plant's commands act on and its stats and alarms come from: the station itself
    (:class:`StationLine`, in the station's process) or its mirror in the plant link's process."""

    def apply(self, command: LaneCommand, source: str) -> dict: ...

    def state(self) -> dict: ...

    def stats(self) -> dict: ...

    def new_alarms(self) -> list[dict]: ...


class StationLine:
    """What MQTT commands and the OPC UA state machine act on. Pausing a lane sends its items to
    the safe exit unseen; pausing all halts the station (every lane, known or not)."""

    def __init__(self, station: Station, drift: DriftAlarms | None = None) -> None:
        self.station = station
        self.drift = drift
        self._faults: dict[str, int] = {}
        self._drift: dict[tuple, str] = {}  # each drift alarm's state as last reported

    def apply(self, command: LaneCommand, source: str) -> dict:
        station = self.station
        station.halted = change(command, station.halted, station.paused_lanes)
        log.warning("%s: %s %s", source, command.action, "every lane" if command.lane is None else
                    f"lane {command.lane}")
        return self.state()

    def state(self) -> dict:
        return {"halted": self.station.halted, "paused_lanes": sorted(self.station.paused_lanes)}

    def stats(self) -> dict:
        s = self.station.outcomes.stats  # the live counters (copied here, on the publisher's thread)
        return {"items": s.items, "deadline_misses": s.deadline_misses, "overload": s.overload,
                "reasons": dict(s.reasons), "exits": {str(k): v for k, v in dict(s.exits).items()},
                "latency_ms_p50": _round(s.latency_ms.percentile(50)),
                "latency_ms_p99": _round(s.latency_ms.percentile(99)), **self.state()}

    def new_alarms(self) -> list[dict]:
        """Faults seen since the last call (one message per kind with its count), and drift alarms
        raised or cleared since."""
        alarms = []
        for kind, count in self.station.observed_faults().items():
            if count > self._faults.get(kind, 0):
                alarms.append({"kind": "fault", "fault": kind, "count": count,
                               "new": count - self._faults.get(kind, 0)})
            self._faults[kind] = count
        for alarm in self.drift.summary()["alarms"] if self.drift is not None else ():
            key = (alarm["kind"], alarm["statistic"], alarm["camera"], alarm["at_item"])
            state = "raised" if alarm.get("cleared_at_item") is None else "cleared"
            if self._drift.get(key) != state:
                self._drift[key] = state
                alarms.append({"kind": "drift", "state": state, "drift": alarm})
        return alarms


def change(command: LaneCommand, halted: bool, paused: set[int]) -> bool:
    """Pause or resume a lane in ``paused``, or every lane (the halt); returns whether halted."""
    if command.lane is None:
        if command.action == "resume":
            paused.clear()
        return command.action == "pause"
    if command.action == "pause":
        paused.add(command.lane)
    else:
        paused.discard(command.lane)
    return halted


def _round(value: float) -> float | None:
    return None if value != value else round(value, 2)  # NaN: no items yet
