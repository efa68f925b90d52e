"""Sliding-window detection of enrolled exemplars in a wide frame (a checkout tray, a shelf, a
belt camera that sees several items at once).

Windows cover the frame at several scales (a pyramid whose levels are ``level_ratio`` apart) and
in several shapes (sides of 1, 1.5, 2 and 2.5 base windows: aspect ratios up to 2.5:1). Each window
is scored by the cosine similarity of its embedding to every class's prototypes (the mean
embedding of the class's exemplars, at four rotations), each class has its own threshold, and
OpenCV's non-maximum suppression keeps the best of overlapping boxes.

Two ways to embed the windows, over the same window grid:

* ``dense`` (the default) runs the backbone once per pyramid level on the whole frame and pools every window
  from the last feature map (``feature_map`` in the bundle): a window of ``kh×kw`` cells is the
  mean of those cells, read from an integral image in four look-ups (or the LCA layer's weighted
  sum of its region means). Prototypes are made the same way: the exemplar, resized to the
  window's shape in input pixels, pooled over its whole map. One backbone run serves every window
  shape at that level, which is where its speed comes from.
* ``crops`` cuts every window out of the frame, resizes it to the bundle's input size and runs
  the backbone on it: exact, and the cost grows with the number of windows.

Beside the windows, each exemplar is placed by its SIFT keypoints where enough of them agree
on one rotation, scale and shift (:mod:`.keypoints`): such a placement is one more box, scored
by its inliers (above every cosine), and it explains the windows inside it. On items that show
their exemplar's print, that is what finds them (docs/detection.md).

Thresholds come from :meth:`Detector.calibrate` on frames with no enrolled item in them, for a
target number of false detections per frame. No torch here: numpy, OpenCV and the bundle's
ONNX model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from sortline.hardware.camera import FrameError, ViewFrame

from .embedder import EMBEDDING_OUTPUT, FEATURE_MAP_OUTPUT
from .errors import SortlineError
from .keypoints import KeypointConfig, KeypointMatcher
from .memory import EmbeddingStore, check_label
from .preprocess import InputSpec, interpolation_for, normalize, to_unit_chw
from .runtimes import Embedder

MODES = ("dense", "crops")
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
    score: float  # a window's cosine to the item (at most 1), or a keypoint placement's inliers (min_inliers, 3+)
    box: tuple[int, int, int, int]  # x1, y1, x2, y2 in frame pixels
    inliers: int = 0  # keypoints that place the item's exemplar here (0: found by its window alone)

    def to_dict(self) -> dict:
        return {"label": self.label, "score": round(float(self.score), 4), "box": [int(v) for v in self.box],
                "inliers": int(self.inliers)}


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
    center: bool = True  # subtract the frame's mean window embedding before the cosine
    context: bool = True  # dense prototypes: the exemplar in mirrored surroundings (see _dense_prototype)
    nms_iou: float = 0.3
    agnostic: bool = True  # one suppression over all classes (a place holds one item), or one per class
    keypoints: KeypointConfig | None = KeypointConfig()  # place exemplars by their keypoints too (None: windows only)
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
        if self.grid not in (1, 2) or (self.grid == 2 and self.pool != "avg"):
            raise DetectError(f"grid {self.grid}: 1, or 2 with average pooling")
        if not (0 < self.nms_iou < 1 and 1 <= self.max_detections <= 10_000 and 1 <= self.batch <= 4096):
            raise DetectError("nms_iou is 0..1, max_detections 1..10000, batch 1..4096")
        if not self.windows and self.keypoints is None:
            raise DetectError("nothing to search with: turn on the windows or the keypoints")


@dataclass
class WindowScores:
    """Every window of one frame: its box and its score for every class."""

    boxes: np.ndarray  # N×4 float32, x1 y1 x2 y2
    scores: np.ndarray  # N×C float32
    seconds: float = 0.0  # the whole search
    placements: int = 0  # the last rows are keypoint placements (each scores its inliers), the others windows
    keypoint_seconds: float = 0.0  # of ``seconds``, finding the keypoint placements

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def windows(self) -> int:
        return len(self.boxes) - self.placements

    @property
    def inliers(self) -> np.ndarray:
        """Per row: a placement's inliers (its score for its class), 0 for a window."""
        out = np.zeros(len(self.boxes), np.int32)
        if self.placements:
            out[self.windows:] = np.rint(self.scores[self.windows:].max(axis=1))
        return out


@dataclass(frozen=True)
class _Level:
    size: tuple[int, int]  # the frame at this level in input px (width, height)
    grid: tuple[int, int]  # feature-map cells (rows, cols)
    cell: float  # frame px per cell


@dataclass
class Detector:
    """Finds the exemplars' classes in frames, with one bundle's backbone."""

    embedder: Embedder
    spec: InputSpec
    labels: tuple[str, ...]
    config: DetectConfig
    stride: int  # input px per feature-map cell
    base_cells: int  # cells across the bundle's input size
    prototypes: dict[tuple[int, int], np.ndarray]  # (kh, kw) or (0, 0) for crops → (C·R)×D, unit rows
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    calibration: dict = field(default_factory=dict)
    matcher: KeypointMatcher | None = None  # the exemplars' keypoints (config.keypoints)

    @classmethod
    def build(cls, embedder: Embedder, spec: InputSpec, exemplars: Mapping[str, Sequence[np.ndarray]],
              config: DetectConfig = DetectConfig(), features: Mapping[str, np.ndarray] | None = None) -> Detector:
        """A detector for ``exemplars`` (label → RGB crops, H×W×3 uint8) and ``features`` (label
        → embeddings from an enrollment store, each used as it is for every window shape)."""
        if set(spec.channels) - {"r", "g", "b"}:
            raise DetectError(f"detection reads RGB frames; this bundle's input is {spec.channels}")
        labels = tuple(dict.fromkeys([*exemplars, *(features or {})]))
        if not labels:
            raise DetectError("no exemplars: give at least one crop (or a store with examples)")
        if len(labels) > MAX_CLASSES:
            raise DetectError(f"{len(labels)} classes; at most {MAX_CLASSES}")
        for label in labels:
            check_label(label)
        stride, base = _geometry(embedder, spec, config.mode)
        if config.window_px:
            if config.window_px % stride:
                raise DetectError(f"window_px {config.window_px} is not a multiple of the model's stride {stride}")
            base = config.window_px // stride
        detector = cls(embedder, spec, labels, config, stride, base, {})
        crops = {label: [_check_exemplar(label, c) for c in exemplars.get(label, ())] for label in labels}
        if config.windows:  # the keypoints alone need no prototype
            detector.prototypes = detector._prototypes(crops, features or {})
        if config.keypoints is not None and any(crops.values()):
            detector.matcher = KeypointMatcher(crops, config.keypoints)
        if not config.windows:
            unplaced = sorted(set(labels) - (detector.matcher.labels if detector.matcher else set()))
            if unplaced:
                raise DetectError(f"without windows every item needs an image exemplar with keypoints; {unplaced} "
                                  "have none (a plain item, or a store's embeddings): keep the windows on")
        detector.thresholds = np.full(len(labels), config.threshold, np.float32)
        return detector

    @property
    def input_px(self) -> int:
        """The side, in model input px, at which a base window is seen."""
        return self.base_cells * self.stride

    # -- windows ------------------------------------------------------------------------------

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """Window shapes in feature-map cells (rows, cols)."""
        sides = sorted({max(1, round(self.base_cells * s)) for s in self.config.shapes})
        return [(h, w) for h in sides for w in sides]

    def levels(self, height: int, width: int) -> list[_Level]:
        cfg = self.config
        short = min(height, width)
        levels = []
        base_px = cfg.min_window  # frame px of a base window at the first level
        while base_px <= cfg.max_window * short + 1e-6:
            cell = base_px / self.base_cells
            scale = self.stride / cell
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            grid = (math.ceil(size[1] / self.stride), math.ceil(size[0] / self.stride))
            if min(size) >= self.stride:
                levels.append(_Level(size, grid, cell))
            base_px *= cfg.level_ratio
        if not levels:
            raise DetectError(f"a {width}×{height} frame holds no window of {cfg.min_window} px or more")
        windows = sum(max(0, g[0] - kh + 1) * max(0, g[1] - kw + 1)
                      for g in (level.grid for level in levels) for kh, kw in self.shapes)
        biggest = max(levels[0].size)
        if windows > MAX_WINDOWS or biggest > MAX_INPUT_SIDE:
            raise DetectError(f"a {width}×{height} frame at windows from {cfg.min_window} px makes {windows:,} windows "
                              f"and a {biggest} px input (at most {MAX_WINDOWS:,} and {MAX_INPUT_SIDE} px): raise "
                              "min_window or give a smaller frame")
        return levels

    def _level_boxes(self, level: _Level, shape: tuple[int, int], height: int, width: int) -> np.ndarray:
        kh, kw = shape
        rows, cols = level.grid[0] - kh + 1, level.grid[1] - kw + 1
        if rows <= 0 or cols <= 0:
            return np.zeros((0, 4), np.float32)
        y, x = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        c = level.cell
        boxes = np.stack([x * c, y * c, (x + kw) * c, (y + kh) * c], axis=-1).reshape(-1, 4)
        return np.minimum(boxes, [width, height, width, height]).astype(np.float32)

    # -- embedding ----------------------------------------------------------------------------

    def _input(self, rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return normalize(to_unit_chw(ViewFrame(rgb=rgb, nir=None), self.spec, size), self.spec)[None]

    def _feature_map(self, rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return self.embedder.run_all(self._input(rgb, size))[FEATURE_MAP_OUTPUT][0]

    def _crop_embeddings(self, crops: Iterable[np.ndarray]) -> np.ndarray:
        """Each crop resized to the bundle's input: its embedding, or with ``grid=2`` its
        feature map's quarters (as dense mode pools them)."""
        out, batch = [], []
        s = (self.input_px, self.input_px)

        def run() -> None:
            outputs = self.embedder.run_all(np.stack(batch))
            if self.config.grid == 1:
                out.append(outputs[EMBEDDING_OUTPUT])
            else:
                out.append(np.stack([pool_window(m, grid=self.config.grid) for m in outputs[FEATURE_MAP_OUTPUT]]))

        for crop in crops:
            batch.append(self._input(crop, s)[0])
            if len(batch) == self.config.batch:
                run()
                batch = []
        if batch:
            run()
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

    def _prototypes(self, crops: Mapping[str, list[np.ndarray]],
                    features: Mapping[str, np.ndarray]) -> dict[tuple[int, int], np.ndarray]:
        """Per window shape (dense) or one set (crops, key ``(0, 0)``): a unit row per class and
        rotation (classes × rotations rows, rotation fastest), from every label's checked image
        crops (``crops``, possibly none) and stored embeddings."""
        rotations = self.config.rotations
        keys = self.shapes if self.config.mode == "dense" else [(0, 0)]
        table: dict[tuple[int, int], np.ndarray] = {}
        stored = {label: _stored(features.get(label), label) for label in self.labels}
        if self.config.grid != 1 and any(v is not None for v in stored.values()):
            raise DetectError("stored examples are embeddings, one box each: use grid 1 with a store")
        for key in keys:
            rows = []
            for label in self.labels:
                for k in rotations:
                    turned = [np.ascontiguousarray(np.rot90(c, k // 90)) for c in crops[label]]
                    if not turned:
                        embedded = None
                    elif key == (0, 0):
                        embedded = self._crop_embeddings(turned)
                    else:
                        embedded = np.stack([self._dense_prototype(c, key) for c in turned])
                    parts = [p for p in (embedded, stored[label]) if p is not None]
                    rows.append(_unit(np.concatenate(parts)).mean(axis=0))
            table[key] = _unit(np.stack(rows)).astype(np.float32)
        return table

    def _dense_prototype(self, crop: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The exemplar as a window of ``shape`` cells sees it in a frame: resized to that many
        cells and given ``context`` cells of mirrored surroundings (a window's cells are
        computed with the frame around them, not with the network's zero padding), then the
        window's cells pooled."""
        kh, kw = shape
        m = CONTEXT_CELLS if self.config.context else 0
        s = self.stride
        item = cv2.resize(crop, (kw * s, kh * s), interpolation=interpolation_for(crop.shape, (kw * s, kh * s)))
        framed = cv2.copyMakeBorder(item, m * s, m * s, m * s, m * s, cv2.BORDER_REFLECT_101) if m else item
        fmap = self._feature_map(framed, (framed.shape[1], framed.shape[0]))
        return pool_window(fmap[:, m:m + kh, m:m + kw], self.config.pool, self.config.grid)

    # -- scoring ------------------------------------------------------------------------------

    def scores(self, rgb: np.ndarray) -> WindowScores:
        """Every window of ``rgb`` (H×W×3 uint8) with its score for every class (its cosine),
        then every keypoint placement of an exemplar (config.keypoints) as one more box that
        scores its inlier count for its class and -1 for the others: at least ``min_inliers``,
        so above every cosine."""
        rgb = check_frame(rgb)
        height, width = rgb.shape[:2]
        started = time.perf_counter()
        boxes, scores = [], []
        for level in self.levels(height, width) if self.config.windows else ():
            fmap = self._feature_map(rgb, level.size) if self.config.mode == "dense" else None
            integral = integral_image(fmap) if fmap is not None else None
            if fmap is not None and fmap.shape[1:] != level.grid:
                raise DetectError(f"the backbone gave a {fmap.shape[1]}×{fmap.shape[2]} map for a "
                                  f"{level.size[0]}×{level.size[1]} input; expected {level.grid[0]}×{level.grid[1]}")
            for shape in self.shapes:
                level_boxes = self._level_boxes(level, shape, height, width)
                if not len(level_boxes):
                    continue
                if fmap is not None:
                    emb = pool_windows(fmap, shape, self.config.pool, integral, self.config.grid)
                    protos = self.prototypes[shape]
                else:
                    emb = self._crop_embeddings(_crops(rgb, level_boxes))
                    protos = self.prototypes[(0, 0)]
                boxes.append(level_boxes)
                scores.append(self._similarity(emb, protos))
        keypoint_seconds, placements = 0.0, 0
        if self.matcher is not None:
            placed = time.perf_counter()
            finds = self.matcher.find(rgb)
            keypoint_seconds = time.perf_counter() - placed
            if finds:
                rows = np.full((len(finds), len(self.labels)), -1.0, np.float32)
                rows[np.arange(len(finds)), [self.labels.index(f.label) for f in finds]] = [f.inliers for f in finds]
                boxes.append(np.asarray([f.box for f in finds], np.float32))
                scores.append(rows)
                placements = len(finds)
        if not boxes:  # keypoints only, and none placed
            boxes, scores = [np.zeros((0, 4), np.float32)], [np.zeros((0, len(self.labels)), np.float32)]
        return WindowScores(np.concatenate(boxes), np.concatenate(scores), time.perf_counter() - started,
                            placements, keypoint_seconds)

    def _similarity(self, emb: np.ndarray, protos: np.ndarray) -> np.ndarray:
        """Cosine of each window to each prototype, the best rotation per class. Centred, both
        sides are seen from the frame's mean (unit) window: what all windows share (the
        backdrop, the lighting) stops counting as likeness. Written as products with the raw
        embeddings, so no centred copy of the windows is ever made (this is the hot loop)."""
        emb = np.ascontiguousarray(emb, np.float32)
        inv = 1.0 / np.maximum(np.sqrt(np.einsum("ij,ij->i", emb, emb)), 1e-12)
        cos = emb @ protos.T
        if self.config.center and len(emb) > 1:
            mean = (inv @ emb) / len(emb)  # the mean unit window
            wm = (emb @ mean) * inv  # each unit window · mean
            pm = protos @ mean
            mm = float(mean @ mean)
            window_norm = np.sqrt(np.maximum(1.0 - 2.0 * wm + mm, 1e-12))
            proto_norm = np.sqrt(np.maximum(1.0 - 2.0 * pm + mm, 1e-12))
            cos *= inv[:, None]  # unit windows · unit prototypes, then seen from the mean:
            cos -= wm[:, None]
            cos -= (pm - mm)[None, :]
            cos /= window_norm[:, None]
            cos /= proto_norm[None, :]
        else:
            cos *= inv[:, None]
        r = len(self.config.rotations)
        return cos.reshape(len(emb), -1, r).max(axis=2).astype(np.float32)

    # -- decisions ----------------------------------------------------------------------------

    def decide(self, windows: WindowScores, min_margin: float = 0.0,
               max_detections: int | None = None) -> list[Detection]:
        """Windows whose score clears their class's threshold by more than ``min_margin``; the
        best of each overlapping group (one label per place: an item has one identity), best
        first. Classes are compared by that margin, not by raw cosine: calibrated thresholds
        put every class at the same false-detection rate, so a class that looks like
        everything (a prototype close to the backdrop) does not win every window. The
        detection's score is its cosine (a keypoint placement's: its inliers). With one
        suppression over all classes, a placement that clears its threshold explains its box:
        windows lying mostly inside it are dropped (a small window on a placed item is that
        item, or a part of it seen as another one).
        ``min_margin=-inf`` gives every window's best class (for precision-recall curves)."""
        margin = windows.scores - self.thresholds[None, :]
        top_k = max_detections or self.config.max_detections
        if not self.config.agnostic:  # each class on its own: a place may hold several labels
            found = []
            for c in range(len(self.labels)):
                keep = np.flatnonzero(margin[:, c] > min_margin)
                for i in keep[nms(windows.boxes[keep], margin[keep, c], self.config.nms_iou, top_k)]:
                    found.append((margin[i, c], self._detection(windows, i, c)))
            return [d for _, d in sorted(found, key=lambda pair: -pair[0])[:top_k]]
        best = margin.argmax(axis=1)
        rows = np.arange(len(best))
        keep = np.flatnonzero(margin[rows, best] > min_margin)
        placed = keep[keep >= windows.windows]
        if len(placed):
            keep = keep[~_inside(windows.boxes[keep], windows.boxes[placed]) | (keep >= windows.windows)]
        if not len(keep):
            return []
        picked = keep[nms(windows.boxes[keep], margin[keep, best[keep]], self.config.nms_iou, top_k)]
        return [self._detection(windows, i, best[i]) for i in picked]

    def _detection(self, windows: WindowScores, i: int, c: int) -> Detection:
        score = float(windows.scores[i, c])
        return Detection(self.labels[c], score, tuple(int(round(v)) for v in windows.boxes[i]),
                         int(round(score)) if i >= windows.windows else 0)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return self.decide(self.scores(rgb))

    def calibrate(self, backgrounds: Iterable[np.ndarray], false_per_frame: float = 0.1) -> dict:
        """Per-class thresholds from frames that hold none of the classes: each class may give
        ``false_per_frame / classes`` detections per frame on them (at least the highest
        background score stays below its threshold when that is under one)."""
        if not 0 <= false_per_frame <= 100:
            raise DetectError(f"false_per_frame {false_per_frame}: 0..100")
        peaks: list[list[float]] = [[] for _ in self.labels]
        frames = 0
        for rgb in backgrounds:
            windows = self.scores(rgb)
            frames += 1
            for c in range(len(self.labels)):  # each class's own peaks, as if it were the only one
                column = windows.scores[:, c]
                top = nms(windows.boxes, column, self.config.nms_iou, self.config.max_detections)
                peaks[c].extend(column[top].tolist())
        if frames == 0:
            raise DetectError("calibration needs at least one background frame")
        k = int(math.floor(false_per_frame * frames / len(self.labels)))  # false detections allowed per class
        thresholds = []
        for values in peaks:
            ranked = sorted(values, reverse=True)
            thresholds.append(ranked[k] if k < len(ranked) else (ranked[-1] if ranked else 0.0) - 1e-6)
        self.thresholds = np.asarray(thresholds, np.float32)
        self.calibration = {"frames": frames, "false_per_frame": false_per_frame,
                            "thresholds": {label: round(float(t), 4) for label, t in zip(self.labels, self.thresholds)}}
        return self.calibration


def _inside(boxes: np.ndarray, regions: np.ndarray, share: float = 0.5) -> np.ndarray:
    """For each of ``boxes`` (N×4), whether at least ``share`` of its area lies inside one of
    ``regions`` (M×4)."""
    b, r = boxes[:, None, :], regions[None, :, :]
    w = np.clip(np.minimum(b[..., 2], r[..., 2]) - np.maximum(b[..., 0], r[..., 0]), 0, None)
    h = np.clip(np.minimum(b[..., 3], r[..., 3]) - np.maximum(b[..., 1], r[..., 1]), 0, None)
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-9)
    return ((w * h) / area[:, None] >= share).any(axis=1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, top_k: int) -> np.ndarray:
    """Indices of the boxes (``N×4``, x1 y1 x2 y2) that OpenCV's non-maximum suppression keeps,
    best first."""
    if not len(boxes):
        return np.zeros(0, int)
    xywh = np.stack([boxes[:, 0], boxes[:, 1], boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1)
    shifted = np.asarray(scores, np.float64)
    shifted = shifted - shifted.min() + 1.0  # OpenCV keeps scores over 0; only their order matters here
    kept = cv2.dnn.NMSBoxes(xywh.tolist(), shifted.tolist(), 0.0, iou, top_k=top_k)
    return np.asarray(kept, int).reshape(-1)


# -- pooling ----------------------------------------------------------------------------------

def integral_image(fmap: np.ndarray) -> np.ndarray:
    """``D×(h+1)×(w+1)`` sums of every top-left rectangle (summed in float64, kept in float32:
    a window's sum is a difference of two such sums, exact to float32's 1e-7 of the map's total)."""
    d, h, w = fmap.shape
    table = np.zeros((d, h + 1, w + 1), np.float64)
    table[:, 1:, 1:] = fmap.cumsum(axis=1, dtype=np.float64).cumsum(axis=2)
    return table.astype(np.float32)


def _box_sums(table: np.ndarray, kh: int, kw: int) -> np.ndarray:
    return table[:, kh:, kw:] - table[:, :-kh, kw:] - table[:, kh:, :-kw] + table[:, :-kh, :-kw]


def _interval_weight(n: int) -> np.ndarray:
    """Sum over the intervals of ``0..n-1`` that hold each position of 1/length (as in the LCA
    layer, ``sortline.train.backbones``)."""
    i = np.arange(n)[:, None]
    length = np.arange(1, n + 1)[None, :]
    placements = np.clip(np.minimum(i, n - length) - np.clip(i - length + 1, 0, None) + 1, 0, None)
    return (placements / length).sum(axis=1)


def pool_windows(fmap: np.ndarray, shape: tuple[int, int], pool: str = "avg",
                 integral: np.ndarray | None = None, grid: int = 1) -> np.ndarray:
    """Every ``kh×kw`` window of a ``D×h×w`` map, one cell apart, pooled: ``N×D`` in row-major
    window order. ``avg`` is the window's mean (an integral image, four look-ups per window);
    ``lca`` the LCA layer's mean of all region means inside the window, which is a weighted sum
    whose weights factor into a row and a column part, less the 1×1 regions. ``integral`` is
    the map's :func:`integral_image`, when the caller pools several shapes from one map.

    ``grid=2`` keeps the window's layout: the means of its four quarters (top and bottom
    halves, which share the middle row of an odd window; left and right likewise), each scaled
    to unit length, side by side (``N×4D``)."""
    kh, kw = shape
    d, h, w = fmap.shape
    if kh > h or kw > w:
        return np.zeros((0, d * grid * grid), np.float32)
    table = integral_image(fmap) if integral is None else integral
    if grid == 2:
        if pool != "avg":
            raise DetectError("a 2×2 window layout is pooled by averages only")
        rows = [(0, (kh + 1) // 2), (kh // 2, kh)]
        cols = [(0, (kw + 1) // 2), (kw // 2, kw)]
        parts = [_unit(_offset_box_sums(table, kh, kw, r, c).reshape(d, -1).T) for r in rows for c in cols]
        return np.concatenate(parts, axis=1)
    sums = _box_sums(table, kh, kw)
    if pool == "avg":
        pooled = sums / (kh * kw)
    else:
        regions = (kh * (kh + 1) // 2) * (kw * (kw + 1) // 2) - kh * kw
        if regions == 0:
            pooled = sums
        else:
            rows = np.lib.stride_tricks.sliding_window_view(fmap, kh, axis=1) @ _interval_weight(kh)
            both = np.lib.stride_tricks.sliding_window_view(rows, kw, axis=2) @ _interval_weight(kw)
            pooled = (both - sums) / regions
    return np.ascontiguousarray(pooled.reshape(d, -1).T, np.float32)


def _offset_box_sums(table: np.ndarray, kh: int, kw: int, rows: tuple[int, int], cols: tuple[int, int]
                     ) -> np.ndarray:
    """For every ``kh×kw`` window position, the sum over its sub-box ``rows × cols``."""
    n_rows, n_cols = table.shape[1] - kh, table.shape[2] - kw
    (r0, r1), (c0, c1) = rows, cols

    def at(r: int, c: int) -> np.ndarray:
        return table[:, r:r + n_rows, c:c + n_cols]

    return at(r1, c1) - at(r0, c1) - at(r1, c0) + at(r0, c0)


def pool_window(fmap: np.ndarray, pool: str = "avg", grid: int = 1) -> np.ndarray:
    """A whole ``D×h×w`` map pooled into one vector, as one window."""
    return pool_windows(fmap, fmap.shape[1:], pool, grid=grid)[0]


# -- helpers ----------------------------------------------------------------------------------

def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def _crops(rgb: np.ndarray, boxes: np.ndarray) -> Iterable[np.ndarray]:
    for x1, y1, x2, y2 in np.round(boxes).astype(int):
        yield rgb[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]


def check_frame(rgb: object) -> np.ndarray:
    if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise FrameError("a frame is an H×W×3 uint8 RGB array")
    if min(rgb.shape[:2]) < MIN_EXEMPLAR_PX:
        raise FrameError(f"a {rgb.shape[1]}×{rgb.shape[0]} frame is too small to search")
    return rgb


def _check_exemplar(label: str, crop: object) -> np.ndarray:
    try:
        crop = check_frame(crop)
    except FrameError as exc:
        raise DetectError(f"exemplar of {label!r}: {exc}") from exc
    return crop


def _stored(features: np.ndarray | None, label: str) -> np.ndarray | None:
    if features is None:
        return None
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or not len(features) or not np.isfinite(features).all():
        raise DetectError(f"stored examples of {label!r}: expected finite N×D rows, got {features.shape}")
    return features


def _geometry(embedder: Embedder, spec: InputSpec, mode: str) -> tuple[int, int]:
    """The backbone's stride (input px per feature-map cell) and the cells across its input.
    Dense mode needs a model that takes any input size; crops only the bundle's own."""
    blank = np.zeros((1, len(spec.channels), spec.size, spec.size), np.float32)
    outputs = embedder.run_all(blank)
    if FEATURE_MAP_OUTPUT not in outputs:
        if mode == "dense":
            raise DetectError("this bundle's model has no feature_map output, which dense detection pools; "
                              "re-export it, or use mode 'crops'")
        return spec.size, 1
    cells = int(np.asarray(outputs[FEATURE_MAP_OUTPUT]).shape[-1])
    if cells < 1 or spec.size % cells:
        raise DetectError(f"a {spec.size} px input gives a {cells}-cell map: no whole stride")
    stride = spec.size // cells
    if mode == "dense":
        wider = np.zeros((1, len(spec.channels), spec.size, spec.size + 2 * stride), np.float32)
        try:
            got = np.asarray(embedder.run_all(wider)[FEATURE_MAP_OUTPUT]).shape[-1]
        except Exception as exc:  # ONNX Runtime's own error for a fixed input size
            raise DetectError(f"this bundle's model takes only {spec.size}×{spec.size} inputs, and dense "
                              f"detection runs it on whole frames; re-export it, or use mode 'crops' ({exc})") from exc
        if got != cells + 2:
            raise DetectError(f"the feature map grew by {got - cells} cells for {2 * stride} more pixels: "
                              f"not a stride-{stride} map")
    return stride, cells


def store_features(store: EmbeddingStore, embedding_dim: int, labels: Sequence[str] | None = None
                   ) -> dict[str, np.ndarray]:
    """The enrollment store's examples as detection prototypes: each example's first
    ``embedding_dim`` features are its views' mean embedding (the fused layout's first block)."""
    examples = store.examples()
    wanted = set(labels) if labels else None
    out: dict[str, list[np.ndarray]] = {}
    for row, label in zip(examples.features, examples.labels):
        if wanted is None or label in wanted:
            out.setdefault(label, []).append(row[:embedding_dim])
    if wanted and (missing := wanted - set(out)):
        raise DetectError(f"the store has no examples of {sorted(missing)}")
    return {label: np.stack(rows) for label, rows in out.items()}


def draw(rgb: np.ndarray, detections: Sequence[Detection]) -> np.ndarray:
    """The frame with each detection's box and ``label score`` (a placement: ``label N kp``,
    its inliers) drawn on it (RGB)."""
    out = rgb.copy()
    thickness = max(1, round(min(rgb.shape[:2]) / 300))
    for i, d in enumerate(detections):
        hue = (i * 47) % 180
        colour = cv2.cvtColor(np.uint8([[[hue, 220, 255]]]), cv2.COLOR_HSV2RGB)[0, 0].tolist()
        x1, y1, x2, y2 = d.box
        cv2.rectangle(out, (x1, y1), (x2, y2), colour, thickness)
        text = f"{d.label} {d.inliers} kp" if d.inliers else f"{d.label} {d.score:.2f}"
        scale = 0.4 * thickness
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(0, y1 - th - base - 2)
        cv2.rectangle(out, (x1, top), (x1 + tw + 2, top + th + base + 2), colour, -1)
        cv2.putText(out, text, (x1 + 1, top + th + 1), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return out
