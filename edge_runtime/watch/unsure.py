"""The queue of unsure items: the items a person's label is worth most on, kept with their frames.

An item is a candidate when the head was unsure of it (``unsure``), found it far from every class
(``unknown``), gave its two best classes close probabilities (``margin``), would have named
another class from some of its views alone (``views-disagree``), or looks unlike every item of
the drift watch's reference (``novel``: its strangeness, ``drift.Strangeness``, at least NOVEL_Z).
Its uncertainty is 1 for an unknown item, else ``max(1 - margin, share of disagreeing views / 2,
strangeness / (2 NOVEL_Z))``, at most 1. While the drift watch holds an alarm on the items (the
line changed: a new variety, a new supplier), every item is a candidate too (``drift``): what the
line looks like now is worth labels, not only what the head is unsure of.

The queue is a folder, one sub-folder an item (``<item>-<time>/``: ``item.json``, the views as
``v<k>.rgb.png`` and ``v<k>.nir.png``, the head's features ``features.npy`` and the pooled
embedding ``pooled.npy``), written whole in one rename. It is bounded four ways: at most
``per_hour`` items an hour (a more uncertain candidate takes the place of the least uncertain
unlabelled one of the hour), at most ``drift_per_hour`` items an hour kept for the drift alone (a
uniform sample of the hour's drifted items, by reservoir sampling), at most ``max_items`` items
and ``max_mb`` in all (the oldest go, unlabelled ones first), and nothing is written while the
disk has less than ``reserve_mb`` free. A candidate that repeats an item already queued (its pooled embedding as
close as a repeat) takes its place only when it is more uncertain. What is not kept is counted.

:meth:`UnsureQueue.ranked` orders the queue by typicality, diversity and uncertainty, as
TypiClust does for small labelling budgets (Hacohen et al., "Active learning on a budget", ICML
2022): the items are grouped (k-means on their features as the head takes them, as unit vectors,
labelled items too; up to RANK_GROUPS groups, of GROUP_ITEMS items or more on average), and the
groups with the fewest labels give the next ones, the larger group first: before any label that
is one item from each group in turn, larger groups first. A group's first item is its most
typical (the densest: nearest on average to its TYPICAL_NEIGHBOURS nearest neighbours in the
group), the ones after it the most uncertain first. So fifty look-alikes are one group and take
one place at the top, the top fifty are the fifty kinds of item the queue holds most of, each by
its most typical member, and labels given one at a time (the ranking made again after each, as an
operator works) spread over the kinds instead of all going to the commonest one: a few labels of
typical items teach a refit more than a few of the oddest ones (measured in docs/drift.md).
Labels given (:meth:`UnsureQueue.label`, the operator page, ``sortline queue label``) are kept
in the item's ``item.json`` and become examples in the enrollment store.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans

from sortline.edge_runtime.errors import ConfigError, SortlineError
from sortline.edge_runtime.learning.store import check_label
from sortline.edge_runtime.model.pipeline import UNKNOWN, UNSURE
from sortline.edge_runtime.station.observers import ObservedItem
from sortline.hardware.files import atomic_file
from sortline.hardware.items import readings_from_dicts, write_readings, write_views

log = logging.getLogger(__name__)
ITEM_FILE = "item.json"
DRIFT = "drift"  # the reason of an item taken because the items drifted
KEY = re.compile(r"^\d{1,10}-\d{8}T\d{6}\d{0,6}$")
MAX_ITEM_JSON = 1 << 20
NOVEL_Z = 3.0  # strangeness (in the reference's own deviations) from which an item is novel
RANK_GROUPS = 50  # clusters the ranking draws from in turn, at most
GROUP_ITEMS = 5  # and at least this many items a cluster on average (a typical member needs others)
TYPICAL_NEIGHBOURS = 20  # a member's typicality: its mean distance to this many nearest members
REPEAT_SHARE = 0.05  # closer than this share of the queue's spacing: a repeat of a queued item
SPACING_EVERY = 32


# A label given (label, the item's features, "queue:<key>", the sha256 of the backbone that made
# them or ""): into the enrollment store (learning/enroll.py: enroll_label)
OnLabel = Callable[[str, np.ndarray, str, str], object]


class QueueError(SortlineError, ValueError):
    """A queue request that cannot be met (no such item, a bad label); the message says why."""


@dataclass(frozen=True)
class QueueConfig:
    folder: Path
    per_hour: int = 120
    max_items: int = 1000
    max_mb: float = 256.0
    reserve_mb: float = 256.0  # free space the queue never takes
    margin: float = 0.2  # two best classes closer than this: a candidate
    drift_per_hour: int = 120  # items kept an hour because the line drifted (a uniform sample); 0: none

    def __post_init__(self) -> None:
        if self.per_hour < 1 or self.max_items < 1 or not self.max_mb > 0 or self.reserve_mb < 0:
            raise ConfigError("queue: per_hour and max_items ≥ 1, max_mb > 0, reserve_mb ≥ 0")
        if self.drift_per_hour < 0:
            raise ConfigError("queue: drift_per_hour ≥ 0")
        if not 0 <= self.margin <= 1:
            raise ConfigError(f"queue: margin {self.margin} is not in 0..1")


@dataclass
class Entry:
    key: str
    item_id: int
    hour: int
    uncertainty: float
    reasons: list[str]
    decision: dict
    label: str | None
    bytes: int
    pooled: np.ndarray = field(repr=False)
    features: np.ndarray = field(repr=False)  # as the head takes them (features.npy)

    @property
    def backbone(self) -> str:
        """The sha256 of the backbone that made its features ("" when not recorded)."""
        value = self.decision.get("backbone")
        return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) else ""

    @property
    def drift_only(self) -> bool:
        """Kept because the line drifted, nothing else."""
        return self.reasons == [DRIFT]

    def to_dict(self) -> dict:
        return {"key": self.key, "item_id": self.item_id, "uncertainty": round(self.uncertainty, 4),
                "reasons": self.reasons, "class": self.decision.get("label"),
                "confidence": self.decision.get("confidence"), "label": self.label,
                "views": self.decision.get("views", []), "hour": self.hour}


def assess(item: ObservedItem, margin: float, strangeness: float | None = None,
           drifting: bool = False) -> tuple[list[str], float] | None:
    """Why the item is worth a label, and how uncertain it is; None when it is not."""
    d = item.decision
    if d.label is None or item.embeddings is None or not d.probabilities:
        return None
    p = sorted(d.probabilities, reverse=True)
    gap = p[0] - p[1] if len(p) > 1 else 1.0
    reasons = [name for name, hit in (("unsure", d.reason == UNSURE), ("unknown", d.reason == UNKNOWN),
                                      ("margin", gap < margin)) if hit]
    head = item.pipeline.head
    if len(item.embeddings) > 1:
        classes = [int(head.predict_proba(item.pipeline.features(item.item_id, row[None], item.readings))[0].argmax())
                   for row in item.embeddings]
        disagreeing = sum(head.labels[c] != d.label for c in classes) / len(classes)
    else:
        disagreeing = 0.0
    if disagreeing:
        reasons.append("views-disagree")
    novel = strangeness is not None and strangeness >= NOVEL_Z
    if novel:
        reasons.append("novel")
    if drifting:
        reasons.append(DRIFT)
    if not reasons:
        return None
    if d.reason == UNKNOWN:
        return reasons, 1.0
    return reasons, min(1.0, max(1.0 - gap, disagreeing / 2, strangeness / (2 * NOVEL_Z) if novel else 0.0))


class UnsureQueue:
    """The queue (module docstring); ``take`` runs on the item watch's thread, the rest anywhere."""

    def __init__(self, config: QueueConfig, on_label: OnLabel | None = None,
                 clock: Callable[[], float] = time.time, seed: int | None = None) -> None:
        self.config = config
        self.folder = Path(config.folder)
        self.on_label = on_label  # into the enrollment store
        self.on_labelled: Callable[[int, str], None] | None = None  # (item id, label): the shadow log
        self.strangeness: Callable[[ObservedItem], float | None] | None = None  # the drift watch's
        self.drifting: Callable[[], bool] | None = None  # the drift watch holds an alarm on the items
        self._drifted = Reservoir(config.drift_per_hour, seed)
        self.clock = clock
        self.kept = 0  # written by this process
        self.dropped: dict[str, int] = {"hourly": 0, "repeat": 0, "disk": 0, "cap": 0, "write": 0}
        self._entries: dict[str, Entry] = {}
        self._ranked: list[str] | None = None
        self._changes = 0  # entries kept, removed or labelled: a ranking made before is stale
        self._spacing_at: tuple[int, float] | None = None  # (kept, spacing) when last measured
        self._matrix: tuple[list[Entry], np.ndarray] | None = None
        self._lock = threading.Lock()
        self.folder.mkdir(parents=True, exist_ok=True)
        found, self.rejected = read_folder(self.folder)  # rejected: entries on disk that cannot be read back
        self._entries.update((entry.key, entry) for entry in found)

    # --- summary ----------------------------------------------------------------------------------

    def summary(self) -> dict:
        with self._lock:
            entries = list(self._entries.values())
        return {"kept": self.kept, "dropped": sum(self.dropped.values()), "dropped_by": dict(self.dropped),
                "queued": len(entries), "labelled": sum(e.label is not None for e in entries),
                "mb": round(sum(e.bytes for e in entries) / 1e6, 3), "rejected": self.rejected}

    # --- the watch's thread -----------------------------------------------------------------------

    def take(self, item: ObservedItem) -> None:
        drifting = bool(self.config.drift_per_hour and self.drifting is not None and self.drifting())
        judged = assess(item, self.config.margin, self.strangeness(item) if self.strangeness else None, drifting)
        if judged is None:
            return
        reasons, uncertainty = judged
        hour = int(self.clock() // 3600)
        pooled = _unit(item.embeddings.mean(axis=0))
        with self._lock:
            out = self._make_room(hour, uncertainty, pooled, reasons == [DRIFT])
        if out is False:
            return
        try:
            free = shutil.disk_usage(self.folder).free
        except OSError:
            free = 0
        if free < self.config.reserve_mb * 1e6:
            self._drop("disk")
            return
        entry = self._write(item, hour, reasons, uncertainty, pooled)
        if entry is None:
            return
        with self._lock:
            if isinstance(out, str) and out in self._entries and self._entries[out].label is None:
                self._remove(out)  # (labelled since it was picked: it stays, and the caps trim the oldest)
            self._entries[entry.key] = entry
            self._changed()
            self.kept += 1
            self._trim()

    def _make_room(self, hour: int, uncertainty: float, pooled: np.ndarray, drift_only: bool) -> str | bool:
        """Whether a candidate may be kept: True, False (dropped), or the key it replaces."""
        unlabelled, matrix = self._unlabelled()
        if unlabelled:
            distances = 1 - matrix @ pooled
            nearest = int(distances.argmin())
            if distances[nearest] < max(1e-4, REPEAT_SHARE * self._spacing()):
                self._drop("repeat")
                if uncertainty > unlabelled[nearest].uncertainty:
                    return unlabelled[nearest].key
                return False
        if drift_only:
            return self._sample(hour)
        this_hour = [e for e in self._entries.values() if e.hour == hour and not e.drift_only]
        if len(this_hour) < self.config.per_hour:
            return True
        replaceable = [e for e in this_hour if e.label is None]
        weakest = min(replaceable, key=lambda e: e.uncertainty, default=None)
        if weakest is not None and uncertainty > weakest.uncertainty:
            self._drop("hourly")
            return weakest.key
        self._drop("hourly")
        return False

    def _sample(self, hour: int) -> str | bool:
        kept = [e for e in self._entries.values() if e.hour == hour and e.drift_only and e.label is None]
        out = self._drifted.admit(hour, kept)
        if out is not True:
            self._drop("hourly")
        return out

    def _unlabelled(self) -> tuple[list[Entry], np.ndarray]:
        """The unlabelled entries and their pooled embeddings as rows (kept until the queue changes)."""
        if self._matrix is None:
            entries = [e for e in self._entries.values() if e.label is None]
            self._matrix = (entries, np.array([e.pooled for e in entries]))
        return self._matrix

    def _spacing(self) -> float:
        """Median distance of an item to its nearest neighbour (0 under 3), every SPACING_EVERY kept."""
        if len(self._entries) < 3:
            return 0.0
        if self._spacing_at is None or abs(self.kept - self._spacing_at[0]) >= SPACING_EVERY:
            pooled = np.array([e.pooled for e in self._entries.values()])
            distances = 1 - pooled @ pooled.T
            np.fill_diagonal(distances, np.inf)
            self._spacing_at = (self.kept, float(np.median(distances.min(axis=1))))
        return self._spacing_at[1]

    def _changed(self) -> None:
        """Under the lock: the entries changed."""
        self._ranked = self._matrix = None
        self._changes += 1

    def _drop(self, why: str) -> None:
        self.dropped[why] += 1

    def _write(self, item: ObservedItem, hour: int, reasons: list[str], uncertainty: float,
               pooled: np.ndarray) -> Entry | None:
        stamp = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y%m%dT%H%M%S%f")
        try:
            return write_entry(self.folder, f"{item.item_id}-{stamp}", item, hour, reasons, uncertainty, pooled)
        except OSError as exc:
            self._drop("write")
            if self.dropped["write"] == 1:
                log.error("queue %s: cannot keep item %s: %s (further failures are only counted)", self.folder,
                          item.item_id, exc)
            return None

    def _trim(self) -> None:
        """The oldest out, unlabelled ones first (a label is a person's work), until within the caps."""
        total = sum(e.bytes for e in self._entries.values())
        for entry in sorted(self._entries.values(), key=lambda e: e.label is not None):  # oldest first in each
            if len(self._entries) <= self.config.max_items and total <= self.config.max_mb * 1e6:
                break
            total -= entry.bytes
            self._remove(entry.key)
            self._drop("cap")

    def _remove(self, key: str) -> None:
        self._entries.pop(key, None)
        self._changed()
        shutil.rmtree(self.folder / key, ignore_errors=True)

    # --- reading back -----------------------------------------------------------------------------

    def entry(self, key: str) -> Entry:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            raise QueueError(f"no item {key!r} in the queue {self.folder}")
        return entry

    def view_path(self, key: str, view: int, kind: str) -> Path:
        entry = self.entry(key)
        path = self.folder / entry.key / f"v{int(view)}.{'nir' if kind == 'nir' else 'rgb'}.png"
        if not path.is_file():
            raise QueueError(f"item {key} has no {kind} view {view}")
        return path

    def ranked(self) -> list[Entry]:
        """Unlabelled entries by typicality, diversity and uncertainty (module docstring), then labelled ones."""
        with self._lock:
            ranked, entries, changes = self._ranked, list(self._entries.values()), self._changes
        if ranked is None:  # k-means: outside the lock, so that the watch's thread never waits on it
            ranked = rank_entries(entries)
            with self._lock:
                if self._changes == changes:  # nothing changed meanwhile
                    self._ranked = ranked
        with self._lock:
            return [self._entries[k] for k in ranked if k in self._entries]

    def label(self, key: str, label: str) -> Entry:
        """Give a queued item its class; its features become an example in the enrollment store."""
        label = check_label(label)
        with self._lock:  # no trim while labelling: a label in the store is in item.json too (ms; no gate waits)
            entry = self._entries.get(key)
            if entry is None:
                raise QueueError(f"no item {key!r} in the queue {self.folder}")
            path = self.folder / entry.key
            try:
                record = json.loads((path / ITEM_FILE).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise QueueError(f"item {key}: cannot be read ({exc})") from exc
            if self.on_label is not None:  # the features as kept (and checked) when written or read back
                self.on_label(label, np.atleast_2d(entry.features), f"queue:{entry.key}", entry.backbone)
            record["label"] = label
            with atomic_file(path / ITEM_FILE, "label") as tmp:
                tmp.write_text(json.dumps(record), encoding="utf-8")
            entry.label = label
            self._changed()
        if self.on_labelled is not None:
            self.on_labelled(entry.item_id, label)
        return entry


class Reservoir:
    """A uniform sample of each hour's drifted items, at most ``size`` (Vitter's algorithm R): the
    n-th of the hour takes a place with probability size / n, that of a random one kept before."""

    def __init__(self, size: int, seed: int | None = None) -> None:
        self.size = size
        self._hour, self._seen = -1, 0
        self._random = np.random.default_rng(seed)

    def admit(self, hour: int, kept: list[Entry]) -> str | bool:
        """True: keep it, there is room; False: drop it; a key: keep it in that entry's place."""
        self._seen = self._seen + 1 if hour == self._hour else 1
        self._hour = hour
        if len(kept) < self.size:
            return True
        if self._random.random() * self._seen < self.size:
            return kept[int(self._random.integers(len(kept)))].key
        return False


def read_folder(folder: Path) -> tuple[list[Entry], int]:
    """A queue folder's entries, oldest first, and how many sub-folders could not be read back
    (left alone, logged); a writer's leftovers (``.incoming-*``) are removed."""
    for leftover in folder.glob(".incoming-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    found, rejected = [], 0
    for path in folder.iterdir():
        if not path.is_dir() or not KEY.match(path.name):
            continue
        entry = _read_entry(path)
        if entry is None:
            rejected += 1
            log.warning("queue %s: %s cannot be read back; left alone", folder, path.name)
        else:
            found.append(entry)
    return sorted(found, key=lambda e: (e.key.split("-")[1], e.item_id)), rejected


def export(queue: UnsureQueue, out: Path) -> int:
    """The labelled items as an item folder tree (``OUT/<label>/<item>/``: the views and the
    readings, as ``sortline fit`` and ``sortline enroll`` read), with ``OUT/labels.csv``; returns
    how many. An item whose ``item.json`` cannot be read back is exported without its readings."""
    out = Path(out)
    labelled = [e for e in queue.ranked() if e.label is not None]
    rows = []
    for entry in labelled:
        target = out / entry.label / entry.key
        target.mkdir(parents=True, exist_ok=True)
        for image in (queue.folder / entry.key).glob("v*.png"):
            shutil.copy2(image, target / image.name)
        try:
            record = json.loads((queue.folder / entry.key / ITEM_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("queue %s: %s exported without its readings (%s)", queue.folder, entry.key, exc)
            record = {}
        rows_in = record.get("readings") if isinstance(record, dict) else None
        write_readings(target, readings_from_dicts(rows_in if isinstance(rows_in, list) else []))
        rows.append((entry.item_id, entry.key, entry.label))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "labels.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["item_id", "key", "label"])
        writer.writerows(rows)
    return len(rows)


def write_entry(folder: Path, key: str, item: ObservedItem, hour: int, reasons: list[str], uncertainty: float,
                pooled: np.ndarray) -> Entry:
    """The item's folder, assembled aside and renamed into place whole; OSError when it cannot be."""
    staging = folder / f".incoming-{key}"
    decision = {**item.decision.to_dict(), "lane": item.lane, "bundle": item.pipeline.version,
                "backbone": item.pipeline.manifest.backbone_sha256,
                "views": [k for k, v in enumerate(item.views) if v is not None]}
    record = {"item_id": item.item_id, "hour": hour, "uncertainty": uncertainty, "reasons": reasons,
              "decision": decision, "label": None,
              "readings": [dataclasses.asdict(r) for r in item.readings if dataclasses.is_dataclass(r)]}
    try:
        staging.mkdir()
        write_views(staging, item.views)
        features = item.pipeline.features(item.item_id, item.embeddings, item.readings)
        np.save(staging / "features.npy", features)
        np.save(staging / "pooled.npy", pooled)
        (staging / ITEM_FILE).write_text(json.dumps(record), encoding="utf-8")
        size = sum(p.stat().st_size for p in staging.iterdir())
        os.rename(staging, folder / key)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Entry(key, item.item_id, hour, uncertainty, reasons, decision, None, size, pooled, features)


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, np.float64)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def rank_entries(entries: list[Entry]) -> list[str]:
    """Unlabelled entries ranked as TypiClust picks (module docstring): all entries of the commonest
    feature size, labelled ones too, grouped into up to RANK_GROUPS clusters (k-means on unit
    vectors); an unlabelled item's place is the label it would be in its cluster (the cluster's
    labels so far plus its place among the cluster's unlabelled items: the most typical first, then
    the most uncertain), ties to the larger cluster, then the more uncertain one. Before any label
    that is one item from each cluster in turn, larger clusters first; after labels, the clusters
    with fewest labels come first, so labels given one at a time, the ranking made again after
    each, still spread over the kinds of item instead of all going to the commonest kind.
    Unlabelled items of other feature sizes follow by uncertainty, then the labelled entries."""
    todo = [e for e in entries if e.label is None]
    done = [e for e in entries if e.label is not None]
    if len(todo) < 2:
        return [e.key for e in todo + done]
    size = max(set(lengths := [len(e.features) for e in todo]), key=lengths.count)
    others = sorted((e for e in todo if len(e.features) != size), key=lambda e: -e.uncertainty)
    todo = [e for e in todo if len(e.features) == size]
    known = [e for e in done if len(e.features) == size]
    features = np.array([_unit(e.features) for e in todo + known])
    uncertainty = np.array([e.uncertainty for e in todo])
    groups = max(1, min(RANK_GROUPS, len(features) // GROUP_ITEMS))
    found = KMeans(groups, n_init=3, random_state=0).fit(features).labels_ if groups > 1 else np.zeros(len(features))
    places = []  # (the label it would be in its cluster, -cluster size, -uncertainty, index)
    for g in np.unique(found):
        inside = np.flatnonzero(found == g)
        unlabelled = inside[inside < len(todo)]
        if not len(unlabelled):
            continue
        typicality = _typicality(features[inside])[np.searchsorted(inside, unlabelled)]
        first = unlabelled[int(np.argmax(typicality))]
        members = [first, *sorted((i for i in unlabelled if i != first), key=lambda i: -uncertainty[i])]
        labels_so_far = len(inside) - len(unlabelled)
        places += [(labels_so_far + p, -len(inside), -float(uncertainty[i]), i) for p, i in enumerate(members)]
    order = [place[-1] for place in sorted(places)]
    return [todo[i].key for i in order] + [e.key for e in others] + [e.key for e in done]


def _typicality(rows: np.ndarray) -> np.ndarray:
    """Each row's density among ``rows`` (unit vectors): the inverse of its mean cosine distance
    to its TYPICAL_NEIGHBOURS nearest others (TypiClust's typicality); all alike below two rows."""
    k = min(TYPICAL_NEIGHBOURS, len(rows) - 1)
    if k < 1:
        return np.ones(len(rows))
    distances = np.sort(1 - rows @ rows.T, axis=1)[:, 1:k + 1]  # the first is the row itself
    return 1 / (np.maximum(distances, 0).mean(axis=1) + 1e-9)


def _read_entry(path: Path) -> Entry | None:
    """An entry from its folder, every field checked; None when anything is off."""
    try:
        item_file = path / ITEM_FILE
        if item_file.stat().st_size > MAX_ITEM_JSON:
            return None
        record = json.loads(item_file.read_text(encoding="utf-8"))
        pooled = np.load(path / "pooled.npy", allow_pickle=False)
        features = np.load(path / "features.npy", allow_pickle=False)
        size = sum(p.stat().st_size for p in path.iterdir())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or not all(a.ndim == 1 and a.dtype.kind == "f" and np.isfinite(a).all()
                                               for a in (pooled, features)):
        return None
    item_id, hour, uncertainty = record.get("item_id"), record.get("hour"), record.get("uncertainty")
    reasons, decision, label = record.get("reasons"), record.get("decision"), record.get("label")
    if not (isinstance(item_id, int) and isinstance(hour, int) and isinstance(uncertainty, (int, float))
            and isinstance(reasons, list) and isinstance(decision, dict)):
        return None
    try:
        label = None if label is None else check_label(label)
    except SortlineError:
        return None
    return Entry(path.name, item_id, hour, float(uncertainty), [str(r) for r in reasons], decision, label, size,
                 _unit(pooled), features)
