"""The station file, ``sortline record`` on a live (simulated) station, and ``sortline serve``:
the same code a camera station runs, against devices on real pseudo-terminals and cameras
streaming from image folders."""

from __future__ import annotations

import json
import threading

import cv2
import pytest

from sortline.edge_runtime.cli import main
from sortline.edge_runtime.daemon.config import ConfigError, load_station_file
from sortline.edge_runtime.daemon.service import serve
from sortline.hardware.recording import Recording
from sortline.hardware.sim.avocado import make_fruit, render_views
from sortline.hardware.sim.line import LineConfig, SimulatedLine


def _camera_folders(root, views=4, frames=3):
    """Per view, an RGB and a NIR folder of rendered fruit: cameras that stream from disk."""
    for v in range(views):
        for kind in ("rgb", "nir"):
            (root / f"v{v}-{kind}").mkdir(parents=True)
    for k in range(frames):
        for v, view in enumerate(render_views(make_fruit(k, 3))):
            cv2.imwrite(str(root / f"v{v}-rgb" / f"{k}.png"), cv2.cvtColor(view.rgb, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / f"v{v}-nir" / f"{k}.png"), view.nir)
    return root


def _station_file(path, controller, sensor, bundle=None, views=4, public_key=None):
    """A station file for the simulated line; its bundles unsigned unless ``public_key`` is given."""
    signing = f'public_key = "{public_key}"' if public_key else "allow_unsigned = true"
    lines = ["[station]", f'bundle = "{bundle}"' if bundle else "", 'event_log = "events.jsonl"', signing,
             "[controller]", f'port = "{controller}"', "[sensor]", 'kind = "taps"', f'port = "{sensor}"',
             "[rig]", "tolerance_ms = 200", "wait_ms = 60"]
    for v in range(views):
        lines += ["[[views]]", f'rgb = "folder:cams/v{v}-rgb"', f'nir = "folder:cams/v{v}-nir"']
    path.write_text("\n".join(lines) + "\n")
    return path


def test_station_file_mistakes_name_the_file_and_key(tmp_path):
    with pytest.raises(ConfigError, match="no such station file"):
        load_station_file(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    for text, message in [
        ("controller = 3", "controller: Input should be a valid dictionary"),
        ("[controller]\nport = 5", "controller.port"),
        ('[controller]\nport = "loop://"\n[sensor]\nkind = "sonar"', "sensor.kind"),
        ('[controller]\nport = "loop://"\n[sensor]\nkind = "scale"\n[[views]]\nrgb = 0', "sensor.port"),
        ('[controller]\nport = "loop://"', "views: Field required"),
        ('views = []\n[controller]\nport = "loop://"', "views: List should have at least 1 item"),
        ('[controller]\nport = "loop://"\n[rig]\nwait_ms = nan\n[[views]]\nrgb = 0',
         "rig.wait_ms: Input should be a finite"),
        ('[controller]\nport = "loop://"\n[limits]\ntap_peak_n = [5, 1]\n[[views]]\nrgb = 0', "limits.tap_peak_n"),
        ('[controller]\nport = "loop://"\n[limits]\ntap_peak = [0, 9]\n[[views]]\nrgb = 0',
         "did you mean 'tap_peak_n'"),
        ('[controller]\nport = "loop://"\n[station]\npublic_key = 7\n[[views]]\nrgb = 0', "station.public_key"),
        ('[controller]\nport = "loop://"\n[[views]]\nrgb = true', "views\\[0\\].rgb"),
        ('[controller]\nport = "loop://"\nbaud = -9600\n[[views]]\nrgb = 0', "controller.baud"),
        ('[controller]\nport = "loop://"\n[[views]]\nrgb = 0\nnri = 2', "'views\\[0\\].nri'; did you mean 'nir'"),
        ('[controller]\nport = "loop://"\n[rig]\ntolerence_ms = 5\n[[views]]\nrgb = 0', "did you mean 'tolerance_ms'"),
        ('[controller]\nport = "loop://"\n[rig]\ntolerance_ms = -40\n[[views]]\nrgb = 0', "rig.tolerance_ms"),
        ('[controller]\nport = "loop://"\n[rig]\nwait_ms = "soon"\n[[views]]\nrgb = 0', "rig.wait_ms"),
        ('[controller]\nport = "loop://"\n[stations]\nbundle = "b"\n[[views]]\nrgb = 0', "unknown key 'stations'"),
        ('[controller]\nport = "loop://"\nbaud = "fast"\n[[views]]\nrgb = 0', "controller.baud"),
        ("[controller\nport=", "not a readable TOML"),
    ]:
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message):
            load_station_file(bad)


def test_baud_rates_are_per_device(tmp_path):
    path = tmp_path / "station.toml"
    path.write_text('[controller]\nport = "loop://"\n[sensor]\nkind = "taps"\nport = "loop://"\nbaud = 921600\n'
                    '[[views]]\nrgb = 0\n')
    assert load_station_file(path).bauds == {"controller": 115200, "taps": 921600}


def test_station_file_limits_and_event_log_are_the_stations_own(tmp_path):
    """One model: the file's [limits] table is the station's ReadingLimits, and what the file does
    not set keeps the station's own defaults."""
    from sortline.edge_runtime.model.fusion import ReadingLimits
    from sortline.edge_runtime.station import StationConfig

    path = tmp_path / "station.toml"
    path.write_text('[controller]\nport = "loop://"\n[[views]]\nrgb = 0\n')
    config = load_station_file(path).station_config()
    assert config == StationConfig()
    path.write_text('[controller]\nport = "loop://"\n[limits]\ntap_peak_n = [0, 90]\n[station]\nevent_log_keep = 2\n'
                    '[[views]]\nrgb = 0\n')
    config = load_station_file(path).station_config()
    assert config.limits == ReadingLimits(tap_peak_n=(0.0, 90.0)) and config.event_log_keep == 2


def test_record_a_live_station_and_replay_it(tmp_path, tiny_bundle, capsys):
    _camera_folders(tmp_path / "cams")
    line = SimulatedLine(LineConfig(items=25, seed=3, pitch_ms=60))
    try:
        toml = _station_file(tmp_path / "station.toml", line.port("controller"), line.port("taps"))
        starter = threading.Timer(0.5, line.start)  # the recorder is listening first
        starter.start()
        out = tmp_path / "rec"
        assert main(["record", "--config", str(toml), "--out", str(out), "--items", "25", "--seconds", "20",
                     "--quiet", "--json"]) == 0
        result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        line.wait(grace_s=0.1)
    finally:
        line.stop()
    assert result["items"] == result["captures"] == 25
    rec = Recording.open(out)
    assert rec.meta["devices"] == ["controller", "taps"] and rec.meta["views"] == 4
    assert [row["item_id"] for row in rec.truth] == list(range(1, 26))
    assert main(["replay", str(out), "--bundle", str(tiny_bundle.root), "--speed", "max", "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["items"] == summary["gate_commands"] == 25 and summary["lost"] == 0
    assert summary["duplicates"] == 0 and summary["accuracy"] is None  # a real line has no ground truth


def serve_simulated_line(station_path, line, while_running=lambda: None) -> tuple:
    """``serve`` on a thread against ``line`` from the moment it takes items until the line has
    passed; ``while_running`` runs meanwhile. Returns the line's tally and serve's result."""
    stop, ready = threading.Event(), threading.Event()
    result = {}
    try:
        station = load_station_file(station_path)
        worker = threading.Thread(target=lambda: result.update(zip(("stats", "faults"),
                                                                   serve(station, stop, ready=ready))))
        worker.start()
        assert ready.wait(30)  # ports open, model checked
        line.start()
        while_running()
        tally = line.wait(grace_s=0.3)
    finally:
        stop.set()
        line.stop()
    worker.join(timeout=10)
    assert tally.lost == 0 and tally.duplicates == 0 and tally.items == tally.gate_commands
    return tally, result


def test_serve_sorts_every_item_once(tmp_path, tiny_bundle):
    _camera_folders(tmp_path / "cams")
    line = SimulatedLine(LineConfig(items=30, seed=4, pitch_ms=60))
    path = _station_file(tmp_path / "station.toml", line.port("controller"), line.port("taps"),
                         bundle=tiny_bundle.root)
    tally, result = serve_simulated_line(path, line)
    assert tally.items == 30 and result["stats"].items == 30
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert sorted(e["item_id"] for e in events) == list(range(1, 31))
    assert all(e["views"] == 4 for e in events)


def test_serve_refuses_what_it_cannot_run_with_one_clear_line(tmp_path, tiny_bundle, capsys):
    _camera_folders(tmp_path / "cams")
    station = _station_file(tmp_path / "station.toml", "/dev/ttyNOPE0", "/dev/ttyNOPE1", bundle=tiny_bundle.root)
    assert main(["serve", "--config", str(station)]) == 2
    assert "controller: cannot open '/dev/ttyNOPE0'" in capsys.readouterr().err
    original = station.read_text()
    text = original.replace('port = "/dev/ttyNOPE0"', 'port = "/dev/ttyNOPE0"\nexits = 2')
    station.write_text(text)  # the bundle sends classes to exits 0..3
    assert main(["serve", "--config", str(station)]) == 2
    assert "the controller has exits 0..1" in capsys.readouterr().err
    station.write_text(text.replace("allow_unsigned = true\n", ""))  # unsigned bundles are refused by default
    assert main(["serve", "--config", str(station)]) == 2
    assert "names no public_key, and serve runs only signed bundles" in capsys.readouterr().err
    station.write_text(text.replace('[[views]]\nrgb = "folder:cams/v3-rgb"\nnir = "folder:cams/v3-nir"\n', ""))
    assert main(["serve", "--config", str(station)]) == 2  # three views for a bundle that decides on four
    assert "3 [[views]], the bundle decides on 4" in capsys.readouterr().err
    station.write_text(original.replace('"folder:cams/v1-nir"', "250"))
    assert main(["serve", "--config", str(station)]) == 2  # a camera this machine does not have
    assert "views[1].nir = 250: the camera cannot be opened" in capsys.readouterr().err
