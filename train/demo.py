"""``sortline demo``: the whole loop on a simulated station, an avocado line or a checkout.

render an unlabeled pool → pretrain (SimCLR) → export ONNX (parity-checked) → int8 with
calibration → fit the fusion head on the int8 embeddings of a small labeled set → bundle →
run the station against the simulated line over pseudo-terminals → summary.

The checkout's bundle is the way to train a checkout bundle: the same steps on rendered
products (drawn, or photos from an image folder) fused with the scale's weight.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from sortline.edge_runtime.cli.flags import until_signalled
from sortline.edge_runtime.errors import ConfigError
from sortline.edge_runtime.hil.adapt import RETRAIN_AFTER, Operator, adapt_on_line, rolling_mcc
from sortline.edge_runtime.hil.report import markdown
from sortline.edge_runtime.hil.runs import DISTINCT_ITEMS, LineRun, make_scenario, sort_on_simulated_line
from sortline.edge_runtime.model.bundle import (
    Bundle,
    DecisionPolicy,
    Manifest,
    public_key_path,
    sign_bundle,
    signing_key,
)
from sortline.edge_runtime.model.fusion import FusionSpec, LabeledItem
from sortline.edge_runtime.model.pipeline import ItemPipeline
from sortline.edge_runtime.model.preprocess import InputSpec
from sortline.edge_runtime.plant import Plant, local_plant
from sortline.edge_runtime.watch import DriftConfig, QueueConfig, StationWatch
from sortline.hardware.sim.faults import FaultRates
from sortline.hardware.sim.line import LineConfig, Scenario
from sortline.hardware.sim.shifts import Shift, shifted_scenario

from .plots import adapt_png, confusion_png, latency_png
from .retrain import desktop_retrain
from .sim_data import sim_items, unlabeled_views
from .station_fit import SAFE_EXIT, FitConfig, fit_station_bundle, stage

log = logging.getLogger(__name__)

# Where each quality class leaves the line. Exit 0 is the safe exit (manual inspection).
AVOCADO_EXITS = {"A": 1, "external": 2, "internal": 3, "both": 3}
CHECKOUT_EXIT = 1  # a recognised product is billed; exit 0 calls the attendant


def exits_for(scenario: Scenario) -> dict[str, int]:
    if scenario.name == "avocado":
        return AVOCADO_EXITS
    return {name: CHECKOUT_EXIT for name in scenario.classes}


@dataclass(frozen=True)
class DemoConfig:
    items: int = 500
    out: Path = Path("demo-out")
    scenario: str = "avocado"  # or "checkout"
    products: Path | None = None  # checkout: product photos (default: drawn products)
    product_count: int = 12  # checkout: drawn products
    pool_fruit: int = 2000  # unlabeled fruit for pretraining (×4 views)
    labeled_fruit: int = 600  # labeled fruit for the fusion head
    backbone: str = "resnet10"
    channels: tuple[str, ...] | None = None  # the model's input channels (default: all the scenario's)
    image_size: int = 64
    epochs: float = 6.0
    item_epochs: float | None = None  # the item stage (train/station_fit.py; None: its default, 30)
    sensor: str | None = None  # the item sensor the head fuses: the scenario's (None), or "none" (views alone)
    batch_size: int = 128
    max_pretrain_s: float | None = 360.0
    recipe: str | None = None  # pretrain with a named recipe (small-data) instead of plain SimCLR
    checkpoint: Path | None = None  # take this backbone (e.g. an earlier run's pretrained.ckpt) instead of pretraining
    pitch_ms: float = 100.0
    lanes: int = 1
    deadline_ms: int = 300
    min_confidence: float = 0.5
    faults: float = 0.0  # rate of every fault kind on the simulated line
    seed: int = 0
    progress: bool = True
    runtime: str = "auto"  # the station's inference runtime (edge_runtime/model/runtimes.py)
    threads: int | None = None  # None: measured
    key: Path | None = None  # sign the bundle with this private key (None: the default one, made if need be)
    serve_port: int | None = None  # --serve: the station's HTTP API and page on this port while it sorts
    shift: Shift | None = None  # the simulated line changes from an item on (hardware/sim/shifts.py)
    watch: bool = True  # the drift watch and the queue of unsure items
    queue: Path | None = None  # the queue's folder (None: OUT/queue)
    false_alarm_items: float = DriftConfig.items_between_false_alarms
    adapt: bool = False  # with a shift: the simulated operator labels, refits; the shadow promotes
    labels_per_hour: float = 3600.0  # the simulated operator's pace, in line time
    refit_every: int = 30  # labels between two refits
    retrain_after: int = RETRAIN_AFTER  # --adapt: labels before the desktop retrains the bundle (0: heads only)
    mqtt: str | None = None  # publish results to this MQTT broker (docs/integration.md)
    opcua: str | None = None  # serve an OPC UA server on this loopback endpoint


def demo_watch(cfg: DemoConfig, out: Path, on_label=None) -> StationWatch | None:
    """The demo station's drift watch and queue of unsure items (in OUT/queue), unless off."""
    if not cfg.watch:
        return None
    return StationWatch.build(DriftConfig(items_between_false_alarms=cfg.false_alarm_items),
                              QueueConfig(cfg.queue or out / "queue"), on_label=on_label)


def _sort_and_adapt(cfg: DemoConfig, bundle: Bundle, pipeline: ItemPipeline, line: LineConfig, scenario: Scenario,
                    events: Path, out: Path, stop: threading.Event,
                    labeled: Sequence[LabeledItem]) -> tuple[LineRun, dict]:
    retrain = desktop_retrain(out / "retrain", labeled, scenario.classes, out / "backbone.ckpt",
                              bundle.manifest.decision, cfg.seed, cfg.key)
    run, adapt = adapt_on_line(bundle, pipeline, line, scenario, out, cfg.shift.at_item,
                               Operator(cfg.labels_per_hour, cfg.refit_every, cfg.retrain_after),
                               DriftConfig(items_between_false_alarms=cfg.false_alarm_items),
                               retrain=retrain, public_key=public_key_path(signing_key(cfg.key)), event_log=events,
                               progress=cfg.progress, stop=stop)
    at, mcc = rolling_mcc(run.decisions, run.truth, pipeline.labels)
    adapt_png(at, mcc, adapt, out / "adapt.png")
    return run, adapt


def worlds(seed: int) -> dict[str, int]:
    """The seeds of the demo's three worlds: pretraining pool, labeled items, the line."""
    return {"pool": seed * 10 + 1, "labeled": seed * 10 + 2, "line": seed * 10 + 3}


@dataclass
class TrainedStation:
    """What the desktop half of the demo makes: the bundle, and the PyTorch backbone behind it."""

    bundle: Bundle
    backbone: torch.nn.Module
    scenarios: dict[str, Scenario]  # "pool", "labeled", "line": three worlds of one scenario
    labeled: list[LabeledItem]  # the items the head (and the item stage) learned from
    manifest: Manifest
    export_report: dict


def _fusion(scenario: Scenario, sensor: str | None) -> FusionSpec:
    """The scenario's sensor fused with the views, or (``sensor="none"``) the views alone: a
    station without a tap sensor or scale, which decides as soon as its views are embedded."""
    if sensor in (None, scenario.sensor):
        return FusionSpec.for_sensor(scenario.sensor, scenario.readings_expected)
    if sensor != "none":
        raise ValueError(f"sensor {sensor!r}: the {scenario.name} line has a {scenario.sensor!r} sensor, or 'none'")
    return FusionSpec.for_sensor("none", 0)


def train_station_bundle(cfg: DemoConfig, out: Path, timings: dict[str, float]) -> TrainedStation:
    """Render → pretrain → export (int8) → fusion head → bundle, in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    scenarios = {k: make_scenario(cfg.scenario, seed, cfg.products, cfg.product_count)
                 for k, seed in worlds(cfg.seed).items()}
    first = scenarios["pool"]
    classes = first.classes
    channels = cfg.channels or first.channels
    spec = InputSpec.for_channels(channels, cfg.image_size, views=first.views)
    t = time.perf_counter()

    # 1. Unlabeled pool, the edge's preprocessing applied once and kept as uint8.
    pool = unlabeled_views(scenarios["pool"], cfg.pool_fruit, spec, desc="render pool" if cfg.progress else None)
    t = stage("render_pool", timings, t)

    # 2-4. Pretrain, export int8, fit the fusion head on a labelled set, write the bundle: the
    # same path as `sortline fit` on a station's own items.
    labeled = list(sim_items(scenarios["labeled"], cfg.labeled_fruit,
                             desc="render labeled" if cfg.progress else None))
    fitted = fit_station_bundle(
        pool, labeled, classes, spec, _fusion(first, cfg.sensor),
        DecisionPolicy(exits_for(first), SAFE_EXIT, cfg.min_confidence),
        FitConfig(backbone=cfg.backbone, image_size=cfg.image_size, epochs=cfg.epochs, item_epochs=cfg.item_epochs,
                  batch_size=cfg.batch_size,
                  max_pretrain_s=cfg.max_pretrain_s, seed=cfg.seed, progress=cfg.progress, recipe=cfg.recipe,
                  checkpoint=cfg.checkpoint),
        out, out / "bundle", f"{cfg.scenario}-{cfg.recipe or cfg.backbone + '-simclr'}", timings)
    bundle, backbone, manifest = fitted.bundle, fitted.backbone, fitted.manifest
    return TrainedStation(bundle, backbone, scenarios, labeled, manifest, fitted.export_report)


def _sort_and_serve(cfg: DemoConfig, bundle: Bundle, pipeline: ItemPipeline, line: LineConfig, scenario: Scenario,
                    events: Path, out: Path, stop: threading.Event, plant: Plant | None) -> LineRun:
    from sortline.edge_runtime.daemon.api import start_api
    from sortline.edge_runtime.daemon.config import ApiSettings
    from sortline.edge_runtime.learning.enroll import Enroller, HeadWatcher

    api = ApiSettings(port=cfg.serve_port, token=os.environ.get("SORTLINE_API_TOKEN") or None)
    print(f"station API and page on http://127.0.0.1:{cfg.serve_port}/ while {cfg.items} items pass "
          f"(Ctrl-C or SIGTERM stops; changes need SORTLINE_API_TOKEN{'' if api.token else ', which is not set'})",
          flush=True)
    with Enroller(bundle, out / "enroll.sqlite") as enroller:
        watch = demo_watch(cfg, out, on_label=enroller.add)  # queue labels become enrolled examples

        def serve_beside(running):  # the API of the running station, with its enrollment
            return start_api(api, running, pipeline, enroller, HeadWatcher(enroller, pipeline), watch=watch).stop

        return sort_on_simulated_line(pipeline, line, scenario, event_log=events, progress=cfg.progress,
                                      beside=serve_beside, stop=stop, watch=watch, plant=plant)


def run_demo(cfg: DemoConfig) -> dict:
    if cfg.adapt and (cfg.shift is None or not cfg.watch or cfg.serve_port is not None):
        raise ConfigError("--adapt needs a --shift and the watch, and runs without --serve")
    if cfg.adapt and (cfg.mqtt or cfg.opcua):
        raise ConfigError("--adapt runs without --mqtt and --opcua")
    try:  # before the training: a wrong URL is said at once
        plant = local_plant(cfg.mqtt, cfg.opcua, Path(cfg.out) / "mqtt-spool")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    trained = train_station_bundle(cfg, out, timings)
    bundle, scenarios, manifest = trained.bundle, trained.scenarios, trained.manifest
    t = time.perf_counter()

    # 5. The station on the simulated line.
    line = LineConfig(items=cfg.items, seed=worlds(cfg.seed)["line"], pitch_ms=cfg.pitch_ms,
                      deadline_ms=cfg.deadline_ms, lanes=cfg.lanes, faults=FaultRates.uniform(cfg.faults))
    events = out / "events.jsonl"
    events.unlink(missing_ok=True)
    # The station runs the bundle as `sortline serve` does: signed, its signature checked.
    key = signing_key(cfg.key)
    bundle = sign_bundle(bundle.root, key)
    public_key = public_key_path(key)
    pipeline = ItemPipeline.for_station(bundle, threads=cfg.threads, runtime=cfg.runtime, public_key=public_key)
    on_line = scenarios["line"]
    if cfg.shift is not None:  # up to 5,000 distinct items: a repeat of a reference item would hide novelty
        on_line = shifted_scenario(on_line, cfg.shift, min(cfg.items, 5 * DISTINCT_ITEMS))
    # SIGINT or SIGTERM (a service manager's stop) ends the line early, as `sortline serve` stops:
    # the items already announced are decided, and the summary is written.
    adapt = None
    with until_signalled() as stop:
        if cfg.adapt:
            run, adapt = _sort_and_adapt(cfg, bundle, pipeline, line, on_line, events, out, stop, trained.labeled)
        elif cfg.serve_port is None:
            run = sort_on_simulated_line(pipeline, line, on_line, event_log=events, progress=cfg.progress,
                                         stop=stop, watch=demo_watch(cfg, out), plant=plant)
        else:  # the daemon's HTTP side beside the simulated line, enrollment into out/enroll.sqlite
            run = _sort_and_serve(cfg, bundle, pipeline, line, on_line, events, out, stop, plant)
    t = stage("sort", timings, t)

    summary = {
        **run.summary,
        "bundle": str(bundle.root),
        "signed_with": str(public_key),
        "pretrain": manifest.metrics["pretrain"],
        "export": trained.export_report,
        "seconds": timings,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        **({"adapt": adapt} if adapt is not None else {}),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    title = "simulated avocado line" if cfg.scenario == "avocado" else "simulated checkout"
    (out / "summary.md").write_text(f"# sortline demo: {title}\n\n{markdown(summary)}")
    confusion_png(run.summary["confusion"]["matrix"], run.summary["confusion"]["labels"], out / "confusion.png",
                  f"{run.summary['items']} fruit, accuracy {run.summary['accuracy']}, MCC {run.summary['mcc']}")
    latency_png(run.stats.latency_ms, run.stats.compute_ms, cfg.deadline_ms, out / "latency.png")
    return summary
