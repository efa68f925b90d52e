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

A window's score mixes in its colours (``config.colour``, 0.6 of it by default): the likeness of
its HSV histogram to the exemplar's (:mod:`.colour`), which holds for a plain item that the
backbone's window barely tells from the backdrop.

Beside the windows, each exemplar is placed by its SIFT keypoints where enough of them agree
on one rotation, scale and shift (:mod:`.keypoints`): such a placement is one more box, scored
by its inliers (above every cosine), and it explains the windows inside it. On items that show
their exemplar's print, that is what finds them (docs/detection.md).

Thresholds come from :meth:`Detector.calibrate` on frames with no enrolled item in them, for a
target number of false detections per frame. No torch here: numpy, OpenCV and the bundle's
ONNX model.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from sortline.edge_runtime.learning.store import EmbeddingStore, check_label
from sortline.edge_runtime.model.descriptors import ColourHistogram
from sortline.edge_runtime.model.embedder import FEATURE_MAP_OUTPUT
from sortline.edge_runtime.model.preprocess import InputSpec
from sortline.edge_runtime.model.runtimes import Embedder
from sortline.hardware.camera import FrameError

from .boxes import inside, nms
from .calibration import background_peaks, background_threshold, stage_margins
from .colour import ColourWindows, fuse
from .config import MAX_CLASSES, MIN_EXEMPLAR_PX, DetectConfig, DetectError, Detection, WindowScores
from .correlation import CorrelationMatcher
from .keypoints import KeypointMatcher
from .pooling import centred_cosine, integral_image, pool_windows
from .prototypes import WindowEmbedder
from .windows import WindowGrid, crops

__all__ = ["DetectConfig", "DetectError", "Detection", "Detector", "WindowScores", "draw", "store_features"]


@dataclass
class Detector:
    """Finds the exemplars' classes in frames, with one bundle's backbone."""

    embedder: Embedder
    spec: InputSpec
    labels: tuple[str, ...]
    config: DetectConfig
    grid: WindowGrid  # where the windows are
    prototypes: dict[tuple[int, int], np.ndarray]  # (kh, kw) or (0, 0) for crops → (C·R)×D, unit rows
    thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    calibration: dict = field(default_factory=dict)
    matcher: KeypointMatcher | None = None  # the exemplars' keypoints (config.keypoints)
    correlator: CorrelationMatcher | None = None  # the exemplars' templates (config.correlation)
    correlation_thresholds: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    colours: ColourWindows | None = None  # the classes' colour histograms (config.colour)

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
        detector = cls(embedder, spec, labels, config, WindowGrid(config, stride, base), {})
        exemplar_crops = {label: [_check_exemplar(label, c) for c in exemplars.get(label, ())] for label in labels}
        if config.windows:  # the keypoints alone need no prototype
            detector.prototypes = detector.embedding.prototypes(labels, exemplar_crops, features or {})
        if config.windows and config.colour > 0:
            detector.colours = ColourWindows.build(labels, exemplar_crops, ColourHistogram(*config.colour_bins))
        if config.keypoints is not None and any(exemplar_crops.values()):
            detector.matcher = KeypointMatcher(exemplar_crops, config.keypoints)
        if config.correlation is not None and any(exemplar_crops.values()):
            detector.correlator = CorrelationMatcher(exemplar_crops, config.correlation)
        if not config.windows:
            unplaced = sorted(set(labels) - (detector.matcher.labels if detector.matcher else set())
                              - (detector.correlator.labels if detector.correlator else set()))
            if unplaced:
                raise DetectError(f"without windows every item needs an image exemplar with keypoints or texture to "
                                  f"correlate; {unplaced} have none (a flat crop, or a store's embeddings): keep the "
                                  "windows on")
        detector.thresholds = np.full(len(labels), config.threshold, np.float32)
        detector.correlation_thresholds = np.full(
            len(labels), config.correlation.threshold if config.correlation else 1.0, np.float32)
        return detector

    @property
    def embedding(self) -> WindowEmbedder:
        """The backbone as the windows and prototypes use it."""
        return WindowEmbedder(self.embedder, self.spec, self.config, self.grid)

    # -- scoring ------------------------------------------------------------------------------

    def scores(self, rgb: np.ndarray) -> WindowScores:
        """Every window of ``rgb`` (H×W×3 uint8) with its score for every class (its cosine);
        then every correlation find of an exemplar (config.correlation) as one more box that
        scores its NCC for its class and -1 for the others; then every keypoint placement
        (config.keypoints), which scores its inlier count for its class (at least
        ``min_inliers``, so above every cosine)."""
        rgb = check_frame(rgb)
        height, width = rgb.shape[:2]
        started = time.perf_counter()
        boxes, scores = _window_rows(self, rgb) if self.config.windows else ([], [])
        found = {}  # stage → (rows, seconds): each find a box that scores for its own class only
        for stage, finder, value in (("correlation", self.correlator, "score"), ("keypoints", self.matcher, "inliers")):
            placed = time.perf_counter()
            finds = finder.find(rgb) if finder is not None else []
            found[stage] = (len(finds), time.perf_counter() - placed)
            if finds:
                rows = np.full((len(finds), len(self.labels)), -1.0, np.float32)
                rows[np.arange(len(finds)), [self.labels.index(f.label) for f in finds]] = [getattr(f, value)
                                                                                           for f in finds]
                boxes.append(np.asarray([f.box for f in finds], np.float32))
                scores.append(rows)
        if not boxes:  # no windows, and nothing found
            boxes, scores = [np.zeros((0, 4), np.float32)], [np.zeros((0, len(self.labels)), np.float32)]
        return WindowScores(np.concatenate(boxes), np.concatenate(scores), time.perf_counter() - started,
                            *found["keypoints"], *found["correlation"])

    # -- decisions ----------------------------------------------------------------------------

    def decide(self, windows: WindowScores, min_margin: float = 0.0,
               max_detections: int | None = None) -> list[Detection]:
        """Windows whose score clears their class's threshold by more than ``min_margin``; the
        best of each overlapping group (one label per place: an item has one identity), best
        first. Classes are compared by that margin, not by raw cosine: calibrated thresholds
        put every class at the same false-detection rate, so a class that looks like
        everything (a prototype close to the backdrop) does not win every window. The
        detection's score is its cosine (a correlation's: its NCC; a keypoint placement's: its
        inliers). Stages that see the exemplar's own pixels or print outrank the windows where
        they clear their thresholds (:meth:`margins`). With one suppression over all classes, a
        placement or correlation that clears its threshold explains its box: windows lying
        mostly inside it are dropped (a small window on a found item is that item, or a part of
        it seen as another one); another find is not (a wrong placement's box may cover a small
        item that its own find is right about).
        ``min_margin=-inf`` gives every window's best class (for precision-recall curves)."""
        margin = self.margins(windows)
        top_k = max_detections or self.config.max_detections
        if not self.config.agnostic:  # each class on its own: a place may hold several labels
            found = []
            for c in range(len(self.labels)):
                keep = np.flatnonzero(margin[:, c] > min_margin)
                for i in keep[nms(windows.boxes[keep], margin[keep, c], self.config.nms_iou, top_k)]:
                    found.append((margin[i, c], self._detection(windows, i, c, float(margin[i, c]))))
            return [d for _, d in sorted(found, key=lambda pair: -pair[0])[:top_k]]
        best = margin.argmax(axis=1)
        rows = np.arange(len(best))
        keep = np.flatnonzero(margin[rows, best] > min_margin)
        found = keep[(keep >= windows.windows) & (margin[keep, best[keep]] > 0)]  # finds that clear their thresholds
        if len(found):  # each explains its box: a window mostly inside it is a part of that item
            keep = keep[~inside(windows.boxes[keep], windows.boxes[found]).any(axis=1) | (keep >= windows.windows)]
        if not len(keep):
            return []
        picked = keep[nms(windows.boxes[keep], margin[keep, best[keep]], self.config.nms_iou, top_k)]
        return [self._detection(windows, i, best[i], float(margin[i, best[i]])) for i in picked]

    def margins(self, windows: WindowScores) -> np.ndarray:
        """Every row's margin over its class's threshold for its stage (:func:`stage_margins`)."""
        return stage_margins(windows, self.thresholds, self.correlation_thresholds,
                             self.config.keypoints.min_inliers if self.config.keypoints else 1)

    def _detection(self, windows: WindowScores, i: int, c: int, margin: float | None = None) -> Detection:
        score = float(windows.scores[i, c])
        stage = windows.stage_of(i)
        return Detection(self.labels[c], score, tuple(int(round(v)) for v in windows.boxes[i]),
                         int(round(score)) if stage == "keypoints" else 0, stage, margin)

    def detect(self, rgb: np.ndarray) -> list[Detection]:
        return self.decide(self.scores(rgb))

    def calibrate(self, backgrounds: Iterable[np.ndarray], false_per_frame: float = 0.1) -> dict:
        """Per-class thresholds from frames that hold none of the classes, for each stage that
        has its own (the windows, with the keypoint placements; the correlation): each class and
        stage may give ``false_per_frame / (classes · stages)`` detections per frame. Where that
        budget is below what the frames show (ten frames, forty classes: one false detection in
        eighty frames), the threshold comes from an exponential tail fitted to the frames'
        highest peaks (:func:`background_threshold`), never below the empirical one.

        An exemplar whose correlation threshold comes out at ``correlation.fine_above`` or more
        (the backdrop correlates with it nearly as well as the item would) is tried at the finer
        level (``correlation.fine_side``): the frames are scored once more (a sequence is read
        again; any other iterable is held in memory), and it stays there where its threshold fell."""
        if not 0 <= false_per_frame <= 100:
            raise DetectError(f"false_per_frame {false_per_frame}: 0..100")
        frames = backgrounds if isinstance(backgrounds, Sequence) else list(backgrounds)  # (read twice at most)
        if not frames:
            raise DetectError("calibration needs at least one background frame")
        self._fit_thresholds(frames, false_per_frame)
        if self.correlator is not None:
            _match_finer(self, frames, false_per_frame)
        return self.calibration

    def _fit_thresholds(self, frames: Sequence[np.ndarray], false_per_frame: float) -> None:
        stages = [name for name, on in (("window", self.config.windows or self.matcher is not None),
                                        ("correlation", self.correlator is not None)) if on]
        peaks = {name: [[] for _ in self.labels] for name in stages}  # every peak, per stage and class
        maxima = {name: [[] for _ in self.labels] for name in stages}  # each frame's highest
        for rgb in frames:
            for name, per_class in background_peaks(self.scores(rgb), stages, self.config.nms_iou,
                                                    self.config.max_detections).items():
                for c, new in enumerate(per_class):
                    peaks[name][c].extend(new)
                    maxima[name][c].extend([max(new)] if new else [])
        rate = false_per_frame / (len(self.labels) * len(stages))
        for name in stages:
            current = self.thresholds if name == "window" else self.correlation_thresholds
            fitted = np.asarray([background_threshold(peaks[name][c], maxima[name][c], len(frames), rate)
                                 if peaks[name][c] else current[c] for c in range(len(self.labels))], np.float32)
            if name == "window":
                self.thresholds = fitted
            else:
                self.correlation_thresholds = fitted
        self.calibration = {"frames": len(frames), "false_per_frame": false_per_frame, "stages": stages,
                            "thresholds": {label: round(float(t), 4) for label, t in zip(self.labels, self.thresholds)}}
        if "correlation" in stages:
            self.calibration["correlation_thresholds"] = {
                label: round(float(t), 4) for label, t in zip(self.labels, self.correlation_thresholds)}


def _match_finer(detector: Detector, frames: Sequence[np.ndarray], false_per_frame: float) -> None:
    """The calibrated exemplars whose correlation thresholds are ``fine_above`` or more, matched
    at the finer level and calibrated again; each stays there where its threshold fell, and goes
    back to its coarse templates and threshold where it rose (the finer level showed the backdrop
    more like it). Measured on the grocery station set (docs/detection.md)."""
    coarse, labels = detector.correlator, detector.labels
    before = detector.correlation_thresholds.copy()
    tried = [label for c, label in enumerate(labels)
             if label not in coarse.fine and before[c] >= detector.config.correlation.fine_above]
    finer = coarse.refined(tried) if tried else coarse
    if finer.levels != coarse.levels:  # (not where every template is at full size already)
        detector.correlator = finer
        detector._fit_thresholds(frames, false_per_frame)
        after = detector.correlation_thresholds
        rose = {label for c, label in enumerate(labels) if label in tried and after[c] > before[c]}
        if rose:
            detector.correlator = coarse.refined(set(tried) - rose)
            detector.correlation_thresholds = np.where([label in rose for label in labels], before,
                                                       after).astype(np.float32)
            detector.calibration["correlation_thresholds"] = {
                label: round(float(t), 4) for label, t in zip(labels, detector.correlation_thresholds)}
    detector.calibration["correlation_fine"] = sorted(detector.correlator.fine)


def _window_rows(detector: Detector, rgb: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Every window of ``rgb`` at every level and shape: its box, and its score for every class
    (its cosine to the prototypes, mixed with its colour score where ``config.colour``)."""
    cfg, grid, colours = detector.config, detector.grid, detector.colours
    height, width = rgb.shape[:2]
    pixels = colours.frame(rgb) if colours is not None else None
    boxes, scores = [], []
    for level in grid.levels(height, width):
        fmap = detector.embedding.feature_map(rgb, level.size) if cfg.mode == "dense" else None
        integral = integral_image(fmap) if fmap is not None else None
        if fmap is not None and fmap.shape[1:] != level.grid:
            raise DetectError(f"the backbone gave a {fmap.shape[1]}×{fmap.shape[2]} map for a "
                              f"{level.size[0]}×{level.size[1]} input; expected {level.grid[0]}×{level.grid[1]}")
        colour_table = None  # the integral image of the level's per-cell colour counts
        if pixels is not None and fmap is not None:
            colour_table = colours.level_counts(pixels, level.grid, level.cell)
        for shape in grid.shapes:
            level_boxes = grid.boxes(level, shape, height, width)
            if not len(level_boxes):
                continue
            cut = None if fmap is not None else list(crops(rgb, level_boxes))  # crops mode: cut once
            if cut is None:
                emb = pool_windows(fmap, shape, cfg.pool, integral, cfg.grid)
                protos = detector.prototypes[shape]
            else:
                emb = detector.embedding.crop_embeddings(cut)
                protos = detector.prototypes[(0, 0)]
            score = centred_cosine(emb, protos, cfg.center, len(cfg.rotations))
            if colours is not None:
                colour = (colours.window_scores(colour_table, shape, cfg.center) if cut is None
                          else colours.crop_scores(cut, cfg.center))
                score = fuse(score, colour, colours.known, cfg.colour)
            boxes.append(level_boxes)
            scores.append(score)
    return boxes, scores


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
