"""Boxes (``N×4``, x1 y1 x2 y2): which lie inside which, and OpenCV's non-maximum suppression.
No imports from the rest of the package, so every stage can use them."""

from __future__ import annotations

import cv2
import numpy as np


def inside(boxes: np.ndarray, regions: np.ndarray, share: float = 0.5) -> np.ndarray:
    """``N×M``: whether at least ``share`` of box i's area (``boxes``, N×4) lies inside region j
    (``regions``, M×4)."""
    b, r = boxes[:, None, :], regions[None, :, :]
    w = np.clip(np.minimum(b[..., 2], r[..., 2]) - np.maximum(b[..., 0], r[..., 0]), 0, None)
    h = np.clip(np.minimum(b[..., 3], r[..., 3]) - np.maximum(b[..., 1], r[..., 1]), 0, None)
    area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-9)
    return (w * h) / area[:, None] >= share


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
