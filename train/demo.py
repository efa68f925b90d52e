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
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sortline.edge_runtime.bundle import Bundle, DecisionPolicy, Manifest, write_bundle
from sortline.edge_runtime.enroll import EXAMPLES_FILE, write_examples
from sortline.edge_runtime.fusion import FusionSpec, fit_fusion_head
from sortline.edge_runtime.hil import make_scenario, sort_on_simulated_line
from sortline.edge_runtime.pipeline import ItemPipeline
from sortline.edge_runtime.preprocess import InputSpec, preprocess_views
from sortline.edge_runtime.report import markdown
from sortline.edge_runtime.runtimes import CHECK_FILE, CHECK_ITEMS, write_check_set
from sortline.export.build import ExportConfig, export_model
from sortline.hardware.sim.faults import FaultRates
from sortline.hardware.sim.line import LineConfig, Scenario

from .augment import MultiChannelAugment
from .backbones import build_backbone
from .checkpoint import save_checkpoint
from .data import ViewsDataset, model_input
from .loop import TrainConfig, train
from .methods import build_method
from .plots import confusion_png, latency_png, loss_png
from .sim_data import sim_items, unlabeled_views

log = logging.getLogger(__name__)

# Where each quality class leaves the line. Exit 0 is the safe exit (manual inspection).
AVOCADO_EXITS = {"A": 1, "external": 2, "internal": 3, "both": 3}
SAFE_EXIT = 0
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
    batch_size: int = 128
    max_pretrain_s: float | None = 360.0
    pitch_ms: float = 100.0
    lanes: int = 1
    deadline_ms: int = 300
    min_confidence: float = 0.5
    faults: float = 0.0  # rate of every fault kind on the simulated line
    seed: int = 0
    progress: bool = True
    runtime: str = "auto"  # the station's inference runtime (edge_runtime/runtimes.py)
    threads: int | None = None  # None: measured


def _stage(name: str, timings: dict[str, float], start: float) -> float:
    now = time.perf_counter()
    timings[name] = round(now - start, 1)
    log.info("%s done in %.1f s", name, now - start)
    return now


def worlds(seed: int) -> dict[str, int]:
    """The seeds of the demo's three worlds: pretraining pool, labeled items, the line."""
    return {"pool": seed * 10 + 1, "labeled": seed * 10 + 2, "line": seed * 10 + 3}


@dataclass
class TrainedStation:
    """What the desktop half of the demo makes: the bundle, and the PyTorch backbone behind it."""

    bundle: Bundle
    backbone: torch.nn.Module
    scenarios: dict[str, Scenario]  # "pool", "labeled", "line": three worlds of one scenario
    manifest: Manifest
    export_report: dict


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
    t = _stage("render_pool", timings, t)

    # 2. Pretrain.
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.backbone, in_channels=len(spec.channels))
    model = build_method("simclr", backbone)
    result = train(
        model,
        ViewsDataset(pool, MultiChannelAugment(spec), seed=cfg.seed),
        TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                    max_seconds=cfg.max_pretrain_s, log_path=out / "pretrain.csv"),
        progress=cfg.progress,
    )
    backbone = model.backbone.cpu().to(memory_format=torch.contiguous_format).eval()
    save_checkpoint(out / "backbone.ckpt", backbone, spec, method="simclr", train=result.to_dict())
    if result.losses:
        loss_png(result.losses, result.embedding_std, out / "pretrain.png", f"SimCLR {cfg.backbone}")
    t = _stage("pretrain", timings, t)

    # 3. Export (parity-checked against PyTorch), int8 with calibration views from the pool.
    rng = np.random.default_rng(cfg.seed)
    sample = model_input(pool[rng.choice(len(pool), size=min(256, len(pool)), replace=False)], spec)
    exported = export_model(backbone, spec, sample, out, ExportConfig(precision="int8", seed=cfg.seed))
    t = _stage("export", timings, t)

    # 4. Fusion head on the int8 embeddings of the labeled set, then the bundle.
    labeled = list(sim_items(scenarios["labeled"], cfg.labeled_fruit,
                             desc="render labeled" if cfg.progress else None))
    fusion = FusionSpec.for_sensor(first.sensor, first.readings_expected)
    fitted = fit_fusion_head(exported.embedder, labeled, classes, fusion, seed=cfg.seed)
    head, fusion = fitted.head, fitted.fusion
    labeled_counts = np.bincount([item.label for item in labeled], minlength=len(classes))
    manifest = Manifest(
        name=f"{cfg.scenario}-{cfg.backbone}-simclr",
        input=spec,
        embedding_dim=backbone.embedding_dim,
        labels=classes,
        decision=DecisionPolicy(exits_for(first), SAFE_EXIT, cfg.min_confidence),
        fusion=fusion,
        metrics={
            "pretrain": {"method": "simclr" if result.steps else "none (random initialisation)",
                         "pool_views": len(pool), **result.to_dict()},
            "export": exported.report,
            "head_training": {classes[i]: int(n) for i, n in enumerate(labeled_counts)},
        },
    )
    check = write_check_set(out / CHECK_FILE, np.concatenate([preprocess_views(item.views, spec)
                                                              for item in labeled[:CHECK_ITEMS]]))
    examples = write_examples(out / EXAMPLES_FILE, fitted.features, fitted.targets, classes, seed=cfg.seed)
    bundle = write_bundle(out / "bundle", manifest, exported.path, head,
                          extra_files={CHECK_FILE: check, EXAMPLES_FILE: examples})
    _stage("head_and_bundle", timings, t)
    return TrainedStation(bundle, backbone, scenarios, manifest, exported.report)


def run_demo(cfg: DemoConfig) -> dict:
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
    pipeline = ItemPipeline.for_station(bundle, threads=cfg.threads, runtime=cfg.runtime)
    run = sort_on_simulated_line(pipeline, line, scenarios["line"], event_log=events,
                                 progress=cfg.progress)
    t = _stage("sort", timings, t)

    summary = {
        **run.summary,
        "bundle": str(bundle.root),
        "pretrain": manifest.metrics["pretrain"],
        "export": trained.export_report,
        "seconds": timings,
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    title = "simulated avocado line" if cfg.scenario == "avocado" else "simulated checkout"
    (out / "summary.md").write_text(f"# sortline demo: {title}\n\n{markdown(summary)}")
    confusion_png(run.summary["confusion"]["matrix"], run.summary["confusion"]["labels"], out / "confusion.png",
                  f"{run.summary['items']} fruit, accuracy {run.summary['accuracy']}, MCC {run.summary['mcc']}")
    latency_png(run.stats.latency_ms, run.stats.compute_ms, cfg.deadline_ms, out / "latency.png")
    return summary
