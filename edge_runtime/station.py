"""The station runtime: items in from the controller, readings in from the item sensor, gates out.

One event loop owns all item state, so nothing needs a lock. Every announced item gets exactly
one gate command: when its sensor readings are complete, when it has waited long enough for
them, or when its gate is near, whichever comes first. A late, failed or unsure decision sends
the item to the safe exit; one bad item never stops the line.

The sensor is the bundle's (its fusion spec names it). A tap sensor names the item in every
reading. A checkout scale does not: a reading belongs to the item on the plate when it was
taken, which is the last item announced before it, unless the scale reported the plate empty
in between. Times are compared on this station's clock, converted from each device's own
(:class:`DeviceClock`), so a serial reader that runs late cannot move a reading onto the next
item. A reading taken after the plate emptied waits, briefly, for the announcement of the item
it weighs; one that finds no item is counted and left out, and that item is decided on its
views alone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sortline.hardware.camera import CORRUPT, LOST, FrameError, FrameSource
from sortline.hardware.protocol import Ack, GateCommand, Heartbeat, ItemArrival, ScaleReading, TapReading
from sortline.hardware.serial_link import Received, SerialLink

from .config import ConfigError
from .pipeline import ERROR, LATE, UNANNOUNCED, Decision, ItemPipeline

log = logging.getLogger(__name__)
CLOCK_WINDOW_S = 2.0


class DeviceClock:
    """A device's clock on this station's: the smallest (arrival - sent) of the last two
    seconds is the offset plus the least transfer time, so a frame that arrives late is known
    to be late, while drift (or a replay running behind its recording) is followed."""

    def __init__(self, window_s: float = CLOCK_WINDOW_S) -> None:
        self.window_s = window_s
        self.offset: float | None = None  # station clock - device clock, seconds
        self._samples: deque[tuple[float, float]] = deque()

    def update(self, t_ms: int, at: float) -> None:
        self._samples.append((at, at - t_ms / 1000))
        while at - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        self.offset = min(offset for _, offset in self._samples)

    def station_time(self, t_ms: int) -> float:
        return (self.offset or 0.0) + t_ms / 1000


@dataclass(frozen=True)
class StationConfig:
    sensor_wait_ms: float = 120.0  # longest wait for an item's sensor readings after its announcement
    decision_margin_ms: float = 40.0  # decide at the latest this long before the gate
    orphan_tap_ttl_ms: float = 2000.0  # readings for an item not (yet) announced are kept this long
    empty_plate_g: float = 5.0  # a settled scale reading below this: the plate is empty
    clock_tolerance_ms: float = 10.0  # a weight this much "before" an announcement may be its item's
    # (two device clocks, each known to a few ms, and less while the first frames come in)
    remember_items: int = 10000  # decided item ids kept to refuse a repeated announcement
    ack_timeout_ms: float = 50.0  # resend a gate command not acknowledged within this
    unannounced_wait_ms: float = 60.0  # how long a skipped item id may still be announced (reordering)
    unannounced_deadline_ms: float = 200.0  # how long a command for an unannounced item is retried
    max_id_gap: int = 32  # a wider jump in item ids is a counter reset, not that many lost items


@dataclass
class _Pending:
    arrival: ItemArrival
    announced_at: float  # when the controller announced it, on this station's clock
    deadline_at: float
    ready_at: float
    embeddings: np.ndarray | None = None
    compute_s: float = 0.0  # time this station spent on the item (capture, embedding, decision)
    capture_errors: tuple[str, ...] = ()
    taps: dict[int, TapReading] = field(default_factory=dict)  # by tap index: a repeat counts once
    weights: list[ScaleReading] = field(default_factory=list)

    @property
    def readings(self) -> list[TapReading | ScaleReading]:
        return [*self.taps.values(), *self.weights]


@dataclass
class _Unacked:
    """A gate command sent and not yet acknowledged."""

    command: GateCommand
    sent_at: float
    deadline_at: float


@dataclass
class _Exchange:
    """One item's gate command on the wire: how often it went out and came back acknowledged.

    A command is counted unacknowledged once its timeout passes; if every transmission is
    acknowledged in the end, the acknowledgement was slow, not missing, and the count is undone.
    """

    sent: int = 1
    acked: int = 0
    overdue: bool = False  # counted in StationStats.unacked


@dataclass
class StationStats:
    items: int = 0
    gate_commands: int = 0
    acks: int = 0
    reasons: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)  # announcement (controller's clock) → gate command
    compute_ms: list[float] = field(default_factory=list)  # of which spent computing, not waiting
    deadline_misses: int = 0
    repeated_announcements: int = 0
    unannounced: int = 0  # items whose announcement never arrived (seen by their ids)
    orphan_taps_expired: int = 0
    unmatched_weights: int = 0  # scale readings with no item on the plate
    capture_errors: int = 0  # items with at least one view missing
    views_lost: int = 0
    views_late: int = 0
    views_corrupt: int = 0
    retransmissions: int = 0
    unacked: int = 0  # commands with a transmission the controller never acknowledged
    log_errors: int = 0


class EventLog:
    """One JSON line per item. A full or failing disk is counted, never fatal."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.errors = 0
        self._file = open(path, "a", encoding="utf-8") if path else None

    def write(self, record: dict) -> None:
        if self._file is None:
            return
        try:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        except OSError as exc:
            self.errors += 1
            if self.errors == 1:
                log.error("event log %s: %s (further errors are only counted)", self.path, exc)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class Station:
    def __init__(
        self,
        pipeline: ItemPipeline,
        rig: FrameSource,
        controller: SerialLink,
        sensor: SerialLink | None,
        config: StationConfig = StationConfig(),
        event_log: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if sensor is not None and controller.inbox is not sensor.inbox:
            raise ValueError("the controller and sensor links must share one inbox")
        wanted, present = pipeline.manifest.fusion.sensor, sensor.name if sensor is not None else "none"
        if wanted not in ("none", present):
            raise ConfigError(f"the bundle fuses a {wanted!r} sensor, the station has {present!r}")
        self.pipeline = pipeline
        self.rig = rig
        self.controller = controller
        self.sensor = sensor
        self._fusion = pipeline.manifest.fusion
        self.config = config
        self.stats = StationStats()
        self.decisions: list[Decision] = []
        self._inbox = controller.inbox
        self._clock = clock
        self._log = EventLog(event_log)
        self._pending: dict[int, _Pending] = {}
        self._orphans: dict[int, list[tuple[float, TapReading]]] = {}
        self._decided: OrderedDict[int, None] = OrderedDict()
        self._unacked: dict[int, _Unacked] = {}
        self._exchanges: OrderedDict[int, _Exchange] = OrderedDict()
        self._skipped: dict[int, float] = {}  # item ids not announced (yet) -> when noticed
        self._highest_item: int | None = None
        self._controller_clock = DeviceClock()
        self._sensor_clock = DeviceClock()
        self._announcements: deque[tuple[float, int]] = deque(maxlen=256)  # (announced_at, item), in order
        self._plate_emptied: deque[float] = deque(maxlen=256)  # when the scale reported an empty plate
        self._orphan_weights: list[tuple[float, float, ScaleReading]] = []  # (received, taken, reading)

    def observed_faults(self) -> dict[str, int]:
        """What this station saw go wrong, by kind (the names of hardware/faults.py)."""
        links = [link.stats for link in (self.controller, self.sensor) if link is not None]
        return {
            "garbled": sum(s.bad_crc for s in links),
            "truncated": sum(s.malformed for s in links),
            "dropped": sum(s.seq_missing - s.rejected for s in links),
            "duplicated": sum(s.seq_duplicates for s in links),
            "reordered": sum(s.seq_reordered for s in links),
            "views_lost": self.stats.views_lost,
            "views_late": self.stats.views_late,
            "views_corrupt": self.stats.views_corrupt,
            "sensor_disconnects": self.controller.reconnects + (self.sensor.reconnects if self.sensor else 0),
            "unacked": self.stats.unacked,
        }

    def run(self, stop: threading.Event) -> StationStats:
        """Serve until ``stop`` is set; then decide whatever is still pending and return."""
        try:
            while not stop.is_set():
                self._step(timeout=self._next_wake())
            for item_id in list(self._pending):
                self._finish(item_id)
            for item_id in list(self._skipped):
                self._finish_unannounced(item_id)
        finally:
            self.stats.log_errors = self._log.errors
            self._log.close()
        return self.stats

    # --- the loop ---------------------------------------------------------------------------

    def _next_wake(self) -> float:
        c = self.config
        timers = [p.ready_at for p in self._pending.values()]
        timers += [t + c.unannounced_wait_ms / 1000 for t in self._skipped.values()]
        timers += [u.sent_at + c.ack_timeout_ms / 1000 for u in self._unacked.values()]
        return min(0.05, max(0.0, min(timers, default=1.0) - self._clock()))

    def _step(self, timeout: float) -> None:
        try:
            received = self._inbox.get(timeout=timeout)
        except queue.Empty:
            received = None
        while received is not None:
            self._handle(received)
            try:
                received = self._inbox.get_nowait()
            except queue.Empty:
                received = None
        now = self._clock()
        for item_id in [i for i, p in self._pending.items() if p.ready_at <= now]:
            self._finish(item_id)
        wait = self.config.unannounced_wait_ms / 1000
        for item_id in [i for i, t in self._skipped.items() if now - t >= wait]:
            self._finish_unannounced(item_id)
        self._resend_unacked(now)
        self._expire_orphans(now)

    def _handle(self, received: Received) -> None:
        message = received.message
        if isinstance(message, ItemArrival):
            self._arrive(message, received.at)
        elif isinstance(message, TapReading):
            self._tap(message, received.at)
        elif isinstance(message, ScaleReading):
            self._weight(message, received.at)
        elif isinstance(message, Ack):
            self._ack(message.item_id)
        elif isinstance(message, Heartbeat) and received.source == self.controller.name:
            self._controller_clock.update(message.t_ms, received.at)
            if message.last_item_id >= 0:
                self._note_item_id(message.last_item_id, received.at, announced=False)
        elif isinstance(message, Heartbeat) and self.sensor is not None and received.source == self.sensor.name:
            self._sensor_clock.update(message.t_ms, received.at)

    def _note_item_id(self, item_id: int, at: float, announced: bool) -> None:
        """Controller item ids are consecutive: ids skipped over were announced and lost."""
        if self._highest_item is not None:
            gap = range(self._highest_item + 1, item_id if announced else item_id + 1)
            if len(gap) > self.config.max_id_gap:
                log.warning("item ids jumped from %d to %d: taking it for a counter reset", self._highest_item, item_id)
                gap = range(0)
            for skipped in gap:
                if skipped not in self._pending and skipped not in self._decided:
                    self._skipped.setdefault(skipped, at)
        if self._highest_item is None or item_id > self._highest_item:
            self._highest_item = item_id

    def _arrive(self, arrival: ItemArrival, at: float) -> None:
        self._controller_clock.update(arrival.t_ms, at)
        self._note_item_id(arrival.item_id, at, announced=True)
        if arrival.item_id in self._pending or arrival.item_id in self._decided:
            self.stats.repeated_announcements += 1
            return
        self._skipped.pop(arrival.item_id, None)  # it was late, not lost
        c = self.config
        # Times on the controller's clock: a frame read late cannot stretch the item's deadline,
        # nor shorten the latency this station reports for it.
        announced_at = self._controller_clock.station_time(arrival.t_ms)
        deadline_at = announced_at + arrival.deadline_ms / 1000
        pending = _Pending(
            arrival=arrival,
            announced_at=announced_at,
            deadline_at=deadline_at,
            ready_at=min(at + c.sensor_wait_ms / 1000, deadline_at - c.decision_margin_ms / 1000),
        )
        self._pending[arrival.item_id] = pending
        self._announcements.append((announced_at, arrival.item_id))
        self.stats.items += 1
        # Views are captured at the trigger, then embedded while the taps come in.
        started = self._clock()
        try:
            capture = self.rig.capture(arrival.item_id)
            pending.capture_errors = tuple(str(e) for e in capture.errors)
            self.stats.views_lost += sum(e.kind == LOST for e in capture.errors)
            self.stats.views_corrupt += sum(e.kind == CORRUPT for e in capture.errors)
            self.stats.views_late += len(capture.late)
            pending.embeddings = self.pipeline.embed(capture)
        except (FrameError, ValueError, OSError) as exc:
            pending.capture_errors = (*pending.capture_errors, str(exc))
        pending.compute_s += self._clock() - started
        if pending.capture_errors:
            self.stats.capture_errors += 1
        for _, tap in self._orphans.pop(arrival.item_id, []):
            pending.taps[tap.index] = tap
        if self._orphan_weights:  # weighed before its announcement was read
            waiting, self._orphan_weights = self._orphan_weights, []
            for received_at, taken_at, reading in waiting:
                self._place_weight(reading, taken_at, received_at)
        self._maybe_ready(pending)

    def _tap(self, tap: TapReading, at: float) -> None:
        pending = self._pending.get(tap.item_id)
        if pending is not None:
            pending.taps[tap.index] = tap
            self._maybe_ready(pending)
        elif tap.item_id not in self._decided:
            self._orphans.setdefault(tap.item_id, []).append((at, tap))

    def _weight(self, reading: ScaleReading, at: float) -> None:
        self._sensor_clock.update(reading.t_ms, at)
        taken_at = self._sensor_clock.station_time(reading.t_ms)
        if reading.stable and reading.grams < self.config.empty_plate_g:
            self._plate_emptied.append(taken_at)
            return
        self._place_weight(reading, taken_at, at)

    def _place_weight(self, reading: ScaleReading, taken_at: float, received_at: float) -> None:
        """Give a weight to the last item announced before it was taken, unless the plate was
        emptied in between: then its item's announcement has not been read yet, and it waits."""
        latest = taken_at + self.config.clock_tolerance_ms / 1000
        on_plate = next(((t, item) for t, item in reversed(self._announcements) if t <= latest), None)
        if on_plate is None or any(on_plate[0] < e < taken_at for e in self._plate_emptied):
            self._orphan_weights.append((received_at, taken_at, reading))
            return
        pending = self._pending.get(on_plate[1])
        if pending is None:  # decided already: the reading came too late to count
            self.stats.unmatched_weights += 1
            return
        pending.weights.append(reading)
        self._maybe_ready(pending)

    def _maybe_ready(self, pending: _Pending) -> None:
        if self._fusion.sensor == "taps":
            complete = len(pending.taps) >= self._fusion.readings_expected
        elif self._fusion.sensor == "scale":
            complete = sum(w.stable for w in pending.weights) >= self._fusion.readings_expected
        else:
            complete = True  # no sensor to wait for
        if complete:
            pending.ready_at = min(pending.ready_at, self._clock())

    def _expire_orphans(self, now: float) -> None:
        ttl = self.config.orphan_tap_ttl_ms / 1000
        if self._orphan_weights and now - self._orphan_weights[0][0] > ttl:
            kept = [w for w in self._orphan_weights if now - w[0] <= ttl]
            self.stats.unmatched_weights += len(self._orphan_weights) - len(kept)
            self._orphan_weights = kept
        for item_id in [i for i, taps in self._orphans.items() if now - taps[0][0] > ttl]:
            self.stats.orphan_taps_expired += len(self._orphans.pop(item_id))

    def _finish(self, item_id: int) -> None:
        pending = self._pending.pop(item_id)
        started = self._clock()
        try:
            decision = self.pipeline.decide(item_id, pending.embeddings, pending.readings)
        except Exception:  # one bad item must not stop the line
            log.exception("item %s: decision failed; sending it to the safe exit", item_id)
            decision = self.pipeline.safe(item_id, ERROR)
        now = self._clock()
        if now > pending.deadline_at:
            # Too late to steer this item: the controller should still hear one command for it.
            decision = dataclasses.replace(decision, exit=self.pipeline.policy.safe_exit, reason=LATE)
            self.stats.deadline_misses += 1
        sent = self._send(decision, pending.deadline_at)
        done = self._clock()
        latency_ms = (done - pending.announced_at) * 1000
        compute_ms = (pending.compute_s + done - started) * 1000
        self.stats.latencies_ms.append(latency_ms)
        self.stats.compute_ms.append(compute_ms)
        self._log.write(
            {
                **decision.to_dict(),
                "lane": pending.arrival.lane,
                "latency_ms": round(latency_ms, 3),
                "compute_ms": round(compute_ms, 3),
                "readings": len(pending.readings),
                "views": 0 if pending.embeddings is None else int(pending.embeddings.shape[0]),
                "capture_errors": list(pending.capture_errors),
                "sent": sent,
            }
        )

    def _finish_unannounced(self, item_id: int) -> None:
        """An item whose announcement never came: its views were never triggered, so it can
        only go to the safe exit, but it must still get its one command."""
        noticed_at = self._skipped.pop(item_id)
        if item_id in self._pending or item_id in self._decided:
            return
        self.stats.unannounced += 1
        decision = self.pipeline.safe(item_id, UNANNOUNCED)
        sent = self._send(decision, noticed_at + self.config.unannounced_deadline_ms / 1000)
        self._log.write({**decision.to_dict(), "sent": sent})

    def _send(self, decision: Decision, deadline_at: float) -> bool:
        """Send the item's one decision, and keep it until acknowledged (or its gate passes)."""
        command = GateCommand(item_id=decision.item_id, exit=decision.exit)
        sent = self.controller.send(command)
        self._unacked[decision.item_id] = _Unacked(command, self._clock(), deadline_at)
        self._exchanges[decision.item_id] = _Exchange()
        if len(self._exchanges) > self.config.remember_items:
            self._exchanges.popitem(last=False)
        self.stats.gate_commands += int(sent)
        self.stats.reasons[decision.reason] += 1
        self.decisions.append(decision)
        self._decided[decision.item_id] = None
        if len(self._decided) > self.config.remember_items:
            self._decided.popitem(last=False)
        return sent

    def _ack(self, item_id: int) -> None:
        self.stats.acks += int(self._unacked.pop(item_id, None) is not None)
        exchange = self._exchanges.get(item_id)
        if exchange is None:
            return
        exchange.acked += 1
        if exchange.overdue and exchange.acked >= exchange.sent:
            exchange.overdue = False  # slow, not missing: every transmission came back
            self.stats.unacked -= 1

    def _resend_unacked(self, now: float) -> None:
        timeout = self.config.ack_timeout_ms / 1000
        for item_id, waiting in list(self._unacked.items()):
            if now - waiting.sent_at < timeout:
                continue
            exchange = self._exchanges.get(item_id)
            if exchange is not None and not exchange.overdue:
                exchange.overdue = True
                self.stats.unacked += 1
            if now >= waiting.deadline_at:  # the item has passed the gate: nothing left to steer
                del self._unacked[item_id]
                continue
            self.controller.send(waiting.command)
            waiting.sent_at = now
            self.stats.retransmissions += 1
            if exchange is not None:
                exchange.sent += 1
