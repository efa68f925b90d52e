"""The drift watch and the queue of unsure items (edge_runtime/watch/), and the shifts of the
simulated line they are judged on (hardware/sim/shifts.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from sortline.edge_runtime.model.pipeline import CONFIDENT, UNSURE, Decision, ItemPipeline
from sortline.edge_runtime.station.observers import ObservedItem
from sortline.edge_runtime.watch import DriftConfig, DriftWatch, QueueConfig, StationWatch, UnsureQueue
from sortline.edge_runtime.watch.monitors import BlockMonitor, RateMonitor, Reference, Window
from sortline.edge_runtime.watch.unsure import Entry, export, rank_entries
from sortline.hardware.sim.avocado import AvocadoScenario
from sortline.hardware.sim.checkout import Catalog, CheckoutScenario
from sortline.hardware.sim.process import CachedScenario
from sortline.hardware.sim.shifts import Shift, ShiftError, shift_views, shifted_scenario

SMALL = DriftConfig(reference_items=200, step=10, camera_window=20, item_window=60, clear_blocks=2)

# --- the shifts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("text, shift", [("blur:2@2000", Shift("blur", 2000, 2)), ("nir-gain@5", Shift("nir-gain", 5)),
                                         ("cultivar@0", Shift("cultivar", 0)), ("product@10", Shift("product", 10))])
def test_shifts_parse(text, shift):
    assert Shift.parse(text) == shift and str(shift) == text


@pytest.mark.parametrize("text", ["blur@2000", "nir-gain:1@5", "fog@3", "light", "light@-1", "light@x", "blur:a@3"])
def test_bad_shifts_are_refused_with_a_reason(text):
    with pytest.raises(ShiftError, match="--shift"):
        Shift.parse(text)


def test_camera_shifts_change_what_they_say_and_nothing_else():
    views = AvocadoScenario(3).render(7)
    blurred = shift_views(views, Shift("blur", 0, 2), 7)
    for k, (a, b) in enumerate(zip(views, blurred)):
        changed = np.abs(a.rgb.astype(int) - b.rgb).mean()
        assert (changed > 1.0) == (k == 2), (k, changed)
    dim = shift_views(views, Shift("nir-gain", 0), 7)
    assert all((a.rgb == b.rgb).all() for a, b in zip(views, dim))
    assert all(abs(b.nir.mean() / a.nir.mean() - 0.7) < 0.01 for a, b in zip(views, dim))
    dark = shift_views(views, Shift("light", 0), 7)
    assert all((a.nir == b.nir).all() and abs(b.rgb.mean() / a.rgb.mean() - 0.7) < 0.01 for a, b in zip(views, dark))


def test_a_new_cultivar_keeps_the_classes_and_changes_the_look():
    scenario = shifted_scenario(AvocadoScenario(3), Shift("cultivar", 50), 100)
    before, after = AvocadoScenario(3), AvocadoScenario(3, "fuerte")
    assert [scenario.label(i) for i in range(100)] == [before.label(i) for i in range(100)]
    assert (scenario.render(10, 80, 4)[0].rgb == before.render(10)[0].rgb).all()
    assert (scenario.render(60, 80, 4)[0].rgb == after.render(60)[0].rgb).all()
    green = np.mean([after.render(i)[0].rgb[..., 1].mean() - before.render(i)[0].rgb[..., 1].mean() for i in range(8)])
    assert green > 3  # paler, greener skin
    with pytest.raises(ShiftError, match="avocado"):
        shifted_scenario(CheckoutScenario(Catalog.procedural(3)), Shift("cultivar", 5), 10)


def test_the_product_shift_brings_products_the_catalog_lacks():
    checkout = CheckoutScenario(Catalog.procedural(4), seed=2)
    scenario = shifted_scenario(checkout, Shift("product", 200), 1000)
    unknown = len(checkout.classes)
    assert all(scenario.label(i) < unknown for i in range(200))
    share = np.mean([scenario.label(i) == unknown for i in range(200, 1200)])
    assert 0.15 < share < 0.25
    with pytest.raises(ShiftError, match="NIR"):
        shifted_scenario(checkout, Shift("nir-gain", 5), 10)
    with pytest.raises(ShiftError, match="cameras 0..1"):
        shifted_scenario(checkout, Shift("blur", 5, 2), 10)


# --- the monitors ---------------------------------------------------------------------------------


def test_a_window_monitor_keeps_its_false_alarm_rate_and_sees_a_shift():
    rng = np.random.default_rng(0)
    reference = Reference.fit(rng.normal(5, 2, (500, 1)))
    alpha = 0.01  # per look: about 1 false raise in 100 looks on a line that stays as it was
    monitor = BlockMonitor(reference, Window(50, 50), alpha)
    raises = 0
    for _ in range(400):  # 400 looks of 50 items
        for x in rng.normal(5, 2, 50):
            raises += monitor.add(np.array([x])) == "raise"
        monitor.latch.active = False  # count every look that would raise
    assert 0 < raises <= 12  # expected 4 (0.01 × 400), with the reference's own error inflating it
    shifted = BlockMonitor(reference, Window(50, 10), 1e-7)
    changes = [shifted.add(np.array([x])) for x in np.r_[rng.normal(5, 2, 100), rng.normal(7, 2, 100)]]
    assert changes.index("raise") < 160  # within 60 items of a one-σ shift, at a 1e-7 false-alarm rate
    back = [shifted.add(np.array([x])) for x in rng.normal(5, 2, 300)]
    assert "clear" in back


def test_a_rate_monitor_alarms_on_a_rise_only():
    monitor = RateMonitor.fit(hits=10, items=500, window=Window(100, 20), alpha=1e-6)
    rng = np.random.default_rng(1)
    assert [monitor.add(x) for x in rng.random(2000) < 0.02].count("raise") == 0
    assert [monitor.add(x) for x in rng.random(1000) < 0.0].count("raise") == 0  # fewer is not an alarm
    assert "raise" in [monitor.add(x) for x in rng.random(200) < 0.25]


# --- the drift watch ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline(tiny_bundle) -> ItemPipeline:
    return ItemPipeline(tiny_bundle, threads=1)


def _observe(pipeline: ItemPipeline, scenario, item_id: int) -> ObservedItem:
    views = scenario.render(item_id, scenario.frame_px, scenario.views)
    readings = list(scenario.readings(item_id, 0))
    embeddings = pipeline.embedder.embed_views(views)
    decision = pipeline.decide(item_id, embeddings, readings)
    return ObservedItem(item_id, 0, decision, pipeline, embeddings, tuple(views), tuple(readings))


def _watch(pipeline, scenario, items) -> DriftWatch:
    watch = DriftWatch(SMALL)
    for i in items:
        watch.take(_observe(pipeline, scenario, i))
    return watch


@pytest.fixture(scope="module")
def avocado():
    return CachedScenario(AvocadoScenario(5), 250)


def test_a_stable_line_raises_nothing_and_a_blurred_lens_names_its_camera(pipeline, avocado):
    scenario = shifted_scenario(avocado, Shift("blur", 300, 2), 250)
    events = []
    watch = DriftWatch(SMALL, events.append)
    for i in range(400):
        watch.take(_observe(pipeline, scenario, i))
    assert watch.watching and watch.references == 1
    alarms = watch.summary()["alarms"]
    assert alarms and all(a["kind"] == "camera" and a["camera"] == 2 for a in alarms), alarms
    assert {a["statistic"] for a in alarms} & {"sharpness", "contrast"}
    assert all(300 <= a["at_item"] <= 330 for a in alarms)
    assert [e["event"] for e in events].count("drift-alarm") == len(alarms) and "advice" in events[-1]
    assert all(m["threshold"] > 0 for m in watch.statistics())


def test_a_new_cultivar_is_an_items_alarm_and_marking_the_line_good_learns_it(pipeline, avocado):
    scenario = shifted_scenario(avocado, Shift("cultivar", 250), 250)
    watch = _watch(pipeline, scenario, range(400))
    alarms = watch.summary()["alarms"]
    assert alarms and {a["kind"] for a in alarms} == {"items"}, alarms
    watch.mark_good()
    for i in range(400, 700):
        watch.take(_observe(pipeline, scenario, i))
    assert watch.references == 2 and watch.active() == []
    assert all(a["cleared_at_item"] is not None for a in watch.summary()["alarms"])


def test_drift_settings_are_checked():
    from sortline.edge_runtime.errors import ConfigError

    for bad in ({"reference_items": 50}, {"step": 100}, {"items_between_false_alarms": 10}, {"border": 0.9}):
        with pytest.raises((ConfigError, ValueError)):
            DriftConfig(**bad)


# --- the queue of unsure items ---------------------------------------------------------------------


def _unsure(pipeline, item: ObservedItem, spread: float = 0.5) -> ObservedItem:
    """The item as if the head had been torn between two classes."""
    labels = pipeline.labels
    probabilities = [0.0] * len(labels)
    probabilities[0], probabilities[1] = 0.5 + spread / 10, 0.5 - spread / 10
    decision = Decision(item.item_id, 0, UNSURE, labels[0], probabilities[0], tuple(probabilities))
    return ObservedItem(item.item_id, item.lane, decision, item.pipeline, item.embeddings, item.views, item.readings)


def test_the_queue_keeps_unsure_items_within_its_caps_and_ranks_lookalikes_down(tmp_path, pipeline, avocado):
    clock = [1_000_000.0]
    labelled = []
    queue = UnsureQueue(QueueConfig(tmp_path / "q", per_hour=6, max_items=5, reserve_mb=0),
                        on_label=lambda *a: labelled.append(a), clock=lambda: clock[0])
    confident = _observe(pipeline, avocado, 1)
    queue.take(ObservedItem(1, 0, Decision(1, 1, CONFIDENT, "A", 0.99, (0.99, 0.005, 0.003, 0.002)), pipeline,
                            confident.embeddings, confident.views, confident.readings))
    assert queue.summary()["kept"] == 0  # sure, one class from every view: not worth a label
    for i in range(2, 9):
        queue.take(_unsure(pipeline, _observe(pipeline, avocado, i), spread=i / 10))
    summary = queue.summary()
    assert summary["queued"] <= 5 and summary["dropped"] >= 2  # 6 an hour, 5 in all: the oldest went
    queue.take(_unsure(pipeline, _observe(pipeline, avocado, 8)))  # the same item again: a repeat
    assert queue.dropped["repeat"] >= 1
    clock[0] += 3600
    for i in range(9, 12):
        queue.take(_unsure(pipeline, _observe(pipeline, avocado, i)))
    ranked = queue.ranked()
    assert len({e.item_id for e in ranked}) == len(ranked) <= 5
    entry = queue.label(ranked[0].key, "external")
    assert entry.label == "external" and labelled[0][0] == "external" and labelled[0][1].shape[0] == 1
    assert labelled[0][3] == pipeline.manifest.backbone_sha256  # the backbone that made them
    assert json.loads((tmp_path / "q" / entry.key / "item.json").read_text())["label"] == "external"
    again = UnsureQueue(QueueConfig(tmp_path / "q", reserve_mb=0))  # read back from disk
    assert [e.key for e in again.ranked()][-1] == entry.key and again.ranked()[-1].label == "external"
    assert export(again, tmp_path / "out") == 1
    from sortline.edge_runtime.learning.enroll import read_item

    views = read_item(tmp_path / "out" / "external" / entry.key)
    assert len(views) == 4 and views[0].nir is not None


def test_labelled_items_outlast_unlabelled_ones_at_the_cap(tmp_path, pipeline, avocado):
    """After a drift alarm every item is a candidate, and a full queue turns over in seconds: the
    oldest unlabelled items make room first, so the operator's labels stay for the retrain."""
    queue = UnsureQueue(QueueConfig(tmp_path / "q", max_items=3, reserve_mb=0))
    for i in (2, 3, 4):
        queue.take(_unsure(pipeline, _observe(pipeline, avocado, i), spread=i / 10))
    oldest = min(queue.ranked(), key=lambda e: e.item_id)
    queue.label(oldest.key, "A")
    for i in (5, 6, 7, 8):
        queue.take(_unsure(pipeline, _observe(pipeline, avocado, i), spread=i / 10))
    kept = {e.item_id: e.label for e in queue.ranked()}
    assert len(kept) == 3 and kept[oldest.item_id] == "A" and queue.dropped["cap"] == 4
    assert sorted(kept) == [oldest.item_id, 7, 8]  # the newest unlabelled ones beside it


def test_an_item_labelled_while_the_cap_is_reached_keeps_its_label(tmp_path, pipeline, avocado):
    """The operator labels the oldest item while the watch keeps a new one that the cap of one
    would trim it for: the trim waits for the label, so the label reaches the store and item.json
    alike (the adapt loop's simulated operator once stored a label whose item was gone), and then
    the labelled item stays: the unlabelled newcomer makes room."""
    import threading

    stored, taking = [], []
    queue = UnsureQueue(QueueConfig(tmp_path / "q", per_hour=100, max_items=1, reserve_mb=0))
    queue.take(_unsure(pipeline, _observe(pipeline, avocado, 2)))
    (first,) = queue.ranked()
    newcomer = _unsure(pipeline, _observe(pipeline, avocado, 30))

    def on_label(label, features, source, backbone):  # the store's write, with the watch taking an item meanwhile
        thread = threading.Thread(target=queue.take, args=(newcomer,))
        thread.start()
        thread.join(timeout=0.3)
        taking.append(thread)
        stored.append(source)

    queue.on_label = on_label
    entry = queue.label(first.key, "external")
    taking[0].join(timeout=10)
    assert entry.label == "external" and stored == [f"queue:{first.key}"]
    assert json.loads((tmp_path / "q" / first.key / "item.json").read_text())["label"] == "external"
    assert [e.item_id for e in queue.ranked()] == [2] and queue.dropped["cap"] == 1


def test_look_alikes_take_one_place_in_the_queue(tmp_path, pipeline, avocado):
    queue = UnsureQueue(QueueConfig(tmp_path / "q", per_hour=100, reserve_mb=0))
    base = _observe(pipeline, avocado, 3)
    for k in range(4):  # near-identical items, very unsure
        jitter = base.embeddings + np.float32(1e-3 * (k + 1))
        queue.take(_unsure(pipeline, ObservedItem(100 + k, 0, base.decision, pipeline, jitter, base.views,
                                                  base.readings), spread=0.1))
    for i in (20, 40):  # different items, a little less unsure
        queue.take(_unsure(pipeline, _observe(pipeline, avocado, i), spread=0.4))
    order = [e.item_id for e in queue.ranked()]
    assert len(order) == 3 and {20, 40} < set(order) and order[1] >= 100, order  # typical, then most unsure


def _confident(pipeline, item: ObservedItem) -> ObservedItem:
    """The item as if the head had been sure of it, from every view."""
    decision = Decision(item.item_id, 1, CONFIDENT, "A", 0.99, (0.99, 0.005, 0.003, 0.002))
    return ObservedItem(item.item_id, item.lane, decision, pipeline, item.embeddings, item.views, item.readings)


def test_while_the_items_drift_the_queue_keeps_a_sample_of_the_line(tmp_path, pipeline, avocado):
    queue = UnsureQueue(QueueConfig(tmp_path / "q", per_hour=2, drift_per_hour=4, reserve_mb=0),
                        clock=lambda: 1_000_000.0, seed=0)
    drifting = [False]
    queue.drifting = lambda: drifting[0]
    queue.take(_confident(pipeline, _observe(pipeline, avocado, 1)))
    assert queue.summary()["kept"] == 0  # a sure item of a steady line: not worth a label
    drifting[0] = True
    for i in range(2, 30):
        queue.take(_confident(pipeline, _observe(pipeline, avocado, i)))
    kept = [e for e in queue.ranked() if e.drift_only]  # (the tiny head's views disagree on some: those
    assert len(kept) == 4 and queue.dropped["hourly"] >= 28 - 4 - 2  # take the unsure places, 2 an hour)
    assert max(e.item_id for e in kept) > 5  # a sample of the hour, not its first four
    for i in (40, 41, 42):  # unsure items keep their own places: the drift sample takes none of them
        queue.take(_unsure(pipeline, _observe(pipeline, avocado, i)))
    others = [e.item_id for e in queue.ranked() if not e.drift_only]
    assert len(others) == 2 and set(others) <= {40, 41, 42}, others
    assert sorted(e.item_id for e in queue.ranked() if e.drift_only) == sorted(e.item_id for e in kept)
    again = UnsureQueue(QueueConfig(tmp_path / "q", reserve_mb=0))  # read back, features and all
    assert sorted(e.item_id for e in again.ranked()) == sorted(e.item_id for e in queue.ranked())
    assert all(e.features.shape == kept[0].features.shape for e in again.ranked())


def _entries(rows: np.ndarray, uncertainty: list[float], first_id: int = 0) -> list[Entry]:
    return [Entry(f"{first_id + k}-20260101T000000000000", first_id + k, 0, u, ["margin"], {}, None, 0, row, row)
            for k, (row, u) in enumerate(zip(rows, uncertainty, strict=True))]


def test_the_ranking_puts_typical_items_of_the_commonest_kinds_first():
    rng = np.random.default_rng(0)
    # one kind of item: five alike, and a sixth further out that the head is most unsure of
    centre = rng.normal(size=16)
    group = np.vstack([centre + rng.normal(scale=0.05, size=(5, 16)), centre + rng.normal(scale=0.6, size=16)])
    order = [int(k.split("-")[0]) for k in rank_entries(_entries(group, [0.3] * 5 + [0.9]))]
    assert order[0] != 5 and order[1] == 5, order  # the most typical first, then the most unsure
    # three kinds of 100, 50 and 25 items, and five odd ones out that the head is sure of nothing about
    kinds = [rng.normal(size=16) * 3 for _ in range(3)]
    rows = np.vstack([k + rng.normal(size=(n, 16)) for k, n in zip(kinds, (100, 50, 25), strict=True)]
                     + [rng.normal(size=(5, 16)) * 3])
    order = [int(k.split("-")[0]) for k in rank_entries(_entries(rows, [0.1] * 175 + [1.0] * 5))]
    top = order[:20]
    kind_of = [0] * 100 + [1] * 50 + [2] * 25 + [3] * 5
    counts = np.bincount([kind_of[i] for i in top], minlength=4)
    assert counts[3] == 0 and all(counts[:3] > 0) and counts[0] >= counts[1] >= counts[2], counts


def test_labels_given_one_at_a_time_spread_over_the_kinds_of_item():
    # an operator labels the top item and the ranking is made again after each label: the kinds
    # that have labels give way to those that have none (the ranking once kept giving the commonest
    # kind's most typical item: 98 % of a loop's labels went to one class of four)
    rng = np.random.default_rng(1)
    kinds = [rng.normal(size=16) * 3 for _ in range(3)]
    rows = np.vstack([k + rng.normal(size=(n, 16)) for k, n in zip(kinds, (100, 50, 25), strict=True)])
    kind_of = [0] * 100 + [1] * 50 + [2] * 25
    entries = _entries(rows, list(rng.uniform(0, 1, len(rows))))
    by_key = {e.key: e for e in entries}
    for _ in range(15):
        by_key[rank_entries(entries)[0]].label = "A"
    counts = np.bincount([kind_of[e.item_id] for e in entries if e.label], minlength=3)
    assert all(counts >= 2) and counts[0] <= 9, counts
    ranked = rank_entries(entries)
    assert [by_key[k].label for k in ranked[-15:]] == ["A"] * 15  # the labelled ones last


def test_a_kind_with_labels_gives_way_to_one_without():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(2, 16)) * 5
    rows = np.vstack([centres[0] + rng.normal(scale=0.3, size=(6, 16)),
                      centres[1] + rng.normal(scale=0.3, size=(4, 16))])
    entries = _entries(rows, [0.5] * 10)
    for e in entries[:3]:
        e.label = "A"
    order = [int(k.split("-")[0]) for k in rank_entries(entries)]
    # three places to the unlabelled kind before the labelled kind's first; its own fourth ties
    # with that (each would be its cluster's fourth label) and yields to the larger cluster
    assert set(order[:3]) < {6, 7, 8, 9} and order[3] in (3, 4, 5) and set(order[4:]) >= {3, 4, 5} - {order[3]}, order


def test_hostile_queue_folders_are_skipped_and_counted(tmp_path, pipeline, avocado):
    folder = tmp_path / "q"
    queue = UnsureQueue(QueueConfig(folder, reserve_mb=0))
    queue.take(_unsure(pipeline, _observe(pipeline, avocado, 3)))
    good = queue.ranked()[0].key
    for name, files in {"5-20260101T000000000000": {"item.json": b"[1, 2", "pooled.npy": b""},
                        "6-20260101T000000000000": {"item.json": b'{"item_id": "x"}', "pooled.npy": b"\x93NUMPY"},
                        "7-20260101T000000000000": {"item.json": json.dumps({"item_id": 7, "hour": 1, "uncertainty": 1,
                                                                             "reasons": [], "decision": {},
                                                                             "label": "\u202e"}).encode()}}.items():
        (folder / name).mkdir()
        for file, data in files.items():
            (folder / name / file).write_bytes(data)
    np.save(folder / "7-20260101T000000000000" / "pooled.npy", np.ones(4))
    (folder / ".incoming-9-20260101T000000000000").mkdir()  # a writer killed mid-item
    again = UnsureQueue(QueueConfig(folder, reserve_mb=0))
    assert [e.key for e in again.ranked()] == [good] and again.rejected == 3
    assert not (folder / ".incoming-9-20260101T000000000000").exists()
    from sortline.edge_runtime.watch import QueueError

    with pytest.raises(QueueError):
        again.label("8-20260101T000000000000", "A")
    with pytest.raises(Exception, match="label"):
        again.label(good, "")
    full = UnsureQueue(QueueConfig(tmp_path / "q2", reserve_mb=1e12))  # never fills the disk
    full.take(_unsure(pipeline, _observe(pipeline, avocado, 4)))
    assert full.summary()["queued"] == 0 and full.dropped["disk"] == 1


# --- on the line ------------------------------------------------------------------------------------


def test_the_station_on_a_shifted_line_reports_alarm_and_queue(tmp_path, pipeline):
    from sortline.edge_runtime.hil.runs import make_scenario, sort_on_simulated_line
    from sortline.hardware.sim.line import LineConfig

    watch = StationWatch.build(SMALL, QueueConfig(tmp_path / "queue", reserve_mb=0))
    scenario = make_scenario("avocado", 9, shift=Shift.parse("blur:1@260"), distinct=200)
    run = sort_on_simulated_line(pipeline, LineConfig(items=360, seed=9, pitch_ms=8), scenario, progress=False,
                                 event_log=tmp_path / "events.jsonl", watch=watch)
    assert run.summary["lost"] == 0 and run.summary["duplicates"] == 0
    drift, queue = run.summary["drift"], run.summary["queue"]
    assert drift["watched"] + drift["sampled_out"] == drift["offered"] == 360
    first = drift["alarms"][0]
    assert (first["kind"], first["camera"]) == ("camera", 1) and 260 <= first["at_item"] <= 300, drift["alarms"]
    assert queue["kept"] > 0 and set(queue) >= {"kept", "dropped"}
    logged = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "drift-alarm" and e["camera"] == 1 for e in logged)
    assert sum("item_id" in e and "exit" in e for e in logged) == 360  # one line an item, alarms besides


def test_sortline_queue_lists_labels_and_exports(tmp_path, pipeline, avocado, tiny_bundle):
    queue = UnsureQueue(QueueConfig(tmp_path / "q", reserve_mb=0))
    for i in (3, 30):
        queue.take(_unsure(pipeline, _observe(pipeline, avocado, i), spread=i / 100))
    key = queue.ranked()[0].key

    def sortline(*args):
        done = subprocess.run([sys.executable, "-m", "sortline.edge_runtime.cli", *args, "--json"], capture_output=True,
                              text=True, timeout=120)
        return done.returncode, json.loads(done.stdout.strip().splitlines()[-1])

    code, listed = sortline("queue", "list", "--dir", str(tmp_path / "q"))
    assert code == 0 and listed["queued"] == 2 and listed["items"][0]["key"] == key
    code, labelled = sortline("queue", "label", "--dir", str(tmp_path / "q"), key, "both", "--store",
                              str(tmp_path / "enroll.sqlite"), "--bundle", str(tiny_bundle.root))
    assert code == 0 and labelled["label"] == "both" and labelled["enrolled"]
    from sortline.edge_runtime.learning.store import EmbeddingStore

    with EmbeddingStore.open_existing(tmp_path / "enroll.sqlite") as store:
        assert any(source.startswith("queue:") for source in store.examples().sources)
    code, exported = sortline("queue", "export", "--dir", str(tmp_path / "q"), "--out", str(tmp_path / "out"))
    assert code == 0 and exported["exported"] == 1 and (tmp_path / "out" / "labels.csv").is_file()
    # the export is what `sortline fit` reads: the item's views and the taps the station matched to it
    from sortline.edge_runtime.labelling.book import folder_items

    data = folder_items(tmp_path / "out")
    item_id = queue.ranked()[0].item_id
    assert [i.label for i in data.items] == ["both"] and data.sensor == "taps" and data.readings_expected == 5
    from sortline.hardware.protocol import Encoder, Parser

    encoder = Encoder()  # as the sensor sends them: its protocol rounds the values
    sent = Parser().feed(b"".join(encoder.encode(r) for r in avocado.readings(item_id, 0)))
    assert data.items[0].readings == sent and len(sent) == 5 and len(data.items[0].views) == 4
    assert np.array_equal(data.items[0].views[2].nir, avocado.render(item_id, avocado.frame_px, 4)[2].nir)
    code, refused = sortline("queue", "label", "--dir", str(tmp_path / "nowhere"), key, "A")
    assert code == 2 and "no such queue folder" in refused["error"]


def test_sortline_simulate_records_the_shift_in_its_truth(tmp_path):
    out = tmp_path / "rec"
    done = subprocess.run([sys.executable, "-m", "sortline.edge_runtime.cli", "simulate", "--items", "30", "--rate",
                           "60", "--shift", "light@20", "--record", str(out), "--quiet"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    truth = [json.loads(x) for x in (out / "truth.jsonl").read_text().splitlines()]
    assert [t.get("shift") for t in truth] == [None] * 19 + ["light"] * 11
    assert json.loads((out / "recording.json").read_text())["shift"] == "light@20"
    bad = subprocess.run([sys.executable, "-m", "sortline.edge_runtime.cli", "simulate", "--shift", "fog@3",
                          "--record", str(tmp_path / "x")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--shift" in bad.stderr
