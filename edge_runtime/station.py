"""The station runtime: items in from the controller, taps in from the sensor, gates out.

One event loop owns all item state, so nothing needs a lock. Every announced item gets exactly
one gate command: when its taps are complete, when it has waited long enough for them, or
when its gate is near, whichever comes first. A late, failed or unsure decision sends the item
to the safe exit; one bad item never stops the line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sortline.hardware.camera import FrameError, FrameSource
from sortline.hardware.protocol import Ack, GateCommand, ItemArrival, TapReading
from sortline.hardware.serial_link import Received, SerialLink

from .pipeline import ERROR, LATE, Decision, ItemPipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StationConfig:
    tap_wait_ms: float = 120.0  # longest wait for an item's taps after its announcement
    decision_margin_ms: float = 40.0  # decide at the latest this long before the gate
    orphan_tap_ttl_ms: float = 2000.0  # taps for an item not (yet) announced are kept this long
    remember_items: int = 10000  # decided item ids kept to refuse a repeated announcement


@dataclass
class _Pending:
    arrival: ItemArrival
    received_at: float
    deadline_at: float
    ready_at: float
    embeddings: np.ndarray | None = None
    compute_s: float = 0.0  # time this station spent on the item (capture, embedding, decision)
    capture_errors: tuple[str, ...] = ()
    taps: dict[int, TapReading] = field(default_factory=dict)


@dataclass
class StationStats:
    items: int = 0
    gate_commands: int = 0
    acks: int = 0
    reasons: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)  # announcement → gate command
    compute_ms: list[float] = field(default_factory=list)  # of which spent computing, not waiting
    deadline_misses: int = 0
    repeated_announcements: int = 0
    orphan_taps_expired: int = 0
    capture_errors: int = 0
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
        tap_sensor: SerialLink,
        config: StationConfig = StationConfig(),
        event_log: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if controller.inbox is not tap_sensor.inbox:
            raise ValueError("the controller and tap-sensor links must share one inbox")
        self.pipeline = pipeline
        self.rig = rig
        self.controller = controller
        self.tap_sensor = tap_sensor
        self.config = config
        self.stats = StationStats()
        self.decisions: list[Decision] = []
        self._inbox = controller.inbox
        self._clock = clock
        self._log = EventLog(event_log)
        self._pending: dict[int, _Pending] = {}
        self._orphans: dict[int, list[tuple[float, TapReading]]] = {}
        self._decided: OrderedDict[int, None] = OrderedDict()

    def run(self, stop: threading.Event) -> StationStats:
        """Serve until ``stop`` is set; then decide whatever is still pending and return."""
        try:
            while not stop.is_set():
                self._step(timeout=self._next_wake())
            for item_id in list(self._pending):
                self._finish(item_id)
        finally:
            self.stats.log_errors = self._log.errors
            self._log.close()
        return self.stats

    # --- the loop ---------------------------------------------------------------------------

    def _next_wake(self) -> float:
        if not self._pending:
            return 0.05
        soonest = min(p.ready_at for p in self._pending.values())
        return min(0.05, max(0.0, soonest - self._clock()))

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
        self._expire_orphans(now)

    def _handle(self, received: Received) -> None:
        message = received.message
        if isinstance(message, ItemArrival):
            self._arrive(message, received.at)
        elif isinstance(message, TapReading):
            self._tap(message, received.at)
        elif isinstance(message, Ack):
            self.stats.acks += 1

    def _arrive(self, arrival: ItemArrival, at: float) -> None:
        if arrival.item_id in self._pending or arrival.item_id in self._decided:
            self.stats.repeated_announcements += 1
            return
        c = self.config
        deadline_at = at + arrival.deadline_ms / 1000
        pending = _Pending(
            arrival=arrival,
            received_at=at,
            deadline_at=deadline_at,
            ready_at=min(at + c.tap_wait_ms / 1000, deadline_at - c.decision_margin_ms / 1000),
        )
        self._pending[arrival.item_id] = pending
        self.stats.items += 1
        # Views are captured at the trigger, then embedded while the taps come in.
        started = self._clock()
        try:
            capture = self.rig.capture(arrival.item_id)
            pending.capture_errors = capture.errors
            pending.embeddings = self.pipeline.embed(capture)
        except (FrameError, ValueError, OSError) as exc:
            pending.capture_errors = (*pending.capture_errors, str(exc))
        pending.compute_s += self._clock() - started
        if pending.capture_errors:
            self.stats.capture_errors += 1
        for _, tap in self._orphans.pop(arrival.item_id, []):
            pending.taps[tap.index] = tap
        self._maybe_ready(pending)

    def _tap(self, tap: TapReading, at: float) -> None:
        pending = self._pending.get(tap.item_id)
        if pending is not None:
            pending.taps[tap.index] = tap
            self._maybe_ready(pending)
        elif tap.item_id not in self._decided:
            self._orphans.setdefault(tap.item_id, []).append((at, tap))

    def _maybe_ready(self, pending: _Pending) -> None:
        if len(pending.taps) >= self.pipeline.manifest.fusion.taps_expected:
            pending.ready_at = min(pending.ready_at, self._clock())

    def _expire_orphans(self, now: float) -> None:
        ttl = self.config.orphan_tap_ttl_ms / 1000
        for item_id in [i for i, taps in self._orphans.items() if now - taps[0][0] > ttl]:
            self.stats.orphan_taps_expired += len(self._orphans.pop(item_id))

    def _finish(self, item_id: int) -> None:
        pending = self._pending.pop(item_id)
        started = self._clock()
        try:
            decision = self.pipeline.decide(item_id, pending.embeddings, list(pending.taps.values()))
        except Exception:  # one bad item must not stop the line
            log.exception("item %s: decision failed; sending it to the safe exit", item_id)
            decision = self.pipeline.safe(item_id, ERROR)
        now = self._clock()
        if now > pending.deadline_at:
            # Too late to steer this item: the controller should still hear one command for it.
            decision = dataclasses.replace(decision, exit=self.pipeline.policy.safe_exit, reason=LATE)
            self.stats.deadline_misses += 1
        sent = self.controller.send(GateCommand(item_id=item_id, exit=decision.exit))
        done = self._clock()
        latency_ms = (done - pending.received_at) * 1000
        compute_ms = (pending.compute_s + done - started) * 1000
        self.stats.gate_commands += int(sent)
        self.stats.reasons[decision.reason] += 1
        self.stats.latencies_ms.append(latency_ms)
        self.stats.compute_ms.append(compute_ms)
        self.decisions.append(decision)
        self._decided[item_id] = None
        if len(self._decided) > self.config.remember_items:
            self._decided.popitem(last=False)
        self._log.write(
            {
                **decision.to_dict(),
                "lane": pending.arrival.lane,
                "latency_ms": round(latency_ms, 3),
                "compute_ms": round(compute_ms, 3),
                "taps": len(pending.taps),
                "views": 0 if pending.embeddings is None else int(pending.embeddings.shape[0]),
                "capture_errors": list(pending.capture_errors),
                "sent": sent,
            }
        )
