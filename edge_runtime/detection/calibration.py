"""Thresholds from frames without the items: each stage's background peaks, and the score that
they exceed at a given rate (empirical where the frames show it, a fitted tail beyond)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .boxes import nms
from .config import STAGES, DetectError, WindowScores


def background_peaks(scored: WindowScores, stages: Sequence[str], nms_iou: float, max_detections: int
                     ) -> dict[str, list[list[float]]]:
    """One background frame's peaks per stage (``window``: the windows with the keypoint
    placements; ``correlation``) and class: each class's rows after suppression, as if it were
    the only class; rows of another class (scored -1) left out."""
    correlation = scored.stages == STAGES.index("correlation")
    out = {}
    for name in stages:
        rows = np.flatnonzero(correlation if name == "correlation" else ~correlation)
        out[name] = []
        for c in range(scored.scores.shape[1]):
            column = scored.scores[rows, c]
            values = column[nms(scored.boxes[rows], column, nms_iou, max_detections)]
            out[name].append(values[values > -1].tolist())
    return out


def background_threshold(peaks: Sequence[float], maxima: Sequence[float], frames: int, rate: float) -> float:
    """The score that background peaks exceed ``rate`` times per frame, from one class's
    ``peaks`` on ``frames`` frames and each frame's highest (``maxima``, one per frame that had
    a peak). Where the frames hold that many (rate·frames of the highest peaks), the empirical
    one. Beyond, the tail of the frames' maxima: peaks within a frame come together (one frame
    that looks like the item lights up many windows), so the rate at which *frames* exceed a
    score is what extrapolates; an exponential fitted to the maxima (their excess over the
    lowest has mean β, and the share of frames above x falls as exp(-(x - u)/β)), never below
    the highest peak. Scores bounded by ±1 (a cosine, an NCC) are fitted on Fisher's
    z = atanh(score), where their tails are unbounded: the threshold stays under 1 however far it
    extrapolates. ``rate`` 0: the highest peak (none of these frames fires).

    Measured (docs/detection.md): windows calibrated on 10 frames fired 2.05 times a frame on 20
    other empty frames when the tail was fitted to the 20 highest peaks of all frames, 0.30 with
    the frames' maxima, for a budget of 0.5."""
    ranked = np.sort(np.asarray(peaks, np.float64))[::-1]
    if not len(ranked):
        raise DetectError("no background peaks to set a threshold from")
    k = int(math.floor(rate * frames))
    if k >= len(ranked):
        return float(ranked[-1]) - 1e-6
    empirical = float(ranked[k])
    tops = np.sort(np.asarray(maxima, np.float64))[::-1]
    m = len(tops)
    if rate <= 0 or m < 3 or rate >= m / frames:
        return empirical
    bounded = bool(np.all(np.abs(ranked) < 1.0))
    z = np.arctanh(np.clip(tops, -0.999999, 0.999999)) if bounded else tops
    u = float(z[-1])
    beta = float(np.mean(z[:-1] - u))
    if beta <= 0:
        return empirical
    tail = u + beta * math.log(m / (frames * rate))
    return max(empirical, math.tanh(tail) if bounded else tail)


def stage_margins(windows: WindowScores, thresholds: np.ndarray, correlation_thresholds: np.ndarray,
                  min_inliers: int) -> np.ndarray:
    """Every row's score over its class's threshold for its stage (``thresholds`` for the windows
    and placements, ``correlation_thresholds`` for the correlation finds). A window's is its cosine
    over its threshold (under 1). A correlation or placement that clears its threshold is
    ranked above every window, by how far it clears it as a share of its stage's range:
    1 + (NCC − threshold) / (1 − threshold), and 1 + (inliers − threshold) / (2 · min_inliers),
    both at most 2; so a clean correlation (NCC near 1) outranks a placement held by a
    handful of keypoints, whose box may be the wrong size, and a placement held by many
    ties with it. Rows under their thresholds keep their (negative) raw margins."""
    margin = windows.scores - thresholds[None, :]
    first, last = windows.windows, len(windows) - windows.placements
    if last > first:
        t = correlation_thresholds[None, :]
        over = windows.scores[first:last] - t
        margin[first:last] = np.where(over > 0, 1.0 + np.minimum(1.0, over / np.maximum(1.0 - t, 1e-6)), over)
    if windows.placements:
        over = margin[last:]
        share = over / (2.0 * min_inliers)
        margin[last:] = np.where(over > 0, 1.0 + np.minimum(1.0, share), over)
    return margin
