"""Backbones from torchvision with any number of input channels, returning an embedding.

ResNets (10, 18, 50) and MobileNetV3 (small, large). The stem takes any channel count (RGB,
NIR, RGB+NIR as 4); the embedding is the last feature map pooled by global average or by LCA
pooling. Weights are an explicit, optional local file; nothing is ever downloaded.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import mobilenetv3, resnet
from torchvision.models.resnet import BasicBlock, ResNet


def _resnet10() -> ResNet:
    """ResNet with one basic block per stage: resnet18's shape at half the depth, for
    pretraining within minutes on a CPU."""
    return ResNet(BasicBlock, [1, 1, 1, 1])


@dataclass(frozen=True)
class _Family:
    build: Callable[[], nn.Module]
    stem: str  # state-dict prefix of the first convolution
    classifier: str  # state-dict prefix of the classifier, dropped


_RESNET = dict(stem="conv1", classifier="fc")
_MOBILENET = dict(stem="features.0.0", classifier="classifier")
_FAMILIES: dict[str, _Family] = {
    "resnet10": _Family(_resnet10, **_RESNET),
    "resnet18": _Family(resnet.resnet18, **_RESNET),
    "resnet50": _Family(resnet.resnet50, **_RESNET),
    "mobilenet_v3_small": _Family(mobilenetv3.mobilenet_v3_small, **_MOBILENET),
    "mobilenet_v3_large": _Family(mobilenetv3.mobilenet_v3_large, **_MOBILENET),
}
BACKBONES = tuple(_FAMILIES)
POOLS = ("avg", "lca")


def _interval_weight(n: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
    """For each of ``n`` positions, the sum over the intervals of ``0..n-1`` that contain it of
    1/length (an interval of length ``L`` holds position ``i`` for
    ``min(i, n-L) - max(0, i-L+1) + 1`` of its placements)."""
    i = torch.arange(n, device=like.device, dtype=like.dtype)[:, None]
    length = torch.arange(1, n + 1, device=like.device, dtype=like.dtype)[None, :]
    placements = (torch.minimum(i, n - length) - torch.clamp(i - length + 1, min=0) + 1).clamp(min=0)
    return (placements / length).sum(dim=1)


def lca_weights(h: int, w: int, like: torch.Tensor | None = None) -> torch.Tensor:
    """The ``h×w`` weights that make LCA pooling one weighted sum over the map.

    LCA pooling averages the map over every axis-aligned rectangle of more than one cell and
    then averages those region vectors. A cell's weight is therefore the sum, over the
    rectangles that contain it, of 1/area, divided by the number of rectangles. A rectangle's
    area is its height times its width, so that sum is the product of the row and the column
    interval sums, less the 1×1 rectangle of the cell itself; written with tensor operations
    only, it exports for any map size. A 1×1 map has no such rectangle and falls back to the
    cell itself.
    """
    like = torch.zeros((), dtype=torch.float32) if like is None else like
    rows, cols = _interval_weight(h, like), _interval_weight(w, like)
    regions = (h * (h + 1) // 2) * (w * (w + 1) // 2) - h * w
    weight = (rows[:, None] * cols[None, :] - 1.0) / max(regions, 1)
    return weight if regions > 0 else torch.ones_like(weight)


class LCAPool(nn.Module):
    """``N×D×h×w`` → ``N×D``: the mean of the region means over all rectangles larger than 1×1.

    Large regions weigh the centre more than the border, small ones keep local detail; the
    result sits between global average pooling and a bag of local crops at the cost of one
    weighted sum (see :func:`lca_weights`), which exports to ONNX as a constant.
    """

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        weights = lca_weights(fmap.shape[-2], fmap.shape[-1], fmap)
        return (fmap * weights).sum(dim=(-2, -1))


class GlobalAvgPool(nn.Module):
    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean(dim=(-2, -1))


SMALL_MAP = 4  # output cells (2×2) at or under which a bf16 convolution on the CPU is a matrix product


class _Conv2d(nn.Conv2d):
    """A convolution that, under CPU bf16 autocast, computes a small output map (at most
    ``SMALL_MAP`` cells, or an input one pixel wide or high) as one matrix product (im2col, or
    a dense matrix where the map has no more cells than the kernel has taps: :meth:`_dense`)
    instead of calling oneDNN's convolution. Two reasons, both measured on an AMX Xeon with
    torch 2.14.1:

    - oneDNN returns garbage weight gradients for a 3×3 stride-2 convolution over a map one pixel
      wide (relative error up to 1e35, some non-finite, changing from call to call; forward and
      input gradients right): Jigsaw's 10-pixel tiles reach layer4 at 1×1 and its loss turned to
      NaN after a few steps in one run of three.
    - Its kernels are slow on 2×2 maps: ResNet-18's layer4 at 64 px (a 512→512 3×3 convolution
      over 2×2, 256 views) took 143 ms forward and backward, 54 ms as a matrix product; the
      whole SimCLR step went from 1.01 to 0.90 s.

    Elsewhere (larger maps, fp32, export) it is ``nn.Conv2d``; parameters and state-dict keys are
    the same."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or self.groups != 1 or not torch.is_autocast_enabled("cpu"):
            return super().forward(x)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        oh = (x.shape[-2] + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (x.shape[-1] + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if (oh * ow > SMALL_MAP and min(x.shape[-2:]) > 1) or self.padding_mode != "zeros":
            return super().forward(x)
        if x.shape[-2] * x.shape[-1] <= kh * kw and (dh, dw) == (1, 1):
            return self._dense(x, oh, ow)
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # N×(C·kh·kw)×L
        y = (cols.transpose(1, 2) @ self.weight.flatten(1).t()).transpose(1, 2)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1)
        return y.reshape(len(x), self.out_channels, oh, ow)

    def _dense(self, x: torch.Tensor, oh: int, ow: int) -> torch.Tensor:
        """The convolution as one dense matrix over the whole (tiny) map: row (output cell,
        output channel), column (input cell, input channel), each block the kernel tap that
        joins the two cells or zero. Where the map has no more cells than the kernel has taps
        (2×2 or 1×1 under a 3×3 kernel) this multiplies fewer numbers than im2col, whose columns
        are mostly padding there, and its backward needs no col2im: ResNet-18's 512→512
        convolution over 2×2, 128 views, forward and backward: 14 ms against im2col's 27 ms and
        oneDNN's 63 ms (AMX Xeon). Channels-last input and output stay views."""
        n, c, h, w = x.shape
        co, ci, kh, kw = self.weight.shape
        taps = _dense_taps(h, w, kh, kw, *self.stride, *self.padding).to(x.device)
        kernel = self.weight.to(torch.get_autocast_dtype("cpu")).reshape(co, ci, kh * kw).permute(2, 0, 1)
        kernel = torch.cat([kernel, kernel.new_zeros(1, co, ci)])  # the last tap: no connection
        dense = kernel.index_select(0, taps.flatten()).reshape(oh * ow, h * w, co, ci)
        dense = dense.permute(0, 2, 1, 3).reshape(oh * ow * co, h * w * ci)
        y = x.permute(0, 2, 3, 1).reshape(n, h * w * c) @ dense.t()
        if self.bias is not None:
            y = y + self.bias.repeat(oh * ow)
        return y.reshape(n, oh, ow, co).permute(0, 3, 1, 2)


@functools.lru_cache(maxsize=64)
def _dense_taps(h: int, w: int, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int) -> torch.Tensor:
    """For each (output cell, input cell) of an ``h``×``w`` map, the kernel tap that joins
    them (row-major), or ``kh·kw`` where none does."""
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    i, j = torch.meshgrid(torch.arange(oh), torch.arange(ow), indexing="ij")
    a, b = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    th = a.flatten()[None] - sh * i.flatten()[:, None] + ph  # (output cells, input cells)
    tw = b.flatten()[None] - sw * j.flatten()[:, None] + pw
    inside = (th >= 0) & (th < kh) & (tw >= 0) & (tw < kw)
    return torch.where(inside, th * kw + tw, kh * kw)


def _small_map_convs(net: nn.Module) -> None:
    for module in net.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = _Conv2d  # same parameters and state-dict keys, the forward above


class Backbone(nn.Module):
    """A feature extractor: ``N×C×S×S`` → ``N×D`` (the last feature map, pooled)."""

    def __init__(self, name: str, in_channels: int, pool: str = "avg") -> None:
        super().__init__()
        if name not in _FAMILIES:
            raise ValueError(f"unknown backbone {name!r}; choose from {BACKBONES}")
        if pool not in POOLS:
            raise ValueError(f"unknown pooling {pool!r}; choose from {POOLS}")
        family = _FAMILIES[name]
        net = family.build()
        if in_channels != 3:
            parent, attr = _parent(net, family.stem)
            old = getattr(parent, attr)
            setattr(parent, attr, nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride,
                                            old.padding, bias=False))
        if isinstance(net, ResNet):
            self.embedding_dim = net.fc.in_features
            net.fc = nn.Identity()
        else:  # MobileNetV3: the embedding is the last feature map's width, before the classifier
            self.embedding_dim = net.classifier[0].in_features
            net.classifier = nn.Identity()
        _small_map_convs(net)
        self.net = net
        self.pooling = LCAPool() if pool == "lca" else GlobalAvgPool()
        self.name = name
        self.pool = pool
        self.in_channels = in_channels

    def stages(self) -> list[nn.Module]:
        """The trunk as a chain of stages (each halves the resolution or keeps it); running them
        in order is :meth:`feature_map`. Grad-CAM reads an inner stage when the last is tiny."""
        n = self.net
        if isinstance(n, ResNet):
            return [nn.Sequential(n.conv1, n.bn1, n.relu, n.maxpool), n.layer1, n.layer2, n.layer3, n.layer4]
        return list(n.features)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map (``N×D×h×w``), for sliding-window detection and Grad-CAM."""
        for stage in self.stages():
            x = stage(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooling(self.feature_map(x))


def _parent(net: nn.Module, dotted: str) -> tuple[nn.Module, str]:
    *path, attr = dotted.split(".")
    for part in path:
        net = getattr(net, part)
    return net, attr


def build_backbone(name: str, in_channels: int = 4, weights: Path | None = None, pool: str = "avg") -> Backbone:
    """Build ``name``; with ``weights``, load a local state dict (torchvision's or ours).

    A 3-channel checkpoint loaded into a 4-channel (RGB+NIR) stem keeps its RGB filters and
    starts the NIR filters at their mean, the usual way to extend a pretrained stem.
    """
    model = Backbone(name, in_channels, pool)
    if weights is not None:
        family = _FAMILIES[name]
        state = torch.load(Path(weights), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)  # our checkpoints wrap it
        state = {k.removeprefix("net."): v for k, v in state.items()}
        state = {k: v for k, v in state.items() if not k.startswith(f"{family.classifier}.")}
        stem_key = f"{family.stem}.weight"
        stem = state.get(stem_key)
        if stem is not None and stem.shape[1] != in_channels:
            if stem.shape[1] != 3 or in_channels < 3:
                raise ValueError(f"{weights}: stem has {stem.shape[1]} channels, model wants {in_channels}")
            extra = stem.mean(dim=1, keepdim=True).expand(-1, in_channels - 3, -1, -1)
            state[stem_key] = torch.cat([stem, extra], dim=1)
        missing, unexpected = model.net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights}: does not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
