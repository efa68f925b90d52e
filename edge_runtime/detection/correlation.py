"""Finding an exemplar in a frame by its pixels: normalised cross-correlation (OpenCV's
``matchTemplate``, ``TM_CCOEFF_NORMED``) of the exemplar, resized to a few scales around its own
size, over a pyramid of the frame.

A station's exemplar is a crop from the station's own camera: small (48-160 px), soft, often
without print (a pear, a pepper). Keypoints find nothing to hold on such a crop, and a learned
window sees too much of its surroundings; but the item, seen again by the same camera, is
nearly the same pixels at nearly the same size. Correlation finds exactly that, under changes
of brightness and contrast (the score is invariant to gain and offset), and only that: it does
not turn, and another photo of the same kind of item correlates little. docs/detection.md says
which stage finds which item.

Speed: each template is matched at the coarsest pyramid level where its shorter side is still
``min_side`` px, so a large item costs no more than a small one. A peak found on grey levels is
scored again in colour, on its own patch (one ``matchTemplate`` of the template's size), so
that an item of the same shape in another colour scores lower.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from sortline.edge_runtime.errors import SortlineError

from .boxes import nms


class CorrelationError(SortlineError, ValueError):
    """Correlation cannot run as asked."""


MAX_LEVEL = 4


@dataclass(frozen=True)
class CorrelationConfig:
    scales: tuple[float, float] = (0.5, 2.0)  # the item's size in the frame, of its exemplar's size
    step: float = 2 ** 0.25  # between two template sizes
    min_side: int = 12  # px: a template's shorter side at the pyramid level it is matched at (16: 2× the time)
    peaks: int = 2  # taken per exemplar and scale, before suppression (neighbouring scales find the same place)
    max_instances: int = 3  # of one exemplar in one frame
    threshold: float = 0.6  # colour NCC, for an uncalibrated detector
    nms_iou: float = 0.3
    max_level: int = 4  # the coarsest pyramid level (0: every template on the full frame)
    colour: bool = True  # score a peak again in colour (False: the grey NCC is the score)
    # An exemplar whose calibrated threshold comes out at ``fine_above`` or more (the backdrop's own
    # textures correlate with it almost as well as the item does, at ``min_side``) is tried at a finer
    # level, its shorter side ``fine_side`` px, and kept there where its threshold falls (Detector.calibrate).
    fine_side: int = 16
    fine_above: float = 0.85  # 1: never; -1: every exemplar

    def __post_init__(self) -> None:
        lo, hi = self.scales
        if not (0.1 <= lo <= hi <= 10 and 1.01 <= self.step <= 4):
            raise CorrelationError("scales are 0.1..10 (low ≤ high) of the exemplar's size, step 1.01..4")
        if not (4 <= self.min_side <= 256 and 1 <= self.peaks <= 100 and 1 <= self.max_instances <= 100):
            raise CorrelationError("min_side is 4..256 px, peaks 1..100, max_instances 1..100")
        if not (-1 <= self.threshold <= 1 and 0 < self.nms_iou < 1 and 0 <= self.max_level <= MAX_LEVEL):
            raise CorrelationError(f"threshold is -1..1 (an NCC), nms_iou 0..1, max_level 0..{MAX_LEVEL}")
        if not (self.min_side <= self.fine_side <= 256 and -1 <= self.fine_above <= 1):
            raise CorrelationError("fine_side is min_side..256 px, fine_above -1..1 (an NCC; 1: never, -1: always)")

    def factors(self) -> list[float]:
        lo, hi = self.scales
        n = int(math.floor(math.log(hi / lo) / math.log(self.step) + 1e-9)) + 1
        return [lo * self.step ** i for i in range(n)]


@dataclass(frozen=True)
class CorrelationFind:
    label: str
    score: float  # colour NCC of the template at this place, -1..1
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in frame pixels


@dataclass
class _Template:
    label: str
    level: int  # pyramid level it is matched at (the frame halved this many times)
    grey: np.ndarray  # h×w uint8 at that level
    rgb: np.ndarray  # h×w×3 uint8 at that level
    size: tuple[int, int]  # height, width in frame pixels


class CorrelationMatcher:
    """Every exemplar's templates, matched against a frame."""

    def __init__(self, exemplars: Mapping[str, Sequence[np.ndarray]], config: CorrelationConfig = CorrelationConfig(),
                 fine: Iterable[str] = ()):
        """``fine``: the labels matched at ``config.fine_side`` instead of ``config.min_side``."""
        self.config = config
        self.exemplars = exemplars
        self.fine = frozenset(fine)
        self.templates = [template for label, crops in exemplars.items() for crop in crops
                          for template in _templates(label, crop, config, config.fine_side if label in self.fine
                                                     else config.min_side)]

    def refined(self, labels: Iterable[str]) -> CorrelationMatcher:
        """The same exemplars, ``labels`` (and those already fine) matched at the finer level."""
        return CorrelationMatcher(self.exemplars, self.config, self.fine | set(labels))

    @property
    def labels(self) -> set[str]:
        return {t.label for t in self.templates}

    @property
    def levels(self) -> list[int]:
        """The pyramid level each template is matched at."""
        return [t.level for t in self.templates]

    def find(self, rgb: np.ndarray) -> list[CorrelationFind]:
        """Each exemplar's best places in ``rgb`` (H×W×3 uint8), best first: up to
        ``max_instances`` per label after suppression over its scales."""
        cfg = self.config
        colour = [rgb]
        grey = [cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)]
        for _ in range(cfg.max_level):
            if min(grey[-1].shape) < 2 * cfg.min_side:
                break
            grey.append(cv2.pyrDown(grey[-1]))
            if cfg.colour:
                colour.append(cv2.pyrDown(colour[-1]))
        per_label: dict[str, list[tuple[float, tuple[int, int, int, int]]]] = {}
        for t in self.templates:
            if t.level >= len(grey):
                continue
            image = grey[t.level]
            th, tw = t.grey.shape
            if th > image.shape[0] or tw > image.shape[1]:
                continue
            result = cv2.matchTemplate(image, t.grey, cv2.TM_CCOEFF_NORMED)
            cv2.patchNaNs(result, -1.0)  # a flat patch divides by 0 (in place; numpy's nan_to_num cost 0.07 s a frame)
            f = 2 ** t.level
            for _ in range(cfg.peaks):
                _, best, _, (x, y) = cv2.minMaxLoc(result)
                if best <= 0:
                    break
                result[max(0, y - th // 2):y + th // 2 + 1, max(0, x - tw // 2):x + tw // 2 + 1] = -1.0
                if cfg.colour:
                    patch = colour[t.level][y:y + th, x:x + tw]
                    best = float(cv2.matchTemplate(patch, t.rgb, cv2.TM_CCOEFF_NORMED)[0, 0])
                    best = best if math.isfinite(best) else -1.0
                box = (x * f, y * f, min(rgb.shape[1], x * f + t.size[1]), min(rgb.shape[0], y * f + t.size[0]))
                per_label.setdefault(t.label, []).append((best, box))
        found = []
        for label, candidates in per_label.items():
            scores = np.float32([s for s, _ in candidates])
            boxes = np.float32([b for _, b in candidates])
            for i in nms(boxes, scores, cfg.nms_iou, cfg.max_instances):
                found.append(CorrelationFind(label, float(scores[i]), tuple(int(v) for v in boxes[i])))
        return sorted(found, key=lambda f: -f.score)


def _templates(label: str, crop: np.ndarray, config: CorrelationConfig, side: int) -> list[_Template]:
    """``crop`` resized to each of the config's sizes, each at the coarsest pyramid level where its
    shorter side is still ``side`` px; none for a crop with no texture (grey level spread under 2:
    it correlates with nothing, and divides by zero)."""
    if float(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY).std()) < 2.0:
        return []
    out = []
    for factor in config.factors():
        h, w = round(crop.shape[0] * factor), round(crop.shape[1] * factor)
        if min(h, w) < config.min_side:
            continue
        level = max(0, min(config.max_level, int(math.floor(math.log2(min(h, w) / side)))))
        size = (max(side // 2, round(w / 2 ** level)), max(side // 2, round(h / 2 ** level)))
        small = cv2.resize(crop, size, interpolation=cv2.INTER_AREA)
        out.append(_Template(label, level, cv2.cvtColor(small, cv2.COLOR_RGB2GRAY), small, (h, w)))
    return out
