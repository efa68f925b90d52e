"""Projection and prediction heads shared by the SSL methods."""

from __future__ import annotations

from torch import nn


class ProjectionHead(nn.Sequential):
    """MLP ``in → hidden → out`` with batch norm and ReLU between (SimCLR's g(·)); BYOL's
    projector and predictor and SimSiam's predictor have the same shape."""

    def __init__(self, in_dim: int, hidden_dim: int = 512, out_dim: int = 128) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim, bias=False),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )


class ClassifierHead(nn.Sequential):
    """The pretext tasks' classifier (rotation, permutation): ``in → hidden → classes``."""

    def __init__(self, in_dim: int, classes: int, hidden_dim: int = 512) -> None:
        super().__init__(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, classes))
