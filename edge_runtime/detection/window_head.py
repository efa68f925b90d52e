"""Window scores learned on the spot, from the exemplars and frames without them.

The prototypes' cosine treats every direction of the embedding alike; on small, soft exemplars
the directions that tell an item from a shelf are few, and the backdrop's windows come close
to every prototype (docs/detection.md). :func:`fit_window_head` learns which directions count,
from what a station has when it enrols items and calibrates: each exemplar, pasted into the
background frames at new sizes, turns and light (its windows there are the positives: cut,
paste and learn, Dwibedi et al., 2017), and every other window of those frames (the negatives:
the backdrop, and windows that only half cover an item). One multinomial logistic regression
over the windows' centred embeddings, the background its own class; a window's score for an
item is its log-odds of that item against the background, squashed into (-1, 1) like the
cosine it replaces, so the thresholds are calibrated the same way on frames it never saw.

No torch: numpy, OpenCV and scikit-learn.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from sklearn.linear_model import LogisticRegression

from .config import DetectError, WindowHeadConfig
from .evaluation import PasteConfig, iou, transform_item
from .pooling import centred_units

Shape = tuple[int, int]
Windows = Callable[[np.ndarray], Iterator[tuple[Shape, np.ndarray, np.ndarray]]]  # frame → (shape, boxes, embeddings)
# per level and window shape


@dataclass(frozen=True)
class WindowHead:
    """A linear score per class over a window's centred embedding (the background is class 0
    of the fit and has no column here)."""

    coef: np.ndarray  # C×D, each class's weights less the background's
    intercept: np.ndarray  # C
    learned: np.ndarray  # C bools: the classes it was fitted for (those with image exemplars)
    report: dict

    def scores(self, emb: np.ndarray) -> np.ndarray:
        """N×C: each window's log-odds ``z`` for each class against the background, as
        ``z / (1 + |z|)``: in (-1, 1) like a cosine, and unlike ``tanh`` never rounded to ±1 in
        float32 (which would tie the strongest windows and leave their order to chance). The
        windows are those of one level and shape, centred on their own mean, as the cosine's."""
        z = centred_units(emb) @ self.coef.T + self.intercept
        return (z / (1.0 + np.abs(z))).astype(np.float32)


def fit_window_head(windows: Windows, labels: Sequence[str], exemplars: Mapping[str, Sequence[np.ndarray]],
                    frames: Sequence[np.ndarray], config: WindowHeadConfig, rotations: Sequence[int],
                    hard: Callable[[Shape, np.ndarray], np.ndarray] | None = None, seed: int = 0) -> WindowHead:
    """The head for ``labels`` from their image ``exemplars`` pasted on ``frames`` (none of
    the items in them). ``windows(frame)`` gives the frame's windows as the detector sees them,
    a batch per level and shape; ``hard(shape, embeddings)`` their current scores (N×C), whose
    highest per class are kept as negatives beside a random sample. Classes without an image
    exemplar (a store's embeddings) are not learned (``learned``)."""
    if not frames:
        raise DetectError("the window head needs background frames")
    pastable = [label for label in labels if exemplars.get(label)]
    if not pastable:
        raise DetectError("the window head needs image exemplars to paste")
    rng = np.random.default_rng(seed)
    queue = [label for label in pastable for _ in range(config.pastes)]
    rng.shuffle(queue)
    positives: list[np.ndarray] = []  # features of windows on a pasted item …
    targets: list[np.ndarray] = []  # … and its class (1 + the label's index)
    negatives: list[np.ndarray] = []  # features of background windows
    turns = [r // 90 for r in rotations]
    pasted_frames = [queue[i:i + config.per_frame] for i in range(0, len(queue), config.per_frame)]
    for k, chosen in enumerate([[]] * len(frames) + pasted_frames):  # the frames as they are, then pasted
        frame = frames[k % len(frames)].copy()
        boxes: list[tuple[str, tuple[int, int, int, int]]] = []
        for label in chosen:
            box = _paste(frame, _pick(exemplars[label], rng), rng, config, turns, [b for _, b in boxes])
            if box is not None:
                boxes.append((label, box))
        batches = list(windows(frame))
        total = sum(len(emb) for _, _, emb in batches)
        hardest: list[tuple[np.ndarray, np.ndarray]] = []  # per batch: its background rows' scores, their features
        for shape, window_boxes, emb in batches:
            units = centred_units(emb)
            overlap = np.array([[iou(w, box) for _, box in boxes] for w in window_boxes]).reshape(len(emb), -1)
            best = overlap.max(axis=1) if boxes else np.zeros(len(emb))
            for j, (label, _) in enumerate(boxes):
                hit = np.flatnonzero(overlap[:, j] >= config.positive_iou)
                positives.append(units[hit])
                targets.append(np.full(len(hit), labels.index(label) + 1))
            background = np.flatnonzero(best < config.negative_iou)
            share = max(1, round(config.negatives_per_frame * len(emb) / max(1, total)))
            negatives.append(units[rng.choice(background, min(len(background), share), replace=False)])
            if hard is not None and len(background):
                scores = hard(shape, emb)[background]
                top = np.argsort(-scores, axis=0)[:config.hard_per_class]  # k×C rows
                hardest.append((np.take_along_axis(scores, top, axis=0), units[background][top]))
        if hardest:  # the frame's highest background windows per class, over all its levels and shapes
            scores = np.concatenate([s for s, _ in hardest])
            rows = np.concatenate([u for _, u in hardest])  # k·batches × C × D
            top = np.argsort(-scores, axis=0)[:config.hard_per_class]
            negatives.append(rows[top, np.arange(scores.shape[1])[None, :]].reshape(-1, rows.shape[-1]))
    x = np.concatenate(positives + negatives)
    y = np.concatenate(targets + [np.zeros(sum(len(n) for n in negatives), int)])
    found = sorted(set(y.tolist()) - {0})
    if len(found) < len(pastable):
        missing = sorted(set(pastable) - {labels[i - 1] for i in found})
        raise DetectError(f"no window covered a pasted {missing[:5]}: windows too large for these exemplars")
    weight = np.where(y == 0, 1.0, (y == 0).sum() / max(1, (y > 0).sum()))  # the item windows weigh as much
    model = LogisticRegression(C=config.c, max_iter=300, tol=1e-3)
    model.fit(x, y, sample_weight=weight)
    coef = np.zeros((len(labels), x.shape[1]), np.float32)
    intercept = np.zeros(len(labels), np.float32)
    for row, cls in enumerate(model.classes_):
        if cls:
            coef[cls - 1] = model.coef_[row] - model.coef_[0]
            intercept[cls - 1] = model.intercept_[row] - model.intercept_[0]
    report = {"frames": len(frames), "pasted_frames": len(pasted_frames), "positives": int((y > 0).sum()),
              "negatives": int((y == 0).sum()), "iterations": int(np.max(model.n_iter_)),
              "train_accuracy": round(float(model.score(x, y)), 4)}
    learned = np.isin(np.arange(len(labels)), [labels.index(label) for label in pastable])
    return WindowHead(coef, intercept, learned, report)


def _pick(crops: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    return crops[int(rng.integers(len(crops)))]


def _paste(frame: np.ndarray, item: np.ndarray, rng: np.random.Generator, config: WindowHeadConfig,
           turns: Sequence[int], taken: Sequence[tuple[int, int, int, int]]) -> tuple[int, int, int, int] | None:
    """``item`` pasted in place on ``frame`` at a random spot, size, turn and light, clear of
    the ``taken`` boxes; its box (None where it does not fit)."""
    item = np.ascontiguousarray(np.rot90(item, int(rng.choice(turns))))
    if config.blur and rng.random() < 0.5:
        item = cv2.GaussianBlur(item, (0, 0), rng.uniform(0.3, config.blur))
    side = int(max(item.shape[:2]) * rng.uniform(*config.scale))
    paste = PasteConfig(gain=config.gain, bias=config.bias)
    patch, mask = transform_item(item, max(8, side), rng.uniform(-config.rotation, config.rotation), rng, paste)
    ph, pw = mask.shape
    height, width = frame.shape[:2]
    if ph >= height or pw >= width:
        return None
    for _attempt in range(20):
        x, y = int(rng.integers(0, width - pw)), int(rng.integers(0, height - ph))
        if all(iou((x, y, x + pw, y + ph), other) <= 0.05 for other in taken):
            break
    else:
        return None
    region = frame[y:y + ph, x:x + pw]
    region[mask] = patch[mask]
    return x, y, x + pw, y + ph
