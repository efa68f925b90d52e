"""Methods that use labels or image pairs: supervised-contrastive training of a teacher, a
student distilled from it, and plain classifiers (an image's class; an item's class from all
its views).

The recipe (after the product-recognition works this package follows): train a teacher on
product image pairs with a supervised-contrastive loss and hard-negative mining; then train a
student, in one multitask batch, on the same pairs (contrastive) and on unlabeled images, where
it regresses the frozen teacher's embedding of the same augmented view (Smooth-L1).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from ..heads import ProjectionHead
from ..losses import SupConLoss
from .base import Method, StepOutput, frozen_copy


class SupCon(Method):
    """Khosla et al., NeurIPS 2020. Labels are class ids or, from image pairs, the connected
    components of "same item" pairs (see :func:`sortline.train.losses.labels_from_pairs`)."""

    needs_labels = True

    def __init__(self, backbone: Backbone, proj_dim: int = 128, hidden_dim: int = 512, temperature: float = 0.1,
                 hard_negatives: int | None = 64):
        super().__init__(backbone)
        self.projection = ProjectionHead(backbone.embedding_dim, hidden_dim, proj_dim)
        self.criterion = SupConLoss(temperature, hard_negatives)

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        if (labels < 0).any():
            raise ValueError("supcon needs a label (or a pair) for every image")
        n, v = views.shape[:2]
        h = self.backbone(views.flatten(0, 1))
        z = self.projection(h).view(n, v, -1)
        return StepOutput(self.criterion(z, labels), h.view(n, v, -1)[:, 0])


class Distill(Method):
    """A student trained on labeled pairs (supervised-contrastive) and on unlabeled images
    (Smooth-L1 between a linear map of its embedding and the frozen teacher's embedding of the
    same view), both in every batch. Rows with label -1 are the unlabeled ones.

    The teacher's embedding is L2-normalised and scaled by √D, so each target coordinate is of
    order one, where Smooth-L1 is neither all-quadratic nor all-linear.
    """

    needs_labels = True

    def __init__(self, backbone: Backbone, teacher: Backbone, proj_dim: int = 128, hidden_dim: int = 512,
                 temperature: float = 0.1, hard_negatives: int | None = 64, distill_weight: float = 1.0):
        super().__init__(backbone)
        if teacher.in_channels != backbone.in_channels:
            raise ValueError(f"teacher takes {teacher.in_channels} channels, student {backbone.in_channels}")
        self.teacher = frozen_copy(teacher).eval()
        self.projection = ProjectionHead(backbone.embedding_dim, hidden_dim, proj_dim)
        self.regressor = nn.Linear(backbone.embedding_dim, teacher.embedding_dim)
        self.criterion = SupConLoss(temperature, hard_negatives)
        self.distill_weight = distill_weight

    def train(self, mode: bool = True) -> Distill:
        super().train(mode)
        self.teacher.eval()  # frozen, batch-norm statistics included
        return self

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        n, v = views.shape[:2]
        h = self.backbone(views.flatten(0, 1)).view(n, v, -1)
        labeled = labels >= 0
        loss = h.sum() * 0.0
        if labeled.sum() > 0:
            z = self.projection(h[labeled].flatten(0, 1)).view(int(labeled.sum()), v, -1)
            loss = loss + self.criterion(z, labels[labeled])
        unlabeled = ~labeled
        if unlabeled.any():
            first = views[unlabeled][:, 0]
            with torch.no_grad():
                t = self.teacher(first).float()
            target = F.normalize(t, dim=1) * math.sqrt(t.shape[1])
            pred = self.regressor(h[unlabeled][:, 0]).float()
            loss = loss + self.distill_weight * F.smooth_l1_loss(pred, target)
        return StepOutput(loss, h[:, 0])


class Classifier(Method):
    """Supervised from scratch: a linear layer on the backbone's embedding of one augmented view,
    cross-entropy with label smoothing. The honest baseline beside self-supervision
    (``benchmarks/quality.py --baseline supervised``): the same backbone, augmentation and time
    budget, with the labels alone."""

    views = 1
    needs_labels = True

    def __init__(self, backbone: Backbone, classes: int, smoothing: float = 0.1) -> None:
        super().__init__(backbone)
        if classes < 2:
            raise ValueError(f"a classifier needs at least two classes, got {classes}")
        self.head = nn.Linear(backbone.embedding_dim, classes)
        self.smoothing = float(smoothing)

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        if (labels < 0).any():
            raise ValueError("a classifier needs a label for every image")
        h = self.backbone(views[:, 0])
        return StepOutput(F.cross_entropy(self.head(h), labels, label_smoothing=self.smoothing), h)


class ItemClassifier(Method):
    """A class for each whole item from all its camera views, pooled as the station pools them
    (``view_pools``: mean and max over the views, ``model/fusion.py``), and the item's sensor
    features beside them, through one linear layer with cross-entropy.

    The stage that teaches a backbone what tells the classes apart where labels exist: a scab
    seen by one view of four, a bruise as a darker region in NIR. With a sensor the linear layer
    learns from the readings from the first step on, and the backbone learns what they do not
    already tell; that layer is the station's head (:meth:`head_arrays`). A head fitted afterwards
    on the same items would not do: on the items the backbone learnt, their views alone separate
    the classes, and it leaves the readings aside (docs/defects.md).
    """

    needs_labels = True
    vertical_flip = False

    def __init__(self, backbone: Backbone, classes: int, view_pools: tuple[str, ...] = ("mean", "max"),
                 sensor_features: int = 0) -> None:
        super().__init__(backbone)
        if not view_pools or set(view_pools) - {"mean", "max"}:
            raise ValueError(f"view pools must be some of mean and max, not {view_pools}")
        self.view_pools = tuple(view_pools)
        self.sensor_features = int(sensor_features)
        self.head = nn.Linear(len(self.view_pools) * backbone.embedding_dim + self.sensor_features, classes)

    def forward(self, views: torch.Tensor, labels: torch.Tensor, sensors: torch.Tensor | None = None) -> StepOutput:
        if (labels < 0).any():
            raise ValueError("the item stage needs a label for every item")
        if (sensors is None) != (self.sensor_features == 0):
            raise ValueError(f"this stage takes {self.sensor_features} sensor features an item, "
                             f"got {None if sensors is None else tuple(sensors.shape)}")
        n, v = views.shape[:2]
        h = self.backbone(views.flatten(0, 1)).view(n, v, -1)
        pooled = {"mean": lambda: h.mean(dim=1), "max": lambda: h.amax(dim=1)}
        parts = [pooled[name]() for name in self.view_pools]
        if sensors is not None:
            parts.append(sensors.to(parts[0].dtype))
        logits = self.head(torch.cat(parts, dim=1))
        return StepOutput(F.cross_entropy(logits, labels), h[:, 0])

    @torch.no_grad()
    def head_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The linear layer as float32 ``(coef K×F, intercept K)``, on the fused feature vector
        ``[pooled views…, standardised sensor features]``."""
        return (self.head.weight.detach().float().cpu().numpy().copy(),
                self.head.bias.detach().float().cpu().numpy().copy())
