"""Links, rig and station wired together once, for every way a station runs: the daemon
(``sortline serve``), hardware-in-the-loop runs (demo, simulate, replay) and the tests."""

from __future__ import annotations

import gc
import logging
import queue
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from sortline.edge_runtime.model.pipeline import Decision, ItemPipeline
from sortline.edge_runtime.model.runtimes import one_blas_thread
from sortline.hardware.camera import FrameSource
from sortline.hardware.serial_link import DEFAULT_BAUD, Received, SerialLink

from .loop import Station, StationConfig, StationError
from .observers import Observer, ResultSink
from .stats import StationStats

log = logging.getLogger(__name__)
INBOX = 4096  # messages from all devices waiting for the loop; more are dropped (oldest first), counted


def settle_heap() -> None:
    """Collect, then move every object alive now (the model, the bundle, the imports, a recorded
    line) into the collector's permanent generation: a full collection during the run then walks
    only what the line made since. On the simulated avocado line at 300 items/s (AMD EPYC, 2
    cores, a throwaway probe timing the collections) a full collection over the ~200,000 objects a
    station's process tracks took 155 ms, and 3 of 6 runs had a decision p99 of 84-114 ms; with
    them frozen, 17,000 were left and 6 of 6 runs had 46-51 ms."""
    gc.collect()
    gc.freeze()


class RunningStation:
    """Opens the serial links (controller first, then the item sensor if any), builds the
    station and runs its loop on a thread. Use as a context manager; :meth:`stop` ends the loop
    and raises :class:`StationError` if the loop died."""

    def __init__(self, pipeline: ItemPipeline, ports: Mapping[str, str], rig: FrameSource,
                 config: StationConfig = StationConfig(), event_log: Path | None = None,
                 bauds: Mapping[str, int] | None = None, reconnect_s: float = 0.5,
                 on_decision: Callable[[Decision], None] | None = None, observers: Sequence[Observer] = (),
                 sinks: Sequence[ResultSink] = ()) -> None:
        one_blas_thread()  # before the station's threads: set once, never while one is inside BLAS
        inbox: queue.Queue[Received] = queue.Queue(maxsize=INBOX)
        bauds = bauds or {}
        self.links = [SerialLink(url, name, inbox=inbox, reconnect_s=reconnect_s,
                                 baudrate=bauds.get(name, DEFAULT_BAUD)) for name, url in ports.items()]
        self._args = (pipeline, rig, config, event_log, on_decision, tuple(observers), tuple(sinks))
        self.station: Station | None = None
        self.error: BaseException | None = None
        self.stopped = threading.Event()  # set when the loop has ended, for whatever reason
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunningStation:
        pipeline, rig, config, event_log, on_decision, observers, sinks = self._args
        try:
            for link in self.links:
                link.open()
            controller, sensor = self.links[0], (self.links[1] if len(self.links) > 1 else None)
            self.station = Station(pipeline, rig, controller, sensor, config, event_log=event_log,
                                   on_decision=on_decision, observers=observers, sinks=sinks)
        except BaseException:
            self._close_links()
            raise
        settle_heap()
        self._thread = threading.Thread(target=self._run, name="station", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._stop.set()
            if self._thread is not None:
                self._thread.join(timeout=10)
        finally:
            self._close_links()
            gc.unfreeze()  # what the station held may be collected again

    def stop(self, timeout_s: float = 10.0) -> StationStats:
        """End the loop (items in flight are finished first) and return the station's counters."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
            if self._thread.is_alive():
                raise StationError("the station's loop did not stop in time")
        if self.error is not None:
            raise StationError(f"the station's loop died: {self.error!r}") from self.error
        return self.station.stats

    def _run(self) -> None:
        try:
            self.station.run(self._stop)
        except BaseException as exc:  # reported by stop(); the daemon exits non-zero on it
            log.exception("the station's loop died")
            self.error = exc
        finally:
            self.stopped.set()

    def _close_links(self) -> None:
        for link in self.links:
            link.close()
