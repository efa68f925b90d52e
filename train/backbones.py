"""Backbones from torchvision with any number of input channels, returning an embedding.

Weights are an explicit, optional local file; nothing is ever downloaded.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models.resnet import BasicBlock, ResNet


def _resnet10() -> ResNet:
    """ResNet with one basic block per stage: resnet18's shape at half the depth, for
    pretraining within minutes on a CPU."""
    return ResNet(BasicBlock, [1, 1, 1, 1])


_BUILDERS: dict[str, Callable[[], ResNet]] = {
    "resnet10": _resnet10,
    "resnet18": resnet.resnet18,
    "resnet50": resnet.resnet50,
}
BACKBONES = tuple(_BUILDERS)


class Backbone(nn.Module):
    """A feature extractor: ``N×C×S×S`` → ``N×D`` (global-average-pooled last stage)."""

    def __init__(self, name: str, in_channels: int) -> None:
        super().__init__()
        if name not in _BUILDERS:
            raise ValueError(f"unknown backbone {name!r}; choose from {BACKBONES}")
        net = _BUILDERS[name]()
        if in_channels != 3:
            old = net.conv1
            net.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
        self.embedding_dim = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net
        self.name = name
        self.in_channels = in_channels

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map (``N×D×h×w``), for sliding-window detection and Grad-CAM."""
        n = self.net
        x = n.maxpool(n.relu(n.bn1(n.conv1(x))))
        return n.layer4(n.layer3(n.layer2(n.layer1(x))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net.avgpool(self.feature_map(x)), 1)


def build_backbone(name: str, in_channels: int = 4, weights: Path | None = None) -> Backbone:
    """Build ``name``; with ``weights``, load a local state dict (torchvision's or ours).

    A 3-channel checkpoint loaded into a 4-channel (RGB+NIR) stem keeps its RGB filters and
    starts the NIR filters at their mean, the usual way to extend a pretrained stem.
    """
    model = Backbone(name, in_channels)
    if weights is not None:
        state = torch.load(Path(weights), map_location="cpu", weights_only=True)
        state = state.get("state_dict", state)  # our checkpoints wrap it
        state = {k.removeprefix("net."): v for k, v in state.items() if not k.startswith(("fc.", "net.fc."))}
        stem = state.get("conv1.weight")
        if stem is not None and stem.shape[1] != in_channels:
            if stem.shape[1] != 3 or in_channels < 3:
                raise ValueError(f"{weights}: stem has {stem.shape[1]} channels, model wants {in_channels}")
            extra = stem.mean(dim=1, keepdim=True).expand(-1, in_channels - 3, -1, -1)
            state["conv1.weight"] = torch.cat([stem, extra], dim=1)
        missing, unexpected = model.net.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"{weights}: does not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model
