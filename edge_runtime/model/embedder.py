"""Backbone inference with ONNX Runtime: preprocessed views in, one embedding per view out.
(The other runtimes, and the choice between them: runtimes.py.)"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sortline.hardware.camera import ViewFrame

from .preprocess import InputSpec, preprocess_views

EMBEDDING_OUTPUT = "embedding"
FEATURE_MAP_OUTPUT = "feature_map"
# Two computations of the same embeddings agree when every row's cosine is at least this: the
# export's bound between ONNX and PyTorch, and the station's between inference runtimes.
PARITY_MIN_COSINE = 0.999


@dataclass(frozen=True)
class Parity:
    min_cosine: float
    mean_cosine: float
    max_abs_diff: float

    def to_dict(self) -> dict:
        return {"min_cosine": self.min_cosine, "mean_cosine": self.mean_cosine, "max_abs_diff": self.max_abs_diff}


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return (a * b).sum(axis=1)


def compare(reference: np.ndarray, candidate: np.ndarray) -> Parity:
    cos = cosine_rows(reference, candidate)
    return Parity(float(cos.min()), float(cos.mean()), float(np.abs(reference - candidate).max()))


class OnnxEmbedder:
    """``threads`` intra-op threads (0: ONNX Runtime's default, one per core). ``spin`` lets idle
    threads busy-wait for the next run: a few percent faster alone, but on a 2-core station the
    spinning threads take the cores that capture, serial reading and the loop need (measured:
    the same embedding 3.4 ms quiet, 10.6 ms beside one busy core), so the station turns it off.
    """

    name = "onnxruntime"

    def __init__(self, model_path: str | Path, spec: InputSpec, threads: int = 0, spin: bool = True) -> None:
        self.threads = threads
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        if not spin:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
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

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the model (``embedding``, and ``feature_map`` where exported)."""
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {self._input: np.ascontiguousarray(batch, np.float32)})))

    def embed_views(self, views: Sequence[ViewFrame]) -> np.ndarray:
        return self.embed_batch(preprocess_views(views, self.spec))
