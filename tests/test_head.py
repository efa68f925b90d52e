from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from sortline.edge_runtime.model.head import HeadError, LogisticHead


def _blobs(n=300, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (k, d))
    y = rng.integers(0, k, n)
    return centres[y] + rng.normal(0, 1, (n, d)), y


def test_probabilities_match_scikit_learn():
    x, y = _blobs()
    head = LogisticHead.fit(x, y, ["a", "b", "c"], C=0.5, class_weight=None)
    scaler = StandardScaler().fit(x)
    ref = LogisticRegression(C=0.5, max_iter=3000).fit(scaler.transform(x), y)
    assert np.allclose(head.predict_proba(x), ref.predict_proba(scaler.transform(x)), atol=1e-4)


def test_binary_head_is_a_proper_two_column_softmax():
    x, y = _blobs(k=2)
    head = LogisticHead.fit(x, y, ["no", "yes"], C=1.0)
    p = head.predict_proba(x)
    assert p.shape == (len(x), 2) and np.allclose(p.sum(1), 1)
    assert (head.predict(x) == y).mean() > 0.9


def test_cross_validated_C_and_absent_classes():
    x, y = _blobs(k=3)
    head = LogisticHead.fit(x, y, ["a", "b", "c", "never-seen"], C=[0.01, 0.1, 1.0])
    p = head.predict_proba(x)
    assert p.shape == (len(x), 4) and p[:, 3].max() < 1e-6
    assert (head.predict(x) == y).mean() > 0.9


def test_save_load_round_trip_without_pickle(tmp_path):
    x, y = _blobs()
    head = LogisticHead.fit(x, y, ["a", "b", "c"])
    head.save(tmp_path / "head.npz")
    loaded = LogisticHead.load(tmp_path / "head.npz")
    assert loaded.labels == head.labels
    assert np.array_equal(loaded.predict_proba(x), head.predict_proba(x))


def test_pickled_or_broken_files_are_refused(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, labels=np.array([{"x": 1}], dtype=object), mean=np.zeros(1))
    with pytest.raises(HeadError):
        LogisticHead.load(path)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(HeadError):
        LogisticHead.load(tmp_path / "junk.npz")
    with pytest.raises(HeadError):
        LogisticHead.load(tmp_path / "missing.npz")


def test_inconsistent_arrays_and_wrong_width_are_refused():
    with pytest.raises(HeadError):
        LogisticHead(("a", "b"), np.zeros(3), np.ones(3), np.zeros((2, 4)), np.zeros(2))
    head = LogisticHead(("a", "b"), np.zeros(3, np.float32), np.ones(3, np.float32),
                        np.zeros((2, 3), np.float32), np.zeros(2, np.float32))
    with pytest.raises(HeadError, match="expects 3 features"):
        head.predict_proba(np.zeros((1, 5)))
    with pytest.raises(HeadError, match="two classes"):
        LogisticHead.fit(np.zeros((4, 3)), [1, 1, 1, 1], ["a", "b"])
