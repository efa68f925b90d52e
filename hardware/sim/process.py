"""The simulated line at a station's pace: frames rendered once, devices in their own process.

Rendering an avocado's four views takes several milliseconds, and the simulated devices'
threads (schedule, serial writes, the referee) compete with the station for the interpreter
when they share its process. Either would make the simulator, not the station, the limit.

- :class:`CachedScenario`: the line's items cycle through ``distinct`` items rendered once
  (item ``i`` is item ``i % distinct`` of the wrapped scenario, with its label and readings),
  so a capture is a lookup.
- :class:`LineProcess`: the controller and sensor run in a child process on their
  pseudo-terminals; the rig stays in the station's process and serves the cached frames.
"""

from __future__ import annotations

import dataclasses
import multiprocessing as mp
import threading
from collections.abc import Sequence

from tqdm import tqdm

from ..camera import ViewFrame
from ..protocol import Message
from .faults import FaultCounter
from .line import LineConfig, Scenario, SimulatedLine, SimulatedRig
from .referee import LineTally


class CachedScenario:
    """A scenario whose items repeat every ``distinct`` ids, each rendered once."""

    def __init__(self, inner: Scenario, distinct: int) -> None:
        if distinct < 1:
            raise ValueError("a cached scenario needs at least one distinct item")
        self.inner = inner
        self.distinct = distinct
        for name in ("name", "sensor", "sensor_buffers", "classes", "views", "channels", "frame_px",
                     "readings_expected"):
            setattr(self, name, getattr(inner, name))
        self._frames: dict[int, list[ViewFrame]] = {}
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:  # a child process gets the scenario, not the frames
        return {**self.__dict__, "_frames": {}, "_lock": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def key(self, item_id: int) -> int:
        return item_id % self.distinct

    def label(self, item_id: int) -> int:
        return self.inner.label(self.key(item_id))

    def prerender(self, item_ids: Sequence[int], progress: bool = False) -> None:
        keys = sorted({self.key(i) for i in item_ids} - set(self._frames))
        for key in tqdm(keys, desc="render frames", unit="item", disable=not progress, dynamic_ncols=True):
            self._frames[key] = self.inner.render(key, self.frame_px, self.views)

    def render(self, item_id: int, size: int, views: int) -> list[ViewFrame]:
        key = self.key(item_id)
        frames = self._frames.get(key)
        if frames is None or size != self.frame_px or views != self.views:
            frames = self.inner.render(key, size, views)
            if size == self.frame_px and views == self.views:
                with self._lock:
                    self._frames[key] = frames
        return frames

    def readings(self, item_id: int, t0_ms: int) -> list[Message]:
        readings = self.inner.readings(self.key(item_id), t0_ms)
        return [dataclasses.replace(r, item_id=item_id) if hasattr(r, "item_id") else r for r in readings]


def _run_line(config: LineConfig, scenario: Scenario, conn, announced) -> None:
    """The child: the simulated devices, answering the parent's requests over ``conn``."""
    line = SimulatedLine(config, scenario)
    conn.send({d: line.port(d) for d in ("controller", line.sensor)})
    watcher = threading.Event()

    def count() -> None:  # the announced count, for the parent's progress bar
        while not watcher.wait(0.05):
            announced.value = line.announced

    threading.Thread(target=count, daemon=True).start()
    try:
        while True:
            request = conn.recv()
            if request == "start":
                line.start()
                conn.send(True)
            elif request == "wait":
                tally = line.wait()
                announced.value = line.announced
                conn.send(tally)
            elif request == "end_early":
                line.end_early()
            elif request == "stop":
                break
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        watcher.set()
        line.stop()


class LineProcess:
    """A :class:`SimulatedLine` in a child process, seen as a line from the station's process.
    The rig (with its view faults) is local; the serial devices and their faults are remote,
    and the tally adds both."""

    def __init__(self, config: LineConfig, scenario: Scenario) -> None:
        self.config = config
        self.scenario = scenario
        self.sensor = scenario.sensor
        self._rig_faults = FaultCounter()
        self.rig = SimulatedRig(scenario, config.faults, config.seed, self._rig_faults)
        context = mp.get_context("spawn")  # no fork of a process that runs threads (and maybe torch)
        self._conn, child = context.Pipe()
        self._announced = context.Value("q", 0, lock=False)
        self._process = context.Process(target=_run_line, args=(config, scenario, child, self._announced),
                                        name="sortline-line", daemon=True)
        self._process.start()
        if not self._conn.poll(60):
            raise TimeoutError("the simulated line's process did not start")
        self._ports: dict[str, str] = self._conn.recv()
        self._tally: LineTally | None = None
        self._wait = threading.Event()
        self._lock = threading.Lock()

    def port(self, device: str) -> str:
        return self._ports[device]

    @property
    def item_ids(self) -> range:
        c = self.config
        return range(c.first_item_id, c.first_item_id + c.items)

    @property
    def announced(self) -> int:
        return int(self._announced.value)

    def truth(self, item_id: int) -> int:
        return self.scenario.label(item_id)

    def start(self) -> LineProcess:
        with self._lock:
            self._conn.send("start")
            self._conn.recv()
        return self

    def wait_announced(self, timeout_s: float) -> bool:
        self._wait.wait(timeout_s)
        return self.announced >= self.config.items

    def wait(self) -> LineTally:
        with self._lock:
            self._conn.send("wait")
            remote: LineTally = self._conn.recv()
        local = self._rig_faults.snapshot()
        injected = dict(remote.injected)
        for kind, n in local.items():
            injected[kind] = injected.get(kind, 0) + n
        self._tally = dataclasses.replace(remote, injected=injected)
        return self._tally

    def end_early(self) -> None:
        """The line announces no more items (:meth:`SimulatedLine.end_early`)."""
        with self._lock:
            self._conn.send("end_early")

    def stop(self) -> None:
        try:
            with self._lock:
                self._conn.send("stop")
        except (BrokenPipeError, OSError):
            pass
        self._process.join(timeout=5)
        if self._process.is_alive():
            self._process.kill()
