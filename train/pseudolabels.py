"""The label stage of a recipe: where some images have labels, a teacher labels the rest, and
the backbone learns from both.

After the self-supervised stage, the teacher is the station's own head, a logistic regression
(:class:`~sortline.edge_runtime.model.head.LogisticHead`), on the frozen embedding fused with the
colour histogram where the images have RGB (docs/quality.md: the fused features beat either
alone). It is fitted on the labeled images and labels every unlabeled one it is confident about
(pseudo-labels, Lee 2013; the self-training student of Xie et al., "Noisy Student", 2020). The
student is the same backbone, trained on augmented views with the supervised contrastive loss
(Khosla et al., 2020) in NT-Xent's place: views of images with the same true or pseudo label are
positives, and an unlabeled image the teacher is unsure of is its own class, as before. It
learns, inside the backbone, what the teacher read from the colour histogram and the labels.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from sortline.edge_runtime.model.descriptors import ColourHistogram
from sortline.edge_runtime.model.head import LogisticHead

from .backbones import Backbone
from .data import UNLABELED, TrainingSet
from .evaluate import embed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PseudoLabels:
    labels: np.ndarray  # N: the true label where given, the teacher's where confident, UNLABELED otherwise
    given: int  # images with a true label
    pseudo: int  # unlabeled images the teacher labeled
    unsure: int  # unlabeled images below the confidence threshold (self-supervised loss only)
    threshold: float
    fused: bool  # the teacher read the colour histogram beside the embedding

    def to_dict(self) -> dict:
        return {"given": self.given, "pseudo": self.pseudo, "unsure": self.unsure, "threshold": self.threshold,
                "teacher": "LR on embedding + colour histogram" if self.fused else "LR on embedding"}


def can_label(data: TrainingSet) -> bool:
    """Whether a label stage has something to learn from: two classes with a labeled image each."""
    return len(np.unique(data.labels[data.labels != UNLABELED])) >= 2


def teacher_features(backbone: Backbone, data: TrainingSet) -> tuple[np.ndarray, bool]:
    """The teacher's input: the frozen embedding, with the colour histogram beside it when the
    images have r, g and b channels."""
    x = embed(backbone, data.images, data.spec)
    if not all(c in data.spec.channels for c in ("r", "g", "b")):
        return x, False
    return np.hstack([x, ColourHistogram().of_arrays(data.images, data.spec)]), True


def pseudo_label(backbone: Backbone, data: TrainingSet, threshold: float = 0.5, C: float = 1.0,
                 seed: int = 0) -> PseudoLabels:
    """Fit the teacher on ``data``'s labeled images and label the unlabeled ones whose top class
    probability reaches ``threshold``."""
    if not can_label(data):
        raise ValueError("a teacher needs labeled images of at least two classes")
    x, fused = teacher_features(backbone, data)
    known = data.labels != UNLABELED
    names = data.class_names or tuple(str(c) for c in range(int(data.labels.max()) + 1))
    head = LogisticHead.fit(x[known], data.labels[known], names, C=C, seed=seed)
    labels = data.labels.copy()
    pseudo = unsure = 0
    if (~known).any():
        p = head.predict_proba(x[~known])
        confident = p.max(axis=1) >= threshold
        labels[np.flatnonzero(~known)[confident]] = p.argmax(axis=1)[confident]
        pseudo, unsure = int(confident.sum()), int((~confident).sum())
    result = PseudoLabels(labels, int(known.sum()), pseudo, unsure, threshold, fused)
    log.info("label stage: %d labeled, %d pseudo-labeled, %d below %.2f", result.given, pseudo, unsure, threshold)
    return result
