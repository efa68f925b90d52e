from __future__ import annotations

import numpy as np

from sortline.edge_runtime.model.fusion import FusionSpec, fuse, sensor_features
from sortline.hardware.protocol import ScaleReading, TapReading


def _tap(i, peak=10.0):
    return TapReading(item_id=1, index=i, count=4, peak_n=peak, rebound=0.5, decay_ms=8.0, t_ms=i)


def test_views_pooled_by_mean_and_max_then_pressure():
    spec = FusionSpec.for_sensor("taps", 4)
    emb = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    f = fuse(emb, [_tap(i) for i in range(4)], spec)
    assert f.shape == (spec.feature_count(2),)
    assert np.allclose(f[:4], [1.0, 2.0, 2.0, 3.0])
    assert np.allclose(f[4:], [10.0, 0.0, 0.5, 8.0, 1.0])


def test_repeated_tap_counts_once():
    spec = FusionSpec.for_sensor("taps", 4)
    a = sensor_features([_tap(0), _tap(1)], spec)
    b = sensor_features([_tap(0), _tap(1), _tap(1)], spec)
    assert np.array_equal(a, b)


def test_missing_readings_are_filled_with_training_means():
    spec = FusionSpec.for_sensor("taps", 4).with_fill(np.array([[10, 1, 0.5, 8, 1.0], [12, 1, 0.7, 6, 1.0]], float))
    f = fuse(np.zeros((1, 2), np.float32), [], spec)
    assert np.allclose(f[4:], [11, 1, 0.6, 7, 0.0])  # tap_fraction is a fact, not a gap
    assert not np.isnan(f).any()


def test_scale_features_take_the_settled_weight():
    spec = FusionSpec.for_sensor("scale", 2)
    moving = [ScaleReading(t_ms=0, grams=150.0, stable=0), ScaleReading(t_ms=8, grams=420.0, stable=0)]
    settled = [ScaleReading(t_ms=16, grams=400.0, stable=1), ScaleReading(t_ms=24, grams=402.0, stable=1)]
    assert np.allclose(sensor_features(moving + settled, spec), [401.0, np.log1p(401.0), 1.0])
    assert np.allclose(sensor_features(moving, spec), [420.0, np.log1p(420.0), 0.0])  # flagged as unsettled
    assert np.isnan(sensor_features([], spec)[0])
    filled = spec.with_fill(np.array([[300.0, 5.7, 1.0], [500.0, 6.2, 1.0]]))
    f = fuse(np.zeros((2, 3), np.float32), [], filled)
    assert f.shape == (filled.feature_count(3),) and np.allclose(f[6:], [400.0, 5.95, 0.0])


def test_manifests_from_before_the_scale_still_load():
    old = {"view_pools": ["mean", "max"], "pressure": ["peak_mean"], "taps_expected": 5, "pressure_fill": [9.5]}
    spec = FusionSpec.from_dict(old)
    assert spec.sensor == "taps" and spec.sensor_features == ("peak_mean",) and spec.readings_expected == 5
    assert FusionSpec.from_dict(spec.to_dict()) == spec
