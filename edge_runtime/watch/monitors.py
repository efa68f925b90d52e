"""The statistics a drift watch keeps, each with a threshold from a stated false-alarm rate.

Every watched quantity is a vector per item: one camera statistic (d = 1), or an item's pooled
embedding projected on the reference's first principal components and whitened (d = k). A
:class:`Reference` is fitted on the items of the reference period (values winsorised at its
0.5 and 99.5 percentiles, so one occluded frame cannot swing a window). Then, every ``step``
items, the mean ``m`` of the latest ``window`` items gives

    T = mᵀ Σ⁻¹ m / (φ (1/W + 1/N))    (W window items, N reference items)

which is χ²(d) while the line is as it was (the window mean's variance plus the reference mean's
own error). Items on a line are not independent draws: fruit come in lots, products in runs, so
means over a window wander more than σ²/W says. φ ≥ 1 measures that in the reference itself: the
variance of the means of its consecutive blocks of ``BATCH`` items against what independent items
would give (batch means; capped at PHI_MAX). An alarm is raised when T passes the χ²(d)
quantile at one look's share of the false-alarm budget (``step`` items' worth: overlapping
windows are counted as if independent, which errs towards silence), and clears when T has stayed
below its median for ``clear_blocks`` looks. Rates (unsure, unknown, safe-exit decisions) are
counts in windows: one-sided exact binomial tails against the reference rate's 97.5 % upper
bound (Jeffreys), so a rate estimated from few reference items errs towards silence. A one-sided
monitor (the items' novelty) alarms on a rise only, at the same false-alarm probability.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

BATCH = 50  # items per block of the reference when φ is measured
PHI_MAX = 25.0
CLEAR_QUANTILE = 0.5  # an alarm clears once the statistic is back to its typical (median) size


@dataclass(frozen=True)
class Reference:
    """Where a quantity sat during the reference period."""

    mean: np.ndarray  # d
    low: np.ndarray  # winsorising bounds, d
    high: np.ndarray
    whiten: np.ndarray  # d×d: Σ^-1/2
    count: int
    components: np.ndarray | None = None  # k×D: for embeddings, the projection before whitening
    centre: np.ndarray | None = None  # D: the embeddings' mean
    phi: float = 1.0  # how much more window means wander than independent items' would

    @classmethod
    def fit(cls, values: np.ndarray, components: int | None = None, floor: float = 1e-6) -> Reference:
        """From N×D values; with ``components``, projected on that many principal components.
        ``floor`` is the least standard deviation any direction is given (a statistic that did
        not move in the reference must move by that much to count)."""
        values = np.asarray(values, np.float64)
        basis = centre = None
        if components is not None:
            centre = values.mean(axis=0)
            _, _, vt = np.linalg.svd(values - centre, full_matrices=False)
            basis = vt[:min(components, len(vt))]
            values = (values - centre) @ basis.T
        low, high = np.percentile(values, [0.5, 99.5], axis=0)
        clipped = np.clip(values, low, high)
        mean = clipped.mean(axis=0)
        cov = np.atleast_2d(np.cov(clipped, rowvar=False))
        w, v = np.linalg.eigh(cov)
        whiten = v @ np.diag(1 / np.sqrt(np.maximum(w, floor ** 2))) @ v.T
        return cls(mean, low, high, whiten, len(values), basis, centre, _phi((clipped - mean) @ whiten))

    def project(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, np.float64)
        if self.components is not None:
            values = (values - self.centre) @ self.components.T
        return values


def _phi(whitened: np.ndarray) -> float:
    """Batch means: the variance of consecutive blocks' means (whitened, averaged over
    dimensions) times the block size; 1 for independent items, more for items that come in runs."""
    blocks = len(whitened) // BATCH
    if blocks < 4:
        return 1.0
    means = whitened[:blocks * BATCH].reshape(blocks, BATCH, -1).mean(axis=1)
    return float(np.clip(means.var(axis=0, ddof=1).mean() * BATCH, 1.0, PHI_MAX))


@dataclass
class Latch:
    """An alarm's state: raised when a look is over its threshold, cleared after
    ``clear_blocks`` calm looks in a row."""

    clear_blocks: int = 2
    active: bool = False
    _calm: int = 0

    def judge(self, over: bool, calm: bool) -> str | None:
        """"raise", "clear" or None (no change)."""
        if not self.active:
            if over:
                self.active, self._calm = True, 0
                return "raise"
            return None
        self._calm = self._calm + 1 if calm else 0
        if self._calm >= self.clear_blocks:
            self.active = False
            return "clear"
        return None


@dataclass
class Window:
    """The latest ``size`` values, looked at every ``step`` of them."""

    size: int
    step: int
    values: deque = field(init=False)
    _since: int = 0

    def __post_init__(self) -> None:
        self.values = deque(maxlen=self.size)

    def add(self, value: object) -> bool:
        """Add a value; True when it is time to look (a full window, ``step`` values on)."""
        self.values.append(value)
        self._since += 1
        if len(self.values) < self.size or self._since < self.step:
            return False
        self._since = 0
        return True


@dataclass
class BlockMonitor:
    """T (module docstring) on a sliding window against a :class:`Reference`."""

    reference: Reference
    window: Window
    alpha: float  # the false-alarm probability of one look
    one_sided: bool = False  # alarm only when the (scalar) statistic rises
    latch: Latch = field(default_factory=Latch)
    last: float = 0.0  # T of the latest look

    @property
    def active(self) -> bool:
        return self.latch.active

    @property
    def dof(self) -> int:
        return len(self.reference.mean)

    @property
    def threshold(self) -> float:
        return float(stats.chi2.isf(2 * self.alpha if self.one_sided else self.alpha, self.dof))

    def add(self, value: np.ndarray) -> str | None:
        """One item's value; "raise" or "clear" when a look finds a change, else None."""
        r = self.reference
        if not self.window.add(np.clip(r.project(value[None])[0], r.low, r.high)):
            return None
        z = r.whiten @ (np.mean(self.window.values, axis=0) - r.mean)
        self.last = float(z @ z / (r.phi * (1 / self.window.size + 1 / r.count)))
        if self.one_sided and z.sum() < 0:
            self.last = 0.0
        return self.latch.judge(self.last > self.threshold, self.last < stats.chi2.ppf(CLEAR_QUANTILE, self.dof))


@dataclass
class RateMonitor:
    """The share of items with some outcome (unsure, unknown, safe exit), in a window, against an
    upper bound on the reference rate; alarms on a rise only."""

    reference_rate: float  # the 97.5 % upper bound of the reference's rate
    window: Window
    alpha: float
    latch: Latch = field(default_factory=Latch)
    last: float = 0.0  # the latest window's rate

    @property
    def active(self) -> bool:
        return self.latch.active

    @classmethod
    def fit(cls, hits: int, items: int, window: Window, alpha: float) -> RateMonitor:
        upper = float(stats.beta.ppf(0.975, hits + 0.5, items - hits + 0.5)) if items else 1.0
        return cls(min(upper, 1.0), window, alpha)

    @property
    def threshold(self) -> float:
        """The smallest window rate that raises an alarm."""
        hits = int(stats.binom.isf(self.alpha, self.window.size, self.reference_rate)) + 1
        return hits / self.window.size

    def add(self, hit: bool) -> str | None:
        if not self.window.add(bool(hit)):
            return None
        hits, size = sum(self.window.values), self.window.size
        self.last = hits / size
        tail = float(stats.binom.sf(hits - 1, size, self.reference_rate))
        return self.latch.judge(tail < self.alpha, tail > 1 - CLEAR_QUANTILE)
