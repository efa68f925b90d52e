"""The one preprocessing path, shared by training, evaluation, export calibration and the edge.

A view becomes a ``C×S×S`` float32 array: RGB and NIR frames resized to the bundle's input size
(OpenCV area interpolation), stacked as channels in the order the spec names, scaled to 0..1
and normalised by the spec's mean and std. Training reaches the same arrays through
:func:`to_unit_chw` (before augmentation) and :func:`normalize`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from sortline.hardware.camera import FrameError, ViewFrame

CHANNEL_NAMES = ("r", "g", "b", "nir")
MAX_INPUT_SIZE = 1024
MAX_VIEWS = 16


@dataclass(frozen=True)
class InputSpec:
    """How the backbone wants its input. Stored in every bundle's manifest."""

    size: int = 64
    channels: tuple[str, ...] = CHANNEL_NAMES
    mean: tuple[float, ...] = (0.5, 0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25, 0.25)
    views: int = 4

    def __post_init__(self) -> None:
        unknown = set(self.channels) - set(CHANNEL_NAMES)
        if unknown:
            raise ValueError(f"unknown input channels {sorted(unknown)}; known: {CHANNEL_NAMES}")
        if not len(self.channels) == len(self.mean) == len(self.std):
            raise ValueError("channels, mean and std must have the same length")
        if not (8 <= self.size <= MAX_INPUT_SIZE and 1 <= self.views <= MAX_VIEWS):
            raise ValueError(f"input size {self.size} px and {self.views} views: sizes are 8..{MAX_INPUT_SIZE}, "
                             f"views 1..{MAX_VIEWS}")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)) or min(self.std) <= 0:
            raise ValueError(f"mean and std must be finite and std positive: {self.mean}, {self.std}")

    @classmethod
    def for_channels(cls, channels: tuple[str, ...], size: int = 64, views: int = 1) -> InputSpec:
        """``channels`` at ``size`` px, each normalised by mean 0.5 and std 0.25 (after 0..1)."""
        return cls(size=size, channels=tuple(channels), mean=(0.5,) * len(channels), std=(0.25,) * len(channels),
                   views=views)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        return cls(
            size=int(data["size"]),
            channels=tuple(data["channels"]),
            mean=tuple(float(m) for m in data["mean"]),
            std=tuple(float(s) for s in data["std"]),
            views=int(data["views"]),
        )


def to_unit_chw(view: ViewFrame, spec: InputSpec, size: tuple[int, int] | None = None) -> np.ndarray:
    """One view as ``C×H×W`` float32 in 0..1, channels in the spec's order: ``S×S`` by default,
    or ``size`` (width, height), which is how sliding-window detection feeds a whole frame."""
    size = size or (spec.size, spec.size)
    planes = {}
    if {"r", "g", "b"} & set(spec.channels):
        rgb = cv2.resize(view.rgb, size, interpolation=interpolation_for(view.rgb.shape, size))
        planes.update(r=rgb[..., 0], g=rgb[..., 1], b=rgb[..., 2])
    if "nir" in spec.channels:
        if view.nir is None:
            raise FrameError("the model needs a NIR channel and this frame has none")
        planes["nir"] = cv2.resize(view.nir, size, interpolation=interpolation_for(view.nir.shape, size))
    return np.stack([planes[c] for c in spec.channels]).astype(np.float32) * (1.0 / 255.0)


def interpolation_for(shape: tuple[int, ...], size: tuple[int, int]) -> int:
    """Area averaging where the height shrinks (no aliasing), bilinear where it grows."""
    return cv2.INTER_AREA if shape[0] >= size[1] else cv2.INTER_LINEAR


def normalize(unit_chw: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Mean/std normalisation over the channel axis (-3), for one view or a batch."""
    mean = np.asarray(spec.mean, np.float32)[:, None, None]
    std = np.asarray(spec.std, np.float32)[:, None, None]
    return (unit_chw - mean) / std


def preprocess_views(views: Sequence[ViewFrame], spec: InputSpec) -> np.ndarray:
    """An item's views as the backbone's ``N×C×S×S`` input batch."""
    if not views:
        raise FrameError("no views to preprocess")
    return normalize(np.stack([to_unit_chw(v, spec) for v in views]), spec)
