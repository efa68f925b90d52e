"""A simulated station: line controller, item sensor and camera rig, on real pseudo-terminals.

What passes is a :class:`Scenario`: fruit with a tap-pressure sensor (``hardware/sim/avocado.py``)
or products with a checkout scale (``hardware/sim/checkout.py``). The controller announces items at
a fixed pitch and sends heartbeats, the sensor reports on each item a few milliseconds later,
and the rig renders the views when the runtime captures. Faults (``hardware/sim/faults.py``) are
injected with their own rates and counted.

The controller side is also the referee: it records every gate command it receives, so
``lost``, ``duplicates`` and late commands are measured where they happen, not reported by the
runtime about itself. A repeated command with the same exit is a retransmission; a command
with a *different* exit for an item that already has one is a duplicate decision.
"""

from __future__ import annotations

import heapq
import logging
import random
import shutil
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import cv2

from ..camera import CORRUPT, LOST, FrameError, ItemCapture, ViewError, ViewFrame
from ..files import private_tempdir
from ..images import decode_image
from ..protocol import Ack, GateCommand, Heartbeat, ItemArrival, Message
from .avocado import AvocadoScenario
from .faults import FaultCounter, FaultRates, FaultyWire
from .pty import PtyDevice
from .referee import GateReferee, LineTally

log = logging.getLogger(__name__)
HEARTBEAT_S = 0.25
LATE_VIEW_S = 0.02  # how late a late frame is (inside the rig's wait)
DISCONNECT_S = 0.25  # how long an unplugged sensor stays away
REOPEN_S = 0.3  # a reconnected sensor waits this long for the station to reopen the port
REOPEN_WAIT_S = 5.0  # ... and, past that, at most this long more if the station has not yet
QUIET_S = 0.05  # a sensor about to be unplugged goes quiet this long (its last bytes get read)
SILENCE_S = 0.2  # how long a silent controller withholds acknowledgements


class Scenario(Protocol):
    """What passes a simulated station, and what its sensor says about each item."""

    name: str
    sensor: str  # the sensor's device name: "taps", "scale"
    sensor_buffers: bool  # does an unplugged sensor keep its readings for when it returns?
    classes: tuple[str, ...]
    views: int
    channels: tuple[str, ...]  # what each view has: ("r", "g", "b") and maybe "nir"
    frame_px: int
    readings_expected: int  # readings that complete an item (the fusion spec's)

    def label(self, item_id: int) -> int: ...

    def render(self, item_id: int, size: int, views: int) -> list[ViewFrame]: ...

    def readings(self, item_id: int, t0_ms: int) -> Sequence[Message]:
        """The sensor's messages about an item announced at ``t0_ms``, each at its ``t_ms``."""
        ...


@dataclass(frozen=True)
class LineConfig:
    items: int = 500
    seed: int = 1000
    first_item_id: int = 1
    pitch_ms: float = 100.0  # time between two items
    deadline_ms: int = 300  # from the announcement to the gate
    lanes: int = 1
    faults: FaultRates = field(default_factory=FaultRates)


class SimulatedRig:
    """The camera rig: renders the announced item's views on capture, with view faults."""

    def __init__(self, scenario: Scenario, rates: FaultRates = FaultRates(), seed: int = 0,
                 counts: FaultCounter | None = None) -> None:
        self._scenario = scenario
        self.view_count = scenario.views
        self._rates = rates
        self._seed = seed
        self.counts = counts if counts is not None else FaultCounter()

    def capture(self, item_id: int) -> ItemCapture:
        rendered = self._scenario.render(item_id, self._scenario.frame_px, self.view_count)
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


class SimulatedLine:
    """Run with ``with SimulatedLine(cfg, scenario) as line:``; point the runtime at
    ``line.port("controller")``, ``line.port(line.sensor)`` and ``line.rig``; then ``line.wait()``.
    Without a scenario, it is the avocado line of world ``cfg.seed``."""

    def __init__(self, config: LineConfig, scenario: Scenario | None = None) -> None:
        self.config = config
        self.scenario = scenario if scenario is not None else AvocadoScenario(config.seed)
        self.sensor = self.scenario.sensor
        self.injected = FaultCounter()
        # its own folder, swept by the next start when this process is killed (hardware/files.py)
        self._links_dir = private_tempdir("line")
        self.controller = PtyDevice(self._links_dir / "controller")
        self.sensor_device = PtyDevice(self._links_dir / self.sensor)
        rng = random.Random(config.seed)
        self._controller_wire = FaultyWire(self.controller, config.faults, random.Random(rng.random()), self.injected)
        self._sensor_wire = FaultyWire(self.sensor_device, config.faults, random.Random(rng.random()), self.injected)
        self._item_rng = random.Random(rng.random())
        self.rig = SimulatedRig(self.scenario, config.faults, config.seed, self.injected)
        self.referee = GateReferee()
        self.silences: list[float] = []  # when the controller went silent (monotonic seconds)
        self._sensor_down = False  # unplugged, or back but waiting for the station to reopen
        self._sensor_backlog: list = []
        self._end = 0.0  # heartbeats stop once every item has passed its gate
        self._last_announced = config.first_item_id - 1
        self._due = 0.0
        self._stop = threading.Event()
        self._halt_at: float | None = None  # end_early: nothing scheduled after this passes
        self._announced_all = threading.Event()
        self._threads: list[threading.Thread] = []

    def port(self, device: str) -> str:
        """The pyserial URL of a device: "controller", or the sensor's name ("taps", "scale")."""
        return {"controller": self.controller.port, self.sensor: self.sensor_device.port}[device]

    def announced_at(self, item_id: int) -> float:
        return self.referee.announced_time(item_id)

    @property
    def item_ids(self) -> range:
        c = self.config
        return range(c.first_item_id, c.first_item_id + c.items)

    def truth(self, item_id: int) -> int:
        return self.scenario.label(item_id)

    def start(self) -> SimulatedLine:
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

    def end_early(self) -> None:
        """No item after this moment: those already announced still pass (their readings,
        their gates); then the line ends as if it had been that long, and :meth:`wait` tallies
        the items it had."""
        self._halt_at = time.monotonic() + self.config.deadline_ms / 1000 + 1.0

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2)
        self.controller.close()
        self.sensor_device.close()
        shutil.rmtree(self._links_dir, ignore_errors=True)

    def __enter__(self) -> SimulatedLine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tally(self) -> LineTally:
        return self.referee.tally(self.injected.snapshot())

    # --- threads ----------------------------------------------------------------------------

    def _run_schedule(self) -> None:
        """One clock for everything the devices send: announcements, readings, heartbeats, outages."""
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
            if self._halt_at is not None and at > self._halt_at:
                break  # ended early: what is left is items that never came
            delay = at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            self._due = at  # when this should happen, however late a busy machine runs it
            for follow_at, follow in action() or ():
                push(follow_at, follow)
        # Real devices keep talking; a last clean heartbeat reveals a loss at the very end.
        t_ms = int(time.monotonic() * 1000)
        for wire, last_item_id in ((self._controller_wire, self._last_announced), (self._sensor_wire, -1)):
            wire.flush()
            wire.send(Heartbeat(t_ms=t_ms, last_item_id=last_item_id), faults=False)
        self._announced_all.set()

    def _heartbeat(self) -> list:
        # A heartbeat tells the controller's clock as it goes out (the station learns the clock
        # from it); an announcement tells when its item passed, however late it is sent.
        self._controller_wire.send(Heartbeat(t_ms=int(time.monotonic() * 1000), last_item_id=self._last_announced))
        next_at = self._due + HEARTBEAT_S
        return [(next_at, self._heartbeat)] if next_at <= self._end else []

    def _announce(self, item_id: int) -> list:
        """The item passes at its scheduled time; that is the time its announcement and its
        readings carry, and what the readings are scheduled from, so a late-running simulator
        sends late frames but never reorders what happened."""
        c = self.config
        now = self._due
        if self._halt_at is not None:
            return []  # ended early: this item never comes
        self.referee.announce(item_id, now, c.deadline_ms / 1000)
        self._last_announced = item_id
        if self._item_rng.random() < c.faults.controller_silences:
            self.referee.silence(now, SILENCE_S)
            self.silences.append(now)
        t_ms = int(now * 1000)
        self._controller_wire.send(ItemArrival(item_id=item_id, lane=item_id % c.lanes, t_ms=t_ms,
                                               deadline_ms=c.deadline_ms))
        follow: list = [(now + (reading.t_ms - t_ms) / 1000, lambda reading=reading: self._send_reading(reading))
                        for reading in self.scenario.readings(item_id, t_ms)]
        if not self._sensor_down and self._item_rng.random() < c.faults.sensor_disconnects:
            self._sensor_down = True  # from now on the sensor's readings do not reach the station
            self._sensor_wire.flush()  # a held frame goes now, with the quiet time to be read
            follow.append((now + QUIET_S, self._unplug_sensor))
        if item_id == self.item_ids[-1]:
            self._announced_all.set()
        return follow

    def _send_reading(self, reading: Message) -> None:
        if not self._sensor_down:
            self._sensor_wire.send(reading)
        elif self.scenario.sensor_buffers:
            self._sensor_backlog.append(reading)  # a tap sensor that is down keeps its readings

    def _unplug_sensor(self) -> list:
        self.injected.add("sensor_disconnects")
        self._sensor_wire.flush()
        self.sensor_device.disconnect()
        return [(self._due + DISCONNECT_S, self._replug_sensor)]

    def _replug_sensor(self) -> list:
        self.sensor_device.reconnect()
        # pyserial flushes its input on open: hold the backlog until the station has reopened.
        return [(self._due + REOPEN_S, lambda: self._drain_sensor_backlog(self._due + REOPEN_WAIT_S))]

    def _drain_sensor_backlog(self, give_up_at: float) -> list | None:
        if not self.sensor_device.reader_ready():  # a loaded station reopens late: wait for it
            if self._due < give_up_at:
                return [(self._due + 0.01, lambda: self._drain_sensor_backlog(give_up_at))]
            log.warning("the station has not reopened the %s port in %.1f s: its readings go out anyway",
                        self.sensor, REOPEN_S + REOPEN_WAIT_S)
        self._sensor_down = False
        backlog, self._sensor_backlog = self._sensor_backlog, []
        for reading in backlog:
            self._sensor_wire.send(reading)

    def _run_gate_listener(self) -> None:
        while not self._stop.is_set():
            for message in self.controller.receive(timeout_s=0.05):
                if isinstance(message, GateCommand):
                    self._gate(message)

    def _gate(self, command: GateCommand) -> None:
        if self.referee.receive(command, time.monotonic()):
            self._controller_wire.send(Ack(item_id=command.item_id), faults=False)
