"""Cheap hand-made image descriptors, beside the learned embedding.

A colour histogram is the floor any learned feature must clear on grocery photos (see
docs/quality.md), and it carries information a small self-supervised network only partly
keeps; a head may take both as one feature vector ("fused"). Descriptors are computed from the
same preprocessed arrays the backbone sees, with OpenCV only, so the edge can compute them too.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .preprocess import InputSpec


@dataclass(frozen=True)
class ColourHistogram:
    """Joint HSV histogram of a view's RGB channels, L1-normalised then square-rooted (the
    Hellinger map, so that a linear model on it compares distributions sensibly).

    The default 16 hue × 4 saturation × 4 value bins gave the best validation accuracy on the
    grocery-store photos among the bin layouts tried (docs/quality.md).
    """

    hue_bins: int = 16
    saturation_bins: int = 4
    value_bins: int = 4

    def __post_init__(self) -> None:
        bins = (self.hue_bins, self.saturation_bins, self.value_bins)
        if not all(isinstance(b, int) and 1 <= b <= 64 for b in bins):
            raise ValueError(f"histogram bins must be integers in 1..64, got {bins}")

    @property
    def dim(self) -> int:
        return self.hue_bins * self.saturation_bins * self.value_bins

    def of_rgb(self, rgb: np.ndarray) -> np.ndarray:
        """One ``H×W×3`` uint8 RGB image → its ``dim`` float32 descriptor."""
        if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.size == 0:
            raise ValueError(f"expected a non-empty H×W×3 uint8 RGB image, got {rgb.shape} {rgb.dtype}")
        hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
        counts = cv2.calcHist([hsv], [0, 1, 2], None, [self.hue_bins, self.saturation_bins, self.value_bins],
                              [0, 180, 0, 256, 0, 256]).ravel()
        return np.sqrt(counts / counts.sum()).astype(np.float32)

    def bins(self, rgb: np.ndarray) -> np.ndarray:
        """Each pixel's bin of this histogram (``H×W`` int64), as :meth:`of_rgb` counts them: for
        a caller that counts regions of one image itself (the detector's windows)."""
        hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV).astype(np.int64)
        return ((hsv[..., 0] * self.hue_bins // 180) * self.saturation_bins + hsv[..., 1] * self.saturation_bins
                // 256) * self.value_bins + hsv[..., 2] * self.value_bins // 256

    def of_arrays(self, images: np.ndarray, spec: InputSpec) -> np.ndarray:
        """``N×C×S×S`` uint8 arrays (the edge preprocessing's, before normalisation) → ``N×dim``."""
        if images.ndim != 4 or images.dtype != np.uint8 or images.shape[1] != len(spec.channels):
            raise ValueError(f"expected N×{len(spec.channels)}×S×S uint8 arrays, got {images.shape} {images.dtype}")
        if not all(c in spec.channels for c in ("r", "g", "b")):
            raise ValueError(f"a colour histogram needs r, g and b channels; the input has {spec.channels}")
        rgb = [spec.channels.index(c) for c in ("r", "g", "b")]
        out = np.empty((len(images), self.dim), np.float32)
        for i, image in enumerate(images):
            out[i] = self.of_rgb(image[rgb].transpose(1, 2, 0))
        return out
