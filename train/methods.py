"""The self-supervised methods by name, each a small module over a backbone."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from .backbones import Backbone
from .simclr import SimCLR

METHODS: dict[str, Callable[[Backbone], nn.Module]] = {
    "simclr": SimCLR,
}


def build_method(name: str, backbone: Backbone) -> nn.Module:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available here: {sorted(METHODS)}")
    return METHODS[name](backbone)
