"""The simulated checkout: products seen under changing perspective, light and hands, a scale
whose readings name no item, and the station tying them to the item on the plate, through
real pseudo-terminals, live and recorded, with every fault kind injected."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from sortline.edge_runtime.cli import main
from sortline.edge_runtime.hil import runs as hil
from sortline.edge_runtime.hil.runs import make_scenario, sort_on_simulated_line
from sortline.edge_runtime.model.pipeline import ItemPipeline
from sortline.hardware.sim.checkout import Catalog, CheckoutScenario, draw_product, scale_series
from sortline.hardware.sim.faults import FaultRates
from sortline.hardware.sim.line import LineConfig


def test_items_are_deterministic_and_each_view_differs():
    scenario = CheckoutScenario(Catalog.procedural(5), seed=3)
    a, b = scenario.render(7), scenario.render(7)
    assert all(np.array_equal(x.rgb, y.rgb) for x, y in zip(a, b))
    assert len(a) == 2 and a[0].rgb.shape == (96, 96, 3) and a[0].nir is None
    assert np.abs(a[0].rgb.astype(int) - a[1].rgb.astype(int)).mean() > 3  # another camera, another warp
    other_world = CheckoutScenario(Catalog.procedural(5), seed=4)
    assert other_world.classes == scenario.classes  # the catalog does not depend on the world
    labels = [scenario.label(i) for i in range(200)]
    assert set(labels) == set(range(5))


def test_drawn_products_are_distinct():
    drawings = [draw_product(p).astype(int) for p in Catalog.procedural(8).products]
    for i in range(8):
        for j in range(i + 1, 8):
            assert np.abs(drawings[i] - drawings[j]).mean() > 10


def test_products_from_an_image_folder(tmp_path):
    from sortline.edge_runtime.datasets import load_image_set

    for name, colour in (("apple", (0, 0, 200)), ("milk", (230, 230, 230))):
        (tmp_path / name).mkdir()
        for k in range(2):
            cv2.imwrite(str(tmp_path / name / f"{k}.jpg"), np.full((120, 90, 3), colour, np.uint8))
    images = load_image_set(tmp_path)
    scenario = CheckoutScenario(Catalog.from_images(images.paths, images.labels, images.class_names), seed=0)
    assert scenario.classes == ("apple", "milk")
    agree = 0
    for item_id in range(10):  # the photo is what lies on the belt, in RGB order (a hand may cover it)
        centre = scenario.render(item_id)[0].rgb[40:56, 40:56].reshape(-1, 3).mean(0)
        agree += (centre[0] - centre[2] > 80) == (scenario.label(item_id) == 0)
    assert agree >= 8


def test_scale_series_lands_settles_and_empties():
    readings = scale_series(412.0, t0_ms=1000, rng=np.random.default_rng(0))
    assert [r.stable for r in readings] == [0, 0, 0, 1, 1, 1]
    assert abs(readings[3].grams - 412) < 3 and readings[-1].grams < 5
    assert all(a.t_ms < b.t_ms for a, b in zip(readings, readings[1:]))


def test_station_ties_scale_readings_to_the_item_on_the_plate(tiny_checkout_bundle, tmp_path):
    events = tmp_path / "events.jsonl"
    run = sort_on_simulated_line(ItemPipeline(tiny_checkout_bundle, threads=1),
                                 LineConfig(items=60, seed=9, pitch_ms=60), make_scenario("checkout", 9, None, 6),
                                 event_log=events, progress=False)
    s = run.summary
    assert s["items"] == s["gate_commands"] == 60 and s["lost"] == 0 and s["duplicates"] == 0
    records = [json.loads(line) for line in events.read_text().splitlines()]
    odd = [(r["item_id"], r["readings"], r["latency_ms"]) for r in records if r["readings"] != 5]
    assert not odd, odd  # every item: 3 moving readings, 2 settled
    assert run.stats.unmatched_weights == 0
    assert s["accuracy"] > 0.5  # weight and colour separate six drawn products even with a tiny net


def test_a_bundle_for_another_sensor_is_refused(tiny_bundle):
    with pytest.raises(ValueError, match="sensor"):
        sort_on_simulated_line(ItemPipeline(tiny_bundle, threads=1), LineConfig(items=3, seed=1),
                               make_scenario("checkout", 1), progress=False)


@pytest.fixture(scope="module")
def checkout_recording(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec") / "checkout"
    assert main(["simulate", "--scenario", "checkout", "--product-count", "6", "--items", "150", "--faults", "0.03",
                 "--seed", "31", "--rate", "16.67", "--record", str(out), "--quiet"]) == 0
    return out


@pytest.mark.parametrize("speed", ["realtime", "max"])
def test_checkout_replay_gives_every_item_one_command_and_counts_every_fault(checkout_recording,
                                                                              tiny_checkout_bundle, capsys, speed):
    meta = json.loads((checkout_recording / "recording.json").read_text())
    assert meta["scenario"] == "checkout" and meta["devices"] == ["controller", "scale"] and meta["views"] == 2
    assert sum(meta["injected"].values()) > 0
    capsys.readouterr()
    assert main(["replay", str(checkout_recording), "--bundle", str(tiny_checkout_bundle.root), "--speed", speed,
                 "--quiet", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["items"] == summary["gate_commands"] == 150
    assert summary["lost"] == 0 and summary["duplicates"] == 0
    assert summary["faults"] == summary["faults_injected"]


def test_replaying_with_a_bundle_of_other_classes_is_a_clear_error(checkout_recording, tiny_bundle, capsys):
    assert main(["replay", str(checkout_recording), "--bundle", str(tiny_bundle.root), "--quiet"]) == 2
    assert "a bundle for this scenario is needed" in capsys.readouterr().err


def test_faulty_live_checkout(tiny_checkout_bundle):
    run = sort_on_simulated_line(ItemPipeline(tiny_checkout_bundle, threads=1),
                                 LineConfig(items=120, seed=5, pitch_ms=60, faults=FaultRates.uniform(0.03)),
                                 make_scenario("checkout", 5, None, 6), progress=False)
    s = run.summary
    assert s["gate_commands"] == 120 and s["lost"] == 0 and s["duplicates"] == 0
    assert s["faults"] == s["faults_injected"]


def test_a_station_slow_to_reopen_a_replugged_port_loses_no_frames(checkout_recording, tiny_checkout_bundle,
                                                                    monkeypatch):
    """pyserial flushes a port's input when it opens it: a replugged device must not talk before the
    station has reopened the port, however long a loaded station takes (here 0.6 s, twice the
    recorded devices' wait), or its first frames vanish and count as dropped."""
    assert json.loads((checkout_recording / "recording.json").read_text())["injected"]["sensor_disconnects"] > 0
    running_station = hil.RunningStation
    monkeypatch.setattr(hil, "RunningStation",
                        lambda *args, **kwargs: running_station(*args, **{**kwargs, "reconnect_s": 0.6}))
    s = hil.replay_recording(ItemPipeline(tiny_checkout_bundle, threads=1), checkout_recording, speed="max",
                             progress=False).summary
    assert s["gate_commands"] == 150 and s["lost"] == 0
    assert s["faults"] == s["faults_injected"]
