"""A simulated avocado line: controller, tap sensor and camera rig, on real pseudo-terminals.

The controller announces items at a fixed pitch and sends heartbeats, the tap sensor reports
each item's taps a few milliseconds later, and the rig renders the views when the runtime
captures. Faults (``hardware/faults.py``) are injected with their own rates and counted.

The controller side is also the referee: it records every gate command it receives, so
``lost``, ``duplicates`` and late commands are measured where they happen, not reported by the
runtime about itself. A repeated command with the same exit is a retransmission; a command
with a *different* exit for an item that already has one is a duplicate decision.
"""

from __future__ import annotations

import heapq
import logging
import random
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from .avocado import FRAME_PX, VIEWS, FruitSpec, make_fruit, render_views, tap_series
from .camera import CORRUPT, LOST, FrameError, ItemCapture, ViewError, ViewFrame
from .faults import FaultCounter, FaultRates, FaultyWire
from .images import decode_image
from .protocol import Ack, GateCommand, Heartbeat, ItemArrival
from .pty import PtyDevice
from .referee import GateReferee, LineTally

log = logging.getLogger(__name__)
HEARTBEAT_S = 0.25
LATE_VIEW_S = 0.02  # how late a late frame is (inside the rig's wait)
DISCONNECT_S = 0.25  # how long an unplugged sensor stays away
REOPEN_S = 0.3  # a reconnected sensor waits this long for the station to reopen the port
QUIET_S = 0.05  # a sensor about to be unplugged goes quiet this long (its last bytes get read)
SILENCE_S = 0.2  # how long a silent controller withholds acknowledgements


@dataclass(frozen=True)
class LineConfig:
    items: int = 500
    seed: int = 1000
    first_item_id: int = 1
    pitch_ms: float = 100.0  # time between two items
    deadline_ms: int = 300  # from the announcement to the gate
    tap_delay_ms: float = 10.0  # first tap after the announcement
    lanes: int = 1
    faults: FaultRates = field(default_factory=FaultRates)


class SimulatedRig:
    """The camera rig: renders the announced fruit's views on capture, with view faults."""

    view_count = VIEWS

    def __init__(self, fruit: Callable[[int], FruitSpec], rates: FaultRates = FaultRates(), seed: int = 0,
                 counts: FaultCounter | None = None, frame_px: int = FRAME_PX) -> None:
        self._fruit = fruit
        self._rates = rates
        self._seed = seed
        self._frame_px = frame_px
        self.counts = counts if counts is not None else FaultCounter()

    def capture(self, item_id: int) -> ItemCapture:
        rendered = render_views(self._fruit(item_id), size=self._frame_px, views=self.view_count)
        if not self._rates.any:
            return ItemCapture(item_id=item_id, views=tuple(rendered))
        rng = random.Random(f"{self._seed}/{item_id}/rig")  # the same faults in every process
        views: list[ViewFrame | None] = []
        errors: list[ViewError] = []
        late: list[int] = []
        for i, view in enumerate(rendered):
            roll = rng.random()
            r = self._rates
            if roll < r.views_lost:
                self.counts.add("views_lost")
                errors.append(ViewError(i, LOST, "camera sent no frame"))
                views.append(None)
            elif roll < r.views_lost + r.views_corrupt:
                self.counts.add("views_corrupt")
                _, png = cv2.imencode(".png", view.rgb)
                cut = png.tobytes()[: len(png) // 3]  # a transfer cut short
                try:  # decoded as the runtime would decode a camera's bytes
                    decode_image(cut, what=f"view {i}")
                except FrameError as exc:
                    errors.append(ViewError(i, CORRUPT, str(exc), data=cut))
                views.append(None)
            elif roll < r.views_lost + r.views_corrupt + r.views_late:
                self.counts.add("views_late")
                time.sleep(LATE_VIEW_S)  # the frame arrives late, but inside the rig's wait
                late.append(i)
                views.append(view)
            else:
                views.append(view)
        return ItemCapture(item_id=item_id, views=tuple(views), errors=tuple(errors), late=tuple(late))


class SimulatedAvocadoLine:
    """Run with ``with SimulatedAvocadoLine(cfg) as line:``; point the runtime at
    ``line.port("controller")``, ``line.port("taps")`` and ``line.rig``; then ``line.wait()``."""

    def __init__(self, config: LineConfig) -> None:
        self.config = config
        self.injected = FaultCounter()
        self._links_dir = tempfile.TemporaryDirectory(prefix="sortline-line-")
        self.controller = PtyDevice(Path(self._links_dir.name) / "controller")
        self.tap_sensor = PtyDevice(Path(self._links_dir.name) / "tap-sensor")
        rng = random.Random(config.seed)
        self._controller_wire = FaultyWire(self.controller, config.faults, random.Random(rng.random()), self.injected)
        self._tap_wire = FaultyWire(self.tap_sensor, config.faults, random.Random(rng.random()), self.injected)
        self._item_rng = random.Random(rng.random())
        self.rig = SimulatedRig(self.fruit, config.faults, config.seed, self.injected)
        self.referee = GateReferee()
        self.silences: list[float] = []  # when the controller went silent (monotonic seconds)
        self._tap_down = False  # unplugged, or back but waiting for the station to reopen
        self._tap_backlog: list = []
        self._end = 0.0  # heartbeats stop once every item has passed its gate
        self._last_announced = config.first_item_id - 1
        self._stop = threading.Event()
        self._announced_all = threading.Event()
        self._threads: list[threading.Thread] = []

    def port(self, device: str) -> str:
        """The pyserial URL of a device: "controller" or "taps"."""
        return {"controller": self.controller.port, "taps": self.tap_sensor.port}[device]

    def announced_at(self, item_id: int) -> float:
        return self.referee.announced_time(item_id)

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
        """Wait until every item has passed its gate and the devices have said their last
        (plus ``grace_s`` for the station's last commands), then tally."""
        c = self.config
        if timeout_s is None:
            timeout_s = c.items * c.pitch_ms / 1000 + 60
        if not self._announced_all.wait(timeout_s):
            raise TimeoutError("the simulator did not announce every item in time")
        self._threads[0].join(timeout=c.deadline_ms / 1000 + 5)  # the schedule: heartbeats, outages
        time.sleep(grace_s)
        return self.tally()

    @property
    def announced(self) -> int:
        return self.referee.announced

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        self.controller.close()
        self.tap_sensor.close()
        self._links_dir.cleanup()

    def __enter__(self) -> SimulatedAvocadoLine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tally(self) -> LineTally:
        return self.referee.tally(self.injected.snapshot())

    # --- threads ----------------------------------------------------------------------------

    def _run_schedule(self) -> None:
        """One clock for everything the devices send: announcements, taps, heartbeats, outages."""
        c = self.config
        start = time.monotonic() + 0.2
        self._end = start + c.items * c.pitch_ms / 1000 + c.deadline_ms / 1000
        events: list[tuple[float, int, Callable[[], list | None]]] = []
        order = 0

        def push(at: float, action: Callable[[], list | None]) -> None:
            nonlocal order
            heapq.heappush(events, (at, order, action))
            order += 1

        push(start - 0.1, self._heartbeat)
        for n, item_id in enumerate(self.item_ids):
            push(start + n * c.pitch_ms / 1000, lambda item_id=item_id: self._announce(item_id))
        while events and not self._stop.is_set():
            at, _, action = heapq.heappop(events)
            delay = at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            for follow_at, follow in action() or ():
                push(follow_at, follow)
        # Real devices keep talking; a last clean heartbeat reveals a loss at the very end.
        t_ms = int(time.monotonic() * 1000)
        for wire, last_item_id in ((self._controller_wire, self._last_announced), (self._tap_wire, -1)):
            wire.flush()
            wire.send(Heartbeat(t_ms=t_ms, last_item_id=last_item_id), faults=False)
        self._announced_all.set()

    def _heartbeat(self) -> list:
        self._controller_wire.send(Heartbeat(t_ms=int(time.monotonic() * 1000), last_item_id=self._last_announced))
        next_at = time.monotonic() + HEARTBEAT_S
        return [(next_at, self._heartbeat)] if next_at <= self._end else []

    def _announce(self, item_id: int) -> list:
        c = self.config
        now = time.monotonic()
        self.referee.announce(item_id, now, c.deadline_ms / 1000)
        self._last_announced = item_id
        if self._item_rng.random() < c.faults.controller_silences:
            self.referee.silence(now, SILENCE_S)
            self.silences.append(now)
        t_ms = int(now * 1000)
        self._controller_wire.send(ItemArrival(item_id=item_id, lane=item_id % c.lanes, t_ms=t_ms,
                                               deadline_ms=c.deadline_ms))
        follow: list = [(now + (tap.t_ms - t_ms) / 1000, lambda tap=tap: self._send_tap(tap))
                        for tap in tap_series(self.fruit(item_id), t0_ms=t_ms + int(c.tap_delay_ms))]
        if not self._tap_down and self._item_rng.random() < c.faults.sensor_disconnects:
            self._tap_down = True  # from now on the sensor keeps its readings to itself
            follow.append((now + QUIET_S, self._unplug_tap_sensor))
        if item_id == self.item_ids[-1]:
            self._announced_all.set()
        return follow

    def _send_tap(self, tap) -> None:
        if self._tap_down:
            self._tap_backlog.append(tap)  # a sensor that is down keeps its readings
        else:
            self._tap_wire.send(tap)

    def _unplug_tap_sensor(self) -> list:
        self.injected.add("sensor_disconnects")
        self._tap_wire.flush()
        self.tap_sensor.disconnect()
        return [(time.monotonic() + DISCONNECT_S, self._replug_tap_sensor)]

    def _replug_tap_sensor(self) -> list:
        self.tap_sensor.reconnect()
        # pyserial flushes its input on open: hold the backlog until the station has reopened.
        return [(time.monotonic() + REOPEN_S, self._drain_tap_backlog)]

    def _drain_tap_backlog(self) -> None:
        self._tap_down = False
        backlog, self._tap_backlog = self._tap_backlog, []
        for tap in backlog:
            self._tap_wire.send(tap)

    def _run_gate_listener(self) -> None:
        while not self._stop.is_set():
            for message in self.controller.receive(timeout_s=0.05):
                if isinstance(message, GateCommand):
                    self._gate(message)

    def _gate(self, command: GateCommand) -> None:
        if self.referee.receive(command, time.monotonic()):
            self._controller_wire.send(Ack(item_id=command.item_id), faults=False)
