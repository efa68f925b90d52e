"""Losses for self-supervised training, one per class, each citing its paper."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross entropy (Chen et al., SimCLR, ICML 2020, eq. 1).

    For a batch of N pairs ``(z1[i], z2[i])`` each of the 2N embeddings must pick out its
    partner among the other 2N-1 by cosine similarity divided by ``temperature``.

    >>> loss = NTXentLoss(temperature=0.2)
    >>> z1, z2 = torch.randn(8, 32), torch.randn(8, 32)
    >>> float(loss(z1, z2)) > 0
    True
    """

    def __init__(self, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.temperature = temperature

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        n = z1.shape[0]
        z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        logits = z @ z.T / self.temperature
        logits.fill_diagonal_(float("-inf"))  # an embedding is not its own partner
        partner = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(logits, partner)
