"""The classification head: standardised features → multinomial logistic regression.

It follows scikit-learn's estimator shape (``fit`` / ``predict_proba`` / ``predict``) but
persists as plain arrays (npz, never pickled), so the device can both run it and refit it on
the spot from a few new examples.
"""

from __future__ import annotations

import io
import typing
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.preprocessing import StandardScaler

from .arrays import ArrayFileError, read_npz

_ARRAYS = ("labels", "mean", "scale", "coef", "intercept")
ABSENT_LOGIT = -30.0  # the intercept of a label the head saw no example of


class HeadError(ValueError):
    """A head file that is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class LogisticHead:
    labels: tuple[str, ...]  # class names, in the order of the probability columns
    mean: np.ndarray  # (D,) feature standardisation
    scale: np.ndarray  # (D,)
    coef: np.ndarray  # (K, D)
    intercept: np.ndarray  # (K,)

    def __post_init__(self) -> None:
        k, d = self.coef.shape if self.coef.ndim == 2 else (-1, -1)
        if (
            k != len(self.labels)
            or self.mean.shape != (d,)
            or self.scale.shape != (d,)
            or self.intercept.shape != (k,)
        ):
            raise HeadError(
                f"inconsistent head arrays: labels {len(self.labels)}, coef {self.coef.shape}, "
                f"mean {self.mean.shape}, scale {self.scale.shape}, intercept {self.intercept.shape}"
            )
        if not all(np.isfinite(a).all() for a in (self.mean, self.scale, self.coef, self.intercept)):
            raise HeadError("head arrays contain NaN or infinity")

    @property
    def n_features(self) -> int:
        return int(self.coef.shape[1])

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        targets: Sequence[int],
        labels: Sequence[str],
        C: float | Sequence[float] = 1.0,
        class_weight: str | None = "balanced",
        seed: int = 0,
        tol: float = 1e-4,
        init: LogisticHead | None = None,
    ) -> LogisticHead:
        """Fit on ``features`` (N×D) and class indices ``targets`` into ``labels``.

        With a sequence of ``C`` values, the regularisation is chosen by stratified
        cross-validation on the Matthews correlation, which stays honest on imbalanced classes.
        ``init`` (a head fitted on similar examples, e.g. before a class was added) starts the
        solver from its weights, matched by label: a refit on the device then takes a fraction of
        the iterations (``tol`` is the solver's stopping tolerance).
        """
        x = np.asarray(features, np.float64)
        y = np.asarray(targets)
        present = np.unique(y)
        if len(present) < 2:
            raise HeadError("a head needs examples of at least two classes")
        scaler = StandardScaler().fit(x)
        xs = scaler.transform(x)
        smallest = min(int(np.sum(y == c)) for c in present)
        if isinstance(C, (int, float)) or smallest < 2:
            c_value = float(C) if isinstance(C, (int, float)) else float(np.median(C))
            model = LogisticRegression(C=c_value, class_weight=class_weight, max_iter=3000, tol=tol,
                                       warm_start=init is not None and len(present) > 2)
            if model.warm_start:
                model.coef_, model.intercept_ = _warm_start(init, [labels[c] for c in present], scaler)
        else:
            model = LogisticRegressionCV(Cs=list(C), cv=min(3, smallest), scoring="matthews_corrcoef",
                                         class_weight=class_weight, max_iter=3000, random_state=seed)
        _quietly_fit(model, xs, y)
        coef, intercept = model.coef_, model.intercept_
        if coef.shape[0] == 1:  # binary: sigmoid(z) == softmax([-z/2, z/2])
            coef = np.vstack([-coef / 2, coef / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        # Columns follow the classes seen; classes without examples get a -inf-like logit.
        full_coef = np.zeros((len(labels), x.shape[1]))
        full_intercept = np.full(len(labels), ABSENT_LOGIT)
        full_coef[model.classes_] = coef
        full_intercept[model.classes_] = intercept
        return cls(
            labels=tuple(labels),
            mean=scaler.mean_.astype(np.float32),
            scale=np.where(scaler.scale_ > 0, scaler.scale_, 1.0).astype(np.float32),
            coef=full_coef.astype(np.float32),
            intercept=full_intercept.astype(np.float32),
        )

    def decision_function(self, features: np.ndarray) -> np.ndarray:
        return _standardise(self, features) @ self.coef.T + self.intercept

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        logits = self.decision_function(features)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.decision_function(features).argmax(axis=1)

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            self._write(f)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        self._write(buffer)
        return buffer.getvalue()

    def _write(self, f: typing.BinaryIO) -> None:
        np.savez(f, labels=np.array(self.labels, dtype=str), mean=self.mean, scale=self.scale, coef=self.coef,
                 intercept=self.intercept)

    @classmethod
    def load(cls, path: Path | typing.BinaryIO, classes: int | None = None,
             features: int | None = None) -> LogisticHead:
        """A head file; with ``classes`` and ``features`` (what a manifest says), its arrays'
        headers may declare no more than that (arrays.py reads them before allocating)."""
        limits = {} if classes is None or features is None else {
            "labels": classes, "mean": features, "scale": features, "coef": classes * features,
            "intercept": classes}
        try:
            data = read_npz(path, limits, what=f"{path} (head)")
        except ArrayFileError as exc:
            raise HeadError(str(exc)) from exc
        arrays = {name: data[name] for name in _ARRAYS if name in data}
        missing = [name for name in _ARRAYS if name not in arrays]
        if missing:
            raise HeadError(f"{path}: head file lacks {missing}")
        return cls(
            labels=tuple(str(s) for s in arrays["labels"]),
            mean=arrays["mean"].astype(np.float32),
            scale=arrays["scale"].astype(np.float32),
            coef=arrays["coef"].astype(np.float32),
            intercept=arrays["intercept"].astype(np.float32),
        )


@dataclass(frozen=True)
class OpenSet:
    """Open-set rejection by class means: an item far from every known class is *unknown* (it
    goes to the safe exit), however confident the head is, since a softmax over known classes
    is confident about things it has never seen.

    Features are scaled by their pooled within-class spread (a diagonal Mahalanobis distance:
    a feature that is tight inside each class, like a product's weight, counts for much), and
    an item is unknown when its distance to the nearest class mean is beyond that class's
    threshold: the ``1 - target_frr`` quantile of the class's examples' distances to their own
    class mean computed without them (leave one out), so that about ``target_frr`` of known
    items is rejected. A class with fewer than ``MIN_CLASS_CALIBRATION`` examples takes the
    quantile over all classes.

    Only examples the backbone never trained on can calibrate: a backbone that learned from an
    example's label pulls it close to its class, far closer than any new photo (a grocery bundle
    whose backbone trained on its 71 classes' examples rejected 53 % of known val photos against
    the 5 % meant, docs/enrollment.md). Such examples still place the class means.
    """

    center: np.ndarray  # (D,)
    scale: np.ndarray  # (D,) pooled within-class standard deviation
    means: np.ndarray  # (K, D) class means in the scaled space, one per head label
    thresholds: np.ndarray  # (K,)
    target_frr: float
    calibration_examples: int

    def __post_init__(self) -> None:
        k, d = self.means.shape if self.means.ndim == 2 else (-1, -1)
        if self.center.shape != (d,) or self.scale.shape != (d,) or self.thresholds.shape != (k,):
            raise HeadError(f"inconsistent open-set arrays: means {self.means.shape}, center {self.center.shape}, "
                            f"scale {self.scale.shape}, thresholds {self.thresholds.shape}")
        if not all(np.isfinite(a).all() for a in (self.center, self.scale, self.means, self.thresholds)):
            raise HeadError("open-set arrays contain NaN or infinity")
        if not 0.0 <= self.target_frr < 1.0 or (self.scale <= 0).any():
            raise HeadError(f"open-set target {self.target_frr} or scale out of range")

    def _scaled(self, features: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(features, np.float32))
        if x.shape[1] != len(self.center):
            raise HeadError(f"open set expects {len(self.center)} features, got {x.shape[1]}")
        return (x - self.center) / self.scale

    def distances(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each row's nearest class and its distance to that class's mean."""
        z = self._scaled(features)
        d = np.sqrt(np.maximum((z * z).sum(1)[:, None] - 2 * z @ self.means.T + (self.means ** 2).sum(1), 0))
        nearest = d.argmin(axis=1)
        return nearest, d[np.arange(len(z)), nearest]

    def unknown(self, features: np.ndarray) -> np.ndarray:
        nearest, distance = self.distances(features)
        return distance > self.thresholds[nearest]

    @classmethod
    def fit(cls, labels: int, features: np.ndarray, targets: np.ndarray, target_frr: float = 0.05,
            calibrates: np.ndarray | None = None) -> OpenSet | None:
        """Class means of ``labels`` classes from their examples, and thresholds calibrated on
        those that ``calibrates`` marks (default: all); None when fewer than 10 of those can be
        left out (every class a single shot, or every example one the backbone trained on): then
        nothing is rejected as unknown, rather than on a guess."""
        x = np.asarray(features, np.float64)
        y = np.asarray(targets)
        calibrates = np.ones(len(y), bool) if calibrates is None else np.asarray(calibrates, bool)
        if calibrates.shape != y.shape:
            raise HeadError(f"{calibrates.shape} calibration marks for {len(y)} examples")
        counts = np.bincount(y, minlength=labels)
        if (counts == 0).any():
            raise HeadError(f"no examples for classes {np.flatnonzero(counts == 0).tolist()}")
        center = x.mean(axis=0)
        class_means = np.zeros((labels, x.shape[1]))
        np.add.at(class_means, y, x)
        class_means /= counts[:, None]
        scale = (x - class_means[y]).std(axis=0)
        scale = np.where(scale > 1e-6 * max(float(scale.max()), 1e-12), scale, max(float(scale.max()), 1e-6))
        z = (x - center) / scale
        sums = np.zeros((labels, x.shape[1]))
        np.add.at(sums, y, z)
        held = (counts[y] >= 2) & calibrates
        if held.sum() < 10:
            return None
        n = counts[y[held]][:, None]
        loo = np.linalg.norm(z[held] - (sums[y[held]] - z[held]) / (n - 1), axis=1)
        pooled = float(np.quantile(loo, 1 - target_frr))
        thresholds = np.full(labels, pooled)
        for k in np.flatnonzero(np.bincount(y[held], minlength=labels) >= MIN_CLASS_CALIBRATION):
            thresholds[k] = np.quantile(loo[y[held] == k], 1 - target_frr)
        return cls(center.astype(np.float32), scale.astype(np.float32), (sums / counts[:, None]).astype(np.float32),
                   thresholds.astype(np.float32), float(target_frr), int(held.sum()))

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, center=self.center, scale=self.scale, means=self.means, thresholds=self.thresholds,
                 target_frr=np.float64(self.target_frr), calibration_examples=np.int64(self.calibration_examples))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> OpenSet:
        try:
            a = read_npz(data, what="open-set arrays")
            return cls(a["center"].astype(np.float32), a["scale"].astype(np.float32),
                       a["means"].astype(np.float32), a["thresholds"].astype(np.float32),
                       float(a["target_frr"]), int(a["calibration_examples"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise HeadError(f"unreadable open-set arrays ({exc})") from exc


MIN_CLASS_CALIBRATION = 10  # examples a class needs for a threshold of its own


def _warm_start(init: LogisticHead, labels: list[str], scaler: StandardScaler) -> tuple[np.ndarray, np.ndarray]:
    """``init``'s weights for ``labels`` (zero for a label it lacks), rewritten for ``scaler``'s
    standardisation so that they give the same logits."""
    scale = np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    w, old_mean, old_scale = (np.asarray(a, np.float64) for a in (init.coef, init.mean, init.scale))
    w_new = w / old_scale * scale  # per feature
    b_new = init.intercept + w @ ((scaler.mean_ - old_mean) / old_scale)
    rows = {label: i for i, label in enumerate(init.labels) if init.intercept[i] > ABSENT_LOGIT}  # fitted ones
    coef = np.zeros((len(labels), len(scale)))
    intercept = np.full(len(labels), float(np.mean(b_new)))
    for k, label in enumerate(labels):
        if label in rows:
            coef[k], intercept[k] = w_new[rows[label]], b_new[rows[label]]
    return coef, intercept


def _standardise(head: LogisticHead, features: np.ndarray) -> np.ndarray:
    x = np.atleast_2d(np.asarray(features, np.float32))
    if x.shape[1] != head.n_features:
        raise HeadError(f"head expects {head.n_features} features, got {x.shape[1]}")
    return (x - head.mean) / head.scale


def _quietly_fit(model: LogisticRegression, x: np.ndarray, y: np.ndarray) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        # scikit-learn 1.8+ announces changes to LogisticRegressionCV's defaults and
        # attributes; we pass neither and read only coef_, intercept_ and classes_.
        warnings.simplefilter("ignore", FutureWarning)
        # one or a few examples per class (enrolling, few-shot) is a classification problem
        warnings.filterwarnings("ignore", message="The number of unique classes", category=UserWarning)
        model.fit(x, y)
