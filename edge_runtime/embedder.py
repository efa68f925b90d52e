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

    def run_all(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Every output of the model (``embedding``, and ``feature_map`` where exported)."""
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, {self._input: np.ascontiguousarray(batch, np.float32)})))

    def embed_views(self, views: Sequence[ViewFrame]) -> np.ndarray:
        return self.embed_batch(preprocess_views(views, self.spec))


def pick_threads(model_path: str | Path, spec: InputSpec, target_items_per_s: float = 200.0, batch_items: int = 8,
                 runs: int = 3, gain: float = 1.3) -> tuple[int, dict[int, float]]:
    """The station's intra-op thread count for this model on this machine, measured on batches
    of ``batch_items`` items (what a busy station runs). One thread when it already embeds
    ``target_items_per_s``: the other core then serves capture, the serial readers and the loop,
    which keeps commands on time under overload (default bundle, 1,000 items/s offered, AMD EPYC, over
    four benchmark runs: late commands median 9 with one thread (0-181), 52 with two (19-119); the
    runs are noisy at that load). A second thread only when one is short
    of the target and two are at least ``gain`` times faster (ResNet-18 at 128 px: 81 → 154
    items/s). Returns the choice and the seconds per batch for each count tried."""
    cores = min(2, os.cpu_count() or 1)
    batch = np.zeros((batch_items * spec.views, len(spec.channels), spec.size, spec.size), np.float32)
    seconds: dict[int, float] = {}
    for threads in range(1, cores + 1):
        if threads > 1 and batch_items / seconds[1] >= target_items_per_s:
            break  # one thread is enough: no need to time more
        embedder = OnnxEmbedder(model_path, spec, threads=threads, spin=False)
        embedder.embed_batch(batch)  # the first run allocates
        times = []
        for _ in range(runs):
            started = time.perf_counter()
            embedder.embed_batch(batch)
            times.append(time.perf_counter() - started)
        seconds[threads] = float(np.median(times))
    fast_enough = batch_items / seconds[1] >= target_items_per_s
    best = cores if cores > 1 and not fast_enough and seconds[1] / seconds[cores] >= gain else 1
    return best, seconds
