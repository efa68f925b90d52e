"""Embeddings for detection: frames and exemplar crops through the bundle's backbone, and each
class's prototypes (a unit row per class and rotation) that windows are compared with."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from sortline.edge_runtime.model.embedder import EMBEDDING_OUTPUT, FEATURE_MAP_OUTPUT
from sortline.edge_runtime.model.preprocess import InputSpec, interpolation_for, normalize, to_unit_chw
from sortline.edge_runtime.model.runtimes import Embedder
from sortline.hardware.camera import ViewFrame

from .config import CONTEXT_CELLS, DetectConfig, DetectError
from .pooling import pool_window, unit
from .windows import WindowGrid


@dataclass(frozen=True)
class WindowEmbedder:
    embedder: Embedder
    spec: InputSpec
    config: DetectConfig
    grid: WindowGrid

    def input(self, rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return normalize(to_unit_chw(ViewFrame(rgb=rgb, nir=None), self.spec, size), self.spec)[None]

    def feature_map(self, rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        return self.embedder.run_all(self.input(rgb, size))[FEATURE_MAP_OUTPUT][0]

    def crop_embeddings(self, crops: Iterable[np.ndarray]) -> np.ndarray:
        """Each crop resized to the bundle's input: its embedding, or with ``grid=2`` its
        feature map's quarters (as dense mode pools them)."""
        out, batch = [], []
        s = (self.grid.input_px, self.grid.input_px)

        def run() -> None:
            outputs = self.embedder.run_all(np.stack(batch))
            if self.config.grid == 1:
                out.append(outputs[EMBEDDING_OUTPUT])
            else:
                out.append(np.stack([pool_window(m, grid=self.config.grid) for m in outputs[FEATURE_MAP_OUTPUT]]))

        for crop in crops:
            batch.append(self.input(crop, s)[0])
            if len(batch) == self.config.batch:
                run()
                batch = []
        if batch:
            run()
        return np.concatenate(out) if out else np.zeros((0, 1), np.float32)

    def prototypes(self, labels: Sequence[str], crops: Mapping[str, list[np.ndarray]],
                    features: Mapping[str, np.ndarray]) -> dict[tuple[int, int], np.ndarray]:
        """Per window shape (dense) or one set (crops, key ``(0, 0)``): a unit row per class and
        rotation (classes × rotations rows, rotation fastest), from every label's checked image
        crops (``crops``, possibly none) and stored embeddings."""
        rotations = self.config.rotations
        keys = self.grid.shapes if self.config.mode == "dense" else [(0, 0)]
        table: dict[tuple[int, int], np.ndarray] = {}
        kept = {label: stored(features.get(label), label) for label in labels}
        if self.config.grid != 1 and any(v is not None for v in kept.values()):
            raise DetectError("stored examples are embeddings, one box each: use grid 1 with a store")
        for key in keys:
            rows = []
            for label in labels:
                for k in rotations:
                    turned = [np.ascontiguousarray(np.rot90(c, k // 90)) for c in crops[label]]
                    if not turned:
                        embedded = None
                    elif key == (0, 0):
                        embedded = self.crop_embeddings(turned)
                    else:
                        embedded = np.stack([self.dense_prototype(c, key) for c in turned])
                    parts = [p for p in (embedded, kept[label]) if p is not None]
                    rows.append(unit(np.concatenate(parts)).mean(axis=0))
            table[key] = unit(np.stack(rows)).astype(np.float32)
        return table

    def dense_prototype(self, crop: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """The exemplar as a window of ``shape`` cells sees it in a frame: resized to that many
        cells and given ``context`` cells of mirrored surroundings (a window's cells are
        computed with the frame around them, not with the network's zero padding), then the
        window's cells pooled."""
        kh, kw = shape
        m = CONTEXT_CELLS if self.config.context else 0
        s = self.grid.stride
        item = cv2.resize(crop, (kw * s, kh * s), interpolation=interpolation_for(crop.shape, (kw * s, kh * s)))
        framed = cv2.copyMakeBorder(item, m * s, m * s, m * s, m * s, cv2.BORDER_REFLECT_101) if m else item
        fmap = self.feature_map(framed, (framed.shape[1], framed.shape[0]))
        return pool_window(fmap[:, m:m + kh, m:m + kw], self.config.pool, self.config.grid)


def stored(features: np.ndarray | None, label: str) -> np.ndarray | None:
    if features is None:
        return None
    features = np.asarray(features, np.float32)
    if features.ndim != 2 or not len(features) or not np.isfinite(features).all():
        raise DetectError(f"stored examples of {label!r}: expected finite N×D rows, got {features.shape}")
    return features
