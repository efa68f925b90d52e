"""A simulated avocado line: controller, tap sensor and camera rig, on real pseudo-terminals.

The controller announces items at a fixed pitch, the tap sensor reports each item's taps a
few milliseconds later, and the rig renders the views when the runtime captures. The
controller side is also the referee: it records every gate command it receives, so ``lost``,
``duplicates`` and late commands are measured where they happen, not reported by the runtime
about itself.
"""

from __future__ import annotations

import heapq
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .avocado import FRAME_PX, VIEWS, FruitSpec, make_fruit, render_views, tap_series
from .camera import ItemCapture
from .protocol import Ack, GateCommand, ItemArrival
from .pty import PtyDevice

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LineConfig:
    items: int = 500
    seed: int = 1000
    first_item_id: int = 1
    pitch_ms: float = 100.0  # time between two items
    deadline_ms: int = 300  # from announcement to the gate
    tap_delay_ms: float = 10.0  # first tap after the announcement
    lanes: int = 1


@dataclass
class GateRecord:
    announced_at: float
    deadline_at: float
    commands: list[tuple[float, int]] = field(default_factory=list)


@dataclass(frozen=True)
class LineTally:
    """What the controller saw, item by item."""

    items: int
    gate_commands: int
    lost: int  # announced items that never got a command
    duplicates: int  # commands beyond the first for an item
    late: int  # first command arrived after the item passed the gate
    unknown_item: int  # commands for items never announced
    exits: dict[int, int]  # item id -> exit of the first command


class SimulatedRig:
    """The camera rig: renders the announced fruit's views on capture."""

    view_count = VIEWS

    def __init__(self, fruit: Callable[[int], FruitSpec], frame_px: int = FRAME_PX) -> None:
        self._fruit = fruit
        self._frame_px = frame_px

    def capture(self, item_id: int) -> ItemCapture:
        views = render_views(self._fruit(item_id), size=self._frame_px, views=self.view_count)
        return ItemCapture(item_id=item_id, views=tuple(views))


class SimulatedAvocadoLine:
    """Run with ``with SimulatedAvocadoLine(cfg) as line:``; point the runtime at
    ``line.controller_port``, ``line.tap_port`` and ``line.rig``; then ``line.wait()``."""

    def __init__(self, config: LineConfig) -> None:
        self.config = config
        self.controller = PtyDevice()
        self.tap_sensor = PtyDevice()
        self.rig = SimulatedRig(self.fruit)
        self._records: dict[int, GateRecord] = {}
        self._unknown = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._announced_all = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def controller_port(self) -> str:
        return self.controller.port

    @property
    def tap_port(self) -> str:
        return self.tap_sensor.port

    @property
    def item_ids(self) -> range:
        c = self.config
        return range(c.first_item_id, c.first_item_id + c.items)

    def fruit(self, item_id: int) -> FruitSpec:
        return make_fruit(item_id, self.config.seed)

    def truth(self, item_id: int) -> int:
        return self.fruit(item_id).label

    def start(self) -> SimulatedAvocadoLine:
        for target, name in ((self._run_schedule, "sim-schedule"), (self._run_gate_listener, "sim-gates")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def wait_announced(self, timeout_s: float) -> bool:
        """True once every item has been announced."""
        return self._announced_all.wait(timeout_s)

    def wait(self, grace_s: float = 0.5, timeout_s: float | None = None) -> LineTally:
        """Wait until every item has passed its gate (plus ``grace_s``), then tally."""
        c = self.config
        if timeout_s is None:
            timeout_s = c.items * c.pitch_ms / 1000 + 60
        if not self._announced_all.wait(timeout_s):
            raise TimeoutError("the simulator did not announce every item in time")
        time.sleep(c.deadline_ms / 1000 + grace_s)
        return self.tally()

    @property
    def announced(self) -> int:
        with self._lock:
            return len(self._records)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        self.controller.close()
        self.tap_sensor.close()

    def __enter__(self) -> SimulatedAvocadoLine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tally(self) -> LineTally:
        with self._lock:
            records = dict(self._records)
            unknown = self._unknown
        commands = sum(len(r.commands) for r in records.values())
        return LineTally(
            items=len(records),
            gate_commands=commands,
            lost=sum(1 for r in records.values() if not r.commands),
            duplicates=sum(max(0, len(r.commands) - 1) for r in records.values()),
            late=sum(1 for r in records.values() if r.commands and r.commands[0][0] > r.deadline_at),
            unknown_item=unknown,
            exits={item: r.commands[0][1] for item, r in records.items() if r.commands},
        )

    # --- threads ----------------------------------------------------------------------------

    def _run_schedule(self) -> None:
        """Announce items at the line pitch; each announcement schedules that item's taps."""
        c = self.config
        start = time.monotonic() + 0.2
        events: list[tuple[float, int, Callable[[], None]]] = []
        order = 0
        for n, item_id in enumerate(self.item_ids):
            at = start + n * c.pitch_ms / 1000
            events.append((at, order, lambda item_id=item_id: self._announce(item_id)))
            order += 1
        heapq.heapify(events)
        while events and not self._stop.is_set():
            at, _, action = heapq.heappop(events)
            delay = at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            for follow_up in action() or ():
                heapq.heappush(events, (follow_up[0], order, follow_up[1]))
                order += 1
        self._announced_all.set()

    def _announce(self, item_id: int) -> list[tuple[float, Callable[[], None]]]:
        c = self.config
        now = time.monotonic()
        with self._lock:
            self._records[item_id] = GateRecord(announced_at=now, deadline_at=now + c.deadline_ms / 1000)
        t_ms = int(now * 1000)
        lane = item_id % c.lanes
        self.controller.send(ItemArrival(item_id=item_id, lane=lane, t_ms=t_ms, deadline_ms=c.deadline_ms))
        taps = tap_series(self.fruit(item_id), t0_ms=t_ms + int(c.tap_delay_ms))
        return [(now + (tap.t_ms - t_ms) / 1000, lambda tap=tap: self.tap_sensor.send(tap)) for tap in taps]

    def _run_gate_listener(self) -> None:
        while not self._stop.is_set():
            for message in self.controller.receive(timeout_s=0.05):
                if not isinstance(message, GateCommand):
                    continue
                now = time.monotonic()
                with self._lock:
                    record = self._records.get(message.item_id)
                    if record is None:
                        self._unknown += 1
                        continue
                    record.commands.append((now, message.exit))
                self.controller.send(Ack(item_id=message.item_id))
