"""Fit the fusion head on embeddings from the exported (quantized) backbone, so the head is
trained on exactly the numbers the station will compute."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sortline.edge_runtime.embedder import OnnxEmbedder
from sortline.edge_runtime.fusion import FusionSpec, fuse, sensor_features
from sortline.edge_runtime.head import LogisticHead

from .sim_data import SimItem

C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def fit_fusion_head(
    embedder: OnnxEmbedder, items: Sequence[SimItem], labels: Sequence[str], fusion: FusionSpec, seed: int = 0
) -> tuple[LogisticHead, FusionSpec]:
    """The head, and the fusion spec completed with the training means for missing readings."""
    embeddings = [embedder.embed_views(item.views) for item in items]
    fusion = fusion.with_fill(np.stack([sensor_features(item.readings, fusion) for item in items]))
    features = np.stack([fuse(e, item.readings, fusion) for e, item in zip(embeddings, items)])
    targets = np.array([item.label for item in items])
    return LogisticHead.fit(features, targets, labels, C=C_GRID, seed=seed), fusion
