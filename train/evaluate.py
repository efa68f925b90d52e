"""Judging embeddings the way the literature does.

Embeddings are taken through the edge preprocessing (:func:`sortline.edge_runtime.model.preprocess.
normalize` on the uint8 arrays :mod:`sortline.train.data` keeps), from a checkpoint
(:class:`TorchEncoder`) or from a bundle's ONNX model (:class:`OnnxEncoder`), and classifiers
are the edge's own :class:`~sortline.edge_runtime.model.head.LogisticHead`, so a number measured here
is the number a station would see.

Protocols on frozen embeddings (``train`` is the labeled gallery, ``test`` the queries):

- ``linear``: logistic regression on all train embeddings;
- ``knn``: weighted k-nearest neighbours by cosine similarity (weights ``exp(sim / 0.07)``, as
  in the instance-discrimination and DINO papers);
- ``retrieval``: each test image ranks the gallery by cosine similarity; mean average
  precision over queries, and the 1-NN label as the prediction;
- ``kshot``: logistic regression on ``k`` random train images per class, repeated over seeds
  (mean ± standard deviation);
- ``oneshot``: logistic regression on one reference image per class (for example a data set's
  iconic product photos), the way a station enrolls a new item.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    classification_report,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
)
from sklearn.neighbors import KNeighborsClassifier

from sortline.edge_runtime.errors import SortlineError
from sortline.edge_runtime.model.descriptors import ColourHistogram
from sortline.edge_runtime.model.embedder import OnnxEmbedder
from sortline.edge_runtime.model.head import LogisticHead
from sortline.edge_runtime.model.preprocess import InputSpec

from .backbones import Backbone
from .data import model_input

KNN_TEMPERATURE = 0.07


class EvaluationError(SortlineError, ValueError):
    """An evaluation that cannot run as asked (the message says why)."""


class Encoder(Protocol):
    """Edge-preprocessed uint8 images (``N×C×S×S``) → ``N×D`` float32 embeddings."""

    spec: InputSpec

    def embed(self, images: np.ndarray) -> np.ndarray: ...


@torch.no_grad()
def embed(backbone: Backbone, images: np.ndarray, spec: InputSpec, batch_size: int = 256) -> np.ndarray:
    """``N×C×S×S`` uint8 (edge-preprocessed, not normalised) → ``N×D`` float32 embeddings."""
    backbone = backbone.eval()
    dev = next(backbone.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = model_input(images[i:i + batch_size], spec)
        out.append(backbone(torch.from_numpy(x).to(dev)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, backbone.embedding_dim), np.float32)


@dataclass
class TorchEncoder:
    backbone: Backbone
    spec: InputSpec

    def embed(self, images: np.ndarray) -> np.ndarray:
        return embed(self.backbone, images, self.spec)


@dataclass
class OnnxEncoder:
    """A bundle's backbone through ONNX Runtime, exactly as the station runs it."""

    embedder: OnnxEmbedder
    batch_size: int = 64

    @property
    def spec(self) -> InputSpec:
        return self.embedder.spec

    def embed(self, images: np.ndarray) -> np.ndarray:
        out = [self.embedder.embed_batch(model_input(images[i:i + self.batch_size], self.spec))
               for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


@dataclass
class DescriptorEncoder:
    """A hand-made descriptor (e.g. a colour histogram) in the encoders' place, as a baseline
    and as a second input a head may fuse with the embedding."""

    descriptor: ColourHistogram
    spec: InputSpec

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.descriptor.of_arrays(images, self.spec)


# ---------------------------------------------------------------- metrics


@dataclass(frozen=True)
class Scores:
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    mcc: float

    @classmethod
    def of(cls, truth: np.ndarray, predicted: np.ndarray) -> Scores:
        """Balanced accuracy and macro-F1 average over the classes present in ``truth``: a test
        set may hold fewer classes than the gallery, and a wrong guess of an absent class
        already costs its true class recall."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
            return cls(
                accuracy=float(accuracy_score(truth, predicted)),
                balanced_accuracy=float(balanced_accuracy_score(truth, predicted)),
                macro_f1=float(f1_score(truth, predicted, labels=np.unique(truth), average="macro",
                                        zero_division=0)),
                mcc=float(matthews_corrcoef(truth, predicted)),
            )

    def to_dict(self) -> dict:
        return {k: round(v, 4) for k, v in self.__dict__.items()}


def per_class(truth: np.ndarray, predicted: np.ndarray, class_names: Sequence[str]) -> dict:
    """Confusion matrix over every class, and precision/recall/F1/support per class present."""
    labels = list(range(len(class_names)))
    report = classification_report(truth, predicted, labels=labels, target_names=list(class_names),
                                   output_dict=True, zero_division=0)
    rows = {name: {k: round(float(v), 4) if k != "support" else int(v) for k, v in report[name].items()}
            for name in class_names if report[name]["support"] > 0}
    return {"confusion": confusion_matrix(truth, predicted, labels=labels).tolist(), "classes": rows}


@dataclass
class ProtocolResult:
    """One protocol's scores. For repeated protocols (k-shot) ``scores`` is the mean and
    ``spread`` the standard deviation over seeds; ``predicted`` is the first seed's."""

    name: str
    scores: Scores
    predicted: np.ndarray
    extra: dict = field(default_factory=dict)
    spread: Scores | None = None

    def to_dict(self) -> dict:
        out = {"protocol": self.name, **self.scores.to_dict(), **self.extra}
        if self.spread is not None:
            out.update({f"{k}_std": v for k, v in self.spread.to_dict().items()})
        return out


# ---------------------------------------------------------------- protocols


def fit_probe(train_x: np.ndarray, train_y: np.ndarray, class_names: Sequence[str], C: float = 1.0) -> LogisticHead:
    """The edge head on frozen embeddings (classes without examples are never predicted)."""
    return LogisticHead.fit(train_x, train_y, list(class_names), C=C, class_weight=None)


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 class_names: Sequence[str], C: float = 1.0) -> tuple[Scores, np.ndarray]:
    """Logistic regression on frozen train embeddings, scored on the test embeddings."""
    predicted = fit_probe(train_x, train_y, class_names, C).predict(test_x)
    return Scores.of(test_y, predicted), predicted


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
        k: int = 20, temperature: float = KNN_TEMPERATURE) -> tuple[Scores, np.ndarray]:
    """k nearest gallery images by cosine similarity, each voting with ``exp(sim / T)``."""
    classifier = KNeighborsClassifier(
        n_neighbors=min(k, len(train_x)), metric="cosine", algorithm="brute",
        weights=lambda distance: np.exp((1.0 - distance) / temperature))
    classifier.fit(_unit(train_x), train_y)
    predicted = classifier.predict(_unit(test_x))
    return Scores.of(test_y, predicted), predicted


def retrieval(gallery_x: np.ndarray, gallery_y: np.ndarray, query_x: np.ndarray,
              query_y: np.ndarray) -> tuple[Scores, np.ndarray, dict]:
    """Cosine ranking of the gallery for each query: mAP over the queries whose class is in the
    gallery (the others have no right answer to find), recall@1/@5, and the 1-NN prediction."""
    similarity = _unit(query_x) @ _unit(gallery_x).T
    predicted = gallery_y[similarity.argmax(axis=1)]
    in_gallery = np.isin(query_y, gallery_y)
    precisions = [average_precision_score(gallery_y == query_y[i], similarity[i])
                  for i in np.flatnonzero(in_gallery)]
    top5 = np.argsort(-similarity, axis=1)[:, :5]
    hit5 = (gallery_y[top5] == query_y[:, None]).any(axis=1)
    extra = {"map": round(float(np.mean(precisions)), 4) if precisions else None,
             "recall_at_1": round(float((predicted == query_y)[in_gallery].mean()), 4) if in_gallery.any() else None,
             "recall_at_5": round(float(hit5[in_gallery].mean()), 4) if in_gallery.any() else None,
             "queries": int(in_gallery.sum()), "queries_without_gallery_class": int((~in_gallery).sum())}
    return Scores.of(query_y, predicted), predicted, extra


def sample_per_class(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``k`` random images of every class (all of a class that has fewer)."""
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def kshot(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
          class_names: Sequence[str], k: int, seeds: int = 5, C: float = 1.0) -> ProtocolResult:
    """Logistic regression on ``k`` train images per class, over ``seeds`` random draws."""
    runs, first = [], None
    for seed in range(seeds):
        idx = sample_per_class(train_y, k, np.random.default_rng(seed))
        scores, predicted = linear_probe(train_x[idx], train_y[idx], test_x, test_y, class_names, C)
        runs.append(scores)
        first = predicted if first is None else first
    table = np.array([[getattr(s, f) for f in Scores.__dataclass_fields__] for s in runs])
    mean, std = Scores(*table.mean(axis=0)), Scores(*table.std(axis=0))
    return ProtocolResult(f"kshot:{k}", mean, first, {"shots": k, "seeds": seeds}, spread=std)


def oneshot(reference_x: np.ndarray, reference_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
            class_names: Sequence[str], C: float = 1.0) -> ProtocolResult:
    """Logistic regression on the references alone (one image per class, or a few), as a
    station enrolls items. Beside it, the accuracy of the nearest class mean of the references
    by cosine (the prototype classifier of the few-shot literature)."""
    scores, predicted = linear_probe(reference_x, reference_y, test_x, test_y, class_names, C)
    classes = np.unique(reference_y)
    prototypes = _unit(np.stack([_unit(reference_x[reference_y == c]).mean(axis=0) for c in classes]))
    nearest = classes[(_unit(test_x) @ prototypes.T).argmax(axis=1)]
    covered = np.isin(test_y, reference_y)
    return ProtocolResult("oneshot", scores, predicted, {
        "prototype_accuracy": round(float((nearest == test_y).mean()), 4),
        "references": int(len(reference_y)), "reference_classes": int(len(classes)),
        "test_images_without_reference": int((~covered).sum())})


def parse_protocol(text: str) -> tuple[str, int | None]:
    """``linear``, ``knn``, ``retrieval``, ``oneshot``, ``kshot:K``, ``finetune[:K]`` or
    ``scratch[:K]`` (K labels per class; ``all`` or none: every label) → (name, K)."""
    name, _, arg = text.strip().partition(":")
    if name in ("linear", "knn", "retrieval", "oneshot") and not arg:
        return name, None
    if name == "kshot" and arg == "all":
        return "linear", None
    if name in ("kshot", "finetune", "scratch"):
        if name != "kshot" and arg in ("", "all"):
            return name, None
        if arg.isdigit() and int(arg) > 0:
            return name, int(arg)
    raise EvaluationError(f"unknown protocol {text!r}: use linear, knn, retrieval, oneshot, kshot:K, "
                     "finetune[:K] or scratch[:K] (K labels per class)")


def protocol_label(name: str, k: int | None) -> str:
    return name if k is None else f"{name}:{k}"
