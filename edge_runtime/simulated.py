"""The station against the simulated line: real pseudo-terminals, real pyserial, real runtime."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from sortline.hardware.line_sim import LineConfig, SimulatedAvocadoLine
from sortline.hardware.referee import LineTally
from sortline.hardware.serial_link import Received, SerialLink

from .pipeline import Decision, ItemPipeline
from .report import summarize
from .station import Station, StationConfig, StationStats


@dataclass
class LineRun:
    tally: LineTally
    stats: StationStats
    decisions: list[Decision]
    truth: dict[int, int]
    wall_s: float
    summary: dict


def sort_on_simulated_line(
    pipeline: ItemPipeline,
    line_config: LineConfig,
    station_config: StationConfig = StationConfig(),
    event_log: Path | None = None,
    progress: bool = True,
) -> LineRun:
    """Sort ``line_config.items`` fruit and return what the controller and the station saw."""
    line = SimulatedAvocadoLine(line_config)
    inbox: queue.Queue[Received] = queue.Queue(maxsize=4096)
    # A simulated sensor waits 0.3 s after coming back before it talks: reopen well within it.
    controller = SerialLink(line.controller_port, "controller", inbox=inbox, reconnect_s=0.05)
    taps = SerialLink(line.tap_port, "taps", inbox=inbox, reconnect_s=0.05)
    stop = threading.Event()
    try:
        controller.open()
        taps.open()
        station = Station(pipeline, line.rig, controller, taps, station_config, event_log=event_log)
        worker = threading.Thread(target=station.run, args=(stop,), name="station", daemon=True)
        worker.start()
        start = time.monotonic()
        line.start()
        with tqdm(total=line_config.items, desc="sorting", unit="fruit", disable=not progress,
                  dynamic_ncols=True) as bar:
            while not line.wait_announced(0.25):
                bar.update(line.announced - bar.n)
            bar.update(line.announced - bar.n)
        tally = line.wait()
        wall_s = time.monotonic() - start
        stop.set()
        worker.join(timeout=10)
    finally:
        stop.set()
        controller.close()
        taps.close()
        line.stop()
    truth = {item_id: line.truth(item_id) for item_id in line.item_ids}
    manifest = pipeline.manifest
    summary = summarize(station.decisions, truth, manifest.labels, manifest.decision, tally, station.stats,
                        wall_s, faults=station.observed_faults())
    summary["faults_injected"] = {kind: tally.injected.get(kind, 0) for kind in summary["faults"]}
    return LineRun(tally, station.stats, station.decisions, truth, wall_s, summary)
