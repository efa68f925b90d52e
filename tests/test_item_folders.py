"""Item folders (hardware/items.py): views and the sensor's readings written and read back; what
does not check out in a readings file is left out and counted, never guessed at."""

from __future__ import annotations

import numpy as np
import pytest

from sortline.edge_runtime.labelling.book import LabelError, folder_items
from sortline.hardware.camera import ViewFrame
from sortline.hardware.items import READINGS_FILE, read_readings, readings_from_dicts, write_readings, write_views
from sortline.hardware.protocol import ScaleReading, TapReading

TAPS = [TapReading(7, k, 3, 12.5 + k, 0.4, 31.0, 1000 + k) for k in range(3)]


def _views(n: int = 2, nir: bool = True) -> list[ViewFrame]:
    rng = np.random.default_rng(n)
    return [ViewFrame(rng.integers(0, 255, (24, 24, 3), np.uint8), rng.integers(0, 255, (24, 24), np.uint8)
                      if nir else None) for _ in range(n)]


def test_views_and_readings_come_back_as_they_were(tmp_path):
    views = _views()
    write_views(tmp_path, [views[0], None, views[1]])  # a view the rig did not capture leaves a gap
    write_readings(tmp_path, TAPS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [READINGS_FILE, "v0.nir.png", "v0.rgb.png", "v2.nir.png",
                                                          "v2.rgb.png"]
    assert read_readings(tmp_path) == (TAPS, 0)
    assert read_readings(tmp_path / "nowhere") == ([], 0)


def test_readings_that_do_not_check_out_are_left_out_and_counted(tmp_path):
    write_readings(tmp_path, TAPS)
    lines = (tmp_path / READINGS_FILE).read_bytes().splitlines(keepends=True)
    tampered = lines[0].replace(b"12.5", b"99.5")  # its CRC no longer matches
    (tmp_path / READINGS_FILE).write_bytes(b"noise" + tampered + lines[1] + lines[2])
    readings, refused = read_readings(tmp_path)
    assert readings == TAPS[1:] and refused == 2  # the tampered line, and the bytes outside any frame
    (tmp_path / READINGS_FILE).write_bytes(lines[1] * 5000)  # far more than an item's readings
    assert read_readings(tmp_path) == ([], 1)


def test_readings_kept_as_fields_are_rebuilt_only_when_they_are_a_reading():
    rows = [{"item_id": 7, "index": 0, "count": 3, "peak_n": 12.5, "rebound": 0.4, "decay_ms": 31.0, "t_ms": 1000},
            {"t_ms": 5, "grams": 120.0, "stable": 1}, {"t_ms": 5, "grams": 1.0}, ["not", "a", "dict"],
            {"item_id": 7, "index": 0, "count": 3, "peak_n": 1.0, "rebound": 0.4, "decay_ms": 1.0, "t_ms": 1,
             "extra": 1}]
    assert readings_from_dicts(rows) == [TAPS[0], ScaleReading(5, 120.0, 1)]
    assert readings_from_dicts([{"item_id": 1}]) == []


def test_an_item_tree_with_readings_is_a_tap_station_and_one_that_mixes_sensors_is_refused(tmp_path):
    for k, (label, readings) in enumerate([("A", TAPS), ("both", TAPS[:2]), ("A", [])]):
        folder = tmp_path / "items" / label / f"i{k}"
        folder.mkdir(parents=True)
        write_views(folder, _views())
        write_readings(folder, readings)
    nan_tap = tmp_path / "items" / "A" / "i2"
    write_readings(nan_tap, [TapReading(7, 0, 3, float("nan"), 0.4, 31.0, 1)])  # out of range: not written
    data = folder_items(tmp_path / "items")
    assert data.sensor == "taps" and data.readings_expected == 3 and data.channels == ("r", "g", "b", "nir")
    assert [len(i.readings) for i in data.items] == [3, 0, 2]  # A/i0, A/i2, both/i1
    write_readings(tmp_path / "items" / "A" / "i2", [ScaleReading(5, 120.0, 1)])
    with pytest.raises(LabelError, match="both tap readings and weights"):
        folder_items(tmp_path / "items")
