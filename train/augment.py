"""Augmentations for multi-channel views (RGB + NIR), with torchvision transforms v2.

Geometric transforms (resized crop, flips, tile shuffling) move every channel together; colour
transforms (jitter, grayscale, solarization, channel randomization) touch the RGB channels only,
and a separate brightness/contrast jitter the NIR channel.

The default recipe, ``colour-safe``, keeps hue and saturation nearly fixed and never turns the
image grey: colour is much of what tells a ripe fruit from a green one (see
../shared/MEASURED.md), and a model taught to ignore colour would have to relearn it from a
handful of labels. ``simclr`` is the paper's full set (Chen et al. 2020, appendix A), for
comparison and for data where colour does not matter.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import nn
from torchvision.transforms import v2

from sortline.edge_runtime.model.preprocess import InputSpec


@dataclass(frozen=True)
class AugmentConfig:
    strength: float = 0.5  # colour-jitter strength s: brightness and contrast 0.8·s
    saturation: float | None = None  # None: 0.2·s
    hue: float = 0.0
    min_scale: float = 0.4  # of the random resized crop
    blur: float = 0.5
    grayscale: float = 0.0  # probabilities from here on
    solarize: float = 0.0
    channel_shuffle: float = 0.0  # CH-Rand: the RGB channels in random order
    tile_shuffle: float = 0.0  # 2×2 tiles of the view in random order
    vertical_flip: bool = True  # fruit and products on a belt have no "up"
    rotation: float = 0.0  # degrees either way (corners filled with black)

    RECIPES = ("colour-safe", "simclr", "exemplar")

    @classmethod
    def recipe(cls, name: str, **overrides: float) -> AugmentConfig:
        if name == "colour-safe":
            base = cls()
        elif name == "simclr":
            base = cls(strength=1.0, saturation=0.8, hue=0.2, min_scale=0.08, grayscale=0.2, vertical_flip=False)
        elif name == "exemplar":
            # an enrolled item as a sliding window meets it: any turn, loose or partial crops, other light
            base = cls(min_scale=0.25, rotation=180.0)
        else:
            raise ValueError(f"unknown augmentation recipe {name!r}; choose from {cls.RECIPES}")
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


class ChannelShuffle(nn.Module):
    """CH-Rand (Kim et al., 2021): the channels of a ``C×H×W`` image in a random order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[torch.randperm(x.shape[0])]


class TileShuffle(nn.Module):
    """The ``grid×grid`` tiles of a ``C×H×W`` image in a random order (all channels together)."""

    def __init__(self, grid: int = 2) -> None:
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = x.shape
        g = self.grid
        th, tw = h // g, w // g
        core = x[:, : th * g, : tw * g].reshape(c, g, th, g, tw).permute(1, 3, 0, 2, 4).reshape(g * g, c, th, tw)
        core = core[torch.randperm(g * g)].reshape(g, g, c, th, tw).permute(2, 0, 3, 1, 4).reshape(c, g * th, g * tw)
        out = x.clone()
        out[:, : th * g, : tw * g] = core
        return out


class MultiChannelAugment(nn.Module):
    """One random view of a ``C×S×S`` image in 0..1, returned normalised by ``spec``."""

    def __init__(self, spec: InputSpec, config: AugmentConfig | None = None, *, strength: float | None = None,
                 min_scale: float | None = None) -> None:
        super().__init__()
        cfg = config or AugmentConfig()
        cfg = replace(cfg, **{k: v for k, v in (("strength", strength), ("min_scale", min_scale)) if v is not None})
        s = cfg.strength
        saturation = 0.2 * s if cfg.saturation is None else cfg.saturation
        self.config = cfg
        self.rgb = [spec.channels.index(c) for c in ("r", "g", "b") if c in spec.channels]
        self.nir = [spec.channels.index("nir")] if "nir" in spec.channels else []
        self.size = spec.size
        self._geometric: dict[int, v2.Compose] = {}
        self.geometric_at(spec.size)
        colour: list[nn.Module] = [v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, saturation, cfg.hue)], p=0.8)]
        if cfg.grayscale > 0:
            colour.append(v2.RandomGrayscale(p=cfg.grayscale))
        if cfg.channel_shuffle > 0:
            colour.append(v2.RandomApply([ChannelShuffle()], p=cfg.channel_shuffle))
        if cfg.solarize > 0:
            colour.append(v2.RandomSolarize(threshold=0.5, p=cfg.solarize))
        self.colour = v2.Compose(colour)
        self.nir_jitter = v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s)], p=0.8)
        blur = v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.2))], p=cfg.blur)
        self.blur = blur if cfg.blur > 0 else nn.Identity()
        self.register_buffer("mean", torch.tensor(spec.mean).view(-1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(-1, 1, 1))

    def geometric_at(self, size: int) -> v2.Compose:
        """The geometric transforms ending in a ``size``-pixel view (a resolution schedule asks
        for several sizes from one augmentation)."""
        if size not in self._geometric:
            cfg = self.config
            geometric: list[nn.Module] = [v2.RandomRotation(cfg.rotation)] if cfg.rotation > 0 else []
            geometric += [
                v2.RandomResizedCrop(size, scale=(cfg.min_scale, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
            ]
            if cfg.vertical_flip:
                geometric.append(v2.RandomVerticalFlip())
            if cfg.tile_shuffle > 0:
                geometric.append(v2.RandomApply([TileShuffle(2)], p=cfg.tile_shuffle))
            self._geometric[size] = v2.Compose(geometric)
        return self._geometric[size]

    def forward(self, image: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """``size``: the view's side in pixels (default: the input spec's)."""
        x = self.geometric_at(size or self.size)(image)
        if len(self.rgb) == 3:
            x[self.rgb] = self.colour(x[self.rgb])
        if self.nir:
            x[self.nir] = self.nir_jitter(x[self.nir])
        x = self.blur(x).clamp_(0, 1)
        return (x - self.mean) / self.std
