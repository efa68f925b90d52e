"""``sortline export``: a trained backbone becomes a verified bundle.

export fp32 ONNX → parity with PyTorch on real images → int8 / fp16 → accuracy drop measured
by a linear probe on labeled images → refuse if the drop is over the limit (unless forced) →
head fitted on the exported model's embeddings → bundle, with every figure in the manifest.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from sortline.edge_runtime.datasets import ImageSet
from sortline.edge_runtime.errors import SortlineError
from sortline.edge_runtime.learning.enroll import EXAMPLES_FILE, write_examples
from sortline.edge_runtime.model.bundle import Bundle, DecisionPolicy, Manifest, write_bundle
from sortline.edge_runtime.model.choice import CHECK_FILE, CHECK_ITEMS, write_check_set
from sortline.edge_runtime.model.embedder import PARITY_MIN_COSINE, OnnxEmbedder
from sortline.edge_runtime.model.fusion import FusionSpec
from sortline.edge_runtime.model.head import LogisticHead
from sortline.edge_runtime.model.preprocess import InputSpec, preprocess_views

from .onnx_export import ParityError, compare, export_backbone, torch_embeddings
from .quantize import convert_fp16, quantize_int8

log = logging.getLogger(__name__)
PRECISIONS = ("fp32", "int8", "fp16")


class ExportRefused(SortlineError, RuntimeError):
    """The exported model loses more accuracy than allowed."""


@dataclass(frozen=True)
class ExportConfig:
    precision: str = "int8"
    max_drop_points: float = 0.5  # accuracy points the probe may lose against fp32
    force: bool = False
    calibration_images: int = 512
    probe_folds: int = 5
    probe_C: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}")


def preprocess_set(images: ImageSet, spec: InputSpec, skip_unreadable: bool = False) -> tuple[np.ndarray, ImageSet]:
    """Every readable image through the edge preprocessing, and the set of those read."""
    kept, batches = [], []
    for i, frame in images.read(skip_unreadable=skip_unreadable):
        batches.append(preprocess_views([frame], spec))
        kept.append(i)
    if not kept:
        raise ValueError("no readable images")
    if len(kept) < len(images):
        log.warning("left out %d unreadable images", len(images) - len(kept))
    return np.concatenate(batches), images.subset(kept)


def probe_accuracy(embeddings: np.ndarray, labels: np.ndarray, folds: int, C: float, seed: int) -> float:
    """Cross-validated accuracy of a logistic-regression probe on frozen embeddings."""
    counts = np.bincount(labels)
    folds = int(min(folds, counts[counts > 0].min()))
    if folds < 2:
        raise ValueError("the labeled set needs at least two images of every class for a probe")
    correct = 0
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(embeddings, labels):
        head = LogisticHead.fit(embeddings[train], labels[train], [str(i) for i in range(len(counts))],
                                C=C, class_weight=None)
        correct += int((head.predict(embeddings[test]) == labels[test]).sum())
    return correct / len(labels)


def _embed(embedder: OnnxEmbedder, x: np.ndarray, batch: int = 64) -> np.ndarray:
    return np.concatenate([embedder.embed_batch(x[i : i + batch]) for i in range(0, len(x), batch)])


@dataclass
class ExportedModel:
    """An exported backbone in a working folder, with its fp32 reference and the report."""

    path: Path
    embedder: OnnxEmbedder
    fp32: OnnxEmbedder
    report: dict


def export_model(backbone: torch.nn.Module, spec: InputSpec, calibration: np.ndarray, workdir: Path,
                 config: ExportConfig = ExportConfig()) -> ExportedModel:
    """fp32 ONNX checked against PyTorch on real images, then int8 or fp16 as configured.

    ``calibration`` is preprocessed images (``N×C×S×S``), used for the parity check and the
    int8 activation ranges.
    """
    if len(calibration) > config.calibration_images:
        rng = np.random.default_rng(config.seed)
        calibration = calibration[rng.choice(len(calibration), config.calibration_images, replace=False)]
    report: dict = {"precision": config.precision, "calibration_images": len(calibration)}
    started = time.perf_counter()
    fp32_path = export_backbone(backbone, spec, workdir / "backbone.fp32.onnx")
    fp32 = OnnxEmbedder(fp32_path, spec)
    check = calibration[:64]
    parity = compare(torch_embeddings(backbone, check), fp32.embed_batch(check))
    report["onnx_parity_fp32"] = parity.to_dict()
    if parity.min_cosine < PARITY_MIN_COSINE:
        raise ParityError(f"ONNX fp32 differs from PyTorch on real images: min cosine {parity.min_cosine:.5f}")
    if config.precision == "int8":
        path = quantize_int8(fp32_path, workdir / "backbone.int8.onnx", calibration)
        report["quantization"] = "static int8, QDQ, uint8 activations, per-channel int8 weights, MinMax"
    elif config.precision == "fp16":
        path = convert_fp16(fp32_path, workdir / "backbone.fp16.onnx")
    else:
        path = fp32_path
    exported = OnnxEmbedder(path, spec)
    report["vs_fp32"] = compare(fp32.embed_batch(check), exported.embed_batch(check)).to_dict()
    report["model_bytes"] = {"fp32": fp32_path.stat().st_size, config.precision: path.stat().st_size}
    report["seconds"] = round(time.perf_counter() - started, 1)
    return ExportedModel(path, exported, fp32, report)


def check_accuracy_drop(report: dict, fp32: np.ndarray, exported: np.ndarray, labels: np.ndarray,
                        config: ExportConfig, class_names: Sequence[str] = ()) -> dict:
    """Probe accuracy on the fp32 and on the exported model's embeddings of the same images,
    into ``report``; :class:`ExportRefused` when the exported model loses more than
    ``config.max_drop_points`` (unless forced). Where a class has a single image the probe
    cannot be cross-validated: the export goes on, and the report says why it was not checked."""
    counts = np.bincount(labels)
    if lonely := [int(c) for c in np.flatnonzero(counts == 1)]:
        names = [class_names[c] if c < len(class_names) else str(c) for c in lonely]
        reason = (f"not run: {len(lonely)} class(es) have a single labelled image ({', '.join(names[:5])}); "
                  "the probe needs two of every class")
        log.warning("accuracy probe %s; the exported model's accuracy is not checked", reason)
        report["probe"] = {"skipped": reason}
        return report["probe"]
    acc32 = probe_accuracy(fp32, labels, config.probe_folds, config.probe_C, config.seed)
    accq = probe_accuracy(exported, labels, config.probe_folds, config.probe_C, config.seed)
    drop = round(100 * (acc32 - accq), 2)
    probe = {"images": len(labels), "classes": int(len(np.unique(labels))), "folds": config.probe_folds,
             "accuracy_fp32": round(acc32, 4), f"accuracy_{config.precision}": round(accq, 4),
             "drop_points": drop, "limit_points": config.max_drop_points, "forced": config.force}
    report["probe"] = probe
    if drop > config.max_drop_points and not config.force:
        raise ExportRefused(
            f"{config.precision} loses {drop:.2f} accuracy points against fp32 ({acc32:.2%} → {accq:.2%}), "
            f"over the limit of {config.max_drop_points}; use --force to export anyway"
        )
    return probe


def build_bundle(
    backbone: torch.nn.Module,
    spec: InputSpec,
    calibration: np.ndarray,
    out: Path,
    config: ExportConfig = ExportConfig(),
    labeled: tuple[np.ndarray, ImageSet] | None = None,
    name: str = "bundle",
    metrics: dict | None = None,
    policy: DecisionPolicy | None = None,
    examples_trained_on: bool = False,
) -> tuple[Bundle, dict]:
    """Export ``backbone`` into the bundle ``out``; return it and the export report.

    ``labeled`` (preprocessed images and their set) measures the accuracy drop and trains the
    head on the exported model's embeddings. Without it the bundle only embeds.
    ``examples_trained_on``: the backbone learned from those images' labels
    (:func:`~sortline.train.checkpoint.learned_from_labels`); the bundle's examples say so, and a
    station then calibrates its open set on examples it enrolls instead.
    """
    with tempfile.TemporaryDirectory() as tmp:
        model = export_model(backbone, spec, calibration, Path(tmp), config)
        head, labels, extra = None, (), {}
        if labeled is not None:
            x, images = labeled
            if images.labels is None:
                raise ValueError("the labeled set has no labels")
            embeddings = _embed(model.embedder, x)
            check_accuracy_drop(model.report, _embed(model.fp32, x), embeddings, images.labels, config,
                                images.class_names)
            labels = images.class_names
            head = LogisticHead.fit(embeddings, images.labels, labels, C=config.probe_C)
            # the head's examples travel with it: a station that enrolls new classes keeps these
            extra[EXAMPLES_FILE] = write_examples(Path(tmp) / EXAMPLES_FILE, embeddings, images.labels, labels,
                                                  seed=config.seed, trained_on=examples_trained_on)
        pools = ("mean", "max") if spec.views > 1 else ("mean",)
        manifest = Manifest(
            name=name,
            input=spec,
            embedding_dim=int(model.embedder.embed_batch(calibration[:1]).shape[1]),
            labels=tuple(labels),
            decision=policy or DecisionPolicy({label: i + 1 for i, label in enumerate(labels)}, safe_exit=0),
            fusion=FusionSpec.for_sensor("none", 0, view_pools=pools),
            metrics={**(metrics or {}), "export": model.report},
        )
        # a few real inputs travel with the bundle: runtimes are compared on them at the station
        check = write_check_set(Path(tmp) / CHECK_FILE, calibration[: CHECK_ITEMS * spec.views])
        bundle = write_bundle(out, manifest, model.path, head, extra_files={CHECK_FILE: check, **extra})
    return bundle, model.report
