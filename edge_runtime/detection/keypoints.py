"""Finding an exemplar in a frame by its local features: SIFT keypoints (OpenCV), matched with
Lowe's ratio test, and one placement of the exemplar (a rotation, a uniform scale and a shift)
that enough matches agree on, found by RANSAC. This is the spatial verification of instance
retrieval (Lowe 2004; Philbin et al. 2007): where an item shows the same print or texture as
its exemplar (a package, a label, the same photo), a handful of agreeing keypoints places it
exactly, at any turn, scale and lighting, and with part of it covered. Items without texture
(a plain pear) give too few keypoints; the window search (:mod:`.detect`) still covers them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from sortline.edge_runtime.errors import SortlineError
from sortline.edge_runtime.model.preprocess import interpolation_for


class KeypointError(SortlineError, ValueError):
    """Keypoint matching cannot run as asked."""


@dataclass(frozen=True)
class KeypointConfig:
    exemplar_side: int = 256  # px: each exemplar's longer side when its keypoints are taken
    ratio: float = 0.75  # Lowe's ratio test: nearest exemplar feature over the second nearest
    min_inliers: int = 6  # matches that must agree on one placement
    reprojection_px: float = 5.0  # how far (frame px) a match may land from the placement's prediction
    max_instances: int = 3  # of one exemplar in one frame
    max_features: int = 5000  # keypoints taken from a frame, strongest first

    def __post_init__(self) -> None:
        if not (32 <= self.exemplar_side <= 2048 and 0 < self.ratio < 1 and 3 <= self.min_inliers <= 1000):
            raise KeypointError("exemplar_side is 32..2048 px, ratio 0..1, min_inliers 3..1000")
        if not (0 < self.reprojection_px <= 100 and 1 <= self.max_instances <= 100
                and 100 <= self.max_features <= 100_000):
            raise KeypointError("reprojection_px is 0..100, max_instances 1..100, max_features 100..100000")


@dataclass(frozen=True)
class KeypointFind:
    label: str
    inliers: int  # matches that agree on the placement
    box: tuple[int, int, int, int]  # x1, y1, x2, y2: the placed exemplar's bounding box, in the frame
    transform: np.ndarray  # 2×3: exemplar px (at exemplar_side) → frame px


@dataclass
class _Exemplar:
    label: str
    points: np.ndarray  # K×2 float32
    descriptors: np.ndarray  # K×128 float32
    size: tuple[int, int]  # height, width at exemplar_side


class KeypointMatcher:
    """Every exemplar's keypoints, matched against a frame's."""

    def __init__(self, exemplars: Mapping[str, Sequence[np.ndarray]], config: KeypointConfig = KeypointConfig()):
        self.config = config
        self._sift = cv2.SIFT_create(nfeatures=config.max_features)
        self._matcher = cv2.BFMatcher(cv2.NORM_L2)
        self.exemplars: list[_Exemplar] = []
        for label, crops in exemplars.items():
            for crop in crops:
                f = config.exemplar_side / max(crop.shape[:2])
                size = (max(1, round(crop.shape[1] * f)), max(1, round(crop.shape[0] * f)))
                small = cv2.resize(crop, size, interpolation=interpolation_for(crop.shape, size))
                points, descriptors = self._describe(small)
                if len(points) >= config.min_inliers:  # too plain to be found by its keypoints
                    self.exemplars.append(_Exemplar(label, points, descriptors, small.shape[:2]))

    @property
    def labels(self) -> set[str]:
        """The labels with at least one exemplar that has enough keypoints to be found by them."""
        return {e.label for e in self.exemplars}

    def _describe(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keypoints, descriptors = self._sift.detectAndCompute(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), None)
        if descriptors is None:
            return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
        return np.float32([k.pt for k in keypoints]).reshape(-1, 2), descriptors.astype(np.float32)

    def find(self, rgb: np.ndarray) -> list[KeypointFind]:
        """Each exemplar's placements in ``rgb`` (H×W×3 uint8), most inliers first. A placement
        takes its matches out of the frame's keypoints before the next one of the same exemplar
        is looked for, up to ``max_instances``."""
        cfg = self.config
        height, width = rgb.shape[:2]
        points, descriptors = self._describe(rgb)
        found: list[KeypointFind] = []
        if len(points) < cfg.min_inliers:
            return found
        for exemplar in self.exemplars:
            # frame → exemplar: two copies of an item in the frame both find their exemplar features
            pairs = self._matcher.knnMatch(descriptors, exemplar.descriptors, k=2)
            good = np.array([(m[0].queryIdx, m[0].trainIdx) for m in pairs
                             if len(m) == 2 and m[0].distance < cfg.ratio * m[1].distance], int).reshape(-1, 2)
            for _ in range(cfg.max_instances):
                if len(good) < cfg.min_inliers:
                    break
                src, dst = exemplar.points[good[:, 1]], points[good[:, 0]]
                transform, mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                              ransacReprojThreshold=cfg.reprojection_px)
                if transform is None or mask is None:
                    break
                inliers = mask.ravel().astype(bool)
                if inliers.sum() < cfg.min_inliers:
                    break
                good = good[~inliers]
                box = _placed_box(transform, exemplar.size, width, height)
                if box is not None:
                    found.append(KeypointFind(exemplar.label, int(inliers.sum()), box, transform))
        return sorted(found, key=lambda f: -f.inliers)


def _placed_box(transform: np.ndarray, size: tuple[int, int], width: int, height: int
                ) -> tuple[int, int, int, int] | None:
    """The bounding box, inside the frame, of the exemplar placed by ``transform``; None for a
    placement that is degenerate (under 8 px, or mostly outside the frame)."""
    h, w = size
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]]) @ transform[:, :2].T + transform[:, 2]
    x1, y1 = corners.min(axis=0)
    x2, y2 = corners.max(axis=0)
    area = (x2 - x1) * (y2 - y1)
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    if cx2 - cx1 < 8 or cy2 - cy1 < 8 or (cx2 - cx1) * (cy2 - cy1) < 0.5 * area:
        return None
    return int(round(cx1)), int(round(cy1)), int(round(cx2)), int(round(cy2))
