"""The classification head: standardised features → multinomial logistic regression.

It follows scikit-learn's estimator shape (``fit`` / ``predict_proba`` / ``predict``) but
persists as plain arrays (npz, never pickled), so the device can both run it and refit it on
the spot from a few new examples.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.preprocessing import StandardScaler

_ARRAYS = ("labels", "mean", "scale", "coef", "intercept")


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
    ) -> LogisticHead:
        """Fit on ``features`` (N×D) and class indices ``targets`` into ``labels``.

        With a sequence of ``C`` values, the regularisation is chosen by stratified
        cross-validation on the Matthews correlation, which stays honest on imbalanced classes.
        """
        x = np.asarray(features, np.float64)
        y = np.asarray(targets)
        present = np.unique(y)
        if len(present) < 2:
            raise HeadError("a head needs examples of at least two classes")
        scaler = StandardScaler().fit(x)
        xs = scaler.transform(x)
        smallest = min(int(np.sum(y == c)) for c in present)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            # scikit-learn 1.8+ announces changes to LogisticRegressionCV's defaults and
            # attributes; we pass neither and read only coef_, intercept_ and classes_.
            warnings.simplefilter("ignore", FutureWarning)
            # one or a few examples per class (enrolling, few-shot) is a classification problem
            warnings.filterwarnings("ignore", message="The number of unique classes", category=UserWarning)
            if isinstance(C, (int, float)) or smallest < 2:
                c_value = float(C) if isinstance(C, (int, float)) else float(np.median(C))
                model = LogisticRegression(C=c_value, class_weight=class_weight, max_iter=3000)
            else:
                model = LogisticRegressionCV(
                    Cs=list(C),
                    cv=min(3, smallest),
                    scoring="matthews_corrcoef",
                    class_weight=class_weight,
                    max_iter=3000,
                    random_state=seed,
                )
            model.fit(xs, y)
        coef, intercept = model.coef_, model.intercept_
        if coef.shape[0] == 1:  # binary: sigmoid(z) == softmax([-z/2, z/2])
            coef = np.vstack([-coef / 2, coef / 2])
            intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
        # Columns follow the classes seen; classes without examples get a -inf-like logit.
        full_coef = np.zeros((len(labels), x.shape[1]))
        full_intercept = np.full(len(labels), -30.0)
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
        x = np.atleast_2d(np.asarray(features, np.float32))
        if x.shape[1] != self.n_features:
            raise HeadError(f"head expects {self.n_features} features, got {x.shape[1]}")
        return ((x - self.mean) / self.scale) @ self.coef.T + self.intercept

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        logits = self.decision_function(features)
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return self.decision_function(features).argmax(axis=1)

    def save(self, path: Path) -> None:
        with open(path, "wb") as f:
            np.savez(
                f,
                labels=np.array(self.labels, dtype=str),
                mean=self.mean,
                scale=self.scale,
                coef=self.coef,
                intercept=self.intercept,
            )

    @classmethod
    def load(cls, path: Path) -> LogisticHead:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in _ARRAYS if name in data.files}
        except (OSError, ValueError, EOFError) as exc:
            raise HeadError(f"{path}: not a readable head file ({exc})") from exc
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
