"""``sortline pretrain``: any method on any training source, to a backbone checkpoint.

Writes ``OUT`` (the backbone, see :mod:`sortline.train.checkpoint`), ``OUT.csv`` (per-step
loss, learning rate, embedding std, images/s), ``OUT.json`` (the run's summary) and
``OUT.state.pt`` (the training state; ``--resume`` continues from it exactly). A recipe's label
stage, where the data has labels, logs to ``OUT.labels.csv`` and keeps its state in
``OUT.labels.state.pt``; a resumed run resumes the self-supervised stage and then runs the label
stage from its start.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from sortline.edge_runtime.datasets import DatasetError
from sortline.edge_runtime.errors import SortlineError
from sortline.hardware.files import atomic_file

from .augment import AugmentConfig, MultiChannelAugment
from .backbones import build_backbone
from .checkpoint import load_checkpoint, save_checkpoint
from .data import (
    UNLABELED,
    ResolutionSchedule,
    TrainingSet,
    ViewsDataset,
    batches_per_epoch,
    load_training_set,
    read_pairs,
)
from .loop import Replan, TrainConfig, TrainResult, train
from .losses import ColourPredictionLoss, labels_from_pairs
from .methods import METHODS, build_method
from .pseudolabels import can_label, pseudo_label
from .recipe_book import get_recipe
from .recipes import (
    RUN_RATE_MARGIN,
    Plan,
    last_phase_start,
    logged_rate,
    plan_for,
    replan_step,
    replanned_stage_total,
    replanned_total,
    stage_replan_step,
)

log = logging.getLogger(__name__)


class PretrainError(SortlineError, ValueError):
    """A pretraining run asked for something it cannot do (a method without what it needs)."""


@dataclass(frozen=True)
class PretrainConfig:
    method: str
    data: Path
    out: Path = Path("backbone.ckpt")
    backbone: str = "resnet10"
    pool: str = "avg"
    weights: Path | None = None
    epochs: float = 10.0
    batch_size: int = 128
    image_size: int = 64
    lr: float = 2e-3
    max_seconds: float | None = None
    seed: int = 0
    augment: str = "colour-safe"
    solarize: float | None = None
    channel_shuffle: float | None = None
    tile_shuffle: float | None = None
    balanced: bool = False
    pairs: Path | None = None  # supcon/distill: "image_a, image_b" lines instead of labels
    teacher: Path | None = None  # distill: the teacher's checkpoint
    unlabeled: Path | None = None  # distill, a recipe's label stage: extra images for the teacher to label
    negatives: Path | None = None  # supcon: images of none of the classes, each its own class
    hard_negatives: int | None = 64
    workers: int | None = None
    skip_unreadable: bool = False
    resume: Path | None = None
    progress: bool = True
    colour_weight: float = 0.0  # the colour-aware objective beside simclr's loss (0: none)
    recipe: str | None = None  # a named recipe: its resolution phases, the epochs fitted to max_seconds
    phases: tuple[tuple[float, int], ...] | None = None  # (time share, px) in place of the recipe's
    label_stage: float | None = None  # a recipe: the budget's share for its label stage (0: none)

    @classmethod
    def from_recipe(cls, name: str, data: Path, **overrides: object) -> PretrainConfig:
        """The recipe's settings; ``overrides`` (None values ignored) replace any of them."""
        try:
            r = get_recipe(name)
        except ValueError as exc:
            raise PretrainError(str(exc)) from None
        given = {k: v for k, v in overrides.items() if v is not None}
        if "epochs" in given:
            raise PretrainError(f"recipe {name} fits its epochs to the time budget: give --max-seconds, not --epochs")
        base = dict(method=r.method, backbone=r.backbone, pool=r.pool, augment=r.augment, batch_size=r.batch_size,
                    lr=r.lr, image_size=r.image_size, colour_weight=r.colour_weight, max_seconds=r.seconds,
                    label_stage=r.label_stage)
        return cls(data=Path(data), recipe=name, **{**base, **given})

    def paths(self) -> dict[str, Path]:
        out = Path(self.out)
        return {"checkpoint": out, "log": out.with_suffix(".csv"), "state": out.with_name(f"{out.stem}.state.pt"),
                "labels_log": out.with_suffix(".labels.csv"),
                "labels_state": out.with_name(f"{out.stem}.labels.state.pt")}


def _training_set(cfg: PretrainConfig) -> TrainingSet:
    data = load_training_set(cfg.data, cfg.image_size, cfg.skip_unreadable, cfg.progress)
    labels = data.labels
    if cfg.pairs is not None:
        if data.spec.views != 1:
            raise DatasetError("--pairs names image files; use it with an image data set")
        labels = labels_from_pairs(read_pairs(cfg.pairs, cfg.data), len(data)).numpy()
    if cfg.method in ("supcon", "distill") and (labels == UNLABELED).all():
        raise DatasetError(f"{cfg.method} needs labels: a labeled data set or --pairs")
    if cfg.negatives is not None:
        if cfg.method != "supcon":
            raise PretrainError("--negatives is for supcon")
        extra = load_training_set(cfg.negatives, cfg.image_size, cfg.skip_unreadable, cfg.progress)
        if extra.spec.channels != data.spec.channels:
            raise DatasetError(f"{cfg.negatives} has channels {extra.spec.channels}, {cfg.data} {data.spec.channels}")
        own = labels.max() + 1 + np.arange(len(extra))  # each negative its own class
        data = TrainingSet(np.concatenate([data.images, extra.images]), np.concatenate([labels, own]),
                           data.class_names, data.spec)
        labels = data.labels
    if cfg.unlabeled is not None:
        extra = load_training_set(cfg.unlabeled, cfg.image_size, cfg.skip_unreadable, cfg.progress)
        if extra.spec.channels != data.spec.channels:
            raise DatasetError(f"{cfg.unlabeled} has channels {extra.spec.channels}, {cfg.data} {data.spec.channels}")
        return TrainingSet(np.concatenate([data.images, extra.images]),
                           np.concatenate([labels, np.full(len(extra), UNLABELED)]), data.class_names, data.spec)
    return TrainingSet(data.images, labels, data.class_names, data.spec)


LABELLED_ONLY = ("supcon", "supervised")  # methods that train on the labelled images alone


def _labelled_only(cfg: PretrainConfig, data: TrainingSet) -> TrainingSet:
    """The labelled images of ``data`` (a method in :data:`LABELLED_ONLY` has nothing to learn
    from the others)."""
    keep = data.labels != UNLABELED
    if not keep.any():
        raise DatasetError(f"{cfg.method} needs labels: {cfg.data} has none")
    if keep.all():
        return data
    return TrainingSet(data.images[keep], data.labels[keep], data.class_names, data.spec)


def run_pretrain(cfg: PretrainConfig, data: TrainingSet | None = None) -> dict:
    """Pretrain on ``cfg.data`` or, when given, on ``data`` already in memory (a station's pool
    of views); write the checkpoint, its logs and state."""
    if cfg.method not in METHODS:
        raise PretrainError(f"unknown method {cfg.method!r}; choose from {sorted(METHODS)}")
    if cfg.method == "distill" and cfg.teacher is None:
        raise PretrainError("distill needs --teacher CKPT (for example a supcon checkpoint)")
    if cfg.label_stage is not None and cfg.recipe is None:
        raise PretrainError("a label stage belongs to a recipe (--recipe)")
    if cfg.label_stage is not None and not 0 <= cfg.label_stage < 1:
        raise PretrainError(f"the label stage's share of the budget must be in [0, 1), got {cfg.label_stage}")
    if cfg.resume is not None and cfg.resume.name.endswith(".labels.state.pt"):
        raise PretrainError(f"{cfg.resume}: resume from the self-supervised stage's OUT.state.pt; the label "
                            "stage then runs again from its start")
    data = _training_set(cfg) if data is None else data
    if cfg.method in LABELLED_ONLY:
        data = _labelled_only(cfg, data)
    label_share = cfg.label_stage if cfg.label_stage and can_label(data) else 0.0
    if label_share and cfg.method != "simclr":
        raise PretrainError("a recipe's label stage goes with simclr")
    torch.manual_seed(cfg.seed)
    backbone = build_backbone(cfg.backbone, in_channels=len(data.spec.channels), weights=cfg.weights, pool=cfg.pool)
    options: dict[str, object] = {}
    if cfg.method in ("supcon", "distill"):
        options["hard_negatives"] = cfg.hard_negatives
    if cfg.method == "supervised":
        options["classes"] = max(len(data.class_names), int(data.labels.max()) + 1)
    if cfg.method == "distill":
        teacher, teacher_spec, _ = load_checkpoint(cfg.teacher)
        if teacher_spec.channels != data.spec.channels:
            raise DatasetError(f"teacher {cfg.teacher} takes {teacher_spec.channels}, "
                               f"the data has {data.spec.channels}")
        options["teacher"] = teacher
    if cfg.colour_weight > 0:
        if cfg.method != "simclr":
            raise PretrainError("the colour-aware objective (colour_weight) goes with simclr")
        rgb = [data.spec.channels.index(c) for c in ("r", "g", "b") if c in data.spec.channels]
        if len(rgb) != 3:
            raise DatasetError(f"the colour-aware objective needs r, g and b channels; the data has "
                               f"{data.spec.channels}")
        options["colour"] = ColourPredictionLoss(backbone.embedding_dim, rgb, list(data.spec.mean), list(data.spec.std))
        options["colour_weight"] = cfg.colour_weight
    model = build_method(cfg.method, backbone, **options)
    recipe = AugmentConfig.recipe(cfg.augment, solarize=cfg.solarize, channel_shuffle=cfg.channel_shuffle,
                                  tile_shuffle=cfg.tile_shuffle)
    if not model.vertical_flip:
        recipe = replace(recipe, vertical_flip=False)
    augment = MultiChannelAugment(data.spec, recipe)
    labels = data.labels if (model.needs_labels or cfg.balanced) else None
    dataset = ViewsDataset(data.images, augment, views=model.views, labels=labels, seed=cfg.seed)
    epochs, plan, max_seconds, replanner = cfg.epochs, None, cfg.max_seconds, None
    started = time.perf_counter()
    if cfg.recipe is not None:
        ssl_seconds = (1 - label_share) * cfg.max_seconds
        plan = _recipe_plan(cfg, model, dataset, ssl_seconds)
        epochs, dataset.resolution = plan.epochs, plan.resolution
        max_seconds = ssl_seconds - (time.perf_counter() - started)  # measuring is part of the budget
        replanner = _Replanner(cfg, plan, len(dataset), dataset.views, max_seconds)
    paths = cfg.paths()
    paths["checkpoint"].parent.mkdir(parents=True, exist_ok=True)
    at = replanner.step() if replanner else None
    result = train(model, dataset,
                   TrainConfig(epochs=epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=cfg.seed,
                               balanced=cfg.balanced, max_seconds=max_seconds, num_workers=cfg.workers,
                               log_path=paths["log"], state_path=paths["state"]),
                   progress=cfg.progress, resume=cfg.resume, replan=Replan(at, replanner) if at else None)
    plan = replanner.plan if replanner else plan
    labels = None
    if label_share:
        labels = _label_stage(cfg, model, data, augment, plan, deadline=started + cfg.max_seconds)
    if not dist.is_initialized() or dist.get_rank() == 0:
        save_checkpoint(paths["checkpoint"], model.backbone.cpu().to(memory_format=torch.contiguous_format).eval(),
                        data.spec, method=cfg.method, data=str(cfg.data), images=len(data),
                        labeled=data.labeled_count, augment=augment.config.__dict__,
                        recipe=cfg.recipe, colour_weight=cfg.colour_weight,
                        plan=plan.to_dict() if plan else None, train=result.to_dict(), label_stage=labels)
    return {"checkpoint": str(paths["checkpoint"]), "state": str(paths["state"]), "method": cfg.method,
            "backbone": cfg.backbone, "pool": cfg.pool, "images": len(data), "recipe": cfg.recipe,
            **({"plan": plan.to_dict()} if plan else {}), **({"label_stage": labels} if labels else {}),
            **result.to_dict()}


# The label stage's settings (docs/quality.md, "The label stage": at 6 minutes on grocery-store,
# the supervised contrast at the recipe's learning rate gave 30.7% on val where a classifier's
# cross entropy gave 26.0%, both over 24.3% without labels, and the two together 31.8%)
LABEL_STAGE_LR = 1.0  # the label stage's peak learning rate, a fraction of the recipe's
LABEL_CE_WEIGHT = 0.0  # a linear classifier's cross entropy beside the contrastive loss (0: none)
LABEL_CONTRAST = True  # the supervised contrastive loss in NT-Xent's place
PSEUDO_LABEL_THRESHOLD = 0.5  # the teacher's top probability an unlabeled image needs for a pseudo-label


def _label_stage(cfg: PretrainConfig, model, data: TrainingSet, augment: MultiChannelAugment, plan: Plan,
                 deadline: float) -> dict:
    """The recipe's label stage (:mod:`sortline.train.pseudolabels`) in what is left of the
    budget at the last resolution: whole epochs at the speed the self-supervised stage kept in
    its last phase (or, without its log, the plan's)."""
    t = time.perf_counter()
    labels = pseudo_label(model.backbone, data, threshold=PSEUDO_LABEL_THRESHOLD, seed=cfg.seed)
    teacher_s = time.perf_counter() - t
    classes = max(len(data.class_names), int(labels.labels.max()) + 1)
    model.attach_labels(classes, weight=LABEL_CE_WEIGHT, contrast=LABEL_CONTRAST)
    dataset = ViewsDataset(data.images, augment, views=model.views, labels=labels.labels, seed=cfg.seed + 1,
                           resolution=ResolutionSchedule.constant(cfg.image_size))
    left = deadline - time.perf_counter()
    report = {**labels.to_dict(), "teacher_seconds": round(teacher_s, 1)}
    if left <= 0:
        log.warning("no time left for the label stage (the budget of %.0f s is spent)", cfg.max_seconds)
        return {**report, "skipped": "budget spent"}
    per_step = dataset.views * min(cfg.batch_size, len(dataset))  # a set smaller than a batch is one batch
    per_epoch = batches_per_epoch(len(dataset), cfg.batch_size, 1)
    rate = _last_phase_rate(cfg, plan, per_step, per_epoch)
    epoch_s = dataset.views * len(dataset) / rate
    epochs = max(1, math.floor(left / epoch_s))
    paths = cfg.paths()
    planned = epochs * per_epoch
    at = stage_replan_step(planned)
    result = train(model, dataset,
                   TrainConfig(epochs=epochs, batch_size=cfg.batch_size, lr=LABEL_STAGE_LR * cfg.lr,
                               seed=cfg.seed + 1, max_seconds=left, num_workers=cfg.workers,
                               log_path=paths["labels_log"], state_path=paths["labels_state"]),
                   progress=cfg.progress, desc="label stage",
                   replan=Replan(at, partial(_label_stage_total, paths["labels_log"], per_step, left)) if at else None)
    return {**report, "epochs": epochs, "planned_steps": planned, "planned_views_per_s": round(rate, 1),
            **result.to_dict()}


def _label_stage_total(log_path: Path, per_step: int, seconds: float, result: TrainResult) -> int:
    """The label stage's length set again from the speed its own log shows (it had been planned
    at the first stage's, which it may not keep: on AMD Zen 3 a 30-minute run's label stage ran
    at 226 views/s against the 191 it planned on, and 250 s of the 1,800 went unused)."""
    try:
        total = replanned_stage_total(log_path, result.steps, per_step, seconds - result.seconds)
    except (OSError, ValueError, KeyError, ZeroDivisionError) as exc:
        log.warning("the label stage keeps its plan: its log does not tell its speed (%s)", exc)
        return result.total_steps
    log.info("label stage re-planned at step %d: %d steps (was %d)", result.steps, total, result.total_steps)
    return total


def _last_phase_rate(cfg: PretrainConfig, plan: Plan, per_step: int, per_epoch: int) -> float:
    """Views/s the label stage can plan on: ``RUN_RATE_MARGIN`` times what the self-supervised
    stage kept over its last phase (the same size, the same views a step and steps an epoch), from
    its log; the plan's assumption if the log cannot tell."""
    first_step = last_phase_start(plan, per_epoch)
    try:
        return RUN_RATE_MARGIN * logged_rate(cfg.paths()["log"], per_step, from_step=first_step)
    except (OSError, ValueError, KeyError, ZeroDivisionError) as exc:
        log.warning("planning the label stage at the probe's speed: the log does not tell the run's (%s)", exc)
        return plan.rates[cfg.image_size] * plan.margin


def _recipe_plan(cfg: PretrainConfig, model, dataset: ViewsDataset, seconds: float) -> Plan:
    """The recipe's resolution phases (``cfg.phases`` if given), scaled so that the last is
    ``cfg.image_size``, with the epochs of each measured to fit ``seconds``, measuring
    included. The plan is saved as ``OUT.plan.json``; a resumed run takes it from there, so that
    it steps through the same schedule."""
    r = get_recipe(cfg.recipe)
    if cfg.max_seconds is None or cfg.max_seconds <= 0:
        raise PretrainError(f"recipe {cfg.recipe} needs a positive time budget (--max-seconds)")
    if cfg.phases is not None:
        phases = tuple((float(share), int(size)) for share, size in cfg.phases)
        if phases[-1][1] != cfg.image_size:
            raise PretrainError(f"the last phase's size ({phases[-1][1]} px) must be the image size "
                                f"({cfg.image_size} px)")
    else:  # the recipe's sizes, scaled so that the last is the image size
        scale = cfg.image_size / r.image_size
        phases = tuple((share, max(16, round(size * scale / 8) * 8)) for share, size in r.phases[:-1])
        phases += ((r.phases[-1][0], cfg.image_size),)
    saved = cfg.paths()["log"].with_suffix(".plan.json")
    if cfg.resume is not None and saved.is_file():
        try:
            return Plan.from_dict(json.loads(saved.read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PretrainError(f"{saved}: not a readable plan ({exc.__class__.__name__}: {exc}); the resumed "
                                "run must follow the plan it started with") from None
    try:
        plan = plan_for(model, dataset, phases, seconds, cfg.batch_size, r.rate_margin)
    except ValueError as exc:
        raise PretrainError(f"recipe {cfg.recipe}: {exc}") from None
    _save_plan(saved, plan)
    return plan


def _save_plan(path: Path, plan: Plan) -> None:
    with atomic_file(path, "plan") as tmp:  # read again on --resume: whole or not there
        tmp.write_text(json.dumps(plan.to_dict(), indent=2) + "\n")


class _Replanner:
    """The recipe's self-supervised stage sets its length again once, from the speed its log
    shows in its last phase (:func:`sortline.train.recipes.replanned_total`), and saves the plan
    so that a resumed run follows it."""

    def __init__(self, cfg: PretrainConfig, plan: Plan, images: int, views: int, max_seconds: float):
        world = dist.get_world_size() if dist.is_initialized() else 1
        self.cfg, self.plan, self.max_seconds = cfg, plan, max_seconds
        self.per_epoch = batches_per_epoch(images, cfg.batch_size, world)
        self.per_step = views * min(cfg.batch_size, images // world) * world  # the log counts every process's views

    def step(self) -> int | None:
        return replan_step(self.plan, self.per_epoch)

    def __call__(self, result: TrainResult) -> int:
        log_path = self.cfg.paths()["log"]
        try:
            plan, total = replanned_total(self.plan, log_path, result.steps, self.per_step, self.per_epoch,
                                          self.max_seconds - result.seconds)
        except (OSError, ValueError, KeyError, ZeroDivisionError) as exc:
            log.warning("keeping the probe's plan: the log does not tell the run's speed (%s)", exc)
            return result.total_steps
        self.plan = plan
        _save_plan(log_path.with_suffix(".plan.json"), plan)
        return total
