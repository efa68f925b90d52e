"""Judging frozen embeddings the way the literature does.

Embeddings are taken through the edge preprocessing (:func:`sortline.edge_runtime.preprocess.
normalize` on the uint8 arrays :mod:`sortline.train.data` keeps), and classifiers are the edge's
own :class:`~sortline.edge_runtime.head.LogisticHead`, so a number measured here is the number
a station would see with a fp32 backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, matthews_corrcoef

from sortline.edge_runtime.head import LogisticHead
from sortline.edge_runtime.preprocess import InputSpec, normalize

from .backbones import Backbone


@torch.no_grad()
def embed(backbone: Backbone, images: np.ndarray, spec: InputSpec, batch_size: int = 256) -> np.ndarray:
    """``N×C×S×S`` uint8 (edge-preprocessed, not normalised) → ``N×D`` float32 embeddings."""
    backbone = backbone.eval()
    dev = next(backbone.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = normalize(images[i:i + batch_size] / np.float32(255), spec)
        out.append(backbone(torch.from_numpy(x).to(dev)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, backbone.embedding_dim), np.float32)


@dataclass(frozen=True)
class Scores:
    accuracy: float
    balanced_accuracy: float
    macro_f1: float
    mcc: float

    @classmethod
    def of(cls, truth: np.ndarray, predicted: np.ndarray) -> Scores:
        return cls(
            accuracy=float(accuracy_score(truth, predicted)),
            balanced_accuracy=float(balanced_accuracy_score(truth, predicted)),
            macro_f1=float(f1_score(truth, predicted, average="macro", zero_division=0)),
            mcc=float(matthews_corrcoef(truth, predicted)),
        )

    def to_dict(self) -> dict:
        return {k: round(v, 4) for k, v in self.__dict__.items()}


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 class_names: tuple[str, ...], C: float = 1.0) -> tuple[Scores, np.ndarray]:
    """Logistic regression on frozen train embeddings, scored on the test embeddings."""
    names = class_names or tuple(str(i) for i in range(int(max(train_y.max(), test_y.max())) + 1))
    head = LogisticHead.fit(train_x, train_y, names, C=C, class_weight=None)
    predicted = head.predict(test_x)
    return Scores.of(test_y, predicted), predicted
