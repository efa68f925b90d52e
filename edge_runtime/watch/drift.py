"""The drift watch: does the line still look as it did when it was good?

It learns a reference from the first ``reference_items`` items it watches (or those after the
operator marks the line as good, :meth:`DriftWatch.mark_good`), then looks every ``step`` items at
windows of the latest items (:mod:`.monitors`):

- per camera, the statistics of the belt beside the items (:mod:`.camera`): each channel's level,
  contrast, sharpness: a camera fault or a lamp, apart from the items;
- the items' pooled embeddings (the mean over views), on the reference's principal components:
  where the items sit on average (``embedding``);
- each item's novelty: the distance of the head's scores for it (its logits, which weigh the
  views and the sensor as the head does) to the ``neighbours``-th nearest reference item's, so
  that a share of things never seen (a product the catalog lacks) shows even when the average
  embedding hardly moves (``novelty``, on a rise only);
- the rates of unsure, unknown and safe-exit decisions (paused lanes left out).

Thresholds come from one stated budget, ``items_between_false_alarms`` for all monitors together,
shared equally. An items alarm is held back while a camera alarm is up (a blurred lens moves the
embeddings too; the camera is the cause to fix), and raised if it is still there once the camera
is cleared. A new bundle or head version starts a new reference.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from sortline.edge_runtime.errors import ConfigError
from sortline.edge_runtime.model.pipeline import PAUSED, UNKNOWN, UNSURE
from sortline.edge_runtime.station.observers import ObservedItem

from .camera import STATISTICS, ReferenceRegion, view_statistics
from .monitors import BlockMonitor, RateMonitor, Reference, Window

log = logging.getLogger(__name__)
CAMERA, ITEMS = "camera", "items"
EMBEDDING, NOVELTY = "embedding", "novelty"
RATES = {"unsure-rate": lambda item: item.decision.reason == UNSURE,
         "unknown-rate": lambda item: item.decision.reason == UNKNOWN,
         "safe-exit-rate": lambda item: item.decision.exit == item.pipeline.policy.safe_exit}
ADVICE = {  # what an operator should do, per statistic (the page's banner, docs/drift.md)
    "level_r": "the belt looks darker or brighter in red: check the lights over the belt and the camera's exposure",
    "level_g": "the belt looks darker or brighter in green: check the lights over the belt and the camera's exposure",
    "level_b": "the belt looks darker or brighter in blue: check the lights over the belt and the camera's exposure",
    "level_nir": "the NIR image is darker or brighter: check the NIR lamp (age, power) and its filter",
    "contrast": "the image lost or gained contrast: look for fog, dust or a smear on the lens, or an exposure change",
    "sharpness": "the camera is out of focus or its lens is dirty: clean the lens and check the focus",
    EMBEDDING: "the items look different from the reference (a new variety, packaging or supplier?): label the "
               "queue of unsure items, refit, then mark the line as good",
    NOVELTY: "more items than usual are unlike any the station learnt its reference on (new products?): enroll "
             "them from the queue of unsure items and refit, then mark the line as good",
    "unsure-rate": "more items than usual are unsure: label the queue of unsure items and refit",
    "unknown-rate": "more items than usual are unknown to the head: enroll them from the queue and refit",
    "safe-exit-rate": "more items than usual go to the safe exit: check the event log's reasons (overload, lost "
                      "views, unsure)",
}
STD_FLOOR = {"level_r": 0.5, "level_g": 0.5, "level_b": 0.5, "level_nir": 0.5, "contrast": 0.25, "sharpness": 0.02}


@dataclass(frozen=True)
class DriftConfig:
    reference_items: int = 500  # items the reference is learnt from
    step: int = 50  # items between two looks at every statistic
    camera_window: int = 50  # items in the window of the camera statistics
    item_window: int = 200  # items in the window of the item statistics and rates
    components: int = 8  # principal components of the embeddings watched
    neighbours: int = 1  # novelty: the distance to this nearest reference item
    items_between_false_alarms: float = 1e7  # all monitors together, on a line as it was
    border: float = 0.1  # the reference region: strips of this share of the width at each side
    clear_blocks: int = 4  # calm looks in a row that clear an alarm

    def __post_init__(self) -> None:
        if self.step < 1 or self.camera_window < 5 or self.item_window < 20 or self.components < 1 \
                or self.neighbours < 1:
            raise ConfigError("drift: step ≥ 1, camera_window ≥ 5, item_window ≥ 20, components ≥ 1, neighbours ≥ 1")
        if self.step > min(self.camera_window, self.item_window):
            raise ConfigError(f"drift: step {self.step} is longer than a window")
        if self.reference_items < max(2 * self.camera_window, 2 * self.components + 10, self.item_window,
                                      self.neighbours + 10):
            raise ConfigError(f"drift: reference_items {self.reference_items} is too few for windows of "
                              f"{self.camera_window} and {self.item_window} items")
        if not self.items_between_false_alarms >= 1000:
            raise ConfigError("drift: items_between_false_alarms must be at least 1000")
        ReferenceRegion(self.border)


@dataclass
class Alarm:
    kind: str  # CAMERA or ITEMS
    statistic: str  # a camera statistic, EMBEDDING, or a rate
    camera: int | None
    at_item: int
    value: float  # the block's T (χ²) or rate that raised it
    threshold: float
    cleared_at_item: int | None = None

    def to_dict(self) -> dict:
        return {**asdict(self), "value": round(self.value, 4), "threshold": round(self.threshold, 4),
                "advice": ADVICE[self.statistic]}

    @property
    def key(self) -> tuple[str, str, int | None]:
        return (self.kind, self.statistic, self.camera)


class Strangeness:
    """How far an item's pooled embedding lies from the reference's: the cosine distance to the
    nearest reference item, in standard deviations of that distance among the reference's own
    items (each to its nearest other). The queue of unsure items takes strange items too: an
    item of a new variety that the head names confidently, and wrongly, is worth a label."""

    def __init__(self, pooled: np.ndarray) -> None:
        self.unit = pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        distances = 1 - self.unit @ self.unit.T
        np.fill_diagonal(distances, np.inf)
        nearest = distances.min(axis=1)
        self.mean, self.std = float(nearest.mean()), max(float(nearest.std()), 1e-9)

    def __call__(self, pooled: np.ndarray) -> float:
        unit = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
        return (float((1 - self.unit @ unit).min()) - self.mean) / self.std


class Novelty:
    """An item's novelty: the distance of its head scores (logits) to the ``neighbours``-th
    nearest reference item's. (Its log would tame the tail and weaken the signal: with 20 %
    unknown products, measured on the checkout, a stranger is 3.1 reference deviations above a
    known product in distance, 2.3 in log distance.)"""

    def __init__(self, known: np.ndarray, neighbours: int) -> None:
        self.known, self.k = known, neighbours - 1

    def __call__(self, scores: np.ndarray) -> float:
        return float(np.partition(np.linalg.norm(self.known - scores, axis=1), self.k)[self.k])

    def of_reference(self) -> np.ndarray:
        """Each reference item's novelty among the others (itself left out)."""
        squared = (self.known ** 2).sum(axis=1)
        distances = np.sqrt(np.maximum(squared[:, None] + squared[None] - 2 * self.known @ self.known.T, 0))
        np.fill_diagonal(distances, np.inf)
        return np.partition(distances, self.k, axis=1)[:, self.k]


def _monitors(plan: list[tuple[tuple[str, str, int | None], Reference]], c: _Collected,
              cfg: DriftConfig) -> dict[tuple[str, str, int | None], BlockMonitor | RateMonitor]:
    """A monitor for each planned statistic and each rate, sharing the false-alarm budget."""
    looks = cfg.items_between_false_alarms * (len(plan) + len(RATES)) / cfg.step  # each monitor's looks
    monitors: dict = {}
    for key, reference in plan:  # between its false alarms
        size = cfg.camera_window if key[0] == CAMERA else cfg.item_window
        monitors[key] = BlockMonitor(reference, Window(size, cfg.step), 1 / looks, one_sided=key[1] == NOVELTY)
    for name in RATES:
        monitors[(ITEMS, name, None)] = RateMonitor.fit(c.hits[name], c.items, Window(cfg.item_window, cfg.step),
                                                        1 / looks)
    for monitor in monitors.values():
        monitor.latch.clear_blocks = cfg.clear_blocks
    return monitors


class _Collected:
    """The reference period's values."""

    def __init__(self) -> None:
        self.cameras: dict[int, list[np.ndarray]] = {}
        self.pooled: list[np.ndarray] = []
        self.scores: list[np.ndarray] = []  # the head's logits
        self.hits = {name: 0 for name in RATES}
        self.items = 0  # items counted for the rates


class DriftWatch:
    """Watches items offered by an :class:`~sortline.edge_runtime.watch.runner.ItemWatch`."""

    def __init__(self, config: DriftConfig = DriftConfig(), events: Callable[[dict], None] | None = None) -> None:
        self.config = config
        self.region = ReferenceRegion(config.border)
        self.events = events
        self.alarms: list[Alarm] = []
        self.references = 0  # references learnt
        self._collected = _Collected()
        self._monitors: dict[tuple[str, str, int | None], BlockMonitor | RateMonitor] = {}
        self._held: set[tuple[str, str, int | None]] = set()  # items monitors up while a camera alarm was
        self._decider: tuple[str, int] | None = None  # bundle and head version the reference is of
        self._novelty: Novelty | None = None
        self._strangeness: Strangeness | None = None
        self._latest: tuple[int, float] | None = None  # the latest item's strangeness
        self._mark = threading.Event()
        self._lock = threading.Lock()  # alarms and monitors, read by the API

    # --- what others ask ------------------------------------------------------------------------

    def mark_good(self) -> None:
        """The operator says the line is good now: learn a new reference from the next items."""
        self._mark.set()

    @property
    def watching(self) -> bool:
        return bool(self._monitors)

    @property
    def reference_progress(self) -> tuple[int, int]:
        return self._collected.items, self.config.reference_items

    def strangeness_of(self, item: ObservedItem) -> float | None:
        """The strangeness (:class:`Strangeness`) of the item this watch took last, if it is
        ``item`` and a reference is learnt (the queue runs after the watch, on its thread)."""
        latest = self._latest
        return latest[1] if latest is not None and latest[0] == item.item_id else None

    def active(self) -> list[Alarm]:
        with self._lock:
            return [a for a in self.alarms if a.cleared_at_item is None]

    def items_drifting(self) -> bool:
        """An alarm on the items (not a camera's) is up."""
        return any(a.kind == ITEMS for a in self.active())

    def statistics(self) -> list[dict]:
        """Every monitor: its latest block's value against its threshold."""
        with self._lock:
            return [{"kind": k[0], "statistic": k[1], "camera": k[2], "value": round(m.last, 4),
                     "threshold": round(m.threshold, 4), "alarm": m.active} for k, m in self._monitors.items()]

    def summary(self) -> dict:
        with self._lock:
            return {"alarms": [a.to_dict() for a in self.alarms], "references": self.references,
                    "watching": self.watching, "monitors": len(self._monitors)}

    # --- the watch's thread -----------------------------------------------------------------------

    def take(self, item: ObservedItem) -> None:
        decider = (item.pipeline.version, item.decision.head_version)
        by_head = item.decision.label is not None  # the head ran (safe decisions carry no head version)
        if self._mark.is_set() or (by_head and self._decider is not None and decider != self._decider):
            self._restart(item.item_id, "the operator marked the line as good" if self._mark.is_set()
                          else f"bundle/head changed to {decider}")
        if item.decision.reason == PAUSED:
            return
        if self._decider is None and by_head:
            self._decider = decider
        cameras = {k: view_statistics(view, self.region) for k, view in enumerate(item.views) if view is not None}
        pooled = item.embeddings.mean(axis=0) if item.embeddings is not None else None
        scores = None
        if by_head and item.embeddings is not None:
            features = item.pipeline.features(item.item_id, item.embeddings, item.readings)
            scores = item.pipeline.head.decision_function(features[None])[0]
        if not self._monitors:
            self._collect(cameras, pooled, scores, item)
            return
        if pooled is not None and self._strangeness is not None:
            self._latest = (item.item_id, self._strangeness(pooled))
        changes = []
        for (kind, name, camera), monitor in self._monitors.items():
            if kind == CAMERA and camera in cameras:
                change = monitor.add(cameras[camera][STATISTICS.index(name)][None])
            elif name == EMBEDDING and pooled is not None:
                change = monitor.add(pooled)
            elif name == NOVELTY and scores is not None:
                change = monitor.add(np.array([self._novelty(scores)]))  # type: ignore[misc]
            elif name in RATES:
                change = monitor.add(RATES[name](item))
            else:
                continue
            if change:
                changes.append(((kind, name, camera), change))
        for key, change in sorted(changes, key=lambda c: c[0][0] != CAMERA):  # cameras first
            self._change(key, change, item.item_id)

    def _collect(self, cameras: dict[int, np.ndarray], pooled: np.ndarray | None, scores: np.ndarray | None,
                 item: ObservedItem) -> None:
        c = self._collected
        for k, values in cameras.items():
            c.cameras.setdefault(k, []).append(values)
        if pooled is not None:
            c.pooled.append(pooled)
        if scores is not None:
            c.scores.append(scores)
        c.items += 1
        for name, hit in RATES.items():
            c.hits[name] += bool(hit(item))
        if c.items >= self.config.reference_items and len(c.pooled) > 2 * self.config.components \
                and len(c.scores) > self.config.neighbours + 10:
            self._fit(item.item_id)

    def _fit(self, item_id: int) -> None:
        cfg, c = self.config, self._collected
        plan: list[tuple[tuple[str, str, int | None], Reference]] = []
        for camera, rows in sorted(c.cameras.items()):
            values = np.array(rows)
            for i, name in enumerate(STATISTICS):
                column = values[:, i:i + 1]
                if len(column) >= cfg.camera_window and np.isfinite(column).all():
                    plan.append(((CAMERA, name, camera), Reference.fit(column, floor=STD_FLOOR[name])))
        plan.append(((ITEMS, EMBEDDING, None), Reference.fit(np.array(c.pooled), components=cfg.components)))
        self._strangeness = Strangeness(np.array(c.pooled))
        self._novelty = Novelty(np.array(c.scores), cfg.neighbours)
        plan.append(((ITEMS, NOVELTY, None), Reference.fit(self._novelty.of_reference()[:, None], floor=1e-4)))
        monitors = _monitors(plan, c, cfg)
        with self._lock:
            self._monitors = monitors
        self.references += 1
        log.info("drift watch: reference of %d items learnt at item %d; %d monitors", c.items, item_id, len(monitors))
        self._emit({"event": "drift-reference", "at_item": item_id, "items": c.items, "monitors": len(monitors)})

    def _restart(self, item_id: int, why: str) -> None:
        self._mark.clear()
        with self._lock:
            for alarm in self.alarms:
                if alarm.cleared_at_item is None:
                    alarm.cleared_at_item = item_id
            self._monitors = {}
        self._held.clear()
        self._collected = _Collected()
        self._decider = None
        self._strangeness = self._latest = None
        log.warning("drift watch: a new reference from item %d (%s)", item_id, why)

    def _change(self, key: tuple[str, str, int | None], change: str, item_id: int) -> None:
        kind = key[0]
        camera_up = any(a.kind == CAMERA for a in self.active())
        if change == "raise" and kind == ITEMS and camera_up:
            self._held.add(key)  # a camera fault explains it: raised later if it outlives the fault
            return
        if change == "clear" and key in self._held:
            self._held.discard(key)
            return
        if change == "raise":
            self._raise(key, item_id)
        else:
            self._clear(key, item_id)
        if kind == CAMERA and change == "clear" and not any(a.kind == CAMERA for a in self.active()):
            for held in sorted(self._held, key=str):  # the cameras are fine again: what is left is the items
                self._held.discard(held)
                self._raise(held, item_id)

    def _raise(self, key: tuple[str, str, int | None], item_id: int) -> None:
        monitor = self._monitors[key]
        alarm = Alarm(key[0], key[1], key[2], item_id, monitor.last, monitor.threshold)
        with self._lock:
            self.alarms.append(alarm)
        where = f"camera {key[2]} " if key[2] is not None else ""
        log.warning("drift alarm at item %d: %s%s %.3g over %.3g", item_id, where, key[1], monitor.last,
                    monitor.threshold)
        self._emit({"event": "drift-alarm", **alarm.to_dict()})

    def _clear(self, key: tuple[str, str, int | None], item_id: int) -> None:
        with self._lock:
            for alarm in self.alarms:
                if alarm.key == key and alarm.cleared_at_item is None:
                    alarm.cleared_at_item = item_id
                    log.info("drift alarm %s cleared at item %d", key, item_id)
                    self._emit({"event": "drift-clear", **alarm.to_dict()})

    def _emit(self, record: dict) -> None:
        if self.events is not None:
            self.events(record)
