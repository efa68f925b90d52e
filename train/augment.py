"""Augmentations for multi-channel views (RGB + NIR), with torchvision transforms v2.

Geometric transforms move every channel together; colour transforms touch the RGB channels
only and a separate brightness/contrast jitter the NIR channel. The default colour jitter
keeps hue and saturation nearly fixed and never turns the image grey: colour is much of what
tells a ripe fruit from a green one (see ../shared/MEASURED.md), and a model taught to ignore
it would have to relearn it from a handful of labels.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.transforms import v2

from sortline.edge_runtime.preprocess import InputSpec


class MultiChannelAugment(nn.Module):
    """One random view of a ``C×S×S`` image in 0..1, returned normalised by ``spec``."""

    def __init__(self, spec: InputSpec, strength: float = 0.5, min_scale: float = 0.4) -> None:
        super().__init__()
        s = strength
        self.rgb = [spec.channels.index(c) for c in ("r", "g", "b") if c in spec.channels]
        self.nir = [spec.channels.index("nir")] if "nir" in spec.channels else []
        self.geometric = v2.Compose([
            v2.RandomResizedCrop(spec.size, scale=(min_scale, 1.0), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
        ])
        self.colour = v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.2 * s, 0.0)], p=0.8)
        self.nir_jitter = v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s)], p=0.8)
        self.blur = v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.2))], p=0.5)
        self.register_buffer("mean", torch.tensor(spec.mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(-1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.geometric(image)
        if len(self.rgb) == 3:
            x[self.rgb] = self.colour(x[self.rgb])
        if self.nir:
            x[self.nir] = self.nir_jitter(x[self.nir])
        x = self.blur(x).clamp_(0, 1)
        return (x - self.mean) / self.std
