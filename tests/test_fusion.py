from __future__ import annotations

import numpy as np

from sortline.edge_runtime.fusion import FusionSpec, fuse, pressure_features
from sortline.hardware.protocol import TapReading


def _tap(i, peak=10.0):
    return TapReading(item_id=1, index=i, count=4, peak_n=peak, rebound=0.5, decay_ms=8.0, t_ms=i)


def test_views_pooled_by_mean_and_max_then_pressure():
    spec = FusionSpec(taps_expected=4)
    emb = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    f = fuse(emb, [_tap(i) for i in range(4)], spec)
    assert f.shape == (spec.feature_count(2),)
    assert np.allclose(f[:4], [1.0, 2.0, 2.0, 3.0])
    assert np.allclose(f[4:], [10.0, 0.0, 0.5, 8.0, 1.0])


def test_repeated_tap_counts_once():
    spec = FusionSpec(taps_expected=4)
    a = pressure_features([_tap(0), _tap(1)], spec)
    b = pressure_features([_tap(0), _tap(1), _tap(1)], spec)
    assert np.array_equal(a, b)


def test_missing_readings_are_filled_with_training_means():
    spec = FusionSpec(taps_expected=4).with_fill(np.array([[10, 1, 0.5, 8, 1.0], [12, 1, 0.7, 6, 1.0]], float))
    f = fuse(np.zeros((1, 2), np.float32), [], spec)
    assert np.allclose(f[4:], [11, 1, 0.6, 7, 0.0])  # tap_fraction is a fact, not a gap
    assert not np.isnan(f).any()
