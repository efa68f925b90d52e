"""SimCLR (Chen et al., 2020): backbone + projection head + NT-Xent over two augmented views."""

from __future__ import annotations

import torch
from torch import nn

from .backbones import Backbone
from .heads import ProjectionHead
from .losses import NTXentLoss


class SimCLR(nn.Module):
    def __init__(self, backbone: Backbone, proj_dim: int = 128, hidden_dim: int = 512, temperature: float = 0.2):
        super().__init__()
        self.backbone = backbone
        self.projection = ProjectionHead(backbone.embedding_dim, hidden_dim, proj_dim)
        self.criterion = NTXentLoss(temperature)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss, and the first view's embeddings (for the collapse monitor)."""
        h1, h2 = self.backbone(view1), self.backbone(view2)
        return self.criterion(self.projection(h1), self.projection(h2)), h1
