"""``sortline evaluate``: every protocol for one backbone, as JSON, Markdown and plots.

A backbone comes from a checkpoint (PyTorch) or a bundle (its ONNX model, as the station runs
it). ``train`` is the labeled gallery the classifiers learn from, ``test`` the images they are
scored on; both may be any data set form :func:`sortline.train.data.load_training_set` reads,
and their classes are matched by name.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from sortline.edge_runtime.datasets import DatasetError, reference_images
from sortline.edge_runtime.model.bundle import load_bundle
from sortline.edge_runtime.model.descriptors import ColourHistogram
from sortline.edge_runtime.model.embedder import OnnxEmbedder

from .backbones import build_backbone
from .checkpoint import load_checkpoint
from .data import UNLABELED, TrainingSet, image_set_arrays, load_training_set
from .evaluate import (
    DescriptorEncoder,
    Encoder,
    EvaluationError,
    OnnxEncoder,
    ProtocolResult,
    TorchEncoder,
    fit_probe,
    knn,
    kshot,
    linear_probe,
    oneshot,
    parse_protocol,
    per_class,
    protocol_label,
    retrieval,
)
from .explain import class_similarity, grad_cam, tsne
from .finetune import FineTuneConfig, fine_tune

log = logging.getLogger(__name__)

DEFAULT_PROTOCOLS = ("linear", "knn", "retrieval", "kshot:1", "kshot:5", "oneshot")


@dataclass(frozen=True)
class EvaluateConfig:
    train: Path
    test: Path
    checkpoint: Path | None = None
    bundle: Path | None = None
    protocols: tuple[str, ...] = DEFAULT_PROTOCOLS
    references: Path | None = None  # one image per class for "oneshot"; default: the iconic images
    seeds: int = 5  # k-shot draws
    neighbours: int = 20
    C: float = 1.0
    baselines: bool = False  # the same architecture at random init; scratch beside fine-tuning
    colour_histogram: bool = False  # also a colour histogram alone, and fused with the embedding
    finetune: FineTuneConfig = field(default_factory=FineTuneConfig)
    report: Path | None = None
    gradcam_samples: int = 16
    tsne_points: int = 2000
    skip_unreadable: bool = False
    seed: int = 0
    progress: bool = True


@dataclass
class _Model:
    encoder: Encoder
    name: str
    backbone: object | None = None  # the PyTorch backbone, when there is one
    pretrain_log: Path | None = None


def _load_model(cfg: EvaluateConfig) -> _Model:
    if (cfg.checkpoint is None) == (cfg.bundle is None):
        raise EvaluationError("give exactly one of a checkpoint and a bundle")
    if cfg.checkpoint is not None:
        backbone, spec, meta = load_checkpoint(cfg.checkpoint)
        csv_log = Path(cfg.checkpoint).with_suffix(".csv")
        return _Model(TorchEncoder(backbone, spec), str(cfg.checkpoint), backbone,
                      csv_log if csv_log.is_file() else None)
    bundle = load_bundle(cfg.bundle)
    return _Model(OnnxEncoder(OnnxEmbedder(bundle.backbone_path, bundle.manifest.input)), str(cfg.bundle))


def _load_set(path: Path, spec, cfg: EvaluateConfig, role: str) -> TrainingSet:
    data = load_training_set(path, spec.size, cfg.skip_unreadable, cfg.progress)
    if data.spec.channels != spec.channels:
        raise DatasetError(f"{path} has channels {data.spec.channels}; the model takes {spec.channels}")
    keep = data.labels != UNLABELED
    if not keep.any():
        raise DatasetError(f"{path}: the {role} set has no labels; evaluation needs labeled images")
    if not keep.all():
        log.warning("%s: %d unlabeled images left out of the %s set", path, int((~keep).sum()), role)
    return TrainingSet(data.images[keep], data.labels[keep], data.class_names, data.spec)


def align_classes(reference: tuple[str, ...], data: TrainingSet) -> TrainingSet:
    """``data`` relabeled into ``reference``'s class indices by name (new names appended)."""
    names = list(reference)
    index = {n: i for i, n in enumerate(names)}
    remap = []
    for name in data.class_names:
        if name not in index:
            index[name] = len(names)
            names.append(name)
        remap.append(index[name])
    return TrainingSet(data.images, np.asarray(remap, np.int64)[data.labels], tuple(names), data.spec)


def _references(cfg: EvaluateConfig, spec, names: tuple[str, ...]) -> tuple[TrainingSet | None, str]:
    if cfg.references is not None:
        refs = _load_set(cfg.references, spec, cfg, "reference")
        return align_classes(names, refs), str(cfg.references)
    iconic = reference_images(cfg.train) if Path(cfg.train).is_file() else None
    if iconic is None:
        return None, ""
    refs = image_set_arrays(iconic, spec.size, cfg.skip_unreadable, False, what="iconic images")
    if refs.spec.channels != spec.channels:
        return None, ""
    return align_classes(names, refs), f"iconic images in {Path(cfg.train).parent / 'classes.csv'}"


def _frozen(name: str, k: int | None, encoder_x: dict[str, np.ndarray], train: TrainingSet, test: TrainingSet,
            refs: TrainingSet | None, cfg: EvaluateConfig) -> ProtocolResult:
    tx, qx = encoder_x["train"], encoder_x["test"]
    names = train.class_names
    if name == "linear":
        scores, predicted = linear_probe(tx, train.labels, qx, test.labels, names, cfg.C)
        return ProtocolResult("linear", scores, predicted, {"train_images": len(tx)})
    if name == "knn":
        scores, predicted = knn(tx, train.labels, qx, test.labels, cfg.neighbours)
        return ProtocolResult("knn", scores, predicted, {"k": min(cfg.neighbours, len(tx))})
    if name == "retrieval":
        scores, predicted, extra = retrieval(tx, train.labels, qx, test.labels)
        return ProtocolResult("retrieval", scores, predicted, extra)
    if name == "kshot":
        return kshot(tx, train.labels, qx, test.labels, names, k, cfg.seeds, cfg.C)
    if name == "oneshot":
        return oneshot(encoder_x["references"], refs.labels, qx, test.labels, names, cfg.C)
    raise AssertionError(name)


HISTOGRAM = "colour histogram"
FUSED = "fused with colour histogram"


def run_evaluation(cfg: EvaluateConfig) -> dict:
    started = time.perf_counter()
    protocols = [parse_protocol(p) for p in cfg.protocols]
    model = _load_model(cfg)
    spec = model.encoder.spec
    train = _load_set(cfg.train, spec, cfg, "train")
    test = align_classes(train.class_names, _load_set(cfg.test, spec, cfg, "test"))
    train = TrainingSet(train.images, train.labels, test.class_names, train.spec)  # names of both
    names = test.class_names
    notes: list[str] = []
    refs, refs_from = (None, "")
    if any(p == "oneshot" for p, _ in protocols):
        refs, refs_from = _references(cfg, spec, names)
        if refs is None:
            if cfg.protocols != DEFAULT_PROTOCOLS:
                raise EvaluationError("oneshot needs reference images: --references D (one image per class), "
                                      "or a split file whose classes.csv has an 'Iconic Image Path' column")
            protocols = [p for p in protocols if p[0] != "oneshot"]
            notes.append("oneshot left out: no reference images (give --references)")
    tuned = [p for p in protocols if p[0] in ("finetune", "scratch")]
    if (tuned or cfg.baselines) and model.backbone is None:
        raise EvaluationError("fine-tuning, scratch and random-init baselines need the PyTorch weights: "
                              "give --checkpoint (a bundle holds only the exported model)")
    if cfg.baselines:
        tuned += [("scratch", k) for p, k in tuned if p == "finetune" and ("scratch", k) not in tuned]

    model_label = Path(model.name).name
    encoders: dict[str, Encoder | None] = {"": model.encoder}
    if cfg.baselines:
        torch.manual_seed(cfg.seed)
        b = model.backbone
        encoders["random init"] = TorchEncoder(build_backbone(b.name, in_channels=b.in_channels, pool=b.pool), spec)
    if cfg.colour_histogram:
        if not all(c in spec.channels for c in ("r", "g", "b")):
            raise EvaluationError(f"a colour histogram needs r, g and b channels; the model takes {spec.channels}")
        encoders[HISTOGRAM] = DescriptorEncoder(ColourHistogram(), spec)
        encoders[FUSED] = None  # the model's embedding and the histogram side by side
    rows: list[dict] = []
    results: dict[str, ProtocolResult] = {}
    features: dict[str, dict[str, np.ndarray]] = {}
    for variant, encoder in encoders.items():
        t = time.perf_counter()
        sets = {"train": train.images, "test": test.images}
        if refs is not None:
            sets["references"] = refs.images
        if encoder is None:
            x = {k: np.hstack([features[""][k], features[HISTOGRAM][k]]) for k in sets}
        else:
            x = {k: encoder.embed(images) for k, images in sets.items()}
        features[variant] = x
        embed_s = time.perf_counter() - t
        if not variant:
            embeddings = x
        for name, k in protocols:
            if name in ("finetune", "scratch"):
                continue
            result = _frozen(name, k, x, train, test, refs, cfg)
            label = protocol_label(name, k) + (f" ({variant})" if variant else "")
            results[label] = result
            rows.append({**result.to_dict(), "protocol": label, "model": variant or model_label})
        log.info("%s: embeddings in %.1f s", variant or "model", embed_s)
    tuning_runs = []
    for name, k in tuned:
        run = fine_tune(model.backbone, train, test, replace(cfg.finetune, labels_per_class=k, seed=cfg.seed),
                        from_scratch=name == "scratch", progress=cfg.progress)
        tuning_runs.append(run)
        results[run.name] = ProtocolResult(run.name, run.scores, run.predicted)
        rows.append({**run.to_dict(), "model": "random init" if name == "scratch" else model_label})

    primary = rows[0]["protocol"]
    summary = {
        "model": model.name, "train": str(cfg.train), "test": str(cfg.test),
        "input": {"size": spec.size, "channels": list(spec.channels)},
        "train_images": len(train), "test_images": len(test),
        "classes": len(names), "class_names": list(names), "test_classes": int(len(np.unique(test.labels))),
        **{k: rows[0][k] for k in ("accuracy", "balanced_accuracy", "macro_f1", "mcc")},
        "primary_protocol": primary,
        "protocols": rows,
        "per_class": per_class(test.labels, results[primary].predicted, names),
        "references": refs_from or None,
        "notes": notes,
    }
    if "retrieval" in results:
        summary["map"] = results["retrieval"].extra["map"]
    if cfg.report is not None:
        write_report(cfg, summary, model, train, test, embeddings, results, tuning_runs)
    summary["seconds"] = round(time.perf_counter() - started, 1)
    return summary


# ---------------------------------------------------------------- the report


def _short(name: str, width: int = 20) -> str:
    return name if len(name) <= width else name[:width - 1] + "…"


def _gradcam_samples(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` test images, from as many different classes as possible."""
    order = np.random.default_rng(seed).permutation(len(labels))
    _, first = np.unique(labels[order], return_index=True)  # each class's first image in that order
    rest = np.setdiff1d(np.arange(len(order)), first)
    return order[np.concatenate([np.sort(first), rest])[:n]]


def _pretrain_curve(path: Path) -> tuple[list[float], list[float]] | None:
    import csv

    """Loss against step from a pretraining log, as a moving average over 1/40 of the run."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("step") and r.get("loss")]
    if not rows:
        return None
    steps, losses = np.array([float(r["step"]) for r in rows]), np.array([float(r["loss"]) for r in rows])
    window = max(1, len(rows) // 40)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    return list(steps[window - 1:]), list(smooth)


def write_report(cfg: EvaluateConfig, summary: dict, model: _Model, train: TrainingSet, test: TrainingSet,
                 embeddings: dict[str, np.ndarray], results: dict[str, ProtocolResult], tuning_runs: list) -> None:
    from . import plots

    out = Path(cfg.report)
    out.mkdir(parents=True, exist_ok=True)
    names = test.class_names
    short = [_short(n) for n in names]
    title = Path(model.name).name
    figures: dict[str, str] = {}

    primary = summary["primary_protocol"]
    figures["confusion"] = plots.confusion_heatmap_png(
        summary["per_class"]["confusion"], short, out / "confusion.png",
        f"{title}: confusion on the test set ({primary}), rows normalised").name

    rng = np.random.default_rng(cfg.seed)
    pick = np.sort(rng.permutation(len(test))[:cfg.tsne_points])
    points = tsne(embeddings["test"][pick], cfg.seed)
    figures["tsne"] = plots.tsne_png(points, test.labels[pick], short, out / "tsne.png",
                                     f"{title}: t-SNE of {len(pick)} test embeddings (cosine), coloured by class").name

    similarity = class_similarity(embeddings["train"], train.labels)
    figures["similarity"] = plots.similarity_png(
        similarity.matrix, [short[c] for c in similarity.classes], out / "class_similarity.png",
        f"{title}: class similarity (train images), clustered order").name

    if model.backbone is not None:
        head = fit_probe(embeddings["train"], train.labels, names, cfg.C)
        sample = _gradcam_samples(test.labels, cfg.gradcam_samples, cfg.seed)
        cam = grad_cam(model.backbone, head, test.images[sample], test.spec)
        truth = test.labels[sample]
        captions = [f"{_short(names[t], 18)}\n→ {_short(names[p], 18)}" for t, p in zip(truth, cam.predicted)]
        figures["gradcam"] = plots.gradcam_png(
            test.images[sample], cam.heatmaps, captions, out / "gradcam.png",
            f"{title}: Grad-CAM for the linear probe's predicted class (true → predicted, red when wrong); "
            f"stage {cam.stage} map, {cam.cells[0]}×{cam.cells[1]} cells",
            correct=list(truth == cam.predicted)).name
    else:
        summary["notes"].append("Grad-CAM left out: it needs gradients, so a checkpoint, not a bundle")

    panels, axis = {}, {}
    if model.pretrain_log is not None and (curve := _pretrain_curve(model.pretrain_log)):
        panels["pretraining"] = {"loss (moving average)": curve}
        axis["pretraining"] = ("step", "loss")
    if tuning_runs:
        panels["fine-tuning"] = {r.name: ([p["epoch"] for p in r.curve], [p["test_accuracy"] for p in r.curve])
                                 for r in tuning_runs}
        axis["fine-tuning"] = ("epoch", "test accuracy")
    efficiency = _label_efficiency(summary["protocols"], train)
    if efficiency:
        panels["labels per class"] = efficiency
        axis["labels per class"] = (f"labels per class (all: {len(train) / len(np.unique(train.labels)):.0f} "
                                    "on average)", "test accuracy")
    if panels:
        figures["learning_curves"] = plots.learning_curves_png(panels, axis, out / "learning_curves.png",
                                                               f"{title}: learning curves",
                                                               log_x={"labels per class"}).name
    summary["figures"] = figures
    summary["similar_pairs"] = [{"a": names[a], "b": names[b], "cosine": round(s, 4)} for a, b, s in similarity.pairs]
    (out / "report.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "report.md").write_text(markdown(summary))


def _label_efficiency(rows: list[dict], train: TrainingSet) -> dict:
    """Accuracy against labels per class: k-shot and all-label linear probes, fine-tuning."""
    per_class_all = len(train) / max(1, len(np.unique(train.labels)))
    series: dict[str, dict[float, float]] = {}
    for r in rows:
        protocol, _, variant = r["protocol"].partition(" (")
        name, _, k = protocol.partition(":")
        if name not in ("kshot", "linear", "finetune", "scratch"):
            continue
        x = float(k) if k else per_class_all
        label = {"kshot": "linear probe", "linear": "linear probe"}.get(name, name)
        if variant:
            label += f" ({variant.rstrip(')')})"
        series.setdefault(label, {})[x] = r["accuracy"]
    return {label: (sorted(points), [points[x] for x in sorted(points)])
            for label, points in series.items() if len(points) >= 2 or label.startswith(("finetune", "scratch"))}


def _fmt(value: object, pct: bool = True) -> str:
    if value is None:
        return "–"
    return f"{value:.1%}" if pct else f"{value:.3f}"


def markdown(summary: dict) -> str:
    lines = [
        f"# Evaluation of `{summary['model']}`", "",
        f"Train (gallery) `{summary['train']}`: {summary['train_images']} images; "
        f"test `{summary['test']}`: {summary['test_images']} images of {summary['test_classes']} classes "
        f"({summary['classes']} in all); input {summary['input']['size']} px, "
        f"channels {', '.join(summary['input']['channels'])}.", "",
        "| protocol | model | accuracy | balanced acc. | macro-F1 | MCC | mAP | notes |",
        "|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in summary["protocols"]:
        spread = f"± {r['accuracy_std']:.1%} over {r['seeds']} draws" if "accuracy_std" in r else ""
        extra = ", ".join(part for part in (
            spread,
            f"{r['train_images']} train images" if "train_images" in r else "",
            f"R@1 {r['recall_at_1']:.1%}, R@5 {r['recall_at_5']:.1%}" if r.get("recall_at_5") is not None else "",
            f"{r['references']} references; nearest class mean {r['prototype_accuracy']:.1%}"
            if "references" in r else "",
            f"{r['steps']} steps, {r['seconds']} s" if r.get("steps") else "",
        ) if part)
        lines.append(f"| {r['protocol']} | {r['model']} | {_fmt(r['accuracy'])} | {_fmt(r['balanced_accuracy'])} "
                     f"| {_fmt(r['macro_f1'], False)} | {_fmt(r['mcc'], False)} | {_fmt(r.get('map'), False)} "
                     f"| {extra} |")
    if summary.get("references"):
        lines += ["", f"One-shot references: {summary['references']}."]
    for note in summary["notes"]:
        lines += ["", f"Note: {note}."]
    figures = summary.get("figures", {})
    for key, caption in (("learning_curves", "Learning curves"), ("confusion", "Confusion matrix"),
                         ("tsne", "t-SNE"), ("similarity", "Class similarity"), ("gradcam", "Grad-CAM")):
        if key in figures:
            lines += ["", f"## {caption}", "", f"![{caption}]({figures[key]})"]
    confusion = np.asarray(summary["per_class"]["confusion"])
    classes = list(summary["per_class"]["classes"])
    all_names = summary["class_names"]
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    worst = np.dstack(np.unravel_index(np.argsort(-off, axis=None), off.shape))[0][:10]
    pairs = [(all_names[i], all_names[j], int(off[i, j]), off[i, j] / max(1, confusion[i].sum()))
             for i, j in worst if off[i, j] > 0]
    if pairs:
        lines += ["", f"## Largest confusions ({summary['primary_protocol']})", "",
                  "| true | predicted as | images | share of the true class |", "|---|---|---:|---:|"]
        lines += [f"| {a} | {b} | {n} | {share:.0%} |" for a, b, n, share in pairs]
    if summary.get("similar_pairs"):
        lines += ["", "## Most similar classes (cosine of class means)", "",
                  "| class | class | cosine |", "|---|---|---:|"]
        lines += [f"| {p['a']} | {p['b']} | {p['cosine']:.3f} |" for p in summary["similar_pairs"][:10]]
    lines += ["", f"## Per class ({summary['primary_protocol']}), worst recall first", "",
              "| class | test images | precision | recall | F1 |", "|---|---:|---:|---:|---:|"]
    rows = summary["per_class"]["classes"]
    for name in sorted(classes, key=lambda n: (rows[n]["recall"], n)):
        r = rows[name]
        lines.append(f"| {name} | {r['support']} | {r['precision']:.2f} | {r['recall']:.2f} | {r['f1-score']:.2f} |")
    return "\n".join(lines) + "\n"
