"""Window pooling over a feature map (integral images, the LCA layer's weighting) and the
windows' cosines to the prototypes: the numeric kernels of the detector, free of any model."""

from __future__ import annotations

import numpy as np

from .config import DetectError

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


def window_sums(table: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Every ``kh×kw`` window's sum from a map's :func:`integral_image`: ``N×D`` in the row-major
    window order of :func:`pool_windows` (``0×D`` where the map is smaller than the window)."""
    kh, kw = shape
    d, h, w = table.shape[0], table.shape[1] - 1, table.shape[2] - 1
    if kh > h or kw > w:
        return np.zeros((0, d), np.float32)
    return np.ascontiguousarray(_box_sums(table, kh, kw).reshape(d, -1).T, np.float32)


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
        parts = [unit(_offset_box_sums(table, kh, kw, r, c).reshape(d, -1).T) for r in rows for c in cols]
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

def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


# -- likeness --------------------------------------------------------------------------------


def centred_cosine(emb: np.ndarray, protos: np.ndarray, center: bool, rotations: int) -> np.ndarray:
    """Cosine of each window (``emb``, N×D) to each prototype (``protos``, (C·R)×D unit rows,
    ``rotations`` R per class), the best rotation per class: N×C. Centred, both
    sides are seen from the frame's mean (unit) window: what all windows share (the
    backdrop, the lighting) stops counting as likeness. Written as products with the raw
    embeddings, so no centred copy of the windows is ever made (this is the hot loop)."""
    emb = np.ascontiguousarray(emb, np.float32)
    inv = 1.0 / np.maximum(np.sqrt(np.einsum("ij,ij->i", emb, emb)), 1e-12)
    cos = emb @ protos.T
    if center and len(emb) > 1:
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
    return cos.reshape(len(emb), -1, rotations).max(axis=2).astype(np.float32)
