"""Hardware in the loop: the real station runtime against a simulated line or a recorded one,
through real pseudo-terminals and real pyserial, and recording a simulated line to disk."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from tqdm import tqdm

from sortline.edge_runtime.datasets import load_image_set
from sortline.edge_runtime.model.pipeline import Decision, ItemPipeline
from sortline.edge_runtime.plant import Plant
from sortline.edge_runtime.station import StationConfig, StationStats
from sortline.edge_runtime.station.observers import Observer
from sortline.edge_runtime.station.stats import REPORTED_ONLY
from sortline.edge_runtime.station.wiring import RunningStation
from sortline.edge_runtime.watch import StationWatch
from sortline.hardware.camera import FrameSource
from sortline.hardware.recording import Recording, RecordingError, RecordingWriter, StreamRecorder
from sortline.hardware.sim.avocado import AvocadoScenario
from sortline.hardware.sim.checkout import Catalog, CheckoutScenario
from sortline.hardware.sim.faults import FaultRates
from sortline.hardware.sim.line import LATE_VIEW_S, SILENCE_S, LineConfig, Scenario, SimulatedLine
from sortline.hardware.sim.process import CachedScenario, LineProcess
from sortline.hardware.sim.referee import LineTally
from sortline.hardware.sim.replay import ReplayedLine
from sortline.hardware.sim.shifts import Shift, ShiftError, shifted_scenario, truth_note

from .report import summarize

__all__ = ["Shift", "ShiftError", "make_scenario", "replay_recording", "sort_on_line", "sort_on_simulated_line"]
DISTINCT_ITEMS = 1000  # a simulated line renders at most this many distinct items, then repeats them
# How long the watch may take, once the line has passed, to catch up on the items it kept (the queue
# writes each unsure item's frames: 121 items took longer than 10 s on a loaded 2-core machine)
DRAIN_S = 60.0


class Line(Protocol):
    """A line a station can sort: simulated live, or replayed from a recording."""

    rig: FrameSource
    sensor: str  # the item sensor's device name ("taps", "scale")

    @property
    def item_ids(self) -> Sequence[int]: ...

    @property
    def announced(self) -> int: ...

    def port(self, device: str) -> str: ...

    def start(self) -> object: ...

    def wait_announced(self, timeout_s: float) -> bool: ...

    def wait(self) -> LineTally: ...

    def truth(self, item_id: int) -> int | None: ...

    def end_early(self) -> None: ...

    def stop(self) -> None: ...


@dataclass
class LineRun:
    tally: LineTally
    stats: StationStats
    decisions: list[Decision]
    truth: dict[int, int]
    wall_s: float
    summary: dict


def _follow(line: Line, what: str, progress: bool, stop: threading.Event | None) -> None:
    """A progress bar over the items announced, until the last one is; ``stop`` (SIGTERM, Ctrl-C)
    ends the line early."""
    with tqdm(total=len(line.item_ids), desc=what, unit="item", disable=not progress, dynamic_ncols=True) as bar:
        while not line.wait_announced(0.25):
            bar.update(line.announced - bar.n)
            if stop is not None and stop.is_set():
                line.end_early()  # the line's wait() returns once the items it had have passed
                break
        bar.update(line.announced - bar.n)


def sort_on_line(
    pipeline: ItemPipeline,
    line: Line,
    station_config: StationConfig = StationConfig(),
    event_log: Path | None = None,
    progress: bool = True,
    truth_names: Sequence[str] | None = None,
    beside: Callable[[RunningStation], Callable[[], None]] | None = None,
    stop: threading.Event | None = None,
    watch: StationWatch | None = None,
    observers: Sequence[Observer] = (),
    plant: Plant | None = None,
) -> LineRun:
    """Run a station on ``line`` until every item has passed; return what both sides saw.
    ``truth_names`` names the line's class indices when they are not the bundle's labels in
    order (a recording whose classes a bundle fitted elsewhere orders otherwise). ``beside``
    starts something next to the running station (the HTTP API of ``sortline demo --serve``)
    and returns what stops it. ``stop`` ends the line early: the items announced by then are
    decided and tallied, and the run reports them. ``watch`` (the drift watch and queue of
    unsure items) is offered every decided item; its alarms go to the event log, and its
    ``drift`` and ``queue`` to the summary; ``observers`` are offered them too (a benchmark's
    recorder). ``plant`` (MQTT, OPC UA) gets every item's result, and the summary its ``plant``."""
    decisions: list[Decision] = []
    stop_beside: Callable[[], None] | None = None
    ports = {"controller": line.port("controller"), line.sensor: line.port(line.sensor)}
    try:
        # A simulated device waits REOPEN_S (0.3 s) after coming back before it talks: reopen well within it.
        with RunningStation(pipeline, ports, line.rig, station_config, event_log=event_log, reconnect_s=0.05,
                            on_decision=decisions.append,
                            observers=[*([watch] if watch else []), *observers],
                            sinks=[plant] if plant else ()) as running:
            if watch is not None:
                watch.attach(running.station).start()
            if plant is not None:
                plant.attach(running.station, watch.drift if watch else None).start()
            if beside is not None:
                stop_beside = beside(running)
            start = time.monotonic()
            line.start()
            _follow(line, "sorting", progress, stop)
            tally = line.wait()
            wall_s = time.monotonic() - start
            if watch is not None:
                watch.drain(DRAIN_S)  # its alarms reach the event log before the station closes it
            running.stop()
            station = running.station
    finally:
        if stop_beside is not None:  # what runs beside may still read the plant link's results
            stop_beside()
        if plant is not None:
            plant.stop()
        if watch is not None:
            watch.stop()
        line.stop()
    truth = _truth(line, pipeline, truth_names)
    summary = _summary(pipeline, station, decisions, truth, tally, wall_s)
    summary.update(watch.summary() if watch is not None else StationWatch.off())
    if plant is not None:
        summary["plant"] = plant.summary()
    return LineRun(tally, station.stats, decisions, truth, wall_s, summary)


def _truth(line: Line, pipeline: ItemPipeline, truth_names: Sequence[str] | None) -> dict[int, int]:
    """Each item's true class index into the bundle's labels (len(labels): a class it lacks)."""
    truth = {i: label for i in line.item_ids if (label := line.truth(i)) is not None}
    if truth_names is not None:  # by name; a class the head does not know counts as a wrong answer
        labels = list(pipeline.labels)
        position = [labels.index(name) if name in labels else len(labels) for name in truth_names]
        truth = {i: position[label] if 0 <= label < len(position) else len(labels) for i, label in truth.items()}
    return truth


def _summary(pipeline: ItemPipeline, station, decisions: list[Decision], truth: dict[int, int], tally: LineTally,
             wall_s: float) -> dict:
    observed = station.observed_faults()
    summary = summarize(decisions, truth, pipeline.labels, pipeline.policy, tally, station.stats, wall_s,
                        faults={k: v for k, v in observed.items() if k not in REPORTED_ONLY})
    summary["faults_injected"] = {kind: tally.injected.get(kind, 0) for kind in summary["faults"]}
    summary["rejected_input"] = {k: observed[k] for k in REPORTED_ONLY}  # hostile or broken devices
    summary["runtime"] = f"{pipeline.embedder.name}/{pipeline.embedder.threads or 'default'}"
    return summary


def sort_on_simulated_line(pipeline: ItemPipeline, line_config: LineConfig, scenario: Scenario | None = None,
                           distinct: int = DISTINCT_ITEMS, progress: bool = True, **kwargs) -> LineRun:
    """The station against a simulated line whose devices run in their own process, with
    frames rendered before the start (items repeat every ``distinct`` ids; see
    :class:`CachedScenario`), so that the simulator can offer more than the station can take."""
    if not hasattr(scenario, "prerender"):  # a cached (or shifted) one may be shared by several runs
        scenario = CachedScenario(scenario or AvocadoScenario(line_config.seed), min(line_config.items, distinct))
    line = LineProcess(line_config, scenario)
    try:
        scenario.prerender(list(line.item_ids), progress=progress)
    except BaseException:
        line.stop()
        raise
    return sort_on_line(pipeline, line, progress=progress, **kwargs)


def replay_recording(pipeline: ItemPipeline, recording: str | Path, speed: str = "realtime", **kwargs) -> LineRun:
    opened = Recording.open(recording)
    recorded = tuple(opened.meta.get("labels", ()))
    if recorded and not set(recorded) & set(pipeline.labels):
        raise RecordingError(f"{recording}: its items are labeled {_short(recorded)}, the bundle predicts "
                             f"{_short(pipeline.labels)}: a bundle for this scenario is needed")
    return sort_on_line(pipeline, ReplayedLine(opened, speed=speed), truth_names=recorded or None, **kwargs)


def _short(labels: Sequence[str]) -> str:
    return ", ".join(labels[:4]) + (f", … ({len(labels)})" if len(labels) > 4 else "")


def make_scenario(name: str, seed: int, products: Path | None = None, product_count: int = 12,
                  max_products: int | None = None, shift: Shift | None = None,
                  distinct: int = DISTINCT_ITEMS) -> Scenario:
    """A scenario by name: "avocado", or "checkout" with products from an image folder or split
    file (one class a product), or ``product_count`` drawn ones. Products do not depend on
    ``seed``: worlds with other seeds show the same catalog. With ``shift``, its items change
    from the shift's item on (hardware/sim/shifts.py), each world's ``distinct`` items rendered
    once."""
    if shift is not None:
        return shifted_scenario(make_scenario(name, seed, products, product_count, max_products), shift, distinct)
    if name == "avocado":
        return AvocadoScenario(seed)
    if name != "checkout":
        raise ValueError(f"unknown scenario {name!r}: avocado or checkout")
    if products is None:
        return CheckoutScenario(Catalog.procedural(product_count), seed)
    images = load_image_set(products)
    return CheckoutScenario(Catalog.from_images(images.paths, images.labels, images.class_names, max_products), seed)


def simulated_line(items: int, seed: int, rate: float, lanes: int = 1, faults: float = 0.0) -> LineConfig:
    """A simulated line of ``items`` items at ``rate`` items per second over ``lanes`` lanes, with
    every kind of fault injected at ``faults`` (``sortline simulate``)."""
    return LineConfig(items=items, seed=seed, pitch_ms=1000 / rate, lanes=lanes, faults=FaultRates.uniform(faults))


def record_simulation(config: LineConfig, out: Path, scenario: Scenario | None = None, progress: bool = True) -> dict:
    """Run the simulated line with no station, recording what a station would hear and see."""
    line = SimulatedLine(config, scenario)
    devices = ["controller", line.sensor]
    t0 = time.monotonic()
    writer = RecordingWriter(out, devices, t0)
    recorder = StreamRecorder(writer, {d: line.port(d) for d in devices}, line.rig)
    stop = threading.Event()
    thread = threading.Thread(target=recorder.run, args=(stop,), name="recorder", daemon=True)
    try:
        thread.start()
        time.sleep(0.1)  # the recorder's ports are open before the first byte
        line.start()
        _follow(line, "recording", progress, None)
        tally = line.wait()
        duration = time.monotonic() - t0
    finally:
        stop.set()
        thread.join(timeout=5)
        line.stop()
    classes = line.scenario.classes
    truth = [{"item_id": i, "announced_t": round(line.announced_at(i) - t0, 6), "label": line.truth(i),
              "class": classes[line.truth(i)] if line.truth(i) < len(classes) else None,
              **truth_note(line.scenario, i)} for i in line.item_ids]
    injected = {k: v for k, v in tally.injected.items() if k != "unacked"}  # acks depend on the station
    faults = asdict(config.faults)
    writer.finish(
        {
            "scenario": line.scenario.name,
            "devices": devices,
            "sensor": line.sensor,
            "views": line.scenario.views,
            "labels": list(classes),
            "items": config.items,
            "seed": config.seed,
            "pitch_ms": config.pitch_ms,
            "deadline_ms": config.deadline_ms,
            "duration_s": round(duration, 3),
            "fault_rates": faults,
            "injected": injected,
            "silences": [round(t - t0, 6) for t in line.silences],
            "silence_ms": SILENCE_S * 1000,
            "late_view_ms": LATE_VIEW_S * 1000,
            "shift": str(line.scenario.shift) if hasattr(line.scenario, "shift") else None,
        },
        truth,
    )
    return {"recording": str(out), "items": config.items, "captures": writer.captures,
            "serial_bytes": writer.serial_bytes, "seconds": round(duration, 1), "injected": injected,
            "silences": len(line.silences)}
