"""Fusion: an item's view embeddings and its sensor readings become one feature vector.

Views are pooled two ways: the mean says what the item is like overall, the max keeps a defect
that only one or two views face. The item's sensor readings are summarised by a few numbers
that depend on the sensor: the tap-pressure series of a sorting line (softness, bruises), or
the weight a checkout scale settles on (which tells a 330 ml can from a 500 ml one when the
labels look alike). A missing reading is filled with the training mean, which standardises to
zero: the head then decides on the views alone instead of on a made-up reading.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, field_validator

from sortline.hardware.camera import ViewFrame
from sortline.hardware.protocol import MAX_TAPS, ScaleReading, TapReading

from .head import LogisticHead

VIEW_POOLS = ("mean", "max")
SENSOR_FEATURES: dict[str, tuple[str, ...]] = {
    "taps": ("peak_mean", "peak_std", "rebound_mean", "decay_mean", "tap_fraction"),
    "scale": ("grams", "log_grams", "settled"),
    "none": (),
}
TAP_FEATURES = SENSOR_FEATURES["taps"]
SCALE_FEATURES = SENSOR_FEATURES["scale"]
Reading = TapReading | ScaleReading


@dataclass(frozen=True)
class FusionSpec:
    """How features are built. Stored in the manifest so the device builds them identically.

    ``sensor`` names the station's item sensor ("taps", "scale" or "none");
    ``readings_expected`` is how many readings make an item complete (taps in a series, or
    settled scale readings), after which the station decides without waiting any longer.
    """

    view_pools: tuple[str, ...] = VIEW_POOLS
    sensor: str = "taps"
    sensor_features: tuple[str, ...] = TAP_FEATURES
    readings_expected: int = 5
    sensor_fill: tuple[float, ...] = ()  # training means, used when a reading is missing

    def __post_init__(self) -> None:
        if unknown := set(self.view_pools) - set(VIEW_POOLS):
            raise ValueError(f"unknown view pooling {sorted(unknown)}")
        if self.sensor not in SENSOR_FEATURES:
            raise ValueError(f"unknown sensor {self.sensor!r}; known: {sorted(SENSOR_FEATURES)}")
        if unknown := set(self.sensor_features) - set(SENSOR_FEATURES[self.sensor]):
            raise ValueError(f"unknown {self.sensor} features {sorted(unknown)}")
        if self.sensor_fill and len(self.sensor_fill) != len(self.sensor_features):
            raise ValueError("sensor_fill must give one value per sensor feature")
        if not all(math.isfinite(v) for v in self.sensor_fill):
            raise ValueError(f"sensor_fill must be finite numbers: {self.sensor_fill}")
        if not 0 <= self.readings_expected <= MAX_TAPS:
            raise ValueError(f"readings_expected {self.readings_expected} is outside 0..{MAX_TAPS}")

    @classmethod
    def for_sensor(cls, sensor: str, readings_expected: int, view_pools: tuple[str, ...] = VIEW_POOLS) -> FusionSpec:
        return cls(view_pools, sensor, SENSOR_FEATURES.get(sensor, ()), readings_expected)

    def feature_count(self, embedding_dim: int) -> int:
        return embedding_dim * len(self.view_pools) + len(self.sensor_features)

    def with_fill(self, sensor_rows: np.ndarray) -> FusionSpec:
        """The same spec, filling missing readings with the column means of ``sensor_rows``."""
        means = np.nanmean(sensor_rows, axis=0) if len(self.sensor_features) else np.zeros(0)
        return FusionSpec(self.view_pools, self.sensor, self.sensor_features, self.readings_expected,
                          tuple(float(m) for m in means))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FusionSpec:
        if "pressure" in data:  # manifests written before the scale joined: a tap sensor
            data = {"view_pools": data["view_pools"], "sensor": "taps", "sensor_features": data["pressure"],
                    "readings_expected": data["taps_expected"], "sensor_fill": data["pressure_fill"]}
        return cls(
            view_pools=tuple(data["view_pools"]),
            sensor=str(data["sensor"]),
            sensor_features=tuple(data["sensor_features"]),
            readings_expected=int(data["readings_expected"]),
            sensor_fill=tuple(float(v) for v in data["sensor_fill"]),
        )


def _tap_values(taps: Sequence[TapReading], expected: int) -> dict[str, float]:
    by_index = {t.index: t for t in taps if isinstance(t, TapReading)}  # a repeated tap counts once
    readings = list(by_index.values())
    peaks = np.array([t.peak_n for t in readings], np.float64)
    return {
        "peak_mean": peaks.mean() if readings else np.nan,
        "peak_std": peaks.std() if len(readings) > 1 else np.nan,
        "rebound_mean": np.mean([t.rebound for t in readings]) if readings else np.nan,
        "decay_mean": np.mean([t.decay_ms for t in readings]) if readings else np.nan,
        "tap_fraction": len(readings) / max(1, expected),
    }


def _scale_values(readings: Sequence[ScaleReading]) -> dict[str, float]:
    """The median of the settled readings; without any, the last moving one (flagged)."""
    weights = [r for r in readings if isinstance(r, ScaleReading)]
    settled = [r.grams for r in weights if r.stable]
    if settled:
        grams = float(np.median(settled))
    elif weights:
        grams = float(weights[-1].grams)
    else:
        grams = math.nan
    return {
        "grams": grams,
        "log_grams": math.log1p(max(grams, 0.0)) if not math.isnan(grams) else math.nan,
        "settled": 1.0 if settled else 0.0,
    }


def sensor_features(readings: Sequence[Reading], spec: FusionSpec) -> np.ndarray:
    """The item's readings as ``len(spec.sensor_features)`` numbers; NaN where none supports one."""
    if spec.sensor == "taps":
        values = _tap_values(readings, spec.readings_expected)
    elif spec.sensor == "scale":
        values = _scale_values(readings)
    else:
        values = {}
    return np.array([values[name] for name in spec.sensor_features], np.float32)


def fuse(embeddings: np.ndarray, readings: Sequence[Reading], spec: FusionSpec) -> np.ndarray:
    """One item's feature vector from its ``V×D`` view embeddings and its sensor readings."""
    pools = {"mean": lambda e: e.mean(axis=0), "max": lambda e: e.max(axis=0)}
    pooled = [pools[name](embeddings) for name in spec.view_pools]
    sensor = sensor_features(readings, spec)
    if spec.sensor_fill:
        sensor = np.where(np.isnan(sensor), np.asarray(spec.sensor_fill, np.float32), sensor)
    return np.concatenate([*pooled, sensor]).astype(np.float32)


Range = tuple[float, float]


class ReadingLimits(BaseModel):
    """What a sensor can physically report. A reading outside these is garbage, whatever its
    CRC says: it is counted, and its item is decided without its sensor (on its views alone),
    by the station's reading matcher and again by :meth:`ItemPipeline.decide`. The station
    file's ``[limits]`` table is this model (each a ``[low, high]`` array)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    tap_peak_n: Range = (0.0, 500.0)  # newtons
    tap_rebound: Range = (0.0, 1.0)
    tap_decay_ms: Range = (0.0, 10_000.0)
    scale_grams: Range = (-100.0, 100_000.0)  # a tared scale may read a little below zero

    @field_validator("*", mode="before")
    @classmethod
    def _list_to_tuple(cls, value: object) -> object:
        return tuple(value) if isinstance(value, list) else value  # TOML has arrays, not tuples

    @field_validator("*")
    @classmethod
    def _ordered(cls, value: Range) -> Range:
        lo, hi = value
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise ValueError(f"must be [low, high] with finite low < high, not {list(value)}")
        return value

    def check(self, reading: TapReading | ScaleReading, readings_expected: int) -> str | None:
        """None for a plausible reading, else what is wrong with it."""
        if isinstance(reading, TapReading):
            if not (0 <= reading.index < reading.count == readings_expected):
                return f"tap {reading.index} of {reading.count} (this sensor taps {readings_expected} times)"
            for name, (lo, hi) in (("peak_n", self.tap_peak_n), ("rebound", self.tap_rebound),
                                   ("decay_ms", self.tap_decay_ms)):
                value = getattr(reading, name)
                if not (math.isfinite(value) and lo <= value <= hi):
                    return f"{name} {value!r} outside {lo}..{hi}"
            return None
        if not (math.isfinite(reading.grams) and self.scale_grams[0] <= reading.grams <= self.scale_grams[1]):
            return f"grams {reading.grams!r} outside {self.scale_grams[0]}..{self.scale_grams[1]}"
        if reading.stable not in (0, 1):
            return f"stable {reading.stable!r} is not 0 or 1"
        return None


@dataclass(frozen=True)
class LabeledItem:
    """One labeled item as a station sees it: its views, its sensor readings, its class index."""

    label: int
    views: list[ViewFrame]
    readings: list[Reading]


C_GRID = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # head regularisation, chosen by cross-validated MCC


@dataclass(frozen=True)
class FusionFit:
    head: LogisticHead
    fusion: FusionSpec  # completed with the training means for missing readings
    features: np.ndarray  # N×F: the items' fused features, which the bundle keeps as its examples
    targets: np.ndarray  # N class indices


def fit_fusion_head(embedder: Embedder, items: Sequence[LabeledItem], labels: Sequence[str], fusion: FusionSpec,
                    seed: int = 0, head: LogisticHead | None = None) -> FusionFit:
    """The head on ``embedder``'s embeddings (the exported model's own, quantized or not: the
    numbers the station will compute), and the fusion spec completed with the training means
    for missing readings. ``head``: one trained with the backbone (the item stage's), kept as it
    is; the items' features are still computed, as the bundle's examples."""
    embeddings = [embedder.embed_views(item.views) for item in items]
    fusion = fusion.with_fill(np.stack([sensor_features(item.readings, fusion) for item in items]))
    features = np.stack([fuse(e, item.readings, fusion) for e, item in zip(embeddings, items)])
    targets = np.array([item.label for item in items])
    if head is not None and (head.n_features != features.shape[1] or tuple(head.labels) != tuple(labels)):
        raise ValueError(f"the given head takes {head.n_features} features for {head.labels}; the items have "
                         f"{features.shape[1]} for {tuple(labels)}")
    head = head or LogisticHead.fit(features, targets, labels, C=C_GRID, seed=seed)
    return FusionFit(head, fusion, features, targets)


class Embedder(Protocol):
    def embed_views(self, views: Sequence[ViewFrame]) -> np.ndarray: ...
