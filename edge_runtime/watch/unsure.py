"""The queue of unsure items: the items a person's label is worth most on, kept with their frames.

An item is a candidate when the head was unsure of it (``unsure``), found it far from every class
(``unknown``), gave its two best classes close probabilities (``margin``), would have named
another class from some of its views alone (``views-disagree``), or looks unlike every item of
the drift watch's reference (``novel``: its strangeness, ``drift.Strangeness``, at least NOVEL_Z).
Its uncertainty is 1 for an unknown item, else ``max(1 - margin, share of disagreeing views / 2,
strangeness / (2 NOVEL_Z))``, at most 1.

The queue is a folder, one sub-folder an item (``<item>-<time>/``: ``item.json``, the views as
``v<k>.rgb.png`` and ``v<k>.nir.png``, the head's features ``features.npy`` and the pooled
embedding ``pooled.npy``), written whole in one rename. It is bounded three ways: at most
``per_hour`` items an hour (a more uncertain candidate takes the place of the least uncertain
unlabelled one of the hour), at most ``max_items`` items and ``max_mb`` in all (the oldest go),
and nothing is written while the disk has less than ``reserve_mb`` free. A candidate that
repeats an item already queued (its pooled embedding as close as a repeat) takes its place only
when it is more uncertain. What is not kept is counted.

:meth:`UnsureQueue.ranked` orders the queue by uncertainty and diversity: the unlabelled items
are grouped (k-means on their pooled embeddings, up to 50 groups), and the ranking takes one
item from each group in turn, larger and more uncertain groups first, the most uncertain (then
the most typical) item of a group first; so fifty look-alikes are one group and take one place
at the top, and the top fifty span what the queue holds. Labels given (:meth:`UnsureQueue.label`,
the operator page, ``sortline queue label``) are kept in the item's ``item.json`` and become
examples in the enrollment store.
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

import cv2
import numpy as np
from sklearn.cluster import KMeans

from sortline.edge_runtime.errors import ConfigError, SortlineError
from sortline.edge_runtime.learning.store import check_label
from sortline.edge_runtime.model.pipeline import UNKNOWN, UNSURE
from sortline.edge_runtime.station.observers import ObservedItem
from sortline.hardware.files import atomic_file

log = logging.getLogger(__name__)
ITEM_FILE = "item.json"
KEY = re.compile(r"^\d{1,10}-\d{8}T\d{6}\d{0,6}$")
MAX_ITEM_JSON = 1 << 20
NOVEL_Z = 3.0  # strangeness (in the reference's own deviations) from which an item is novel
FAST_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # lossless still; a third of the default's time
RANK_GROUPS = 50  # clusters the ranking draws from in turn
REPEAT_SHARE = 0.05  # closer than this share of the queue's spacing: a repeat of a queued item
SPACING_EVERY = 32


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

    def __post_init__(self) -> None:
        if self.per_hour < 1 or self.max_items < 1 or not self.max_mb > 0 or self.reserve_mb < 0:
            raise ConfigError("queue: per_hour and max_items ≥ 1, max_mb > 0, reserve_mb ≥ 0")
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

    def to_dict(self) -> dict:
        return {"key": self.key, "item_id": self.item_id, "uncertainty": round(self.uncertainty, 4),
                "reasons": self.reasons, "class": self.decision.get("label"),
                "confidence": self.decision.get("confidence"), "label": self.label,
                "views": self.decision.get("views", []), "hour": self.hour}


def assess(item: ObservedItem, margin: float, strangeness: float | None = None) -> tuple[list[str], float] | None:
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
    if not reasons:
        return None
    if d.reason == UNKNOWN:
        return reasons, 1.0
    return reasons, min(1.0, max(1.0 - gap, disagreeing / 2, strangeness / (2 * NOVEL_Z) if novel else 0.0))


class UnsureQueue:
    """The queue (module docstring); ``take`` runs on the item watch's thread, the rest anywhere."""

    def __init__(self, config: QueueConfig, on_label: Callable[[str, np.ndarray, str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.folder = Path(config.folder)
        self.on_label = on_label  # (label, features, source): into the enrollment store
        self.on_labelled: Callable[[int, str], None] | None = None  # (item id, label): the shadow log
        self.strangeness: Callable[[ObservedItem], float | None] | None = None  # the drift watch's
        self.clock = clock
        self.kept = 0  # written by this process
        self.dropped: dict[str, int] = {"hourly": 0, "repeat": 0, "disk": 0, "cap": 0, "write": 0}
        self.rejected = 0  # entries on disk that could not be read back
        self._entries: dict[str, Entry] = {}
        self._ranked: list[str] | None = None
        self._spacing_at: tuple[int, float] | None = None  # (kept, spacing) when last measured
        self._matrix: tuple[list[Entry], np.ndarray] | None = None
        self._lock = threading.Lock()
        self.folder.mkdir(parents=True, exist_ok=True)
        self._load()

    # --- summary ----------------------------------------------------------------------------------

    def summary(self) -> dict:
        with self._lock:
            entries = list(self._entries.values())
        return {"kept": self.kept, "dropped": sum(self.dropped.values()), "dropped_by": dict(self.dropped),
                "queued": len(entries), "labelled": sum(e.label is not None for e in entries),
                "mb": round(sum(e.bytes for e in entries) / 1e6, 3), "rejected": self.rejected}

    # --- the watch's thread -----------------------------------------------------------------------

    def take(self, item: ObservedItem) -> None:
        judged = assess(item, self.config.margin, self.strangeness(item) if self.strangeness else None)
        if judged is None:
            return
        reasons, uncertainty = judged
        hour = int(self.clock() // 3600)
        pooled = _unit(item.embeddings.mean(axis=0))
        with self._lock:
            out = self._make_room(hour, uncertainty, pooled)
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
            if isinstance(out, str) and out in self._entries:
                self._remove(out)
            self._entries[entry.key] = entry
            self._ranked = self._matrix = None
            self.kept += 1
            self._trim()

    def _make_room(self, hour: int, uncertainty: float, pooled: np.ndarray) -> str | bool:
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
        this_hour = [e for e in self._entries.values() if e.hour == hour]
        if len(this_hour) < self.config.per_hour:
            return True
        replaceable = [e for e in this_hour if e.label is None]
        weakest = min(replaceable, key=lambda e: e.uncertainty, default=None)
        if weakest is not None and uncertainty > weakest.uncertainty:
            self._drop("hourly")
            return weakest.key
        self._drop("hourly")
        return False

    def _unlabelled(self) -> tuple[list[Entry], np.ndarray]:
        """The unlabelled entries and their pooled embeddings as rows (kept until the queue changes)."""
        if self._matrix is None:
            entries = [e for e in self._entries.values() if e.label is None]
            self._matrix = (entries, np.array([e.pooled for e in entries]))
        return self._matrix

    def _spacing(self) -> float:
        """The median distance of a queued item to its nearest neighbour (0 with fewer than 3),
        measured again after every SPACING_EVERY items kept."""
        if len(self._entries) < 3:
            return 0.0
        if self._spacing_at is None or abs(self.kept - self._spacing_at[0]) >= SPACING_EVERY:
            pooled = np.array([e.pooled for e in self._entries.values()])
            distances = 1 - pooled @ pooled.T
            np.fill_diagonal(distances, np.inf)
            self._spacing_at = (self.kept, float(np.median(distances.min(axis=1))))
        return self._spacing_at[1]

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
        """The oldest out, until the queue is within its caps."""
        cap_bytes = self.config.max_mb * 1e6
        while self._entries and (len(self._entries) > self.config.max_items
                                 or sum(e.bytes for e in self._entries.values()) > cap_bytes):
            self._remove(next(iter(self._entries)))
            self._drop("cap")

    def _remove(self, key: str) -> None:
        self._entries.pop(key, None)
        self._ranked = self._matrix = None
        shutil.rmtree(self.folder / key, ignore_errors=True)

    # --- reading back -----------------------------------------------------------------------------

    def _load(self) -> None:
        for leftover in self.folder.glob(".incoming-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        found = []
        for path in self.folder.iterdir():
            if not path.is_dir() or not KEY.match(path.name):
                continue
            entry = _read_entry(path)
            if entry is None:
                self.rejected += 1
                log.warning("queue %s: %s cannot be read back; left alone", self.folder, path.name)
            else:
                found.append(entry)
        for entry in sorted(found, key=lambda e: (e.key.split("-")[1], e.item_id)):
            self._entries[entry.key] = entry

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
        """Unlabelled entries by uncertainty and diversity (module docstring), then labelled ones."""
        with self._lock:
            if self._ranked is None:
                self._ranked = _rank(list(self._entries.values()))
            return [self._entries[k] for k in self._ranked if k in self._entries]

    def label(self, key: str, label: str) -> Entry:
        """Give a queued item its class; its features become an example in the enrollment store."""
        label = check_label(label)
        entry = self.entry(key)
        path = self.folder / entry.key
        try:
            record = json.loads((path / ITEM_FILE).read_text(encoding="utf-8"))
            features = np.load(path / "features.npy", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise QueueError(f"item {key}: cannot be read ({exc})") from exc
        if self.on_label is not None:
            self.on_label(label, np.atleast_2d(features), f"queue:{entry.key}")
        record["label"] = label
        with atomic_file(path / ITEM_FILE, "label") as tmp:
            tmp.write_text(json.dumps(record), encoding="utf-8")
        with self._lock:
            entry.label = label
            self._ranked = self._matrix = None
        if self.on_labelled is not None:
            self.on_labelled(entry.item_id, label)
        return entry


def export(queue: UnsureQueue, out: Path) -> int:
    """The labelled items as an item folder tree (``OUT/<label>/<item>/``, as ``sortline fit``
    and ``sortline enroll`` read), with ``OUT/labels.csv``; returns how many."""
    out = Path(out)
    labelled = [e for e in queue.ranked() if e.label is not None]
    rows = []
    for entry in labelled:
        target = out / entry.label / entry.key
        target.mkdir(parents=True, exist_ok=True)
        for image in (queue.folder / entry.key).glob("v*.png"):
            shutil.copy2(image, target / image.name)
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
                "views": [k for k, v in enumerate(item.views) if v is not None]}
    record = {"item_id": item.item_id, "hour": hour, "uncertainty": uncertainty, "reasons": reasons,
              "decision": decision, "label": None,
              "readings": [dataclasses.asdict(r) for r in item.readings if dataclasses.is_dataclass(r)]}
    try:
        staging.mkdir()
        for k, view in enumerate(item.views):
            if view is not None:
                cv2.imwrite(str(staging / f"v{k}.rgb.png"), cv2.cvtColor(view.rgb, cv2.COLOR_RGB2BGR), FAST_PNG)
                if view.nir is not None:
                    cv2.imwrite(str(staging / f"v{k}.nir.png"), view.nir, FAST_PNG)
        np.save(staging / "features.npy", item.pipeline.features(item.item_id, item.embeddings, item.readings))
        np.save(staging / "pooled.npy", pooled)
        (staging / ITEM_FILE).write_text(json.dumps(record), encoding="utf-8")
        size = sum(p.stat().st_size for p in staging.iterdir())
        os.rename(staging, folder / key)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Entry(key, item.item_id, hour, uncertainty, reasons, decision, None, size, pooled)


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, np.float64)
    return vector / max(float(np.linalg.norm(vector)), 1e-12)


def _rank(entries: list[Entry]) -> list[str]:
    """Unlabelled entries grouped into up to RANK_GROUPS clusters of their pooled embeddings
    (k-means); each round takes one item from each cluster, the clusters in order of their size
    times their mean uncertainty, and within a cluster the most uncertain first (ties: the one
    nearest the cluster's centre, the most typical). Then the labelled entries."""
    todo = [e for e in entries if e.label is None]
    done = [e.key for e in entries if e.label is not None]
    if len(todo) < 2:
        return [e.key for e in todo] + done
    pooled = np.array([e.pooled for e in todo])
    uncertainty = np.array([e.uncertainty for e in todo])
    groups = min(RANK_GROUPS, len(todo))
    kmeans = KMeans(groups, n_init=3, random_state=0).fit(pooled)
    spread = np.linalg.norm(pooled - kmeans.cluster_centers_[kmeans.labels_], axis=1)
    members = []
    for g in range(groups):
        inside = np.flatnonzero(kmeans.labels_ == g)
        inside = inside[np.lexsort((spread[inside], -np.round(uncertainty[inside], 1)))]
        members.append((len(inside) * float(uncertainty[inside].mean()), list(inside)))
    members.sort(key=lambda m: -m[0])
    order = [m[1][r] for r in range(max(len(m[1]) for m in members)) for m in members if r < len(m[1])]
    return [todo[i].key for i in order] + done


def _read_entry(path: Path) -> Entry | None:
    """An entry from its folder, every field checked; None when anything is off."""
    try:
        item_file = path / ITEM_FILE
        if item_file.stat().st_size > MAX_ITEM_JSON:
            return None
        record = json.loads(item_file.read_text(encoding="utf-8"))
        pooled = np.load(path / "pooled.npy", allow_pickle=False)
        size = sum(p.stat().st_size for p in path.iterdir())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or pooled.ndim != 1 or not np.isfinite(pooled).all():
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
                 _unit(pooled))
