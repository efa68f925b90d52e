"""Augmentations for multi-channel views (RGB + NIR), with torchvision transforms v2.

Geometric transforms (resized crop, flips, tile shuffling) move every channel together; colour
transforms (jitter, grayscale, solarization, channel randomization) touch the RGB channels only,
and a separate brightness/contrast jitter the NIR channel.

The default recipe, ``colour-safe``, keeps hue and saturation nearly fixed and never turns the
image grey: colour is much of what tells a ripe fruit from a green one (see
../shared/MEASURED.md), and a model taught to ignore colour would have to relearn it from a
handful of labels. ``simclr`` is the paper's full set (Chen et al. 2020, appendix A), for
comparison and for data where colour does not matter.

The operations are torchvision v2's (RandomResizedCrop's sampling of boxes, ColorJitter's factors
in a random order, RandomGrayscale, RandomSolarize, GaussianBlur with a 5-pixel kernel), written
for a whole batch at once with a parameter set per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torch import nn

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


class MultiChannelAugment(nn.Module):
    """Random views of a batch of ``N×C×H×W`` images (uint8, or floats in 0..1), returned
    normalised by ``spec``; a single ``C×H×W`` image gives a single view.

    Each image draws its own parameters from its own seed (:func:`uniforms`), so its view depends
    on that seed alone, never on the batch it came in: resumed training and several processes
    see exactly the views one uninterrupted process would. The work is done on the whole batch at
    once: one affine resampling for the crop, flips and turn, colour factors per image, one grouped
    convolution for the blur. A 256-view batch at 64 px took 81-135 ms on one thread where the
    per-image torchvision v2 transforms it replaces took 164-184 ms (same process, 3 rounds, another
    job on the machine); in the training benchmark's step on two idle threads, 53-70 ms
    (docs/quality.md, "Throughput")."""

    def __init__(self, spec: InputSpec, config: AugmentConfig | None = None, *, strength: float | None = None,
                 min_scale: float | None = None) -> None:
        super().__init__()
        cfg = config or AugmentConfig()
        cfg = replace(cfg, **{k: v for k, v in (("strength", strength), ("min_scale", min_scale)) if v is not None})
        if not 0 < cfg.min_scale <= 1:
            raise ValueError(f"min_scale {cfg.min_scale} is outside (0, 1]")
        self.config = cfg
        self.rgb = [spec.channels.index(c) for c in ("r", "g", "b") if c in spec.channels]
        self.nir = [spec.channels.index("nir")] if "nir" in spec.channels else []
        self.size = spec.size
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor, size: int | None = None,
                seeds: Sequence[int] | np.ndarray | None = None) -> torch.Tensor:
        """``size``: the views' side in pixels (default: the input spec's); ``seeds``: one an
        image (default: drawn from torch's generator, so ``torch.manual_seed`` fixes them)."""
        single = images.dim() == 3
        x = images.unsqueeze(0) if single else images
        if x.dtype == torch.uint8:
            x = x.float().div_(255)
        if seeds is None:
            seeds = torch.randint(0, 2**62, (len(x),)).numpy()
        if len(seeds) != len(x):
            raise ValueError(f"{len(seeds)} seeds for {len(x)} images")
        u = torch.from_numpy(uniforms(np.asarray(seeds, dtype=np.uint64), DRAWS)).float()
        x = self._geometric(x, size or self.size, u)
        if len(self.rgb) == 3:
            x[:, self.rgb] = self._colour(x[:, self.rgb], u)
        if self.nir:
            x[:, self.nir] = _jitter(x[:, self.nir], u[:, _NIR], 0.8 * self.config.strength, 0.8 * self.config.strength,
                                     0.0, 0.0, p=0.8)
        x = _blur(x, u[:, _BLUR], self.config.blur).clamp_(0, 1)
        x = (x - self.mean) / self.std
        return x[0] if single else x

    def _geometric(self, x: torch.Tensor, size: int, u: torch.Tensor) -> torch.Tensor:
        """RandomResizedCrop (scale ``min_scale``..1, aspect 3:4..4:3, torchvision's ten tries then
        a central crop), flips and an optional turn as one bilinear resampling per image. A source
        much larger than the views is first shrunk with antialiasing, so no crop samples it sparsely."""
        cfg = self.config
        n, _, h, w = x.shape
        box = _crop_boxes(u[:, _CROP], h, w, cfg.min_scale)  # N×4: x0, y0, width, height in pixels
        fx = torch.where(u[:, _HFLIP] < 0.5, -1.0, 1.0)
        fy = torch.where((u[:, _VFLIP] < 0.5) & cfg.vertical_flip, -1.0, 1.0)
        angle = torch.deg2rad((u[:, _TURN] * 2 - 1) * cfg.rotation)
        cos, sin = torch.cos(angle), torch.sin(angle)
        ox, oy = box[:, 0] + box[:, 2] / 2 - w / 2, box[:, 1] + box[:, 3] / 2 - h / 2
        # output (-1..1) → the box, mirrored by fx, fy → turned about the centre → the source (-1..1)
        half_w, half_h = box[:, 2] / 2 * fx, box[:, 3] / 2 * fy
        theta = torch.stack([
            torch.stack([2 / w * cos * half_w, -2 / w * sin * half_h, 2 / w * (cos * ox - sin * oy)], 1),
            torch.stack([2 / h * sin * half_w, 2 / h * cos * half_h, 2 / h * (sin * ox + cos * oy)], 1),
        ], 1)
        side = math.ceil(size / math.sqrt(cfg.min_scale))
        if min(h, w) > side:
            x = F.interpolate(x, size=(side, side * w // h), mode="bilinear", antialias=True, align_corners=False)
        grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if cfg.rotation > 0:  # the turned image's corners are black, as torchvision fills them
            out = out * (grid.abs() <= 1).all(-1).unsqueeze(1)
        if cfg.tile_shuffle > 0:
            out = _shuffle_tiles(out, u[:, _TILES], cfg.tile_shuffle)
        return out

    def _colour(self, rgb: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        s = cfg.strength
        rgb = _jitter(rgb, u[:, _JITTER], 0.8 * s, 0.8 * s, 0.2 * s if cfg.saturation is None else cfg.saturation,
                      cfg.hue, p=0.8)
        if cfg.grayscale > 0:
            grey = (u[:, _GREY] < cfg.grayscale).view(-1, 1, 1, 1)
            rgb = torch.where(grey, TF.rgb_to_grayscale(rgb).expand_as(rgb), rgb)
        if cfg.channel_shuffle > 0:
            order = torch.argsort(u[:, _SHUFFLE], dim=1)
            order = torch.where((u[:, _SHUFFLE_P] < cfg.channel_shuffle).unsqueeze(1), order, torch.arange(3))
            rgb = torch.gather(rgb, 1, order.view(-1, 3, 1, 1).expand_as(rgb))
        if cfg.solarize > 0:
            solar = (u[:, _SOLAR] < cfg.solarize).view(-1, 1, 1, 1) & (rgb >= 0.5)
            rgb = torch.where(solar, 1 - rgb, rgb)
        return rgb


# Where each image's draws sit in its row of uniforms (one row a view).
_CROP = slice(0, 22)  # ten tries of (area, aspect), then the box's position
_HFLIP, _VFLIP, _TURN = 22, 23, 24
_TILES = slice(25, 30)  # apply, then four keys whose order is the tiles'
_JITTER = slice(30, 39)  # apply, four keys for the order, brightness, contrast, saturation, hue
_GREY, _SHUFFLE_P, _SHUFFLE, _SOLAR = 39, 40, slice(41, 44), 44
_NIR = slice(45, 54)  # the NIR channel's own jitter, laid out as _JITTER
_BLUR = slice(54, 56)  # apply, sigma
DRAWS = 56
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def uniforms(seeds: np.ndarray, count: int) -> np.ndarray:
    """``len(seeds)×count`` numbers in [0, 1), row ``i`` a function of ``seeds[i]`` alone:
    SplitMix64 (Steele, Lea & Flood 2014) started from the mixed seed, vectorised over the batch."""
    with np.errstate(over="ignore"):
        base = _mix64(np.asarray(seeds, dtype=np.uint64))[:, None]
        z = _mix64(base + np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def _crop_boxes(u: torch.Tensor, h: int, w: int, min_scale: float) -> torch.Tensor:
    """torchvision's RandomResizedCrop boxes (area ``min_scale``..1 of the image, aspect 3:4..4:3,
    the first of ten tries that fits, else a central crop), in continuous pixels: ``N×4``
    (x0, y0, width, height)."""
    lo, hi = math.log(3 / 4), math.log(4 / 3)
    area = h * w * (min_scale + (1 - min_scale) * u[:, 0:20:2])
    aspect = torch.exp(lo + (hi - lo) * u[:, 1:20:2])
    bw, bh = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
    fits = (bw <= w) & (bh <= h)
    first = fits.float().argmax(1, keepdim=True)
    bw, bh = bw.gather(1, first)[:, 0], bh.gather(1, first)[:, 0]
    ratio = w / h  # the fallback: the whole image, cut to an aspect of 3:4..4:3
    fw, fh = (w, w / (3 / 4)) if ratio < 3 / 4 else (h * 4 / 3, h) if ratio > 4 / 3 else (w, h)
    found = fits.any(1)
    bw, bh = torch.where(found, bw, fw), torch.where(found, bh, fh)
    x0 = torch.where(found, u[:, 20] * (w - bw), (w - bw) / 2)
    y0 = torch.where(found, u[:, 21] * (h - bh), (h - bh) / 2)
    return torch.stack([x0, y0, bw, bh], 1)


def _brightness(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (x * f).clamp_(0, 1)


def _contrast(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    mean = (TF.rgb_to_grayscale(x) if x.shape[1] == 3 else x).mean(dim=(-3, -2, -1), keepdim=True)
    return (f * x + (1 - f) * mean).clamp_(0, 1)


def _saturation(x: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    return (f * x + (1 - f) * TF.rgb_to_grayscale(x)).clamp_(0, 1)


def _hue(rgb: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The hue turned by ``shift`` (a fraction of the circle) through HSV, as torchvision's."""
    maxc, which = rgb.max(dim=1)
    delta = maxc - rgb.min(dim=1).values
    r, g, b = rgb.unbind(1)
    safe = torch.where(delta > 0, delta, 1.0)
    hue = torch.where(which == 0, (g - b) / safe, torch.where(which == 1, 2 + (b - r) / safe, 4 + (r - g) / safe))
    hue = (hue / 6 + shift.view(-1, 1, 1)) % 1
    sat = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, 1.0), 0.0)
    k = (torch.tensor([5.0, 3.0, 1.0]).view(1, 3, 1, 1) + 6 * hue.unsqueeze(1)) % 6
    return maxc.unsqueeze(1) * (1 - sat.unsqueeze(1) * torch.minimum(k, 4 - k).clamp(0, 1))


def _jitter(x: torch.Tensor, u: torch.Tensor, brightness: float, contrast: float, saturation: float, hue: float,
            p: float) -> torch.Tensor:
    """ColorJitter, applied to an image with probability ``p``: its factors (1 ± each of the
    first three, ± ``hue``) in an order of its own."""
    apply = u[:, 0] < p
    order = torch.argsort(u[:, 1:5], dim=1)
    def scale(amount: float, draws: torch.Tensor) -> torch.Tensor:  # 1 ± amount, never below 0, per image
        return (1 + amount * (2 * draws - 1)).clamp(min=0).view(-1, 1, 1, 1)

    ops = [(_brightness, brightness, scale(brightness, u[:, 5])), (_contrast, contrast, scale(contrast, u[:, 6])),
           (_saturation, saturation, scale(saturation, u[:, 7])), (_hue, hue, hue * (2 * u[:, 8] - 1))]
    for position in range(4):
        for k, (op, amount, factor) in enumerate(ops):
            rows = (apply & (order[:, position] == k)).nonzero()[:, 0]
            if amount > 0 and len(rows):
                x[rows] = op(x[rows], factor[rows])
    return x


def _blur(x: torch.Tensor, u: torch.Tensor, p: float) -> torch.Tensor:
    """GaussianBlur (5-pixel kernel, sigma 0.1..1.2, reflected edges) on each image with
    probability ``p``: one grouped convolution a direction for the whole batch."""
    rows = (u[:, 0] < p).nonzero()[:, 0]
    if not len(rows):
        return x
    sigma = 0.1 + 1.1 * u[rows, 1].view(-1, 1)
    kernel = torch.exp(-0.5 * (torch.arange(-2.0, 3.0) / sigma) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(x.shape[1], 0)
    part = x[rows]
    m, c, h, w = part.shape
    y = F.pad(part.reshape(1, m * c, h, w), (2, 2, 2, 2), mode="reflect")
    y = F.conv2d(F.conv2d(y, kernel.view(-1, 1, 1, 5), groups=m * c), kernel.view(-1, 1, 5, 1), groups=m * c)
    x[rows] = y.view(m, c, h, w)
    return x


def _shuffle_tiles(x: torch.Tensor, u: torch.Tensor, p: float) -> torch.Tensor:
    """The 2×2 tiles of each image in an order of its own, with probability ``p`` (all channels together)."""
    n, c, h, w = x.shape
    th, tw = h // 2, w // 2
    tiles = x[:, :, : 2 * th, : 2 * tw].reshape(n, c, 2, th, 2, tw).permute(0, 2, 4, 1, 3, 5).reshape(n, 4, c, th, tw)
    order = torch.where((u[:, 0] < p).unsqueeze(1), torch.argsort(u[:, 1:5], dim=1), torch.arange(4))
    tiles = torch.gather(tiles, 1, order.view(n, 4, 1, 1, 1).expand_as(tiles))
    out = x.clone()
    tiles = tiles.reshape(n, 2, 2, c, th, tw).permute(0, 3, 1, 4, 2, 5)
    out[:, :, : 2 * th, : 2 * tw] = tiles.reshape(n, c, 2 * th, 2 * tw)
    return out
