"""Pretext-task methods: predict a transformation the network did not see being applied.

RotNet (Gidaris et al., ICLR 2018) classifies four rotations. Jigsaw (Noroozi & Favaro, ECCV
2016) cuts the view into 3×3 tiles, shuffles them by one of a fixed set of permutations, embeds
every tile with the shared backbone and classifies which permutation it was. Tiles are taken at
a random offset inside their cells, so edges that continue from tile to tile give nothing away.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from ..backbones import Backbone
from ..heads import ClassifierHead
from .base import Method, StepOutput


class RotNet(Method):
    views = 1
    vertical_flip = False  # flips on both axes would make 0° and 180° the same class

    def __init__(self, backbone: Backbone, hidden_dim: int = 512):
        super().__init__(backbone)
        self.classifier = ClassifierHead(backbone.embedding_dim, 4, hidden_dim)

    @staticmethod
    def rotations(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``N×C×S×S`` → the ``4N`` rotated images (0°, 90°, 180°, 270°) and their classes."""
        rotated = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
        target = torch.arange(4, device=x.device).repeat_interleave(len(x))
        return rotated, target

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        rotated, target = self.rotations(views[:, 0])
        h = self.backbone(rotated)
        loss = F.cross_entropy(self.classifier(h).float(), target)
        return StepOutput(loss, h[: len(views)])


def permutation_set(count: int, tiles: int = 9, seed: int = 0, pool: int = 2000) -> torch.Tensor:
    """``count`` permutations of ``tiles`` far apart in Hamming distance, greedily picked from a
    seeded random pool as Noroozi & Favaro do (§3.2): each new one maximises its minimum
    distance to those already chosen. The identity is always the first."""
    g = torch.Generator().manual_seed(seed)
    candidates = torch.stack([torch.randperm(tiles, generator=g) for _ in range(pool)])
    if count > pool or count > math.factorial(tiles):
        raise ValueError(f"cannot pick {count} distinct permutations of {tiles} tiles")
    chosen = [torch.arange(tiles)]
    distance = (candidates != chosen[0]).sum(dim=1)
    while len(chosen) < count:
        best = int(distance.argmax())
        chosen.append(candidates[best])
        distance = torch.minimum(distance, (candidates != candidates[best]).sum(dim=1))
    return torch.stack(chosen)


def cut_tiles(x: torch.Tensor, grid: int = 3, gap: float = 0.15,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """``N×C×S×S`` → ``N×grid²×C×t×t``: one tile per cell, ``gap`` of the cell left as a margin
    and the tile placed at a random offset inside its cell."""
    n, c, s, _ = x.shape
    cell = s // grid
    tile = max(1, int(round(cell * (1 - gap))))
    out = x.new_empty(n, grid * grid, c, tile, tile)
    offsets = torch.randint(0, cell - tile + 1, (grid * grid, 2), generator=generator)
    for k, (row, col) in enumerate(itertools.product(range(grid), repeat=2)):
        dy, dx = int(offsets[k, 0]), int(offsets[k, 1])
        top, left = row * cell + dy, col * cell + dx
        out[:, k] = x[:, :, top:top + tile, left:left + tile]
    return out


class Jigsaw(Method):
    views = 1

    def __init__(self, backbone: Backbone, permutations: int = 64, hidden_dim: int = 512, grid: int = 3):
        super().__init__(backbone)
        self.grid = grid
        self.register_buffer("permutations", permutation_set(permutations, grid * grid))
        self.classifier = ClassifierHead(grid * grid * backbone.embedding_dim, permutations, hidden_dim)

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        x = views[:, 0]
        n = len(x)
        tiles = cut_tiles(x, self.grid)  # N×9×C×t×t
        target = torch.randint(0, len(self.permutations), (n,), device=x.device)
        order = self.permutations[target]  # N×9: position k shows tile order[k]
        shuffled = tiles[torch.arange(n, device=x.device)[:, None], order]
        h = self.backbone(shuffled.flatten(0, 1)).view(n, self.grid * self.grid, -1)
        loss = F.cross_entropy(self.classifier(h.flatten(1)).float(), target)
        return StepOutput(loss, h.mean(dim=1))
