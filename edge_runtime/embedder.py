"""Backbone inference with ONNX Runtime: preprocessed views in, one embedding per view out."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sortline.hardware.camera import ViewFrame

from .preprocess import InputSpec, preprocess_views

EMBEDDING_OUTPUT = "embedding"
FEATURE_MAP_OUTPUT = "feature_map"


class OnnxEmbedder:
    def __init__(self, model_path: str | Path, spec: InputSpec, threads: int = 0) -> None:
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for bad models
            raise ValueError(f"{model_path}: ONNX Runtime cannot load this model ({exc})") from exc
        self.spec = spec
        self._input = self.session.get_inputs()[0].name
        outputs = [o.name for o in self.session.get_outputs()]
        if EMBEDDING_OUTPUT not in outputs:
            raise ValueError(f"{model_path}: no '{EMBEDDING_OUTPUT}' output (has {outputs})")

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        """``N×C×S×S`` preprocessed input → ``N×D`` float32 embeddings."""
        return self.session.run([EMBEDDING_OUTPUT], {self._input: np.ascontiguousarray(batch, np.float32)})[0]

    def embed_views(self, views: Sequence[ViewFrame]) -> np.ndarray:
        return self.embed_batch(preprocess_views(views, self.spec))
