"""Windows compared by their colours: each window's colour histogram against each exemplar's.

A station's exemplar of a plain item (a pear, a pepper, a bag of carrots) has no print for the
keypoints and little shape that a small backbone's window tells from the backdrop; its colours,
though, it keeps at any size and turn. A window's histogram is the HSV histogram of
:class:`~sortline.edge_runtime.model.descriptors.ColourHistogram` (the floor of docs/quality.md),
of the frame's pixels under the window, read in four look-ups per window: every pixel's bin is
found once per frame, each pyramid level counts them per feature-map cell, and an integral image
of those counts gives every window's counts, in the windows' own order (:func:`window_sums`).

A window's colour score is the cosine of its square-rooted histogram to the exemplar's (the
Bhattacharyya coefficient), centred on the frame's mean window as the embeddings are (what the
backdrop and the light give every window stops counting). :func:`fuse` mixes it into the
window's cosine, so that thresholds, calibration and suppression are those of the windows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sortline.edge_runtime.model.descriptors import ColourHistogram

from .pooling import centred_cosine, integral_image, window_sums

SAMPLE_STEP = 2  # px: every other pixel of the frame, each way, is counted


@dataclass(frozen=True)
class FrameColours:
    """One frame's pixels, each with its histogram bin (every ``SAMPLE_STEP``-th pixel)."""

    bins: np.ndarray  # h'×w' int64, the bin of each sampled pixel
    ys: np.ndarray  # h', the frame rows sampled
    xs: np.ndarray  # w', the frame columns sampled


@dataclass(frozen=True)
class ColourWindows:
    """Each class's colour histogram, and the windows' scores against them."""

    histogram: ColourHistogram
    prototypes: np.ndarray  # C×dim, square-rooted distributions (unit rows); zero for a class without image crops
    known: np.ndarray  # C bool: the class has an image exemplar (a store's embeddings carry no colours)

    @classmethod
    def build(cls, labels: Sequence[str], crops: Mapping[str, Sequence[np.ndarray]],
              histogram: ColourHistogram) -> ColourWindows:
        rows = np.zeros((len(labels), histogram.dim), np.float32)
        for i, label in enumerate(labels):
            if crops.get(label):  # several crops: the mean of their distributions
                rows[i] = np.sqrt(np.mean([histogram.of_rgb(c) ** 2 for c in crops[label]], axis=0))
        return cls(histogram, rows, rows.any(axis=1))

    def frame(self, rgb: np.ndarray) -> FrameColours:
        """Every sampled pixel's bin, once per frame."""
        return FrameColours(self.histogram.bins(rgb[::SAMPLE_STEP, ::SAMPLE_STEP]),
                            np.arange(0, rgb.shape[0], SAMPLE_STEP), np.arange(0, rgb.shape[1], SAMPLE_STEP))

    def level_counts(self, colours: FrameColours, grid: tuple[int, int], cell: float) -> np.ndarray:
        """The integral image of a level's per-cell counts (``dim×rows×cols`` cells of ``cell``
        frame px): what :func:`window_sums` reads every window's counts from."""
        rows, cols = grid
        # a pixel on a cell's edge belongs to the cell it starts (1e-6: a cell of 20.000000000000004 px)
        cy = np.minimum(np.floor(colours.ys / cell + 1e-6).astype(np.int64), rows - 1)
        cx = np.minimum(np.floor(colours.xs / cell + 1e-6).astype(np.int64), cols - 1)
        index = ((cy[:, None] * cols + cx[None, :]) * self.histogram.dim + colours.bins).ravel()
        counts = np.bincount(index, minlength=rows * cols * self.histogram.dim).astype(np.float32)
        return integral_image(np.ascontiguousarray(counts.reshape(rows, cols, -1).transpose(2, 0, 1)))

    def window_scores(self, integral: np.ndarray, shape: tuple[int, int], center: bool) -> np.ndarray:
        """Every window of ``shape`` cells at a level (its :meth:`level_counts`): N×C."""
        return self.scores(window_sums(integral, shape), center)

    def crop_scores(self, crops: Sequence[np.ndarray], center: bool) -> np.ndarray:
        """Each crop's histogram against the classes' (crops mode): N×C."""
        return self.scores(np.stack([self.histogram.of_rgb(c) ** 2 for c in crops]), center)

    def scores(self, counts: np.ndarray, center: bool) -> np.ndarray:
        totals = counts.sum(axis=1, keepdims=True)
        windows = np.sqrt(np.maximum(counts, 0) / np.maximum(totals, 1e-12))
        return centred_cosine(windows, self.prototypes, center, 1)


def fuse(cosines: np.ndarray, colours: np.ndarray, known: np.ndarray, weight: float) -> np.ndarray:
    """The windows' scores: their cosines (N×C) and their colour scores mixed, ``weight`` of the
    colour, for the classes with an image exemplar (``known``); the cosine alone for the rest."""
    mixed = (1.0 - weight) * cosines + weight * colours
    return np.where(known[None, :], mixed, cosines).astype(np.float32)
