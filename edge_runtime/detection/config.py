"""What a detection run is asked for and what it gives: :class:`DetectConfig`, the window scores
of one frame, the detections, and the limits that keep a frame's search bounded."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sortline.edge_runtime.errors import SortlineError

from .correlation import CorrelationConfig
from .keypoints import KeypointConfig

MODES = ("dense", "crops")
STAGES = ("window", "correlation", "keypoints")
POOLS = ("avg", "lca")
MAX_WINDOWS = 500_000  # per frame, all levels and shapes together
MAX_INPUT_SIDE = 4096  # px: the largest input the exported models take (export/onnx_export.py)
MIN_EXEMPLAR_PX = 8
CONTEXT_CELLS = 1
MAX_CLASSES = 10_000


class DetectError(SortlineError, ValueError):
    """Detection cannot run as asked (a bundle without a feature map, a bad exemplar, …)."""


@dataclass(frozen=True)
class Detection:
    label: str
    score: float  # a window's cosine to the item (at most 1), a correlation's NCC (at most 1), or a keypoint
    # placement's inliers (min_inliers, 3+)
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in frame pixels
    inliers: int = 0  # keypoints that place the item's exemplar here (0: found by its window alone)
    found_by: str = "window"  # one of STAGES
    rank: float | None = None  # the decision's margin over its threshold, in stage order (None: the score)

    @property
    def order(self) -> float:
        """What detections are ranked by across stages (a precision-recall curve's order)."""
        return self.score if self.rank is None else self.rank

    def to_dict(self) -> dict:
        return {"label": self.label, "score": round(float(self.score), 4), "box": [int(v) for v in self.box],
                "inliers": int(self.inliers), "found_by": self.found_by}


@dataclass(frozen=True)
class DetectConfig:
    mode: str = "dense"  # 20-30× the windows/s of crops, at the same AP with keypoints (docs/detection.md)
    min_window: int = 48  # px: the smallest window side
    max_window: float = 1.0  # the largest base window, as a share of the frame's shorter side
    level_ratio: float = math.sqrt(2.0)  # between the window sizes of two pyramid levels
    shapes: tuple[float, ...] = (1.0, 1.5, 2.0, 2.5)  # window sides, in base windows (aspect up to 2.5:1)
    rotations: tuple[int, ...] = (0, 90, 180, 270)  # of each exemplar, each its own prototype
    pool: str = "avg"  # dense mode: how a window's cells become one vector
    grid: int = 1  # 2: a window is its four quarters side by side (its layout counts)
    window_px: int = 0  # model input px per base window (0: the bundle's input size)
    colour: float = 0.6  # a window's score: this share its colour histogram's likeness, the rest its cosine
    colour_bins: tuple[int, int, int] = (16, 4, 4)  # hue, saturation, value bins of that histogram
    center: bool = True  # subtract the frame's mean window embedding before the cosine
    context: bool = True  # dense prototypes: the exemplar in mirrored surroundings (see _dense_prototype)
    nms_iou: float = 0.3
    agnostic: bool = True  # one suppression over all classes (a place holds one item), or one per class
    keypoints: KeypointConfig | None = KeypointConfig()  # place exemplars by their keypoints too (None: windows only)
    correlation: CorrelationConfig | None = CorrelationConfig()  # and by their pixels (None: not)
    windows: bool = True  # False: keypoint placements only (no sliding windows, no model run per frame)
    threshold: float = 0.5  # for classes without a calibrated threshold
    max_detections: int = 100
    batch: int = 64  # crops per backbone run

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DetectError(f"mode {self.mode!r}: choose from {MODES}")
        if self.pool not in POOLS:
            raise DetectError(f"pool {self.pool!r}: choose from {POOLS}")
        if not (8 <= self.min_window <= 4096 and 0 < self.max_window <= 1 and 1.05 <= self.level_ratio <= 4):
            raise DetectError("min_window is 8..4096 px, max_window 0..1 of the frame, level_ratio 1.05..4")
        if not self.shapes or not all(0.25 <= s <= 4 for s in self.shapes):
            raise DetectError(f"window shapes {self.shapes}: each 0.25..4 base windows")
        if not self.rotations or any(r not in (0, 90, 180, 270) for r in self.rotations):
            raise DetectError(f"rotations {self.rotations}: each one of 0, 90, 180, 270")
        if not 0 <= self.window_px <= 1024:
            raise DetectError(f"window_px {self.window_px}: 0 (the bundle's input size) up to 1024")
        if not 0 <= self.colour <= 1:
            raise DetectError(f"colour {self.colour}: the colour's share of a window's score, 0..1")
        if len(self.colour_bins) != 3 or not all(isinstance(b, int) and 1 <= b <= 64 for b in self.colour_bins):
            raise DetectError(f"colour_bins {self.colour_bins}: three bin counts (hue, saturation, value), each 1..64")
        if self.grid not in (1, 2) or (self.grid == 2 and self.pool != "avg"):
            raise DetectError(f"grid {self.grid}: 1, or 2 with average pooling")
        if not (0 < self.nms_iou < 1 and 1 <= self.max_detections <= 10_000 and 1 <= self.batch <= 4096):
            raise DetectError("nms_iou is 0..1, max_detections 1..10000, batch 1..4096")
        if not self.windows and self.keypoints is None and self.correlation is None:
            raise DetectError("nothing to search with: turn on the windows, the keypoints or the correlation")


@dataclass
class WindowScores:
    """Every window of one frame: its box and its score for every class. Rows are the windows,
    then the correlation finds (each scores its NCC for its class and -1 for the others), then
    the keypoint placements (each scores its inliers)."""

    boxes: np.ndarray  # N×4 float32, x1 y1 x2 y2
    scores: np.ndarray  # N×C float32
    seconds: float = 0.0  # the whole search
    placements: int = 0  # the last rows are keypoint placements
    keypoint_seconds: float = 0.0  # of ``seconds``, finding the keypoint placements
    correlations: int = 0  # the rows before the placements are correlation finds
    correlation_seconds: float = 0.0  # of ``seconds``, finding them

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def windows(self) -> int:
        return len(self.boxes) - self.placements - self.correlations

    @property
    def stages(self) -> np.ndarray:
        """Per row: its stage's index in STAGES."""
        out = np.zeros(len(self.boxes), np.int8)
        out[self.windows:] = STAGES.index("correlation")
        out[len(self.boxes) - self.placements:] = STAGES.index("keypoints")
        return out

    def stage_of(self, row: int) -> str:
        """Row ``row``'s stage (one of STAGES), without building :attr:`stages`."""
        if row < self.windows:
            return "window"
        return "keypoints" if row >= len(self.boxes) - self.placements else "correlation"

    @property
    def inliers(self) -> np.ndarray:
        """Per row: a placement's inliers (its score for its class), 0 for a window or a correlation."""
        out = np.zeros(len(self.boxes), np.int32)
        if self.placements:
            first = len(self.boxes) - self.placements
            out[first:] = np.rint(self.scores[first:].max(axis=1))
        return out

    def part(self, stage: str) -> WindowScores:
        """The rows of one stage alone (for measuring what each stage finds)."""
        first = {"window": 0, "correlation": self.windows, "keypoints": len(self.boxes) - self.placements}[stage]
        last = {"window": self.windows, "correlation": len(self.boxes) - self.placements,
                "keypoints": len(self.boxes)}[stage]
        seconds = {"window": self.seconds - self.keypoint_seconds - self.correlation_seconds,
                   "correlation": self.correlation_seconds, "keypoints": self.keypoint_seconds}[stage]
        return WindowScores(self.boxes[first:last], self.scores[first:last], seconds,
                            self.placements if stage == "keypoints" else 0,
                            seconds if stage == "keypoints" else 0.0,
                            last - first if stage == "correlation" else 0,
                            seconds if stage == "correlation" else 0.0)
