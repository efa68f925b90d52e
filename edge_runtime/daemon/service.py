"""The station as a daemon (``sortline serve``) and as a recorder (``sortline record``), both
configured by a station file (:mod:`sortline.edge_runtime.daemon.config`)."""

from __future__ import annotations

import functools
import logging
import threading
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sortline.edge_runtime.learning.enroll import Enroller, HeadWatcher
from sortline.edge_runtime.learning.store import store_for
from sortline.edge_runtime.model.bundle import Bundle
from sortline.edge_runtime.model.pipeline import Classifier, ItemPipeline
from sortline.edge_runtime.station import StationConfig, StationStats
from sortline.edge_runtime.station.wiring import RunningStation
from sortline.edge_runtime.watch import BundleCandidate, check_newer, put_head_live
from sortline.hardware.recording import RecordingWriter, StreamRecorder

from . import systemd
from .config import ConfigError, StationFile
from .control import StationControl
from .plant import build_plant

log = logging.getLogger(__name__)


def serve(station_file: StationFile, stop: threading.Event, bundle: Path | None = None,
          config: StationConfig = StationConfig(),
          ready: threading.Event | None = None) -> tuple[StationStats, dict[str, int]]:
    """Run the station until ``stop`` is set (``ready`` is set once it takes items); return its
    counters and the faults it saw. If the station's loop dies, this raises :class:`StationError`
    at once (the daemon then exits non-zero, and systemd restarts it) instead of staying idle."""
    bundle = bundle or station_file.file(station_file.station.bundle)
    if bundle is None:
        raise ConfigError(f"{station_file.path}: no station.bundle, and none given")
    station_file.check_signing()
    pipeline, enroller, watcher = _load(station_file, bundle)
    config = station_file.station_config(config)
    rig = station_file.build_rig()
    api = host = None
    ready = ready or threading.Event()
    watch, plant = station_file.build_watch(), build_plant(station_file)
    try:
        event_log = station_file.file(station_file.station.event_log)
        with RunningStation(pipeline, station_file.ports, rig, config, event_log=event_log,
                            bauds=station_file.bauds, observers=[watch] if watch else (),
                            sinks=[plant] if plant else ()) as running:
            control = StationControl(running, pipeline, enroller, watcher, ready, started=time.monotonic(),
                                     unsigned_allowed=station_file.unsigned_allowed, watch=watch, plant=plant)
            host = _take_changes(control, station_file, bundle)
            if station_file.api.enabled:
                from .api import serve_api

                api = serve_api(station_file.api, control)
            log.info("serving %s with bundle %s, head version %d", station_file.path, pipeline.version,
                     pipeline.classifier.version)
            ready.set()  # links open, model loaded and checked: items can come
            systemd.notify(f"READY=1\nSTATUS=serving {pipeline.version}")
            watchdog_s, pinged, steps = systemd.watchdog_interval_s(), time.monotonic(), -1
            while not stop.is_set() and not running.stopped.is_set():
                stop.wait(min(0.2, watchdog_s or 0.2))
                if control.watcher is not None:
                    with control.lock:
                        control.watcher.poll()
                # the watchdog is fed only while the station's loop moves: a stuck loop is restarted
                if watchdog_s is not None and time.monotonic() - pinged >= watchdog_s \
                        and running.station.steps != steps:
                    systemd.notify("WATCHDOG=1")
                    pinged, steps = time.monotonic(), running.station.steps
            systemd.notify("STOPPING=1")
            stats = running.stop()
            return stats, running.station.observed_faults()
    finally:
        if plant is not None:
            plant.stop()
        if watch is not None:
            watch.stop(drain=False)
        if host is not None:
            host.close()
        if api is not None:
            api.stop()
        rig.close()
        if enroller is not None:
            enroller.close()
        if api is not None and control.enroller is not None and control.enroller is not enroller:
            control.enroller.close()


def _take_changes(control: StationControl, station_file: StationFile, bundle: Path) -> ServeHost:
    """What changes the running station: hot reload, the shadow's candidates and promotions, the
    watch (started here) whose queue labels become examples in the store, and the plant network's
    commands (the plant link, started here; stopped after the station, so that its last results
    are sent or spooled for the next run)."""
    host = ServeHost(control, station_file, bundle)
    watch = control.watch
    if watch is not None:
        watch.attach(control.running.station, control.add_example, host=host).start()
    if control.plant is not None:
        control.plant.attach(control.running.station, watch.drift if watch else None).start()
    control.reload = functools.partial(_reload, control, station_file, bundle)
    control.bundle_candidate = host.candidate
    return host


def _load(station_file: StationFile, bundle: Path) -> tuple[ItemPipeline, Enroller | None, HeadWatcher | None]:
    """A bundle as the station runs it: verified (and its signature, if the station file names a
    key), its runtime chosen, the store's current head in place, exits the controller has."""
    enrollers: list[Enroller] = []

    def store_head(loaded: Bundle) -> Classifier | None:  # the store's current head, if there is a store
        if station_file.station.store is None:
            return None
        store = store_for(station_file.file(station_file.station.store), loaded.manifest.backbone_sha256)
        enrollers.append(Enroller(loaded, store))
        return enrollers[0].classifier()

    try:
        pipeline = ItemPipeline.for_station(bundle, public_key=station_file.file(station_file.station.public_key),
                                            runtime=station_file.station.runtime,
                                            threads=station_file.station.threads,
                                            classifier=store_head)
        station_file.check_bundle(pipeline.manifest.input, pipeline.policy.exits, pipeline.policy.safe_exit)
    except BaseException:
        for enroller in enrollers:
            enroller.close()
        raise
    enroller = enrollers[0] if enrollers else None
    watcher = (HeadWatcher(enroller, pipeline, lambda c: station_file.check_exits(c.policy.exits,
                                                                                   c.policy.safe_exit))
               if enroller is not None else None)
    return pipeline, enroller, watcher


Loaded = tuple[ItemPipeline, Enroller | None, HeadWatcher | None]


def _load_checked(control: StationControl, station_file: StationFile, path: Path, force: bool) -> Loaded:
    """A bundle loaded as the station runs it (:func:`_load`), refused when it is older than the
    live one unless ``force``, and run once (warmed up) while the live one serves."""
    pipeline, enroller, watcher = loaded = _load(station_file, path)
    try:
        check_newer(pipeline.manifest, control.pipeline.manifest, force)
        spec = pipeline.manifest.input
        pipeline.embedder.embed_batch(np.zeros((spec.views, len(spec.channels), spec.size, spec.size), np.float32))
    except BaseException:
        if enroller is not None:
            enroller.close()
        raise
    return loaded


def _put_live(control: StationControl, loaded: Loaded) -> Loaded:
    """Items announced from now on are decided by ``loaded``; returns what was live."""
    pipeline, enroller, watcher = loaded
    with control.lock:
        control.running.station.reload(pipeline)
        previous = (control.pipeline, control.enroller, control.watcher)
        control.pipeline, control.enroller, control.watcher = pipeline, enroller, watcher
    return previous


def _reload(control: StationControl, station_file: StationFile, default: Path, path: str | None,
            force: bool = False) -> None:
    """Hot reload: the new bundle is loaded, checked and run (warmed up) while the old one
    serves; then items announced from then on are decided by it. Any fault leaves the old one.
    A bundle older than the live one is refused unless ``force``."""
    loaded = _load_checked(control, station_file, Path(path) if path else default, force)
    old = _put_live(control, loaded)[1]
    if control.watch is not None and control.watch.shadow is not None:
        control.watch.shadow.forget(f"bundle {loaded[0].version} was loaded")
    if old is not None and old is not loaded[1]:
        old.close()


class ServeHost:
    """The shadow's host in ``serve``: a head goes live in the control's pipeline (and the store's
    current version); a bundle with its own store and head watcher, as a reload puts it. The
    versions that were live stay loaded (a rollback puts them back) until the daemon ends."""

    def __init__(self, control: StationControl, station_file: StationFile, default: Path) -> None:
        self.control, self.station_file, self.default = control, station_file, default
        self._loaded: dict[int, Loaded] = {}  # by id(pipeline): bundles loaded for the shadow or taken out

    def live_head(self) -> Classifier:
        return self.control.pipeline.classifier

    def live_bundle(self) -> ItemPipeline:
        return self.control.pipeline

    def swap_head(self, classifier: Classifier) -> Classifier:
        with self.control.lock:
            return put_head_live(self.control.pipeline, self.control.enroller, classifier)

    def swap_bundle(self, pipeline: ItemPipeline) -> ItemPipeline:
        loaded = self._loaded.pop(id(pipeline), (pipeline, None, None))
        previous = _put_live(self.control, loaded)
        self._loaded[id(previous[0])] = previous
        return previous[0]

    def candidate(self, path: str | None, force: bool = False) -> BundleCandidate:
        """A bundle to shadow: verified and signed as the station requires, not older than the
        live one unless ``force``, warmed up."""
        loaded = _load_checked(self.control, self.station_file, Path(path) if path else self.default, force)
        self._loaded[id(loaded[0])] = loaded
        return BundleCandidate(loaded[0])

    def close(self) -> None:
        for _, enroller, _ in self._loaded.values():
            if enroller is not None and enroller is not self.control.enroller:
                enroller.close()
        self._loaded.clear()


def record_station(station_file: StationFile, out: Path, items: int | None = None, seconds: float | None = None,
                   stop: threading.Event | None = None, progress: bool = True) -> dict:
    """Record what the station's devices say and its cameras see, until ``items`` items have
    been announced, ``seconds`` have passed, or ``stop`` is set (Ctrl-C)."""
    stop = stop or threading.Event()
    ports = station_file.ports
    rig = station_file.build_rig()
    t0 = time.monotonic()
    writer = RecordingWriter(out, list(ports), t0)
    recorder = StreamRecorder(writer, ports, rig, bauds=station_file.bauds)
    done = threading.Event()
    thread = threading.Thread(target=recorder.run, args=(done,), name="recorder", daemon=True)
    thread.start()
    try:
        with tqdm(total=items, desc="recording", unit="item", disable=not progress, dynamic_ncols=True) as bar:
            while not stop.is_set():
                count = len(recorder.announced)
                bar.update(count - bar.n)
                if items is not None and count >= items:
                    time.sleep(0.3)  # the last item's readings and gate traffic
                    break
                if seconds is not None and time.monotonic() - t0 >= seconds:
                    break
                stop.wait(0.05)
    finally:
        done.set()
        thread.join(timeout=5)
        rig.close()
    duration = time.monotonic() - t0
    truth = [{"item_id": item, "announced_t": round(at - t0, 6), "label": None}
             for item, at in sorted(recorder.announced.items())]
    sensor = next((name for name in ports if name != "controller"), "none")
    writer.finish({"scenario": "recorded", "station_file": str(station_file.path), "devices": list(ports),
                   "sensor": sensor, "views": len(station_file.views), "labels": [], "items": len(truth),
                   "duration_s": round(duration, 3), "rig": [v.model_dump() for v in station_file.views],
                   "injected": {}, "silences": []}, truth)
    return {"recording": str(out), "items": len(truth), "captures": writer.captures,
            "serial_bytes": writer.serial_bytes, "seconds": round(duration, 1)}
