"""``sortline bench``: every runtime and thread count timed on a bundle, and whole items per
second with the one the station would pick."""

from __future__ import annotations

import time

import numpy as np

from sortline.hardware.camera import ItemCapture, ViewFrame

from .pipeline import ItemPipeline
from .runtimes import AUTO


def bench_bundle(bundle, runtime: str = AUTO, threads: int | None = None, budget_s: float = 2.0,
                 whole_item_runs: int = 30) -> dict:
    """``sortline bench``: every runtime and thread count timed on the bundle (median ms to embed
    one item, its views as one batch), what ``auto`` picks, and whole items per second with the
    pick (preprocessing from camera-size frames, embedding, fusion, head)."""
    spec = bundle.manifest.input
    pipeline = ItemPipeline.for_station(bundle, threads=threads, runtime=runtime, budget_s=budget_s)
    choice = pipeline.runtime_choice
    rng = np.random.default_rng(0)
    frame = 2 * spec.size  # frames come larger than the model's input and are resized, as at a station
    views = tuple(ViewFrame(rgb=rng.integers(0, 256, (frame, frame, 3), np.uint8),
                            nir=rng.integers(0, 256, (frame, frame), np.uint8) if "nir" in spec.channels else None)
                  for _ in range(spec.views))
    capture = ItemCapture(0, views)
    pipeline.classify(capture, [])
    times = []
    for _ in range(whole_item_runs):
        t = time.perf_counter()
        pipeline.classify(capture, [])
        times.append(time.perf_counter() - t)
    return {
        "bundle": bundle.version,
        "input": [spec.views, len(spec.channels), spec.size, spec.size],
        "runtimes": {c.key: round(c.ms, 4) for c in choice.candidates if c.refused is None},
        "refused": {c.key: c.refused for c in choice.candidates if c.refused is not None},
        "min_cosine": {c.key: round(c.min_cosine, 6) for c in choice.candidates if c.refused is None},
        "max_prob_diff": {c.key: round(c.max_prob_diff, 6) for c in choice.candidates if c.refused is None},
        "check_items": choice.check_items,
        "chosen": choice.key,
        "items_per_s": round(1.0 / float(np.median(times)), 1),
        "whole_item_runs": whole_item_runs,
        "rounds": choice.rounds,
        "seconds": round(choice.seconds, 2),
    }
