"""The window grid of a frame: pyramid levels ``level_ratio`` apart, window shapes in feature-map
cells, and every window's box in frame pixels. Geometry only: no model runs here."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .config import MAX_INPUT_SIDE, MAX_WINDOWS, DetectConfig, DetectError


@dataclass(frozen=True)
class Level:
    size: tuple[int, int]  # the frame at this level in input px (width, height)
    grid: tuple[int, int]  # feature-map cells (rows, cols)
    cell: float  # frame px per cell


@dataclass(frozen=True)
class WindowGrid:
    config: DetectConfig
    stride: int  # input px per feature-map cell
    base_cells: int  # cells across a base window

    @property
    def input_px(self) -> int:
        """The side, in model input px, at which a base window is seen."""
        return self.base_cells * self.stride

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """Window shapes in feature-map cells (rows, cols)."""
        sides = sorted({max(1, round(self.base_cells * s)) for s in self.config.shapes})
        return [(h, w) for h in sides for w in sides]

    def levels(self, height: int, width: int) -> list[Level]:
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
                levels.append(Level(size, grid, cell))
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

    def boxes(self, level: Level, shape: tuple[int, int], height: int, width: int) -> np.ndarray:
        """Every window of ``shape`` at ``level``, as frame-pixel boxes (N×4, x1 y1 x2 y2)."""
        kh, kw = shape
        rows, cols = level.grid[0] - kh + 1, level.grid[1] - kw + 1
        if rows <= 0 or cols <= 0:
            return np.zeros((0, 4), np.float32)
        y, x = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        c = level.cell
        boxes = np.stack([x * c, y * c, (x + kw) * c, (y + kh) * c], axis=-1).reshape(-1, 4)
        return np.minimum(boxes, [width, height, width, height]).astype(np.float32)


def crops(rgb: np.ndarray, boxes: np.ndarray) -> Iterable[np.ndarray]:
    """The frame's pixels under each box."""
    for x1, y1, x2, y2 in np.round(boxes).astype(int):
        yield rgb[y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]
