"""A station's bundle from its own items: pretrain (or take a backbone) → export int8 → fit the
fusion head on the labelled items → a verified bundle. ``sortline fit`` runs it on recordings
and item folders; ``sortline demo`` on rendered items.

The head is fitted on whatever the data has: the views (pooled by mean and max when there are
several), NIR where every view has it, and the sensor's readings (taps or weights) matched to
each item as the station matches them.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sortline.edge_runtime.labelling.book import ItemData, LabelError
from sortline.edge_runtime.learning.enroll import EXAMPLES_FILE, write_examples
from sortline.edge_runtime.model.bundle import Bundle, DecisionPolicy, Manifest, write_bundle
from sortline.edge_runtime.model.choice import CHECK_FILE, CHECK_ITEMS, write_check_set
from sortline.edge_runtime.model.fusion import FusionSpec, LabeledItem, fit_fusion_head, sensor_features
from sortline.edge_runtime.model.head import LogisticHead
from sortline.edge_runtime.model.preprocess import InputSpec, preprocess_views
from sortline.export.build import ExportConfig, export_model

from .augment import MultiChannelAugment
from .backbones import Backbone, build_backbone
from .checkpoint import load_checkpoint, save_checkpoint
from .data import UNLABELED, ItemsDataset, TrainingSet, ViewsDataset, model_input, views_to_uint8
from .loop import TrainConfig, train
from .methods import build_method
from .methods.supervised import ItemClassifier
from .plots import loss_png
from .pretraining import PretrainConfig, run_pretrain

log = logging.getLogger(__name__)
SAFE_EXIT = 0
DEFAULT_ITEM_EPOCHS = 30.0
SENSOR_DROPOUT = 0.3  # the item stage drops an item's sensor features this often


@dataclass(frozen=True)
class FitConfig:
    backbone: str = "resnet10"
    image_size: int = 64
    epochs: float = 6.0  # SimCLR over every item's views (0: keep the random initialisation)
    batch_size: int = 128
    max_pretrain_s: float | None = 360.0
    # The item stage: epochs over the labelled items (0: none; None: DEFAULT_ITEM_EPOCHS). Its
    # linear layer, on the pooled views and the sensor's features, is the station's head.
    item_epochs: float | None = None
    item_seconds: float | None = 150.0  # and at most this long
    checkpoint: Path | None = None  # a backbone to take instead of pretraining one
    recipe: str | None = None  # pretrain with this recipe (train/recipes.py) within max_pretrain_s
    min_confidence: float = 0.5
    seed: int = 0
    progress: bool = True


@dataclass
class FittedStation:
    bundle: Bundle
    backbone: torch.nn.Module
    manifest: Manifest
    export_report: dict


def stage(name: str, timings: dict[str, float], start: float) -> float:
    now = time.perf_counter()
    timings[name] = round(now - start, 1)
    log.info("%s done in %.1f s", name, now - start)
    return now


def default_policy(classes: Sequence[str], min_confidence: float = 0.5) -> DecisionPolicy:
    """Each class its own exit (1, 2, …), exit 0 the safe exit."""
    return DecisionPolicy({c: i + 1 for i, c in enumerate(classes)}, SAFE_EXIT, min_confidence)


def fit_station_bundle(pool: np.ndarray, labeled: Sequence[LabeledItem], classes: Sequence[str], spec: InputSpec,
                       fusion: FusionSpec, policy: DecisionPolicy, cfg: FitConfig, work: Path, out: Path,
                       name: str, timings: dict[str, float], metrics: dict | None = None,
                       loaded: tuple | None = None) -> FittedStation:
    """``pool``: every view to pretrain on (``N×C×S×S`` uint8, through the edge preprocessing);
    ``labeled``: the items the head is fitted on; ``loaded``: ``cfg.checkpoint`` already read.
    Writes ``work/backbone.ckpt`` (when it pretrains or trains; the pretrained backbone is kept as
    ``work/pretrained.ckpt`` when the item stage changes it), ``work/pretrain.{csv,png}`` and the bundle
    ``out``."""
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    if cfg.checkpoint is not None:
        backbone, ckpt_spec, meta = loaded or load_checkpoint(cfg.checkpoint)
        if tuple(ckpt_spec.channels) != tuple(spec.channels):
            raise LabelError(f"{cfg.checkpoint}: a backbone for channels {ckpt_spec.channels}; the items have "
                             f"{spec.channels}")
        spec = dataclasses.replace(ckpt_spec, views=spec.views)
        pretrain = {"method": "given", "checkpoint": str(cfg.checkpoint), **{k: meta.get(k) for k in ("method",)}}
    elif cfg.recipe is not None:
        recipe_cfg = PretrainConfig.from_recipe(cfg.recipe, work / "pool", out=work / "backbone.ckpt",
                                                image_size=spec.size, max_seconds=cfg.max_pretrain_s,
                                                seed=cfg.seed, progress=cfg.progress)
        report = run_pretrain(recipe_cfg, TrainingSet(pool, np.full(len(pool), UNLABELED), (), spec))
        backbone, _, _ = load_checkpoint(work / "backbone.ckpt")
        pretrain = {**{k: v for k, v in report.items() if k not in ("checkpoint", "state")}, "pool_views": len(pool),
                    "method": f"recipe {cfg.recipe} ({recipe_cfg.method}, {recipe_cfg.backbone})"}
    else:
        torch.manual_seed(cfg.seed)
        backbone = build_backbone(cfg.backbone, in_channels=len(spec.channels))
        model = build_method("simclr", backbone)
        result = train(
            model,
            ViewsDataset(pool, MultiChannelAugment(spec), seed=cfg.seed),
            TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed,
                        max_seconds=cfg.max_pretrain_s, log_path=work / "pretrain.csv"),
            progress=cfg.progress,
        )
        backbone = model.backbone.cpu().to(memory_format=torch.contiguous_format).eval()
        save_checkpoint(work / "backbone.ckpt", backbone, spec, method="simclr", train=result.to_dict())
        if result.losses:
            loss_png(result.losses, result.embedding_std, work / "pretrain.png", f"SimCLR {cfg.backbone}")
        pretrain = {"method": "simclr" if result.steps else "none (random initialisation)",
                    "pool_views": len(pool), **result.to_dict()}
    t = stage("pretrain", timings, t)
    fusion = fusion.with_fill(np.stack([sensor_features(item.readings, fusion) for item in labeled]))
    epochs = DEFAULT_ITEM_EPOCHS if cfg.item_epochs is None else cfg.item_epochs
    item_stage = train_on_items(backbone, labeled, classes, spec, dataclasses.replace(cfg, item_epochs=epochs),
                                work, fusion)
    if item_stage.report["ran"]:  # the checkpoint beside the bundle is the backbone the bundle holds
        if (work / "backbone.ckpt").is_file():  # and the pretrained one stays, for another stage (--checkpoint)
            shutil.copyfile(work / "backbone.ckpt", work / "pretrained.ckpt")
        save_checkpoint(work / "backbone.ckpt", backbone, spec, method=f"{pretrain['method']} + item stage",
                        item_stage=item_stage.report)
    t = stage("item_stage", timings, t)

    # Export (parity-checked against PyTorch), int8 with calibration views from the pool.
    rng = np.random.default_rng(cfg.seed)
    sample = model_input(pool[rng.choice(len(pool), size=min(256, len(pool)), replace=False)], spec)
    exported = export_model(backbone, spec, sample, work, ExportConfig(precision="int8", seed=cfg.seed))
    t = stage("export", timings, t)

    # The fusion head: the item stage's, else fitted on the int8 embeddings of the labelled items.
    fitted = fit_fusion_head(exported.embedder, labeled, classes, fusion, seed=cfg.seed, head=item_stage.head)
    counts = np.bincount([item.label for item in labeled], minlength=len(classes))
    manifest = Manifest(
        name=name, input=spec, embedding_dim=backbone.embedding_dim, labels=tuple(classes), decision=policy,
        fusion=fitted.fusion,
        metrics={**(metrics or {}), "pretrain": pretrain, "item_stage": item_stage.report, "export": exported.report,
                 "head_training": {classes[i]: int(n) for i, n in enumerate(counts)}},
    )
    check = write_check_set(work / CHECK_FILE, np.concatenate([preprocess_views(item.views, spec)
                                                               for item in _whole_items(labeled, spec)]))
    examples = write_examples(work / EXAMPLES_FILE, fitted.features, fitted.targets, classes, seed=cfg.seed,
                              trained_on=bool(item_stage.report["ran"]))
    bundle = write_bundle(out, manifest, exported.path, fitted.head,
                          extra_files={CHECK_FILE: check, EXAMPLES_FILE: examples})
    stage("head_and_bundle", timings, t)
    return FittedStation(bundle, backbone, manifest, exported.report)


@dataclass(frozen=True)
class ItemStage:
    """What the item stage did (``report``) and, where it ran, its linear layer as the station's
    head on the fused features (views pooled, then the standardised sensor features)."""

    report: dict
    head: LogisticHead | None = None


def train_on_items(backbone: Backbone, labeled: Sequence[LabeledItem], classes: Sequence[str], spec: InputSpec,
                   cfg: FitConfig, work: Path, fusion: FusionSpec | None = None) -> ItemStage:
    """The item stage: the backbone learns from the labelled items what tells their classes apart
    (:class:`ItemClassifier`: all of an item's views, pooled as the station pools them, and with a
    ``fusion`` that has a sensor, the item's sensor features), for ``cfg.item_epochs`` over them
    (at most ``cfg.item_seconds``), classes sampled evenly. Changes ``backbone`` in place.

    ``fusion`` is the station's (its ``sensor_fill`` set: a missing reading is filled as the
    station fills it); the sensor features are standardised over the items, and dropped for an
    item with probability ``SENSOR_DROPOUT`` while training, as a failed sensor drops them."""
    whole = [item for item in labeled if len(item.views) == spec.views]
    present = {item.label for item in whole}
    if not cfg.item_epochs or len(present) < 2:
        return ItemStage({"ran": False, "why": "off (item_epochs 0)" if not cfg.item_epochs else
                          f"{len(present)} class(es) among the {len(whole)} items with all {spec.views} views"})
    fusion = fusion or FusionSpec.for_sensor("none", 0)
    items = np.stack([views_to_uint8(item.views, spec) for item in whole])
    labels = np.array([item.label for item in whole])
    sensors, mean, scale = _standardised_sensors(whole, fusion)
    torch.manual_seed(cfg.seed)
    model = ItemClassifier(backbone, len(classes), fusion.view_pools, sensors.shape[1])
    dataset = ItemsDataset(items, labels, spec, seed=cfg.seed + 7, sensors=sensors if sensors.shape[1] else None,
                           sensor_dropout=SENSOR_DROPOUT)
    result = train(model, dataset,
                   TrainConfig(epochs=cfg.item_epochs, batch_size=min(32, len(items)), lr=1e-3, seed=cfg.seed,
                               balanced=True, max_seconds=cfg.item_seconds, log_path=work / "items.csv"),
                   progress=cfg.progress, desc="item stage")
    backbone.cpu().to(memory_format=torch.contiguous_format).eval()
    return ItemStage({"ran": True, "items": len(items), "views": spec.views, "sensor": fusion.sensor,
                      "sensor_dropout": SENSOR_DROPOUT if sensors.shape[1] else 0.0, **result.to_dict()},
                     stage_head(model, classes, mean, scale))


def stage_head(model: ItemClassifier, classes: Sequence[str], mean: np.ndarray, scale: np.ndarray) -> LogisticHead:
    """The stage's linear layer as a station head on the fused features: the pooled views as they
    are, the sensor features standardised by ``mean`` and ``scale`` as the stage saw them."""
    coef, intercept = model.head_arrays()
    views = coef.shape[1] - len(mean)
    return LogisticHead(labels=tuple(classes), mean=np.concatenate([np.zeros(views, np.float32), mean]),
                        scale=np.concatenate([np.ones(views, np.float32), scale]), coef=coef, intercept=intercept)


def _standardised_sensors(items: Sequence[LabeledItem], fusion: FusionSpec) -> tuple[np.ndarray, ...]:
    """The items' sensor features, a missing one filled as ``fusion`` fills it (its mean over the
    items where ``fusion`` has no fill yet), standardised as the head standardises its features (a
    feature that never varies keeps scale 1): ``(N×F, mean, scale)``."""
    if not fusion.sensor_features:
        return np.zeros((len(items), 0), np.float32), np.zeros(0, np.float32), np.zeros(0, np.float32)
    rows = np.stack([sensor_features(item.readings, fusion) for item in items]).astype(np.float64)
    fill = np.asarray(fusion.sensor_fill) if fusion.sensor_fill else np.nanmean(rows, axis=0)
    rows = np.where(np.isnan(rows), fill, rows)
    mean, std = rows.mean(axis=0), rows.std(axis=0)
    scale = np.where(std > 0, std, 1.0)
    return ((rows - mean) / scale).astype(np.float32), mean.astype(np.float32), scale.astype(np.float32)


def _whole_items(items: Sequence[LabeledItem], spec: InputSpec) -> list[LabeledItem]:
    """Up to CHECK_ITEMS items with every view, for the bundle's runtime check set."""
    whole = [item for item in items if len(item.views) == spec.views]
    if not whole:
        raise LabelError(f"no item has all {spec.views} views; the bundle's check set needs some")
    return whole[:CHECK_ITEMS]


def fit_items(data: ItemData, out: Path, cfg: FitConfig, policy: DecisionPolicy | None = None,
              timings: dict[str, float] | None = None, name: str = "station") -> FittedStation:
    """``sortline fit``: every item's views pretrain the backbone; the labelled ones fit the head."""
    labelled = [item for item in data.items if item.label is not None]
    classes = tuple(policy.exits) if policy is not None else tuple(sorted({item.label for item in labelled}))
    if unknown := sorted({item.label for item in labelled} - set(classes)):
        raise LabelError(f"items are labelled {unknown}, which the policy gives no exit")
    present = {item.label for item in labelled}
    if len(present) < 2:
        raise LabelError(f"{len(labelled)} labelled items of {len(present)} class(es): a head needs at least two "
                         "classes (sortline label REC gives labels)")
    if missing := [c for c in classes if c not in present]:
        raise LabelError(f"the policy names {missing}, which no labelled item has")
    loaded = load_checkpoint(cfg.checkpoint) if cfg.checkpoint is not None else None  # once: its size, its model
    spec = InputSpec.for_channels(data.channels, loaded[1].size if loaded else cfg.image_size, views=data.views)
    pool = np.concatenate([views_to_uint8(item.views, spec) for item in data.items])
    index = {c: i for i, c in enumerate(classes)}
    labeled = [LabeledItem(index[item.label], item.views, item.readings) for item in labelled]
    fusion = FusionSpec.for_sensor(data.sensor, data.readings_expected,
                                   view_pools=("mean", "max") if data.views > 1 else ("mean",))
    policy = policy or default_policy(classes, cfg.min_confidence)
    return fit_station_bundle(pool, labeled, classes, spec, fusion, policy, cfg, out.parent / f"{out.name}.train",
                              out, name, timings if timings is not None else {},
                              metrics={"items": len(data.items), "labelled": len(labelled)}, loaded=loaded)
