"""Frame sources: cameras through OpenCV, image folders, and the multi-view rig that groups one
item's frames (views × {RGB, NIR}) by trigger time.

A source's ``read()`` returns the next frame as a :class:`TimedFrame`, RGB (H×W×3) or, for a
NIR camera, one channel (H×W), and raises :class:`FrameError` when it has none. The rig runs a
grabber thread per source, so every camera keeps streaming into a short ring buffer and the
rig picks, per camera, the frame nearest the trigger.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from .camera import CORRUPT, LOST, FrameError, ItemCapture, ViewError, ViewFrame
from .images import IMAGE_SUFFIXES, read_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimedFrame:
    t: float  # time.monotonic() when the frame was taken
    image: np.ndarray  # H×W×3 RGB, or H×W for NIR


class Source(Protocol):
    def read(self) -> TimedFrame: ...

    def close(self) -> None: ...


def _as_channels(bgr_or_gray: np.ndarray, nir: bool) -> np.ndarray:
    if nir:  # a NIR camera is one channel; some deliver it as three equal ones
        return bgr_or_gray if bgr_or_gray.ndim == 2 else cv2.cvtColor(bgr_or_gray, cv2.COLOR_BGR2GRAY)
    if bgr_or_gray.ndim == 2:
        return cv2.cvtColor(bgr_or_gray, cv2.COLOR_GRAY2RGB)
    return cv2.cvtColor(bgr_or_gray, cv2.COLOR_BGR2RGB)


OPEN_TIMEOUT_MS = 5000


class OpenCVCamera:
    """``cv2.VideoCapture`` on a device index (``0``), a video file, an RTSP URL or a GStreamer
    pipeline (any string with ``!`` in it)."""

    def __init__(self, source: int | str, nir: bool = False) -> None:
        self.source = source
        self.nir = nir
        if isinstance(source, str) and source.isdigit():
            source = int(source)
        api = cv2.CAP_GSTREAMER if isinstance(source, str) and "!" in source else cv2.CAP_ANY
        # an unreachable stream gives up within the timeouts instead of hanging the station's start
        self._capture = cv2.VideoCapture(source, api, [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS,
                                                       cv2.CAP_PROP_READ_TIMEOUT_MSEC, OPEN_TIMEOUT_MS])
        if not self._capture.isOpened():
            raise FrameError(f"camera {self.source!r}: cannot open it")

    def read(self) -> TimedFrame:
        ok, frame = self._capture.read()
        t = time.monotonic()
        if not ok or frame is None:
            raise FrameError(f"camera {self.source!r}: no frame (end of stream or camera gone)")
        return TimedFrame(t, _as_channels(frame, self.nir))

    def close(self) -> None:
        self._capture.release()


class ImageFolderSource:
    """The images in a folder, in name order, as if a camera took them one by one (at ``fps``
    frames a second when given, else as fast as they are read)."""

    def __init__(self, folder: str | Path, nir: bool = False, loop: bool = False, fps: float | None = None) -> None:
        self.folder = Path(folder)
        self.nir = nir
        self.loop = loop
        self._period = 1 / fps if fps else 0.0
        self._last = 0.0
        self._paths = sorted(p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self._paths:
            raise FrameError(f"{self.folder}: no images")
        self._next = 0

    def read(self) -> TimedFrame:
        if self._next >= len(self._paths):
            if not self.loop:
                raise FrameError(f"{self.folder}: no more images")
            self._next = 0
        path = self._paths[self._next]
        self._next += 1
        if self._period:
            wait = self._last + self._period - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()
        rgb = read_image(path).rgb
        image = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY) if self.nir else rgb
        return TimedFrame(time.monotonic(), image)

    def close(self) -> None:
        pass


class _Grabber:
    """Reads one source continuously into a short ring buffer."""

    def __init__(self, source: Source, name: str, buffer: int) -> None:
        self.source = source
        self.name = name
        self.frames: deque[TimedFrame] = deque(maxlen=buffer)
        self.errors = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"grab-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self.source.read()
            except FrameError as exc:
                self.errors += 1
                if self.errors == 1 or self.errors % 100 == 0:
                    log.warning("%s: %s (%d errors)", self.name, exc, self.errors)
                self._stop.wait(0.01)
                continue
            with self._lock:
                self.frames.append(frame)

    def nearest(self, t: float, tolerance_s: float) -> np.ndarray | None:
        with self._lock:
            best = min(self.frames, key=lambda f: abs(f.t - t), default=None)
        if best is None or abs(best.t - t) > tolerance_s:
            return None
        return best.image

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.source.close()


@dataclass(frozen=True)
class ViewSources:
    """The cameras of one view: RGB, and NIR where the rig has it."""

    rgb: Source
    nir: Source | None = None


class MultiViewRig:
    """Several views, each RGB (+ NIR), captured together for one item.

    ``capture`` takes, for every camera, the buffered frame nearest the trigger (now, or
    ``trigger_at``), waiting up to ``wait_ms`` for cameras whose next frame is still coming.
    A camera with no frame within ``tolerance_ms`` leaves its view missing, with the reason in
    :attr:`ItemCapture.errors`; the item still goes on with the views it has.
    """

    def __init__(self, views: Sequence[ViewSources], tolerance_ms: float = 40.0, wait_ms: float = 60.0,
                 buffer: int = 8) -> None:
        if not (0 <= tolerance_ms <= 10_000 and 0 <= wait_ms <= 10_000 and views and buffer >= 1):
            raise ValueError(f"a rig needs views, tolerance_ms and wait_ms in 0..10000 and a buffer: got "
                             f"{len(views)} views, {tolerance_ms}, {wait_ms}, {buffer}")
        self.view_count = len(views)
        self.tolerance_s = tolerance_ms / 1000
        self.wait_s = wait_ms / 1000
        self._grabbers: list[tuple[_Grabber, _Grabber | None]] = []
        for i, v in enumerate(views):
            nir = None if v.nir is None else _Grabber(v.nir, f"view{i}-nir", buffer)
            self._grabbers.append((_Grabber(v.rgb, f"view{i}-rgb", buffer), nir))

    def _missing(self, view: tuple[np.ndarray | None, np.ndarray | None], index: int) -> str | None:
        rgb, nir = view
        if rgb is None:
            return "rgb"
        if nir is None and self._grabbers[index][1] is not None:
            return "nir"
        return None

    def capture(self, item_id: int, trigger_at: float | None = None) -> ItemCapture:
        trigger = time.monotonic() if trigger_at is None else trigger_at
        deadline = trigger + self.wait_s
        while True:
            found = [(rgb.nearest(trigger, self.tolerance_s), nir.nearest(trigger, self.tolerance_s) if nir else None)
                     for rgb, nir in self._grabbers]
            if time.monotonic() >= deadline or not any(self._missing(v, i) for i, v in enumerate(found)):
                break
            time.sleep(0.002)
        views: list[ViewFrame | None] = []
        errors: list[ViewError] = []
        for i, (rgb, nir) in enumerate(found):
            missing = self._missing((rgb, nir), i)
            if missing:
                tolerance = f"{self.tolerance_s * 1000:.0f} ms"
                errors.append(ViewError(i, LOST, f"no {missing} frame within {tolerance} of the trigger"))
                views.append(None)
                continue
            try:
                views.append(ViewFrame(rgb=rgb, nir=None if nir is None else _registered(nir, rgb)))
            except FrameError as exc:
                errors.append(ViewError(i, CORRUPT, str(exc)))
                views.append(None)
        return ItemCapture(item_id=item_id, views=tuple(views), errors=tuple(errors))

    def close(self) -> None:
        for rgb, nir in self._grabbers:
            rgb.close()
            if nir is not None:
                nir.close()


def _registered(nir: np.ndarray, rgb: np.ndarray) -> np.ndarray:
    """NIR resized onto the RGB frame's grid (the cameras of a view share a field of view)."""
    if nir.shape[:2] == rgb.shape[:2]:
        return nir
    return cv2.resize(nir, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_AREA)
