"""Labels for a station's own items, and the items themselves, ready to fit a bundle on.

A recording made at a station (``sortline record``) has no labels. They are added beside it, in
``REC/labels.jsonl``: one JSON line per act (``{"item_id": 42, "label": "A"}``; a ``null`` label
takes the item's label back), appended and flushed to disk as each is given, so closing the
browser or killing the process loses nothing; the last line for an item wins. They come from a
CSV file (``item_id,label``), from the labelling page (:mod:`label_page`), or, for a simulated
recording, from its ground truth.

Items come from a recording (each announced item: its views from ``frames/<item>/`` and its
sensor readings matched to it by the station's own :class:`ReadingMatcher`, fed the recorded
serial bytes in order) or from an item folder tree (``ITEMS/<class>/<item>/`` with one image per
view and the readings it kept, as ``sortline queue export`` writes them, or ``ITEMS/<class>/<image>``:
an item of one view, without readings).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from sortline.edge_runtime.errors import SortlineError
from sortline.edge_runtime.learning.store import check_label
from sortline.edge_runtime.model.fusion import Reading
from sortline.hardware.camera import FrameError, ViewFrame
from sortline.hardware.images import IMAGE_SUFFIXES
from sortline.hardware.items import read_readings
from sortline.hardware.protocol import ITEM_ID_MAX, Heartbeat, ItemArrival, Parser, ScaleReading, TapReading
from sortline.hardware.recording import RecordedRig, Recording, RecordingError

LABELS_FILE = "labels.jsonl"
MAX_LABEL_LINES = 1_000_000
SENSOR_WAIT_S = 0.5  # readings for an item are taken until this long after its announcement


class LabelError(SortlineError, ValueError):
    """Labels that cannot be read or given; the message names the file and line."""


# --- the label book -----------------------------------------------------------------------------


class LabelBook:
    """The labels of one recording's items (``REC/labels.jsonl``), appended as they are given."""

    def __init__(self, recording: Path) -> None:
        self.path = Path(recording) / LABELS_FILE
        self._labels: dict[int, str] = {}
        self._history: list[tuple[int, str | None]] = []  # for undo: (item, label it had before)
        self._lock = threading.Lock()
        if self.path.is_file():
            self._read()

    def _read(self) -> None:
        with open(self.path, encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if n > MAX_LABEL_LINES:
                    raise LabelError(f"{self.path}: more than {MAX_LABEL_LINES} lines")
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    item, label = _item_id(entry["item_id"]), entry["label"]
                    if label is not None:
                        check_label(label)
                except (ValueError, KeyError, TypeError) as exc:
                    if not line.endswith("\n"):  # the last line of a killed writer: ignored
                        break
                    raise LabelError(f"{self.path}:{n}: not a label line ({exc})") from None
                self._apply(item, label)

    def _apply(self, item: int, label: str | None) -> None:
        self._history.append((item, self._labels.get(item)))
        if label is None:
            self._labels.pop(item, None)
        else:
            self._labels[item] = label

    def set(self, item_id: int, label: str | None) -> None:
        """Label an item (None: take its label back); on disk before this returns."""
        item = _item_id(item_id)
        if label is not None:
            check_label(label)
        with self._lock:
            line = json.dumps({"item_id": item, "label": label,
                               "t": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")}) + "\n"
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self._apply(item, label)

    def undo(self) -> int | None:
        """Take back the last label given (the item gets what it had before); returns the item."""
        with self._lock:
            if not self._history:
                return None
            item, before = self._history[-1]
        self.set(item, before)
        with self._lock:
            self._history = self._history[:-2]  # the undo itself is not undone by the next undo
        return item

    @property
    def labels(self) -> dict[int, str]:
        with self._lock:
            return dict(self._labels)

    def import_csv(self, path: Path, known_items: Iterable[int] | None = None) -> int:
        """``item_id,label`` lines (a header line is allowed); every line is checked before any
        label is written. Returns how many labels were given."""
        known = set(known_items) if known_items is not None else None
        rows: list[tuple[int, str]] = []
        try:
            with open(path, newline="", encoding="utf-8") as f:
                for n, row in enumerate(csv.reader(f), start=1):
                    if not row or not "".join(row).strip():
                        continue
                    if n == 1 and row[0].strip().lower() in ("item_id", "item", "id"):
                        continue
                    if len(row) != 2:
                        raise LabelError(f"{path}:{n}: expected 'item_id,label', got {len(row)} fields")
                    try:
                        item, label = _item_id(row[0].strip()), check_label(row[1].strip())
                    except ValueError as exc:
                        raise LabelError(f"{path}:{n}: {exc}") from None
                    if known is not None and item not in known:
                        raise LabelError(f"{path}:{n}: item {item} is not in the recording")
                    rows.append((item, label))
                    if len(rows) > MAX_LABEL_LINES:
                        raise LabelError(f"{path}: more than {MAX_LABEL_LINES} labels")
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise LabelError(f"{path}: unreadable ({exc})") from exc
        for item, label in rows:
            self.set(item, label)
        return len(rows)


def _item_id(value: object) -> int:
    try:
        item = int(value) if not isinstance(value, bool) else -1
    except (TypeError, ValueError):
        raise ValueError(f"item id {value!r:.40} is not a whole number") from None
    if not 0 <= item <= ITEM_ID_MAX:
        raise ValueError(f"item id {item} is outside 0..{ITEM_ID_MAX}")
    return item


# --- items -----------------------------------------------------------------------------------


@dataclass
class StationItem:
    """One item as the station saw it: its views, its sensor readings, and its label if known."""

    item_id: int
    views: list[ViewFrame]
    readings: list[Reading] = field(default_factory=list)
    label: str | None = None
    source: str = ""


@dataclass(frozen=True)
class ItemData:
    items: list[StationItem]
    sensor: str  # taps | scale | none
    readings_expected: int
    channels: tuple[str, ...]  # r, g, b (, nir) where every view has them
    views: int


def recording_labels(recording: Recording) -> dict[int, str]:
    """The labels of a recording's items: its label book, else its ground truth (simulated)."""
    book = LabelBook(recording.root).labels
    if book:
        return book
    names = recording.meta.get("labels") or []
    return {int(row["item_id"]): names[row["label"]] for row in recording.truth
            if isinstance(row.get("label"), int) and 0 <= row["label"] < len(names)}


def recording_items(path: Path, progress=None) -> ItemData:
    """Every captured item of a recording, with the readings the station would have matched
    to it and its label (where one is given)."""
    recording = Recording.open(path)
    devices = list(recording.meta.get("devices", []))
    if not devices:
        raise RecordingError(f"{path}: the recording lists no devices")
    sensor = recording.meta.get("sensor") or (devices[1] if len(devices) > 1 else "none")
    readings = _matched_readings(recording, devices[0], sensor if sensor in devices else None)
    labels = recording_labels(recording)
    rig = RecordedRig(recording)
    rig.late_s = 0.0
    items = []
    frames = recording.root / "frames"
    ids = sorted(int(p.name) for p in frames.iterdir() if p.is_dir() and p.name.isdigit()) if frames.is_dir() else []
    for item_id in (progress(ids) if progress else ids):
        try:
            views = list(rig.capture(item_id).present)
        except FrameError:
            continue  # not captured: nothing to learn from
        if views:
            items.append(StationItem(item_id, views, readings.get(item_id, []), labels.get(item_id),
                                     f"{path}#{item_id}"))
    if not items:
        raise RecordingError(f"{path}: no captured item")
    return ItemData(items, sensor if sensor in ("taps", "scale") else "none",
                    _readings_expected(items, sensor), _channels(items), int(recording.meta.get("views", 1)))


def _matched_readings(recording: Recording, controller: str, sensor: str | None) -> dict[int, list[Reading]]:
    """The recorded serial bytes through the station's parser and reading matcher, in the
    order they were read; each item closes ``SENSOR_WAIT_S`` after its announcement."""
    from sortline.edge_runtime.station.readings import ReadingMatcher

    events: list[tuple[float, int, str, object]] = []
    for device in [controller] + ([sensor] if sensor else []):
        parser = Parser()
        for entry in recording.serial_entries(device):
            if "data" in entry:
                for message in parser.feed(entry["data"]):
                    events.append((float(entry["t"]), len(events), device, message))
    events.sort(key=lambda e: (e[0], e[1]))
    kind = sensor if sensor in ("taps", "scale") else "none"
    counts = Counter(m.count for *_, m in events if isinstance(m, TapReading))  # the sensor's taps per item
    matcher = ReadingMatcher(kind, counts.most_common(1)[0][0] if counts else 0)
    out: dict[int, list[Reading]] = {}
    open_until: list[tuple[float, int]] = []

    def close_due(now: float) -> None:
        while open_until and open_until[0][0] <= now:
            _, item = open_until.pop(0)
            out[item] = matcher.close(item)

    for at, _, device, message in events:
        close_due(at)
        if device == controller and isinstance(message, ItemArrival) and message.item_id not in out:
            matcher.open(message.item_id, at)
            open_until.append((at + SENSOR_WAIT_S, message.item_id))
        elif isinstance(message, TapReading):
            matcher.tap(message, at, decided=message.item_id in out)
        elif isinstance(message, ScaleReading):
            matcher.weight(message, at)
        elif isinstance(message, Heartbeat) and device != controller:
            matcher.heartbeat(message.t_ms, at)
    close_due(float("inf"))
    return out


def _readings_expected(items: list[StationItem], sensor: str) -> int:
    if sensor == "taps":
        counts = [r.count for item in items for r in item.readings if isinstance(r, TapReading)]
    elif sensor == "scale":
        counts = [sum(isinstance(r, ScaleReading) and r.stable for r in item.readings) for item in items]
        counts = [c for c in counts if c]
    else:
        return 0
    return Counter(counts).most_common(1)[0][0] if counts else 0


def _channels(items: list[StationItem]) -> tuple[str, ...]:
    return ("r", "g", "b", "nir") if all(v.nir is not None for item in items for v in item.views) else ("r", "g", "b")


def folder_items(root: Path) -> ItemData:
    """``ROOT/<class>/<item folder or image>``: labelled items, with the sensor readings an item
    folder keeps (``readings.serial``, hardware/items.py; lines that do not check out are left
    out and logged). The sensor is the one the readings come from; all items must agree."""
    from sortline.edge_runtime.learning.enroll import read_item

    root = Path(root)
    if not root.is_dir():
        raise LabelError(f"{root}: no such folder")
    items = []
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        label = check_label(class_dir.name)
        for entry in sorted(class_dir.iterdir()):
            if entry.is_dir() or entry.suffix.lower() in IMAGE_SUFFIXES:
                try:
                    views = read_item(entry)
                except FrameError as exc:
                    raise LabelError(f"{entry}: {exc}") from exc
                readings = read_readings(entry)[0] if entry.is_dir() else []
                items.append(StationItem(len(items), views, readings, label, str(entry)))
    if not items:
        raise LabelError(f"{root}: no class folders with items (ROOT/<class>/<item>/ or ROOT/<class>/<image>)")
    kinds = {type(r) for item in items for r in item.readings}
    if len(kinds) > 1:
        raise LabelError(f"{root}: its items have both tap readings and weights: one station's items at a time")
    sensor = {TapReading: "taps", ScaleReading: "scale"}.get(kinds.pop(), "none") if kinds else "none"
    return ItemData(items, sensor, _readings_expected(items, sensor), _channels(items),
                    max(len(i.views) for i in items))


def load_items(paths: Iterable[Path], progress=None) -> ItemData:
    """Items from recordings and item folder trees; all must agree on the sensor."""
    parts = [recording_items(p, progress) if (Path(p) / "recording.json").is_file() else folder_items(p)
             for p in paths]
    sensors = {p.sensor for p in parts}
    if len(sensors) > 1:
        raise LabelError(f"the data mixes sensors {sorted(sensors)}: fit one station's items at a time")
    items = [item for p in parts for item in p.items]
    channels = parts[0].channels if all(p.channels == parts[0].channels for p in parts) else ("r", "g", "b")
    return ItemData(items, parts[0].sensor, max(p.readings_expected for p in parts), channels,
                    max(p.views for p in parts))
