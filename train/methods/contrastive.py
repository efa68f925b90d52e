"""Contrastive methods: SimCLR and MoCo v2."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones import Backbone
from ..heads import ProjectionHead
from ..losses import ColourPredictionLoss, NTXentLoss, QueueInfoNCELoss, SupConLoss
from .base import Method, StepOutput, ema_update, frozen_copy


class SimCLR(Method):
    """Chen et al., ICML 2020: backbone + projection head + NT-Xent over two augmented views."""

    def __init__(self, backbone: Backbone, proj_dim: int = 128, hidden_dim: int = 512, temperature: float = 0.2,
                 colour: ColourPredictionLoss | None = None, colour_weight: float = 1.0):
        super().__init__(backbone)
        self.projection = ProjectionHead(backbone.embedding_dim, hidden_dim, proj_dim)
        self.criterion = NTXentLoss(temperature)
        self.colour = colour  # optional colour-aware objective beside NT-Xent
        self.colour_weight = colour_weight
        self.classifier: nn.Linear | None = None  # a label stage's linear classifier (attach_labels)
        self.label_weight = 0.0
        self.label_smoothing = 0.0
        self.supcon: SupConLoss | None = None  # a label stage's contrast: same-label images are positives

    def attach_labels(self, classes: int, weight: float = 1.0, contrast: bool = False, smoothing: float = 0.1) -> None:
        """Learn from labels (>= 0) from now on, for the recipe's label stage
        (:mod:`sortline.train.pseudolabels`): a linear classifier on the embedding adds ``weight`` ×
        its cross entropy on both views, and with ``contrast`` the contrastive loss becomes the
        supervised one (Khosla et al., 2020) in which views of same-label images are positives.
        Unlabeled images stay their own class, where it is NT-Xent again."""
        if classes < 2:
            raise ValueError(f"learning from labels needs at least two classes, got {classes}")
        self.classifier = nn.Linear(self.backbone.embedding_dim, classes) if weight > 0 else None
        self.label_weight, self.label_smoothing = float(weight), float(smoothing)
        self.supcon = SupConLoss(self.criterion.temperature) if contrast else None

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        x1, x2 = views[:, 0], views[:, 1]
        h1, h2 = self.backbone(x1), self.backbone(x2)
        known = labels >= 0
        if self.supcon is not None:
            own = int(labels.max()) + 1 + torch.arange(len(labels), device=labels.device)
            loss = self.supcon(torch.stack([self.projection(h1), self.projection(h2)], 1),
                               torch.where(known, labels, own))
        else:
            loss = self.criterion(self.projection(h1), self.projection(h2))
        if self.colour is not None:
            loss = loss + self.colour_weight * 0.5 * (self.colour(h1, x1) + self.colour(h2, x2))
        if self.classifier is not None and known.any():
            y = labels[known]
            ce = sum(F.cross_entropy(self.classifier(h[known]).float(), y, label_smoothing=self.label_smoothing)
                     for h in (h1, h2))
            loss = loss + self.label_weight * 0.5 * ce * known.float().mean()
        return StepOutput(loss, h1)


class MoCo(Method):
    """MoCo v2 (He et al., CVPR 2020; Chen et al., 2020): a query encoder trained by InfoNCE
    against keys from a momentum encoder and a queue of past keys. The loss is symmetrised
    (each view is the query once), as in MoCo v3 and most reimplementations, so one step sees
    as many pairs as SimCLR's.

    The queue must be much smaller than the data set: a queued key of the same image would be
    a positive posing as a negative. On several GPUs each process keeps its own queue.
    """

    def __init__(self, backbone: Backbone, proj_dim: int = 128, hidden_dim: int = 512, temperature: float = 0.2,
                 queue_size: int = 1024, momentum: float = 0.99):
        super().__init__(backbone)
        self.projection = ProjectionHead(backbone.embedding_dim, hidden_dim, proj_dim)
        self.key_backbone = frozen_copy(backbone)
        self.key_projection = frozen_copy(self.projection)
        self.criterion = QueueInfoNCELoss(temperature)
        self.base_momentum = momentum
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.key_projection(self.key_backbone(x)).float(), dim=1)

    @torch.no_grad()
    def _enqueue(self, keys: torch.Tensor) -> None:
        size = len(self.queue)
        keys = keys[-size:]  # a batch larger than the queue keeps its newest keys
        ptr = int(self.queue_ptr)
        idx = (torch.arange(len(keys), device=keys.device) + ptr) % size
        self.queue[idx] = keys.to(self.queue.dtype)
        self.queue_ptr.fill_((ptr + len(keys)) % size)

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        x1, x2 = views[:, 0], views[:, 1]
        h1, h2 = self.backbone(x1), self.backbone(x2)
        q1, q2 = self.projection(h1), self.projection(h2)
        k1, k2 = self._keys(x1), self._keys(x2)
        queue = self.queue.clone()  # the loss's graph keeps it; the enqueue below changes the buffer
        loss = 0.5 * (self.criterion(q1, k2, queue) + self.criterion(q2, k1, queue))
        self._enqueue(torch.cat([k1, k2]))
        return StepOutput(loss, h1)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        ema_update(self.key_backbone, self.backbone, self.base_momentum)
        ema_update(self.key_projection, self.projection, self.base_momentum)


def cosine_momentum(base: float, progress: float) -> float:
    """BYOL's schedule: from ``base`` up to 1 along a half cosine (Grill et al., §3.2)."""
    return 1 - (1 - base) * (math.cos(math.pi * min(1.0, progress)) + 1) / 2
