"""What every method is to the training loop."""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
from torch import nn

from ..backbones import Backbone


class StepOutput(NamedTuple):
    loss: torch.Tensor
    embeddings: torch.Tensor  # backbone embeddings of one view, for the collapse monitor


class Method(nn.Module):
    """A backbone plus whatever a method trains beside it.

    ``forward(views, labels)`` takes a batch of ``N×V×C×S×S`` augmented views (``V`` is the
    class's ``views``) and ``N`` labels (-1 where unknown) and returns the loss. Methods with a
    momentum encoder update it in ``after_step``, which the loop calls after each optimiser step
    with the fraction of training done. A method whose task a vertical flip would make
    ambiguous (RotNet: a flipped view is another view rotated by 180°) turns it off.
    """

    views: ClassVar[int] = 2
    needs_labels: ClassVar[bool] = False
    vertical_flip: ClassVar[bool] = True  # may the augmentation flip views upside down?

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, views: torch.Tensor, labels: torch.Tensor) -> StepOutput:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        """Called after every optimiser step; ``progress`` runs from 0 to 1."""


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target ← m·target + (1-m)·online``, parameters and buffers (BN statistics) alike."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.lerp_(o.detach(), 1 - momentum)
    for t, o in zip(target.buffers(), online.buffers()):
        if t.dtype.is_floating_point:
            t.lerp_(o, 1 - momentum)
        else:
            t.copy_(o)


def frozen_copy(module: nn.Module) -> nn.Module:
    import copy

    twin = copy.deepcopy(module)
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin
