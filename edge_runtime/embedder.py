"""Backbone inference with ONNX Runtime: preprocessed views in, one embedding per view out."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from sortline.hardware.camera import ViewFrame

from .preprocess import InputSpec, preprocess_views

EMBEDDING_OUTPUT = "embedding"
FEATURE_MAP_OUTPUT = "feature_map"


class OnnxEmbedder:
    """``threads`` intra-op threads (0: ONNX Runtime's default, one per core). ``spin`` lets idle
    threads busy-wait for the next run: a few percent faster alone, but on a 2-core station the
    spinning threads take the cores that capture, serial reading and the loop need (measured:
    the same embedding 3.4 ms quiet, 10.6 ms beside one busy core), so the station turns it off.
    """

    def __init__(self, model_path: str | Path, spec: InputSpec, threads: int = 0, spin: bool = True) -> None:
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

    def embed_views(self, views: Sequence[ViewFrame]) -> np.ndarray:
        return self.embed_batch(preprocess_views(views, self.spec))


def pick_threads(model_path: str | Path, spec: InputSpec, batch_items: int = 8, runs: int = 3,
                 gain: float = 1.3) -> tuple[int, dict[int, float]]:
    """The station's intra-op thread count for this model on this machine, measured: a busy
    station embeds batches of ``batch_items`` items; a second thread is worth taking from capture,
    the serial readers and the loop only when it makes those batches ``gain`` times faster
    (a large model: ResNet-18 at 128 px ran 1.75× faster on 2 threads; the default ResNet-10 at
    64 px gained less and lost more to contention). Returns the choice and seconds per batch."""
    cores = min(2, os.cpu_count() or 1)
    batch = np.zeros((batch_items * spec.views, len(spec.channels), spec.size, spec.size), np.float32)
    seconds: dict[int, float] = {}
    for threads in range(1, cores + 1):
        embedder = OnnxEmbedder(model_path, spec, threads=threads, spin=False)
        embedder.embed_batch(batch)  # the first run allocates
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            embedder.embed_batch(batch)
            times.append(time.perf_counter() - started)
        seconds[threads] = float(np.median(times))
    best = 1
    if cores > 1 and seconds[1] / seconds[cores] >= gain:
        best = cores
    return best, seconds
