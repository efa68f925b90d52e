"""An item folder: what a station captured of one item, as files a person or a desktop can read.

One image per view (``v<k>.rgb.png``, and ``v<k>.nir.png`` where the view has near-infrared)
and, where the item's sensor spoke, its readings as the sensor sent them (``readings.serial``:
the sensor's own protocol lines, each with its CRC). The queue of unsure items keeps its items
so, ``sortline queue export`` writes its labelled ones so, and ``sortline fit`` reads them back
with their readings (``ITEMS/<class>/<item>/``), so that a bundle retrained on a station's
labelled items learns from its taps or weights as the station heard them.

Readings read back go through the protocol's parser: a line that does not check out (CRC,
fields, ranges) is dropped and counted, never guessed at.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import cv2

from .camera import ViewFrame
from .protocol import Encoder, Parser, ScaleReading, TapReading

log = logging.getLogger(__name__)
READINGS_FILE = "readings.serial"
MAX_READINGS_BYTES = 64 << 10  # an item's readings are a few hundred bytes
FAST_PNG = [cv2.IMWRITE_PNG_COMPRESSION, 1]  # lossless still; a third of the default's time
Reading = TapReading | ScaleReading


def write_views(folder: Path, views: Sequence[ViewFrame | None]) -> None:
    """The views that were captured, ``v<k>.rgb.png`` (and ``v<k>.nir.png``), k the view's place;
    OSError when one cannot be written."""
    for k, view in enumerate(views):
        if view is None:
            continue
        if not cv2.imwrite(str(folder / f"v{k}.rgb.png"), cv2.cvtColor(view.rgb, cv2.COLOR_RGB2BGR), FAST_PNG):
            raise OSError(f"{folder}: view {k} could not be written")
        if view.nir is not None and not cv2.imwrite(str(folder / f"v{k}.nir.png"), view.nir, FAST_PNG):
            raise OSError(f"{folder}: view {k}'s NIR could not be written")


def readings_from_dicts(rows: Iterable[object]) -> list[Reading]:
    """Readings kept as dictionaries of their fields (a queue item's ``item.json``); a row that is
    not one reading's fields, exactly, is left out."""
    out: list[Reading] = []
    for row in rows:
        if not isinstance(row, dict):
            continue
        for kind in (TapReading, ScaleReading):
            if set(row) == {f.name for f in dataclasses.fields(kind)}:
                try:
                    out.append(kind(**row))
                except TypeError:
                    pass
                break
    return out


def write_readings(folder: Path, readings: Sequence[Reading]) -> None:
    """``readings.serial``: the readings in the sensor's protocol (nothing written for none)."""
    encoder, lines = Encoder(), []
    for reading in readings:
        try:
            lines.append(encoder.encode(reading))
        except ValueError as exc:  # outside the protocol's range: the station never took it either
            log.warning("%s: a reading left out: %s", folder, exc)
    if lines:
        (folder / READINGS_FILE).write_bytes(b"".join(lines))


def read_readings(folder: Path) -> tuple[list[Reading], int]:
    """An item folder's readings and how many of its lines were refused (none without the file)."""
    path = Path(folder) / READINGS_FILE
    if not path.is_file():
        return [], 0
    if path.stat().st_size > MAX_READINGS_BYTES:
        log.warning("%s: %d bytes, over the %d an item's readings take; left out", path, path.stat().st_size,
                    MAX_READINGS_BYTES)
        return [], 1
    parser = Parser(str(path))
    messages = parser.feed(path.read_bytes())
    readings = [m for m in messages if isinstance(m, TapReading | ScaleReading)]
    refused = parser.stats.errors + len(messages) - len(readings) + (parser.stats.garbage_bytes > 0)
    if refused:
        log.warning("%s: %d line(s) refused (%s)", path, refused, parser.stats.as_dict())
    return readings, refused
