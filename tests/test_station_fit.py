"""From a station's own line to a bundle: record, label (CSV or the page), fit, change the
policy, replay. The labelling page is tested in Debian's chromium (selenium)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import chromium_browser

from sortline.edge_runtime.cli import main
from sortline.edge_runtime.daemon.config import ConfigError
from sortline.edge_runtime.labelling.book import LabelBook, LabelError, folder_items, recording_items
from sortline.edge_runtime.model.bundle import SIGNING_KEY_ENV, load_bundle
from sortline.edge_runtime.model.policy import load_policy, policy_toml

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _simulate(out: Path, items: int, seed: int, rate: float = 50) -> Path:
    assert main(["simulate", "--scenario", "avocado", "--items", str(items), "--rate", str(rate), "--seed",
                 str(seed), "--record", str(out), "--quiet"]) == 0
    return out


def _strip_truth(recording: Path) -> Path:
    """A recording as a real station makes it: no ground truth. Returns its labels as a CSV."""
    meta = json.loads((recording / "recording.json").read_text())
    rows = [json.loads(line) for line in (recording / "truth.jsonl").read_text().splitlines()]
    csv = recording.parent / f"{recording.name}.csv"
    csv.write_text("item_id,label\n" + "".join(f"{r['item_id']},{meta['labels'][r['label']]}\n" for r in rows))
    (recording / "truth.jsonl").write_text("".join(json.dumps({**r, "label": None}) + "\n" for r in rows))
    (recording / "recording.json").write_text(json.dumps({**meta, "labels": []}))
    return csv


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    root = tmp_path_factory.mktemp("line")
    return _simulate(root / "rec", 40, seed=21)


def test_recorded_items_carry_views_and_the_readings_the_station_matches(recorded):
    data = recording_items(recorded)
    assert len(data.items) == 40 and data.sensor == "taps" and data.readings_expected == 5
    assert data.views == 4 and data.channels == ("r", "g", "b", "nir")
    assert all(len(item.readings) == 5 and {r.item_id for r in item.readings} == {item.item_id}
               for item in data.items)
    assert all(item.label is not None for item in data.items)  # simulated: its ground truth


def test_labels_from_csv_are_checked_whole_and_kept_on_disk(tmp_path, recorded):
    rec = tmp_path / "rec"
    shutil.copytree(recorded, rec)
    csv = _strip_truth(rec)
    assert all(item.label is None for item in recording_items(rec).items)
    bad = tmp_path / "bad.csv"
    for text, why in [("1,A\n999,A\n", "not in the recording"), ("1,A,x\n", "3 fields"),
                      ("one,A\n", "whole number"), ("1,\n", "printable"), ("-4,A\n", "outside")]:
        bad.write_text(text)
        with pytest.raises(LabelError, match=why):
            LabelBook(rec).import_csv(bad, known_items=range(1, 41))
    assert LabelBook(rec).labels == {}  # a bad file gives no label at all
    assert main(["label", str(rec), "--csv", str(csv)]) == 0
    labels = LabelBook(rec).labels
    assert len(labels) == 40
    book = LabelBook(rec)
    book.set(3, "both")
    assert LabelBook(rec).labels[3] == "both"  # on disk at once
    assert book.undo() == 3 and LabelBook(rec).labels[3] == labels[3]
    with open(rec / "labels.jsonl", "a") as f:  # a writer killed mid-line
        f.write('{"item_id": 5, "lab')
    assert LabelBook(rec).labels == labels


def test_item_folders_give_labelled_items(tmp_path, recorded):
    for label, item in [("A", 1), ("A", 2), ("external", 3)]:
        shutil.copytree(recorded / "frames" / f"{item:06d}", tmp_path / "items" / label / f"i{item}")
    data = folder_items(tmp_path / "items")
    assert [i.label for i in data.items] == ["A", "A", "external"] and data.views == 4
    assert data.channels == ("r", "g", "b", "nir") and data.sensor == "none"


def test_policy_files_are_checked_against_the_classes(tmp_path):
    classes = ("A", "external", "internal", "both")
    path = tmp_path / "policy.toml"
    path.write_text('safe_exit = 0\nmin_confidence = 0.6\n[exits]\nA = 1\nexternal = 2\ninternal = 3\nboth = 3\n'
                    '[class_min_confidence]\ninternal = 0.8\n')
    policy = load_policy(path, classes)
    assert policy.exits["both"] == 3 and policy.threshold("internal") == 0.8 and policy.threshold("A") == 0.6
    assert load_policy(_write(tmp_path, policy_toml(policy)), classes) == policy  # round trip
    for text, why in [
        ("safe_exit = 0\n[exits]\nA = 1\nexternal = 2\ninternal = 3\n", "no exit to both"),
        ("safe_exit = 0\n[exits]\nA = 1\nexternal = 2\ninternal = 3\nboth = 3\nbtoh = 1\n", "did you mean 'both'"),
        ("safe_exit = 0\n[exits]\nA = 1\nexternal = 2\ninternal = 300\nboth = 3\n", "exits.internal"),
        ("safe_exit = 0\nmin_confidence = 1.5\n[exits]\nA = 1\nexternal = 2\ninternal = 3\nboth = 3\n",
         "min_confidence"),
        ("safe_exit = 0\nexitz = 1\n[exits]\nA = 1\nexternal = 2\ninternal = 3\nboth = 3\n", "exitz"),
    ]:
        with pytest.raises(ConfigError, match=why):
            load_policy(_write(tmp_path, text), classes)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / f"p{len(list(tmp_path.iterdir()))}.toml"
    path.write_text(text)
    return path


def test_bundle_policy_writes_a_new_signed_version(tmp_path, tiny_bundle, capsys):
    path = _write(tmp_path, "safe_exit = 0\nmin_confidence = 0.9\n[exits]\nA = 1\nexternal = 1\ninternal = 2\n"
                            "both = 2\n[class_min_confidence]\nboth = 0.99\n")
    assert main(["bundle", "keygen", str(tmp_path / "k")]) == 0
    out = tmp_path / "b2"
    assert main(["bundle", "policy", str(tiny_bundle.root), str(path), "--out", str(out), "--key",
                 str(tmp_path / "k")]) == 0
    b2 = load_bundle(out, public_key=tmp_path / "k.pub")
    assert b2.manifest.decision.exits["external"] == 1 and b2.manifest.decision.threshold("both") == 0.99
    assert b2.version != tiny_bundle.version and (out / "examples.npz").is_file()
    assert load_bundle(tiny_bundle.root).manifest.decision == tiny_bundle.manifest.decision  # untouched


def test_record_label_fit_replay_end_to_end(tmp_path, capsys):
    """A recording without ground truth, labelled from a CSV and fitted with `sortline fit`,
    sorts a second recording as well as the demo's path fitted on the same items."""
    from sortline.train.demo import DemoConfig, train_station_bundle

    line = _simulate(tmp_path / "line", 160, seed=22)  # the demo's labelled world for seed 2
    check = _simulate(tmp_path / "check", 80, seed=12, rate=30)
    csv = _strip_truth(line)
    steps = {}
    t = time.perf_counter()
    assert main(["label", str(line), "--csv", str(csv)]) == 0
    steps["label"] = time.perf_counter() - t
    demo = train_station_bundle(DemoConfig(seed=2, pool_fruit=40, labeled_fruit=160, epochs=1, image_size=32,
                                           progress=False), tmp_path / "demo", {})
    t = time.perf_counter()
    out = tmp_path / "fitted"
    assert main(["fit", "--data", str(line), "--out", str(out), "--checkpoint", str(tmp_path / "demo" /
                                                                                    "backbone.ckpt"),
                 "--quiet"]) == 0
    steps["fit"] = time.perf_counter() - t
    key = os.environ[SIGNING_KEY_ENV]
    load_bundle(out, public_key=f"{key}.pub")  # fit signs with the default key
    results = {}
    for name, bundle in (("fit", out), ("demo", demo.bundle.root)):
        t = time.perf_counter()
        code = main(["replay", str(check), "--bundle", str(bundle), "--speed", "max", "--quiet", "--json"])
        steps[f"replay {name}"] = time.perf_counter() - t
        assert code == 0
        results[name] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    print({k: round(v, 1) for k, v in steps.items()}, {k: (r["mcc"], r["accuracy"]) for k, r in results.items()})
    fitted = results["fit"]
    assert fitted["items"] == fitted["gate_commands"] == 80 and fitted["lost"] == 0 and fitted["duplicates"] == 0
    assert fitted["mcc"] >= results["demo"]["mcc"] - 0.1  # (80 items with rare classes: MCC moves by ±0.1)
    manifest = load_bundle(out).manifest
    assert manifest.fusion.sensor == "taps" and manifest.input.channels == ("r", "g", "b", "nir")
    assert manifest.metrics["labelled"] == 160


# --- the labelling page in a real browser ----------------------------------------------------------


def test_the_labelling_page_labels_by_keyboard_and_keeps_labels(tmp_path, recorded):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    rec = tmp_path / "rec"
    shutil.copytree(recorded, rec)
    _strip_truth(rec)
    process = subprocess.Popen([sys.executable, "-m", "sortline.edge_runtime.cli", "label", str(rec), "--classes",
                                "A,external,internal,both"], stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        url = next(word for word in line.split() if word.startswith("http://127.0.0.1:"))
        browser = chromium_browser()
        try:
            wait = WebDriverWait(browser, 20)
            browser.get(url)
            wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
            title = browser.find_element(By.ID, "item-title")
            assert title.text.startswith("item 1 ")
            assert len(browser.find_elements(By.CSS_SELECTOR, "#views img")) == 8  # 4 views, RGB and NIR
            assert len(browser.find_elements(By.CSS_SELECTOR, "#trace circle")) == 5  # five taps
            body = browser.find_element(By.TAG_NAME, "body")
            body.send_keys("1")  # item 1: A
            wait.until(lambda b: b.find_element(By.ID, "item-title").text.startswith("item 2 "))
            body.send_keys("3")  # item 2: internal
            wait.until(lambda b: b.find_element(By.ID, "item-title").text.startswith("item 3 "))
            body.send_keys("s")  # item 3 skipped
            wait.until(lambda b: b.find_element(By.ID, "item-title").text.startswith("item 4 "))
            body.send_keys("2")  # item 4: external
            wait.until(lambda b: b.find_element(By.ID, "item-title").text.startswith("item 5 "))
            body.send_keys("u")  # undo item 4
            wait.until(lambda b: b.find_element(By.ID, "item-title").text.startswith("item 4 "))
            assert LabelBook(rec).labels == {1: "A", 2: "internal"}  # on disk as given
            browser.refresh()  # a reload keeps them, and starts at the first unlabelled item
            wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
            assert browser.find_element(By.ID, "item-title").text.startswith("item 3 ")
            assert "2 / 40 labelled" in browser.find_element(By.ID, "progress").text
            body = browser.find_element(By.TAG_NAME, "body")
            body.send_keys("4")  # item 3: both
            wait.until(lambda b: "3 / 40" in b.find_element(By.ID, "progress").text)
            shot = tmp_path / "label-page.png"
            browser.save_screenshot(str(shot))
            if os.environ.get("SORTLINE_UPDATE_DOCS"):
                shutil.copyfile(shot, DOCS / "label-page.png")
        finally:
            browser.quit()
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert LabelBook(rec).labels == {1: "A", 2: "internal", 3: "both"}
    assert np.all([item.label is not None for item in recording_items(rec).items if item.item_id <= 3])


def test_the_labelling_page_refuses_bad_requests(tmp_path, recorded):
    import urllib.error
    import urllib.request

    from sortline.edge_runtime.labelling.page import LabelSession, serve_label_page

    rec = tmp_path / "rec"
    shutil.copytree(recorded, rec)
    _strip_truth(rec)
    server = serve_label_page(LabelSession(rec, ["A", "external"]))
    base = f"http://127.0.0.1:{server.port}"

    def call(path: str, body: bytes | None = None) -> tuple[int, dict | bytes]:
        request = urllib.request.Request(base + path, data=body, method="POST" if body is not None else "GET",
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                data = r.read()
                return r.status, json.loads(data) if r.headers["Content-Type"] == "application/json" else data
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    try:
        assert call("/api/label", b'{"item_id": 1, "label": "A"}')[0] == 200
        for body, status, why in [(b"{not json", 400, "JSON"), (b'{"item_id": 999, "label": "A"}', 400,
                                                                 "not in the recording"),
                                  (b'{"item_id": 1, "label": "pear"}', 400, "not one of the classes"),
                                  (b'{"item_id": "x", "label": "A"}', 400, "item_id"), (b"[1, 2]", 400, "body"),
                                  (b'{"item_id": 1, "label": "A", "x": 1}', 400, "x"),
                                  (b"x" * 5000, 413, "bytes")]:
            got, reply = call("/api/label", body)
            assert got == status and why in reply["detail"], (body[:20], got, reply)
        assert call("/frames/1/v0.rgb.png")[0] == 200
        for path in ["/frames/1/../../recording.json", "/frames/999/v0.rgb.png", "/frames/1/v9.rgb.png",
                     "/frames/1/v0.exe.png", "/etc/passwd", "/api/item/999", "/static/../labels.jsonl"]:
            assert call(path)[0] in (400, 404), path  # refused, or not there
        assert LabelBook(rec).labels == {1: "A"}  # nothing else was written
    finally:
        server.stop()


def test_fit_without_labels_says_how_to_get_them(tmp_path, recorded, capsys):
    rec = tmp_path / "rec"
    shutil.copytree(recorded, rec)
    _strip_truth(rec)
    assert main(["fit", "--data", str(rec), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "sortline label REC" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_the_labelling_page_shows_hostile_class_and_recording_names_as_text(tmp_path, recorded):
    """Class names from a CSV or a recording, and the recording's own folder name, reach the page
    as text: markup in them is shown, never parsed or run; a label given with a key is stored as
    exactly that text."""
    from conftest import HOSTILE_NAMES, assert_nothing_injected, chromium_browser

    browser = chromium_browser()  # first: it skips where selenium or chromium is missing
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from sortline.edge_runtime.labelling.page import LabelSession, serve_label_page

    rec = tmp_path / "rec <b id=injected4>x</b>"
    shutil.copytree(recorded, rec)
    _strip_truth(rec)
    server = serve_label_page(LabelSession(rec, list(HOSTILE_NAMES)))
    try:
        url = f"http://127.0.0.1:{server.port}/"
        with urllib.request.urlopen(url, timeout=5) as page:
            assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        wait = WebDriverWait(browser, 20)
        browser.get(url)
        wait.until(lambda b: b.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1")
        classes = browser.find_elements(By.CSS_SELECTOR, "#classes .cls")
        assert [c.get_property("textContent") for c in classes] == [
            f"{key}{name}" for key, name in zip("123", HOSTILE_NAMES)]
        assert rec.name in browser.find_element(By.ID, "rec").get_property("textContent")
        browser.find_element(By.TAG_NAME, "body").send_keys("1")  # item 1 gets the first hostile name
        wait.until(lambda b: b.find_element(By.ID, "item-title").text.startswith("item 2 "))
        browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_LEFT)
        wait.until(lambda b: b.find_element(By.ID, "item-title").text.startswith("item 1 "))
        assert browser.find_element(By.ID, "label-now").get_property("textContent") == HOSTILE_NAMES[0]
        assert_nothing_injected(browser)
    finally:
        browser.quit()
        server.stop()
    assert LabelBook(rec).labels == {1: HOSTILE_NAMES[0]}
