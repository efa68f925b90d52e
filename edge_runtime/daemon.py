"""The station as a daemon (``sortline serve``) and as a recorder (``sortline record``), both
configured by a station file (:mod:`sortline.edge_runtime.config`)."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from sortline.hardware.recording import RecordingWriter, StreamRecorder

from .bundle import Bundle
from .config import ConfigError, StationFile
from .enroll import Enroller, HeadWatcher
from .pipeline import Classifier, ItemPipeline
from .station import StationConfig, StationStats
from .station.wiring import RunningStation

log = logging.getLogger(__name__)


def serve(station_file: StationFile, stop: threading.Event, bundle: Path | None = None,
          config: StationConfig = StationConfig(),
          ready: threading.Event | None = None) -> tuple[StationStats, dict[str, int]]:
    """Run the station until ``stop`` is set (``ready`` is set once it takes items); return its
    counters and the faults it saw. If the
    station's loop dies, this raises :class:`StationError` at once (the daemon then exits
    non-zero, and systemd restarts it) instead of staying alive and idle."""
    bundle = bundle or station_file.bundle
    if bundle is None:
        raise ConfigError(f"{station_file.path}: no station.bundle, and none given")
    enrollers: list[Enroller] = []

    def store_head(loaded: Bundle) -> Classifier | None:  # the store's current head, if there is a store
        if station_file.store is None:
            return None
        enrollers.append(Enroller(loaded, station_file.store))
        return enrollers[0].classifier()

    pipeline = ItemPipeline.for_station(bundle, public_key=station_file.public_key, runtime=station_file.runtime,
                                        threads=station_file.threads, classifier=store_head)
    station_file.check_exits(pipeline.policy.exits, pipeline.policy.safe_exit)
    watcher = (HeadWatcher(enrollers[0], pipeline, lambda c: station_file.check_exits(c.policy.exits,
                                                                                       c.policy.safe_exit))
               if enrollers else None)
    config = dataclasses.replace(config, limits=station_file.reading_limits())
    rig = station_file.build_rig()
    try:
        with RunningStation(pipeline, station_file.ports, rig, config, event_log=station_file.event_log,
                            bauds=station_file.bauds) as running:
            log.info("serving %s with bundle %s, head version %d", station_file.path, pipeline.bundle.version,
                     pipeline.classifier.version)
            if ready is not None:  # links open, model loaded and checked: items can come
                ready.set()
            while not stop.is_set() and not running.stopped.is_set():
                stop.wait(0.2)
                if watcher is not None:
                    watcher.poll()
            stats = running.stop()
            return stats, running.station.observed_faults()
    finally:
        rig.close()
        for enroller in enrollers:
            enroller.close()


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
                   "duration_s": round(duration, 3), "rig": asdict(station_file)["views"],
                   "injected": {}, "silences": []}, truth)
    return {"recording": str(out), "items": len(truth), "captures": writer.captures,
            "serial_bytes": writer.serial_bytes, "seconds": round(duration, 1)}
