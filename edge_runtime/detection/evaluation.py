"""Evaluation sets for detection, made by the project: exemplars pasted into cluttered frames
with changes of scale, rotation, lighting and occlusion, and their scoring by precision, recall
and average precision at an IoU of 0.5 (PASCAL VOC's all-point interpolation).

The tests paste procedural exemplars on procedural clutter (:func:`procedural_exemplars`,
:func:`procedural_background`); ``benchmarks/detection.py`` pastes the grocery-store iconic
images on the store photos with the same :func:`paste_scenes`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from .config import Detection


@dataclass(frozen=True)
class PasteConfig:
    size: tuple[int, int] = (480, 640)  # frame height, width
    items: tuple[int, int] = (1, 3)  # pasted per frame, inclusive
    scale: tuple[float, float] = (0.15, 0.35)  # item's longer side, of the frame's shorter side …
    relative: bool = False  # … or of the item's own longer side (its exemplar seen again at a new scale)
    rotation: float = 25.0  # degrees either way, on top of a random quarter turn
    quarter_turns: bool = True
    gain: tuple[float, float] = (0.7, 1.3)  # lighting: brightness gain …
    bias: float = 20.0  # … and offset, per channel up to this
    occlusion: float = 0.5  # probability of a clutter patch over part of the item
    max_occluded: float = 0.3  # of the item's box
    max_overlap: float = 0.05  # IoU allowed between two pasted items


@dataclass
class Scene:
    image: np.ndarray  # H×W×3 uint8 RGB
    boxes: list[tuple[str, tuple[int, int, int, int]]] = field(default_factory=list)  # label, x1 y1 x2 y2


def iou(a: Sequence[float], b: Sequence[float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _transformed(item: np.ndarray, side: int, angle: float, rng: np.random.Generator,
                 cfg: PasteConfig) -> tuple[np.ndarray, np.ndarray]:
    """The item scaled so its longer side is ``side`` px, turned by ``angle`` degrees, relit;
    and its mask."""
    h, w = item.shape[:2]
    f = side / max(h, w)
    item = cv2.resize(item, (max(2, round(w * f)), max(2, round(h * f))), interpolation=cv2.INTER_AREA)
    h, w = item.shape[:2]
    turn = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
    cos, sin = abs(turn[0, 0]), abs(turn[0, 1])
    nw, nh = int(np.ceil(h * sin + w * cos)), int(np.ceil(h * cos + w * sin))
    turn[0, 2] += nw / 2 - w / 2
    turn[1, 2] += nh / 2 - h / 2
    out = cv2.warpAffine(item, turn, (nw, nh), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    mask = cv2.warpAffine(np.full((h, w), 255, np.uint8), turn, (nw, nh), flags=cv2.INTER_NEAREST) > 127
    gain = rng.uniform(*cfg.gain)
    bias = rng.uniform(-cfg.bias, cfg.bias, 3)
    out = np.clip(out.astype(np.float32) * gain + bias, 0, 255).astype(np.uint8)
    return out, mask


def paste_scenes(exemplars: Mapping[str, np.ndarray], background: Callable[[np.random.Generator], np.ndarray],
                 count: int, seed: int = 0, config: PasteConfig = PasteConfig()) -> list[Scene]:
    """``count`` frames, each a ``background(rng)`` (resized to ``config.size``) with a few of
    the exemplars pasted in, transformed; the ground truth is each pasted item's box."""
    rng = np.random.default_rng(seed)
    labels = sorted(exemplars)
    height, width = config.size
    scenes = []
    for _ in range(count):
        frame = cv2.resize(background(rng), (width, height), interpolation=cv2.INTER_AREA)
        scene = Scene(frame.copy())
        n = int(rng.integers(config.items[0], config.items[1] + 1))
        for label in rng.choice(labels, size=min(n, len(labels)), replace=False):
            item = exemplars[str(label)]
            if config.quarter_turns:
                item = np.ascontiguousarray(np.rot90(item, int(rng.integers(4))))
            side = int(rng.uniform(*config.scale) * (max(item.shape[:2]) if config.relative else min(height, width)))
            patch, mask = _transformed(item, side, rng.uniform(-config.rotation, config.rotation), rng, config)
            ph, pw = mask.shape
            if ph >= height or pw >= width:
                continue
            for _attempt in range(20):
                x, y = int(rng.integers(0, width - pw)), int(rng.integers(0, height - ph))
                box = (x, y, x + pw, y + ph)
                if all(iou(box, other) <= config.max_overlap for _, other in scene.boxes):
                    break
            else:
                continue
            region = scene.image[y:y + ph, x:x + pw]
            region[mask] = patch[mask]
            if rng.random() < config.occlusion:  # a piece of clutter over one side of the item
                share = rng.uniform(0.1, config.max_occluded)
                clutter = cv2.resize(background(rng), (pw, ph), interpolation=cv2.INTER_AREA)
                if rng.random() < 0.5:
                    cut = max(1, int(pw * share))
                    sl = (slice(None), slice(0, cut)) if rng.random() < 0.5 else (slice(None), slice(pw - cut, pw))
                else:
                    cut = max(1, int(ph * share))
                    sl = (slice(0, cut), slice(None)) if rng.random() < 0.5 else (slice(ph - cut, ph), slice(None))
                region[sl] = clutter[sl]
            scene.boxes.append((str(label), box))
        scenes.append(scene)
    return scenes


def procedural_exemplars(count: int, seed: int = 0, size: int = 96) -> dict[str, np.ndarray]:
    """``count`` distinct made-up products: a coloured card with a band, a disc and stripes in
    colours and places of its own."""
    rng = np.random.default_rng(seed)
    out = {}
    hues = rng.permutation(np.linspace(0, 179, count, endpoint=False)).astype(int)
    for i in range(count):
        h, w = size, int(size * rng.uniform(0.6, 1.0))
        card = np.zeros((h, w, 3), np.uint8)
        card[:] = _hsv(hues[i], 200, 220)
        band = rng.integers(h // 5, h // 2)
        card[band:band + h // 5] = _hsv((hues[i] + 90) % 180, 255, 120)
        cv2.circle(card, (int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4))),
                   int(rng.integers(h // 8, h // 4)), _hsv((hues[i] + 45) % 180, 255, 255).tolist(), -1)
        for k in range(int(rng.integers(2, 5))):
            x = int(rng.integers(0, w))
            cv2.line(card, (x, 0), (x + int(rng.integers(-w // 3, w // 3)), h - 1), (20 * k, 20, 20), 2)
        out[f"item-{i:02d}"] = card
    return out


def procedural_background(rng: np.random.Generator, size: tuple[int, int] = (480, 640)) -> np.ndarray:
    """Clutter: a textured backdrop with random rectangles, discs and lines in muted colours."""
    h, w = size
    frame = np.clip(rng.normal(110, 25, (h // 8, w // 8, 3)), 0, 255).astype(np.uint8)
    frame = cv2.resize(frame, (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(int(rng.integers(15, 30))):
        colour = _hsv(int(rng.integers(0, 180)), int(rng.integers(0, 120)), int(rng.integers(60, 200))).tolist()
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        shape = rng.integers(3)
        if shape == 0:
            corner = (x + int(rng.integers(10, w // 4)), y + int(rng.integers(10, h // 4)))
            cv2.rectangle(frame, (x, y), corner, colour, -1)
        elif shape == 1:
            cv2.circle(frame, (x, y), int(rng.integers(5, h // 8)), colour, -1)
        else:
            cv2.line(frame, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), colour, int(rng.integers(1, 6)))
    noise = rng.normal(0, 6, frame.shape)
    return np.clip(frame + noise, 0, 255).astype(np.uint8)


def _hsv(h: int, s: int, v: int) -> np.ndarray:
    return cv2.cvtColor(np.uint8([[[h, s, v]]]), cv2.COLOR_HSV2RGB)[0, 0]


@dataclass(frozen=True)
class DetectionScore:
    ap: float  # mean over the classes in the ground truth
    per_class: dict[str, float]
    precision: float  # of the detections given (at the detector's thresholds)
    recall: float
    true_positives: int
    false_positives: int
    items: int

    def to_dict(self) -> dict:
        return {"ap50": round(self.ap, 4), "precision": round(self.precision, 4), "recall": round(self.recall, 4),
                "true_positives": self.true_positives, "false_positives": self.false_positives,
                "items": self.items, "per_class_ap50": {k: round(v, 4) for k, v in sorted(self.per_class.items())}}


def _match(detections: Sequence[Sequence[Detection]], scenes: Sequence[Scene], threshold: float
           ) -> tuple[list[tuple[float, bool, str]], dict[str, int]]:
    """Each detection, best first within its frame, matched greedily to an unmatched ground
    truth box of its label with IoU ≥ ``threshold``: (score, matched, label)."""
    marks, totals = [], {}  # (order, matched, label)
    for found, scene in zip(detections, scenes, strict=True):
        for label, _ in scene.boxes:
            totals[label] = totals.get(label, 0) + 1
        used = [False] * len(scene.boxes)
        for d in sorted(found, key=lambda d: -d.order):
            best, best_iou = -1, threshold
            for k, (label, box) in enumerate(scene.boxes):
                if not used[k] and label == d.label and (o := iou(d.box, box)) >= best_iou:
                    best, best_iou = k, o
            if best >= 0:
                used[best] = True
            marks.append((d.order, best >= 0, d.label))
    return marks, totals


def average_precision(ranked_hits: Sequence[bool], positives: int) -> float:
    """Area under the interpolated precision-recall curve (VOC all-point), for hits ranked by
    score; 0 when there are no positives."""
    if positives == 0:
        return 0.0
    hits = np.asarray(ranked_hits, bool)
    tp = np.cumsum(hits)
    precision = tp / np.arange(1, len(hits) + 1)
    recall = tp / positives
    precision = np.concatenate([[0.0], precision, [0.0]])
    recall = np.concatenate([[0.0], recall, [recall[-1] if len(recall) else 0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(((recall[steps + 1] - recall[steps]) * precision[steps + 1]).sum())


def score_detections(ranked: Sequence[Sequence[Detection]], scenes: Sequence[Scene],
                     decided: Sequence[Sequence[Detection]] | None = None, threshold: float = 0.5) -> DetectionScore:
    """AP at IoU ``threshold`` from ``ranked`` (every frame's detections down to a low score),
    precision and recall from ``decided`` (the detections at the operating thresholds; the
    ranked ones where not given)."""
    marks, totals = _match(ranked, scenes, threshold)
    per_class = {}
    for label, positives in totals.items():
        mine = sorted((m for m in marks if m[2] == label), key=lambda m: -m[0])
        per_class[label] = average_precision([m[1] for m in mine], positives)
    kept, _ = _match(decided if decided is not None else ranked, scenes, threshold)
    tp = sum(1 for m in kept if m[1])
    items = sum(totals.values())
    return DetectionScore(
        ap=float(np.mean(list(per_class.values()))) if per_class else 0.0,
        per_class=per_class,
        precision=tp / len(kept) if kept else 1.0,
        recall=tp / items if items else 1.0,
        true_positives=tp,
        false_positives=len(kept) - tp,
        items=items,
    )
