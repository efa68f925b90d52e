"""Recordings: what a station's devices said and showed, on disk, and played back to a station.

A recording is the unit of hardware-in-the-loop tests. It is made by listening to the devices
exactly as a station would (the same pyserial links, the same rig), keeping every byte with its
time, and is replayed through pseudo-terminals to an unchanged station. ``docs/recording.md``
documents the layout:

    DIR/recording.json          format, scenario, devices, labels, timing, injected faults
    DIR/serial/<device>.jsonl   {"t": s, "data": base64} per chunk read; {"t": s, "event": ...}
    DIR/frames/<item>/capture.json and v<k>.rgb.png, v<k>.nir.png per announced item
    DIR/truth.jsonl             per item that passed: item_id, announced_t, label (when known)
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from .camera import CORRUPT, LOST, FrameError, FrameSource, ItemCapture, ViewError, ViewFrame
from .errors import SortlineError
from .files import publish_dir, staging_dir
from .images import decode_image
from .protocol import ItemArrival
from .serial_link import DEFAULT_BAUD, Received, SerialLink

log = logging.getLogger(__name__)
FORMAT = "sortline-recording/1"


class RecordingError(SortlineError, ValueError):
    """A recording folder that is missing, incomplete or of another format."""


# --- writing --------------------------------------------------------------------------------


class RecordingWriter:
    """Writes a recording folder. Safe to call from the serial reader threads.

    The recording is assembled in a staging folder beside ``out`` and appears at ``out`` whole,
    at :meth:`finish`; a recorder killed before that leaves no half recording at ``out``, and its
    staging folder is removed by the next recording into the same place (hardware/files.py)."""

    def __init__(self, out: Path, devices: list[str], t0: float) -> None:
        self.out = Path(out)
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            raise RecordingError(f"{self.out}: exists and is not empty (or not a folder); choose a new folder")
        self.root = staging_dir(self.out, "recording")
        (self.root / "serial").mkdir(parents=True, exist_ok=True)
        (self.root / "frames").mkdir(exist_ok=True)
        self.t0 = t0
        self._files = {d: open(self.root / "serial" / f"{d}.jsonl", "w", encoding="utf-8") for d in devices}
        self._lock = threading.Lock()
        self.serial_bytes = 0
        self.captures = 0

    def serial(self, device: str, data: bytes, at: float) -> None:
        line = json.dumps({"t": round(at - self.t0, 6), "data": base64.b64encode(data).decode()})
        with self._lock:
            self._files[device].write(line + "\n")
            self.serial_bytes += len(data)

    def event(self, device: str, kind: str, at: float) -> None:
        with self._lock:
            self._files[device].write(json.dumps({"t": round(at - self.t0, 6), "event": kind}) + "\n")

    def capture(self, capture: ItemCapture, at: float) -> None:
        folder = self.root / "frames" / f"{capture.item_id:06d}"
        folder.mkdir(exist_ok=True)
        errors = {e.view: e for e in capture.errors}
        views = []
        for k, view in enumerate(capture.views):
            if view is not None:
                cv2.imwrite(str(folder / f"v{k}.rgb.png"), cv2.cvtColor(view.rgb, cv2.COLOR_RGB2BGR))
                entry = {"rgb": f"v{k}.rgb.png"}
                if view.nir is not None:
                    cv2.imwrite(str(folder / f"v{k}.nir.png"), view.nir)
                    entry["nir"] = f"v{k}.nir.png"
            elif k in errors and errors[k].kind == CORRUPT:
                (folder / f"v{k}.rgb.png").write_bytes(errors[k].data)  # the bytes that did not decode
                entry = {"rgb": f"v{k}.rgb.png", "corrupt": errors[k].detail}
            else:
                entry = {"lost": errors[k].detail if k in errors else "no frame"}
            views.append(entry)
        record = {"item_id": capture.item_id, "t": round(at - self.t0, 6), "views": views, "late": list(capture.late)}
        (folder / "capture.json").write_text(json.dumps(record) + "\n", encoding="utf-8")
        self.captures += 1

    def finish(self, meta: dict, truth: list[dict]) -> None:
        with self._lock:
            for f in self._files.values():
                f.close()
        with open(self.root / "truth.jsonl", "w", encoding="utf-8") as f:
            for row in truth:
                f.write(json.dumps(row) + "\n")
        meta = {"format": FORMAT, "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), **meta}
        (self.root / "recording.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        publish_dir(self.root, self.out)
        self.root = self.out


class StreamRecorder:
    """Listens to a station's devices as a station would and records all it hears and sees.

    ``ports`` maps device names to pyserial URLs; the first one must be the line controller:
    its item announcements trigger the rig, as they would trigger a station's capture.
    """

    def __init__(self, writer: RecordingWriter, ports: dict[str, str], rig: FrameSource,
                 reconnect_s: float = 0.05, bauds: dict[str, int] | None = None) -> None:
        self.writer = writer
        self.rig = rig
        self.inbox: queue.Queue[Received] = queue.Queue(maxsize=65536)
        self.links = [
            SerialLink(url, name, inbox=self.inbox, reconnect_s=reconnect_s,
                       baudrate=(bauds or {}).get(name, DEFAULT_BAUD),
                       on_bytes=lambda data, at, name=name: writer.serial(name, data, at),
                       on_event=lambda kind, at, name=name: writer.event(name, kind, at))
            for name, url in ports.items()
        ]
        self.controller = next(iter(ports))
        self.announced: dict[int, float] = {}  # item id → when its announcement was read

    def run(self, stop: threading.Event) -> None:
        for link in self.links:
            link.open()
        try:
            while not stop.is_set():
                try:
                    received = self.inbox.get(timeout=0.05)
                except queue.Empty:
                    continue
                message = received.message
                if (isinstance(message, ItemArrival) and received.source == self.controller
                        and message.item_id not in self.announced):
                    self.announced[message.item_id] = received.at
                    try:
                        self.writer.capture(self.rig.capture(message.item_id), time.monotonic())
                    except (FrameError, OSError) as exc:
                        log.warning("item %s: capture failed: %s", message.item_id, exc)
        finally:
            for link in self.links:
                link.close()


# --- reading and replaying ------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    root: Path
    meta: dict
    truth: list[dict]

    @classmethod
    def open(cls, path: str | Path) -> Recording:
        root = Path(path)
        try:
            meta = json.loads((root / "recording.json").read_text(encoding="utf-8"))
            truth = [json.loads(line) for line in (root / "truth.jsonl").read_text(encoding="utf-8").splitlines()
                     if line.strip()]
        except FileNotFoundError as exc:
            raise RecordingError(f"{root}: not a recording ({exc.filename} is missing)") from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise RecordingError(f"{root}: unreadable recording ({exc})") from exc
        if meta.get("format") != FORMAT:
            raise RecordingError(f"{root}: format {meta.get('format')!r}, this reader reads {FORMAT}")
        for device in meta.get("devices", []):
            if not (root / "serial" / f"{device}.jsonl").is_file():
                raise RecordingError(f"{root}: serial/{device}.jsonl is missing")
        return cls(root, meta, truth)

    def serial_entries(self, device: str) -> list[dict]:
        entries = []
        path = self.root / "serial" / f"{device}.jsonl"
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                entry = json.loads(line)
                if "data" in entry:
                    entry["data"] = base64.b64decode(entry["data"], validate=True)
                entries.append(entry)
            except (ValueError, TypeError) as exc:  # a damaged log line is skipped, not fatal
                log.warning("%s:%d: skipped an unreadable line (%s)", path, n, exc)
        return entries


class RecordedRig:
    """The rig of a recording: each announced item's views, read and decoded from disk (and, with
    ``late_s``, as late as they were: the replay keeps it, a reader that only wants the views sets 0)."""

    def __init__(self, recording: Recording) -> None:
        self.root = recording.root / "frames"
        self.view_count = int(recording.meta.get("views", 1))
        self.late_s = float(recording.meta.get("late_view_ms", 0)) / 1000

    def capture(self, item_id: int) -> ItemCapture:
        folder = self.root / f"{item_id:06d}"
        try:
            record = json.loads((folder / "capture.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise FrameError(f"item {item_id}: no recorded capture ({exc})") from exc
        views: list[ViewFrame | None] = []
        errors: list[ViewError] = []
        for k, entry in enumerate(record["views"]):
            if "rgb" not in entry:
                errors.append(ViewError(k, LOST, entry.get("lost", "no frame")))
                views.append(None)
                continue
            try:
                rgb = decode_image(np.fromfile(folder / entry["rgb"], np.uint8), what=f"view {k} rgb")
                nir = (decode_image(np.fromfile(folder / entry["nir"], np.uint8), what=f"view {k} nir", gray=True)
                       if "nir" in entry else None)
                views.append(ViewFrame(rgb=rgb, nir=nir))
            except (FrameError, OSError) as exc:
                errors.append(ViewError(k, CORRUPT, str(exc)))
                views.append(None)
        if record.get("late"):
            time.sleep(self.late_s)  # as late as it was
        return ItemCapture(item_id, tuple(views), tuple(errors), tuple(record.get("late", ())))
