"""Non-contrastive methods: BYOL, SimSiam, Barlow Twins. No negatives; each has its own way of
not collapsing (momentum target, stop-gradient, decorrelation), which the loop's embedding-std
monitor watches."""

from __future__ import annotations

import torch

from ..backbones import Backbone
from ..heads import ProjectionHead
from ..losses import BarlowTwinsLoss, negative_cosine
from .base import Method, StepOutput, ema_update, frozen_copy
from .contrastive import cosine_momentum


class BYOL(Method):
    """Grill et al., NeurIPS 2020: an online network with a predictor regresses a momentum
    target network's projection of the other view; symmetric loss ``2 - 2·cos``."""

    def __init__(self, backbone: Backbone, proj_dim: int = 128, hidden_dim: int = 512, momentum: float = 0.99):
        super().__init__(backbone)
        self.projection = ProjectionHead(backbone.embedding_dim, hidden_dim, proj_dim)
        self.predictor = ProjectionHead(proj_dim, hidden_dim, proj_dim)
        self.target_backbone = frozen_copy(backbone)
        self.target_projection = frozen_copy(self.projection)
        self.base_momentum = momentum

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        x1, x2 = views[:, 0], views[:, 1]
        h1, h2 = self.backbone(x1), self.backbone(x2)
        p1, p2 = self.predictor(self.projection(h1)), self.predictor(self.projection(h2))
        with torch.no_grad():
            t1, t2 = self.target_projection(self.target_backbone(x1)), self.target_projection(self.target_backbone(x2))
        loss = (2 + 2 * negative_cosine(p1, t2)) + (2 + 2 * negative_cosine(p2, t1))
        return StepOutput(loss / 2, h1)

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        m = cosine_momentum(self.base_momentum, progress)
        ema_update(self.target_backbone, self.backbone, m)
        ema_update(self.target_projection, self.projection, m)


class SimSiam(Method):
    """Chen & He, CVPR 2021: BYOL without the momentum target; the stop-gradient alone keeps
    it from collapsing. The predictor is a bottleneck MLP (``proj_dim → proj_dim/4 → proj_dim``)."""

    def __init__(self, backbone: Backbone, proj_dim: int = 512, hidden_dim: int = 512):
        super().__init__(backbone)
        self.projection = ProjectionHead(backbone.embedding_dim, hidden_dim, proj_dim)
        self.predictor = ProjectionHead(proj_dim, max(1, proj_dim // 4), proj_dim)

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        h1, h2 = self.backbone(views[:, 0]), self.backbone(views[:, 1])
        z1, z2 = self.projection(h1), self.projection(h2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return StepOutput(0.5 * negative_cosine(p1, z2) + 0.5 * negative_cosine(p2, z1), h1)


class BarlowTwins(Method):
    """Zbontar et al., ICML 2021: the two views' projections, standardised per dimension,
    should correlate perfectly dimension by dimension and not at all across dimensions."""

    def __init__(self, backbone: Backbone, proj_dim: int = 1024, hidden_dim: int = 1024, lambd: float = 5e-3):
        super().__init__(backbone)
        self.projection = ProjectionHead(backbone.embedding_dim, hidden_dim, proj_dim)
        self.criterion = BarlowTwinsLoss(lambd)

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        h1, h2 = self.backbone(views[:, 0]), self.backbone(views[:, 1])
        return StepOutput(self.criterion(self.projection(h1), self.projection(h2)), h1)
