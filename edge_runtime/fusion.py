"""Fusion: an item's view embeddings and tap readings become one feature vector for the head.

Views are pooled two ways: the mean says what the fruit is like overall, the max keeps a
defect that only one or two views face. Pressure features summarise the tap series. A missing
sensor reading is filled with the training mean, which standardises to zero: the head then
decides on the views alone instead of on a made-up softness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from sortline.hardware.protocol import TapReading

VIEW_POOLS = ("mean", "max")
PRESSURE_FEATURES = ("peak_mean", "peak_std", "rebound_mean", "decay_mean", "tap_fraction")


@dataclass(frozen=True)
class FusionSpec:
    """How features are built. Stored in the manifest so the device builds them identically."""

    view_pools: tuple[str, ...] = VIEW_POOLS
    pressure: tuple[str, ...] = PRESSURE_FEATURES
    taps_expected: int = 5
    pressure_fill: tuple[float, ...] = ()  # training means, used when a reading is missing

    def __post_init__(self) -> None:
        if unknown := set(self.view_pools) - set(VIEW_POOLS):
            raise ValueError(f"unknown view pooling {sorted(unknown)}")
        if unknown := set(self.pressure) - set(PRESSURE_FEATURES):
            raise ValueError(f"unknown pressure features {sorted(unknown)}")
        if self.pressure_fill and len(self.pressure_fill) != len(self.pressure):
            raise ValueError("pressure_fill must give one value per pressure feature")

    def feature_count(self, embedding_dim: int) -> int:
        return embedding_dim * len(self.view_pools) + len(self.pressure)

    def with_fill(self, pressure_rows: np.ndarray) -> FusionSpec:
        """The same spec, filling missing readings with the column means of ``pressure_rows``."""
        means = np.nanmean(pressure_rows, axis=0)
        return FusionSpec(self.view_pools, self.pressure, self.taps_expected, tuple(float(m) for m in means))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FusionSpec:
        return cls(
            view_pools=tuple(data["view_pools"]),
            pressure=tuple(data["pressure"]),
            taps_expected=int(data["taps_expected"]),
            pressure_fill=tuple(float(v) for v in data["pressure_fill"]),
        )


def pressure_features(taps: Sequence[TapReading], spec: FusionSpec) -> np.ndarray:
    """The tap series as ``len(spec.pressure)`` numbers; NaN where no reading supports one."""
    by_index = {t.index: t for t in taps}  # a repeated tap counts once
    readings = list(by_index.values())
    peaks = np.array([t.peak_n for t in readings], np.float64)
    values = {
        "peak_mean": peaks.mean() if readings else np.nan,
        "peak_std": peaks.std() if len(readings) > 1 else np.nan,
        "rebound_mean": np.mean([t.rebound for t in readings]) if readings else np.nan,
        "decay_mean": np.mean([t.decay_ms for t in readings]) if readings else np.nan,
        "tap_fraction": len(readings) / spec.taps_expected,
    }
    return np.array([values[name] for name in spec.pressure], np.float32)


def fuse(embeddings: np.ndarray, taps: Sequence[TapReading], spec: FusionSpec) -> np.ndarray:
    """One item's feature vector from its ``V×D`` view embeddings and its tap readings."""
    pools = {"mean": lambda e: e.mean(axis=0), "max": lambda e: e.max(axis=0)}
    pooled = [pools[name](embeddings) for name in spec.view_pools]
    pressure = pressure_features(taps, spec)
    if spec.pressure_fill:
        pressure = np.where(np.isnan(pressure), np.asarray(spec.pressure_fill, np.float32), pressure)
    return np.concatenate([*pooled, pressure]).astype(np.float32)
