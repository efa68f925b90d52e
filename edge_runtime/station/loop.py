"""The station's loop: items in from the controller, readings in from the item sensor, gates out.

It only ties the parts together: :class:`ItemIds` (announcements, gaps, resets),
:class:`ReadingMatcher` (sensor readings to items), :class:`ItemFlow` (capture and embedding,
on worker threads), :class:`GateChannel` (commands and acknowledgements). The loop owns every
item's state, so nothing needs a lock; it does no slow work itself, so it is always free to
send a command on time.

Every announced item gets exactly one gate command: when its embeddings are back and its
readings complete (or it has waited ``sensor_wait_ms`` for them), or at the latest
``decision_margin_ms`` before its gate, whichever comes first. An item the flow could not embed
by then goes to the safe exit with the reason ``overload``; a late, failed or unsure decision
goes there too. One bad item never stops the line.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from sortline.edge_runtime.errors import ConfigError, SortlineError
from sortline.edge_runtime.model.fusion import ReadingLimits
from sortline.edge_runtime.model.pipeline import Decision, ItemPipeline
from sortline.hardware.camera import FrameSource
from sortline.hardware.protocol import Ack, Heartbeat, ItemArrival, ScaleReading, TapReading
from sortline.hardware.serial_link import Received, SerialLink

from .events import EventLog
from .flow import FlowResult, ItemFlow
from .gate import GateChannel
from .ids import REPEATED, ItemIds
from .items import Agenda, OpenItem, decide
from .links import LinkBudget, item_bytes
from .observers import Observer, ResultSink
from .outcomes import Outcomes, Recent
from .readings import DeviceClock, ReadingMatcher
from .stats import StationStats, gather, observed_faults

log = logging.getLogger(__name__)
_WAKE = object()  # put in the inbox by the flow: a result is waiting
SHUTDOWN_GRACE_S = 2.0
WAKE_S = 0.05  # the loop looks at its timers at least this often
THUMBNAILS = 64  # the latest items whose first view the operator page can show


class StationError(SortlineError, RuntimeError):
    """The station cannot go on (a worker thread died): the daemon must exit and be restarted."""


@dataclass(frozen=True)
class StationConfig:
    sensor_wait_ms: float = 120.0  # longest wait for an item's sensor readings after its announcement
    decision_margin_ms: float = 40.0  # decide at the latest this long before the gate
    orphan_tap_ttl_ms: float = 2000.0  # readings for an item not (yet) announced are kept this long
    empty_plate_g: float = 5.0  # a settled scale reading below this: the plate is empty
    clock_tolerance_ms: float = 10.0  # a weight this much "before" an announcement may be its item's
    remember_items: int = 10000  # decided item ids kept to refuse a repeated announcement
    ack_timeout_ms: float = 50.0  # resend a gate command not acknowledged within this
    unannounced_wait_ms: float = 60.0  # how long a skipped item id may still be announced (reordering)
    unannounced_deadline_ms: float = 200.0  # how long a command for an unannounced item is retried
    max_id_gap: int = 32  # a wider jump in item ids is a counter reset, not that many lost items
    workers: int = 1  # embedding workers (each runs the model with the pipeline's threads)
    flow_queue: int = 64  # items waiting in each stage of the flow, at most
    max_batch_items: int = 8  # items embedded in one batch when the line is busy
    recent_decisions: int = 1000  # kept in Station.recent.decisions
    limits: ReadingLimits = ReadingLimits()  # what the item sensor can physically report
    event_log_max_mb: float = 64.0  # the event log is rotated past this size
    event_log_keep: int = 5  # rotated event logs kept (events.jsonl.1 … .5)


class Station:
    """The loop over one line's devices (module docstring)."""

    def __init__(self, pipeline: ItemPipeline, rig: FrameSource, controller: SerialLink, sensor: SerialLink | None,
                 config: StationConfig = StationConfig(), event_log: Path | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_decision: Callable[[Decision], None] | None = None, observers: Sequence[Observer] = (),
                 sinks: Sequence[ResultSink] = ()) -> None:
        _check_links(pipeline, controller, sensor)
        fusion = pipeline.manifest.fusion
        c = self.config = config
        self.pipeline, self.controller, self.sensor = pipeline, controller, sensor
        self.steps = 0
        self.paused_lanes: set[int] = set()  # lanes whose items go to the safe exit unseen (operator's pause)
        self.halted = False  # every lane's items go to the safe exit unseen (a plant system's Halt)
        self.ids = ItemIds(c.max_id_gap, c.remember_items, c.unannounced_wait_ms / 1000)
        self.readings = ReadingMatcher(fusion.sensor, fusion.readings_expected, c.orphan_tap_ttl_ms / 1000,
                                       c.empty_plate_g, c.clock_tolerance_ms / 1000, c.limits)
        self.gate = GateChannel(controller, c.ack_timeout_ms / 1000, c.remember_items)
        self.flow = ItemFlow(rig, pipeline.embedder, self._flow_result, clock, c.workers, c.flow_queue,
                             c.max_batch_items)
        self._stats, self._inbox, self._clock = StationStats(), controller.inbox, clock
        self._log = EventLog(event_log, int(c.event_log_max_mb * (1 << 20)), c.event_log_keep)
        self.recent = Recent(c.recent_decisions, THUMBNAILS, on_decision)
        self.outcomes = Outcomes(self.gate, self._log, self._stats, self.recent, observers, sinks)
        self._open: dict[int, OpenItem] = {}
        self._agenda = Agenda()
        self._results: deque[FlowResult] = deque()
        self._controller_clock = DeviceClock(name="controller")
        links = {link.name: link.baudrate for link in (controller, sensor) if link is not None}
        self.links = LinkBudget(links, item_bytes(fusion.sensor, fusion.readings_expected))

    @property
    def event_log(self) -> EventLog:
        return self._log

    @property
    def stats(self) -> StationStats:
        """The counters of every part, as one record."""
        clock_refused = self._controller_clock.refused + self.readings.clock.refused
        return gather(self._stats, self.gate.stats, self.readings.stats, self.ids, clock_refused, self.flow.deepest,
                      self.links.over, self._log.errors)

    @property
    def open_items(self) -> int:
        """Items announced and not yet decided."""
        return len(self._open)

    @property
    def inbox_depth(self) -> int:
        """Messages from the devices waiting for the loop."""
        return self._inbox.qsize()

    def reload(self, pipeline: ItemPipeline) -> ItemPipeline:
        """Decide items announced from now on with ``pipeline`` (a new bundle, loaded, checked and
        warmed up by the caller); items already announced finish with the one they began with.
        It must fit this station: the same item sensor and readings. Returns the previous one."""
        old, new = self.pipeline.manifest.fusion, pipeline.manifest.fusion
        if (new.sensor, new.readings_expected) != (old.sensor, old.readings_expected):
            raise ConfigError(f"the new bundle fuses {new.readings_expected} {new.sensor} readings, this station "
                              f"{old.readings_expected} {old.sensor}: it cannot be swapped in while running")
        previous, self.pipeline = self.pipeline, pipeline
        self.flow.embedder = pipeline.embedder
        log.info("bundle %s in place of %s", pipeline.version, previous.version)
        return previous

    def observed_faults(self) -> dict[str, int]:
        """What this station saw go wrong, by kind (the names of hardware/sim/faults.py)."""
        return observed_faults(self.stats, [link for link in (self.controller, self.sensor) if link is not None])

    def run(self, stop: threading.Event) -> StationStats:
        """Serve until ``stop`` is set; then let the items in flight finish (or reach their
        decision time) and return. Raises :class:`StationError` if a worker thread dies."""
        self.flow.warm_up()
        self.flow.start()
        try:
            while not stop.is_set():
                self.step(self._next_wake())
                if not self.flow.alive:
                    raise StationError("the item flow's worker thread died; the station cannot go on")
            limit = self._clock() + SHUTDOWN_GRACE_S
            while self._open and self._clock() < limit:
                self.step(self._next_wake())
            now = self._clock()
            for item_id in list(self._open):
                self._finish(item_id, now)
            for item_id in self.ids.all_skipped():
                self._finish_unannounced(item_id, now)
        finally:
            self.flow.stop()
            self._log.close()
        return self.stats

    # --- the loop ---------------------------------------------------------------------------

    def _next_wake(self) -> float:
        """Seconds until the next timer is due, at most 0.05 (and 0.05 when none is set: the
        loop waits on its inbox, never spins)."""
        timers = [t for t in (self._agenda.next_at(), self.ids.next_due(), self.gate.next_due()) if t is not None]
        return min(WAKE_S, max(0.0, min(timers) - self._clock())) if timers else WAKE_S

    def step(self, timeout: float) -> None:
        """Handle what has come in (waiting up to ``timeout`` for it), then whatever is due."""
        self.steps += 1  # the loop moves (systemd's watchdog is fed on it)
        try:
            received = self._inbox.get(timeout=timeout)
        except queue.Empty:
            received = None
        while received is not None:
            if received is not _WAKE:
                self._handle(received)
            try:
                received = self._inbox.get_nowait()
            except queue.Empty:
                received = None
        while self._results:
            self._take_result(self._results.popleft())
        now = self._clock()
        for item_id in self._agenda.candidates(now):
            item = self._open.get(item_id)
            if item is not None and item.ready(now, self.readings.complete(item_id)):
                self._finish(item_id, now)
        for item_id in self.ids.due_unannounced(now):
            if item_id not in self._open:
                self._finish_unannounced(item_id, now)
        self.gate.resend_due(now)
        self.readings.expire(now)

    def _flow_result(self, result: FlowResult) -> None:
        """Called on a flow thread: hand the result to the loop and wake it."""
        self._results.append(result)
        try:
            self._inbox.put_nowait(_WAKE)
        except queue.Full:
            pass  # the loop is busy with a full inbox and will see the result on its next pass

    def _take_result(self, result: FlowResult) -> None:
        item = self._open.get(result.item_id)
        if item is None or item.result is not None:
            return  # decided without it already
        item.result = result
        if result.thumbnail is not None:
            self.recent.thumbnail(result.item_id, result.thumbnail)
        self._stats.add_views(result.views_lost, result.views_corrupt, result.views_late, bool(result.errors))
        self._agenda.touch((result.item_id,))

    def _handle(self, received: Received) -> None:
        message = received.message
        if isinstance(message, ItemArrival):
            self._arrive(message, received.at)
        elif isinstance(message, TapReading):
            decided = self.ids.seen(message.item_id) and message.item_id not in self._open
            self._agenda.touch(self.readings.tap(message, received.at, decided))
        elif isinstance(message, ScaleReading):
            self._agenda.touch(self.readings.weight(message, received.at))
        elif isinstance(message, Ack):
            self.gate.ack(message.item_id)
        elif isinstance(message, Heartbeat) and received.source == self.controller.name:
            self._controller_clock.update(message.t_ms, received.at)
            self.ids.heartbeat(message.last_item_id, received.at)
        elif isinstance(message, Heartbeat) and self.sensor is not None and received.source == self.sensor.name:
            self.readings.heartbeat(message.t_ms, received.at)

    def _arrive(self, arrival: ItemArrival, at: float) -> None:
        self._controller_clock.update(arrival.t_ms, at)
        self.links.announce(at)
        if self.ids.announced(arrival.item_id, at) == REPEATED or arrival.item_id in self._open:
            self._stats.repeated_announcements += 1
            return
        # Times on the controller's clock: a frame read late cannot stretch the item's deadline,
        # nor shorten the latency this station reports for it.
        announced_at = self._controller_clock.station_time(arrival.t_ms)
        item = OpenItem.announced(arrival, at, announced_at, self.config.decision_margin_ms / 1000,
                                  self.config.sensor_wait_ms / 1000, self.pipeline)
        item_id, decide_by = arrival.item_id, item.decide_by
        self._open[item_id] = item
        self._stats.items += 1
        self._agenda.touch(self.readings.open(item_id, announced_at))
        self._agenda.schedule(item_id, item.sensor_until, decide_by)
        self._stats.lanes[arrival.lane] += 1
        item.paused = self.halted or arrival.lane in self.paused_lanes  # paused: the safe exit, at once
        if item.paused or decide_by <= at or not self.flow.submit(item_id, decide_by, item.pipeline.embedder):
            item.result = FlowResult(item_id, None, shed=True)  # paused, no time, or no room: decide now
            self._agenda.touch((item_id,))

    def _finish(self, item_id: int, now: float) -> None:
        item = self._open.pop(item_id)
        sensor_rejected = self.readings.rejected(item_id)
        readings = self.readings.close(item_id)
        if item.result is None:
            self.flow.cancel(item_id)  # the flow did not make it in time: do not finish the work
        started = self._clock()
        outcome = decide(item.pipeline, item, readings, now, self._clock, self.config.limits)
        self.outcomes.decided(item, outcome, readings, started, self._clock(), sensor_rejected)

    def _finish_unannounced(self, item_id: int, now: float) -> None:
        """An item whose announcement never came: its views were never triggered, so it can
        only go to the safe exit, but it must still get its one command."""
        self._stats.unannounced += 1
        self.outcomes.unannounced(self.pipeline, item_id, now, now + self.config.unannounced_deadline_ms / 1000)

def _check_links(pipeline: ItemPipeline, controller: SerialLink, sensor: SerialLink | None) -> None:
    if sensor is not None and controller.inbox is not sensor.inbox:
        raise ValueError("the controller and sensor links must share one inbox")
    fusion = pipeline.manifest.fusion
    present = sensor.name if sensor is not None else "none"
    if fusion.sensor not in ("none", present):
        raise ConfigError(f"the bundle fuses a {fusion.sensor!r} sensor, the station has {present!r}")
