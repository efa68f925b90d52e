"""Candidates in the shadow of the live version, promotion and rollback (edge_runtime/watch/shadow*.py,
candidates.py), on synthetic items whose truth is known; the station-level tests (8 lanes, the
API, serve) are further down."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest

from sortline.edge_runtime.model.bundle import DecisionPolicy
from sortline.edge_runtime.model.head import LogisticHead
from sortline.edge_runtime.model.pipeline import Classifier, Decision, ItemPipeline
from sortline.edge_runtime.station.observers import ObservedItem
from sortline.edge_runtime.watch.candidates import HeadCandidate, ShadowError, check_newer
from sortline.edge_runtime.watch.shadow import (
    ShadowLog,
    ShadowPolicy,
    ShadowRecord,
    Verdict,
    judge,
    paired_lower_bound,
    read_log,
    shadow_stats,
)
from sortline.edge_runtime.watch.shadowing import Shadow

LABELS = ("A", "external", "internal", "both")
POLICY = DecisionPolicy({"A": 1, "external": 2, "internal": 3, "both": 3}, safe_exit=0, min_confidence=0.6)
DIM = 12


@dataclass
class FakePipeline:
    """What an ObservedItem's pipeline gives a head candidate: the item's fused features (here
    the embedding row itself), the policy, a version."""

    policy: DecisionPolicy = POLICY
    version: str = "line@1"

    def features(self, item_id, embeddings, readings):
        return embeddings[:1]


class FakeHost:
    def __init__(self, classifier: Classifier) -> None:
        self.classifier, self.pipeline, self.swaps = classifier, FakePipeline(), 0

    def live_head(self) -> Classifier:
        return self.classifier

    def live_bundle(self):
        return self.pipeline

    def swap_head(self, classifier: Classifier) -> Classifier:
        self.swaps += 1
        previous, self.classifier = self.classifier, classifier
        return previous

    def swap_bundle(self, pipeline):
        raise AssertionError("no bundles here")


def world(seed: int, n: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Items of four classes in DIM dimensions; ``shift`` moves every item (a new variety)."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(0, 1.2, (4, DIM))
    y = rng.choice(4, n, p=[0.55, 0.2, 0.15, 0.1])
    x = means[y] + rng.normal(0, 1.0, (n, DIM)) + shift * np.r_[1.0, -1.0, np.zeros(DIM - 2)]
    return x.astype(np.float32), y


def classifier(x, y, version: int) -> Classifier:
    return Classifier(LogisticHead.fit(x, y, LABELS, C=1.0), POLICY, None, version)


def swapped(y: np.ndarray, share: float, seed: int) -> np.ndarray:
    """``share`` of the labels changed to another class."""
    rng = np.random.default_rng(seed)
    y = y.copy()
    picks = rng.choice(len(y), int(share * len(y)), replace=False)
    y[picks] = (y[picks] + rng.integers(1, 4, len(picks))) % 4
    return y


def run_line(shadow: Shadow, host: FakeHost, x: np.ndarray, y: np.ndarray, label_every: int = 10,
             start: int = 0, on_item=None) -> None:
    """Offer the items decided by the host's live head; the operator labels every
    ``label_every``-th item (the truth)."""
    pipeline = FakePipeline()
    for k, (row, truth) in enumerate(zip(x, y)):
        item_id = start + k
        decision = ItemPipeline.classify_features(item_id, row[None], host.live_head())
        shadow.take(ObservedItem(item_id, 0, decision, pipeline, row[None], (), ()))
        if k % label_every == 0:
            shadow.label(item_id, LABELS[truth])
        if on_item is not None:
            on_item(item_id)


def test_the_paired_bound_tells_a_better_candidate_from_a_worse_one_and_an_equal_one_needs_labels():
    assert paired_lower_bound(b=1, c=12, n=40, alpha=0.05) > 0  # clearly better
    assert paired_lower_bound(b=8, c=2, n=40, alpha=0.05) < -0.1  # clearly worse
    assert paired_lower_bound(b=3, c=3, n=40, alpha=0.05) < -0.02  # equal, on few labels: not shown
    assert paired_lower_bound(b=30, c=30, n=4000, alpha=0.05) > -0.02  # equal, on many: shown
    assert paired_lower_bound(0, 0, 0, 0.05) == -1.0


def test_stats_agree_with_a_count_by_hand():
    v = lambda label, reason="confident": Verdict(label, reason, 1, 0.9)  # noqa: E731
    records = [ShadowRecord(1, 0, "b/head 0", "head 1", v("A"), v("A"), "A"),
               ShadowRecord(2, 0, "b/head 0", "head 1", v("A"), v("both"), "both"),
               ShadowRecord(3, 0, "b/head 0", "head 1", v("internal", "unsure"), v("internal"), "external"),
               ShadowRecord(4, 0, "b/head 0", "head 1", v("A"), v("A"))]
    s = shadow_stats(records)
    assert s["items"] == 4 and s["agreement"] == 0.5 and s["labelled"] == 3
    assert (s["live_accuracy"], s["shadow_accuracy"]) == (round(1 / 3, 4), round(2 / 3, 4))
    assert (s["live_only_right"], s["shadow_only_right"]) == (0, 1)
    assert s["agreement_per_class"] == {"A": {"items": 3, "agreement": round(2 / 3, 4)},
                                        "unsure": {"items": 1, "agreement": 0.0}}
    outcomes = s["confusion"]["outcomes"]
    assert outcomes == ["A", "both", "internal", "unsure"]
    assert s["confusion"]["matrix"][outcomes.index("unsure")][outcomes.index("internal")] == 1
    assert (s["live_unsure_rate"], s["shadow_unsure_rate"], s["unsure_fewer"]) == (0.25, 0.0, 1)
    assert (s["live_unknown_rate"], s["shadow_unknown_rate"], s["unknown_more"]) == (0.0, 0.0, 0)


def test_the_policy_waits_for_items_and_labels():
    s = {"items": 100, "labelled": 50}
    assert judge(s, ShadowPolicy(min_items=500)) == (False, "100 of 500 items seen")
    assert judge({"items": 600, "labelled": 5}, ShadowPolicy())[1] == "5 of 30 labelled items seen"


def test_a_better_candidate_is_promoted_by_the_policy_and_its_log_reads_back(tmp_path):
    """The live head was fitted before the items changed; the candidate on the changed items."""
    x_old, y_old = world(1, 800)
    x_new, y_new = world(2, 800, shift=2.5)
    live = classifier(x_old, y_old, 0)
    candidate = classifier(np.vstack([x_old, x_new]), np.r_[y_old, y_new], 1)
    host = FakeHost(live)
    events = []
    shadow = Shadow(ShadowPolicy(auto=True, min_items=200, min_labelled=20), ShadowLog(tmp_path / "shadow.jsonl"),
                    host, events.append)
    shadow.start(HeadCandidate(candidate))
    x_line, y_line = world(3, 1500, shift=2.5)
    run_line(shadow, host, x_line, y_line)
    promoted = [e for e in events if e["event"] == "shadow-promote"]
    assert len(promoted) == 1 and promoted[0]["by"] == "policy" and host.classifier is candidate
    assert 200 <= promoted[0]["at_item"] < 1500 and promoted[0]["seconds"] < 1.0
    stats = promoted[0]["stats"]
    assert stats["shadow_accuracy"] > stats["live_accuracy"] and stats["difference_lower_bound"] > -0.02
    assert shadow.rollout is not None and shadow.rollout.ended == "kept"  # its rates did not rise
    shadow.log.close()
    back = read_log(tmp_path / "shadow.jsonl")
    assert len(back) == stats["items"] and shadow_stats(back)["labelled"] >= stats["labelled"]
    assert all(r.shadow_version == "head 1" for r in back)


@pytest.mark.parametrize("seed", range(8))
def test_a_candidate_fitted_with_a_fifth_of_its_labels_swapped_is_never_promoted(seed):
    """The live head and the candidate on the same items, the candidate's labels 20 % wrong;
    the operator labels a tenth of the line; the policy looks every 25 items for 3,000 items."""
    x, y = world(10 + seed, 800)
    live = classifier(x, y, 0)
    bad = classifier(x, swapped(y, 0.2, seed), 1)
    host = FakeHost(live)
    shadow = Shadow(ShadowPolicy(auto=True, min_items=200, min_labelled=20), host=host)
    shadow.start(HeadCandidate(bad))
    x_line, y_line = world(100 + seed, 3000)
    run_line(shadow, host, x_line, y_line)
    assert host.swaps == 0 and host.classifier is live, shadow.verdict
    assert not shadow.verdict[0]


def test_a_promotion_whose_rates_rise_is_rolled_back_by_itself():
    """A candidate unsure of many more items than the live head, promoted by the operator after
    too few items in the shadow to know its own rates, comes back out within the window: it is
    held to the previous version's rates."""
    x, y = world(5, 800)
    live = classifier(x, y, 0)
    timid = Classifier(live.head, DecisionPolicy(POLICY.exits, 0, min_confidence=0.97), None, 1)
    host = FakeHost(live)
    events = []
    shadow = Shadow(ShadowPolicy(min_items=50, window_items=500), host=host, events=events.append)
    x_line, y_line = world(6, 1200)
    run_line(shadow, host, x_line[:300], y_line[:300])  # the live version's rates, before
    shadow.start(HeadCandidate(timid))
    run_line(shadow, host, x_line[300:350], y_line[300:350], start=300)  # fewer than min_window_items
    shadow.promote("operator", "looks fine")
    assert shadow.rollout.baseline_from == "the previous version"
    assert host.classifier is timid
    run_line(shadow, host, x_line[350:], y_line[350:], start=350)
    rolled = [e for e in events if e["event"] == "shadow-rollback"]
    assert len(rolled) == 1 and rolled[0]["by"] == "policy" and "unsure-rate" in rolled[0]["why"]
    assert host.classifier is live and host.swaps == 2
    assert rolled[0]["at_item"] < 350 + 200  # found within 200 items of the promotion
    with pytest.raises(ShadowError, match="nothing to roll back"):
        shadow.rollback()


def test_promote_without_a_candidate_is_refused():
    x, y = world(7, 300)
    shadow = Shadow(host=FakeHost(classifier(x, y, 0)))
    with pytest.raises(ShadowError, match="no candidate"):
        shadow.promote()


def _manifest(created: str) -> SimpleNamespace:
    return SimpleNamespace(name=f"bundle of {created}", created=created)  # what check_newer reads of a Manifest


def test_an_older_bundle_is_refused_unless_forced():
    old, new = _manifest("2026-01-01T00:00:00+00:00"), _manifest("2026-06-01T00:00:00+00:00")
    check_newer(new, old)
    with pytest.raises(ShadowError, match="before the live bundle"):
        check_newer(old, new)
    check_newer(old, new, force=True)
    with pytest.raises(ShadowError, match="cannot be read"):
        check_newer(_manifest("yesterday"), new)


def test_a_shadow_log_with_garbage_lines_reads_what_is_the_stations(tmp_path):
    path = tmp_path / "shadow.jsonl"
    log = ShadowLog(path)
    log.start("head 2", "head 1", 0)
    v = Verdict("A", "confident", 1, 0.9)
    log.add(ShadowRecord(5, 1, "b/head 1", "head 2", v, v))
    log.label(5, "both")
    assert not log.label(6, "A")  # an item it did not see
    log.close()
    with open(path, "a") as f:
        f.write("not json\n" + "{" * 5000 + "\n" + '{"item_id": "x"}\n' + '{"label_of": 5}\n')
    records = read_log(path)
    assert len(records) == 1 and records[0].label == "both"


def test_decisions_come_from_one_rule(tiny_bundle):
    """The candidate's decision is the live pipeline's rule on the same features."""
    pipeline = ItemPipeline(tiny_bundle, threads=1)
    rng = np.random.default_rng(0)
    for item_id in range(20):
        embeddings = rng.random((4, 16)).astype(np.float32)
        live = pipeline.decide(item_id, embeddings, [])
        features = pipeline.features(item_id, embeddings, [])
        assert ItemPipeline.classify_features(item_id, features, pipeline.classifier) == live
    assert isinstance(live, Decision)


# --- on a running station ---------------------------------------------------------------------


def test_promote_and_roll_back_while_eight_lanes_run(tiny_bundle, tmp_path):
    """A refit's head shadowed, promoted and rolled back by the operator while 8 lanes run at
    120 items/s: each change under a second, every item one gate command, decided by one version."""
    import json
    import threading

    from sortline.edge_runtime.hil.runs import sort_on_simulated_line
    from sortline.edge_runtime.learning.enroll import Enroller
    from sortline.edge_runtime.watch import StationWatch
    from sortline.hardware.sim.line import LineConfig

    with Enroller(tiny_bundle, tmp_path / "store.sqlite") as enroller:
        version = enroller.refit(C=0.05, force=True, activate=False).version
        candidate = enroller.classifier(version)
        assert enroller.store.current == 0  # a candidate, not live
    watch = StationWatch.build(None, None, shadow=ShadowPolicy(window_items=10_000, rate_bound=0.9),
                               shadow_log=tmp_path / "shadow.jsonl")
    changes: dict[str, dict] = {}

    def operator(running):
        station, done = running.station, threading.Event()

        def act():
            for at, change in ((60, "start"), (220, "promote"), (420, "rollback")):
                while station.stats.items < at and not done.is_set():
                    time.sleep(0.005)
                started = time.perf_counter()
                if change == "start":
                    watch.shadow.start(HeadCandidate(candidate))
                else:
                    changes[change] = getattr(watch.shadow, change)("operator", "test")
                changes.setdefault(change, {})["wall_s"] = time.perf_counter() - started

        import time

        thread = threading.Thread(target=act, daemon=True)
        thread.start()
        return lambda: (done.set(), thread.join(5))

    log = tmp_path / "events.jsonl"
    run = sort_on_simulated_line(ItemPipeline(tiny_bundle, threads=1),
                                 LineConfig(items=600, pitch_ms=1000 / 120, lanes=8, seed=4), event_log=log,
                                 progress=False, watch=watch, beside=operator)
    s = run.summary
    assert (s["items"], s["gate_commands"], s["lost"], s["duplicates"]) == (600, 600, 0, 0)
    assert changes["promote"]["wall_s"] < 1.0 and changes["rollback"]["wall_s"] < 1.0
    assert changes["promote"]["seconds"] < 1.0 and changes["rollback"]["seconds"] < 1.0
    events = [json.loads(line) for line in log.read_text().splitlines()]
    items = [e for e in events if "item_id" in e and "event" not in e]
    assert sorted(e["item_id"] for e in items) == list(range(1, 601))  # each item once
    by_head = [e["head_version"] for e in items if e["label"] is not None]
    assert by_head.count(version) > 50 and by_head.count(0) > 100
    # one version after the other, in the order the items were decided: 0 …, then the candidate …, then 0 …
    runs = [v for k, v in enumerate(by_head) if k == 0 or by_head[k - 1] != v]
    assert runs == [0, version, 0], runs
    kinds = [e["event"] for e in events if str(e.get("event", "")).startswith("shadow-")]
    assert kinds == ["shadow-start", "shadow-promote", "shadow-rollback"]
    assert s["shadow"]["shadowed"] > 50 and s["shadow"]["errors"] == 0


def _bundle_made(tiny_bundle, out, created: str):
    """The tiny bundle again, with another creation time ("" : now)."""
    import dataclasses

    from sortline.edge_runtime.learning.enroll import EXAMPLES_FILE
    from sortline.edge_runtime.model.bundle import write_bundle
    from sortline.edge_runtime.model.choice import CHECK_FILE

    manifest = dataclasses.replace(tiny_bundle.manifest, name=f"tiny {created or 'new'}", files={}, created=created)
    return write_bundle(out, manifest, tiny_bundle.backbone_path, tiny_bundle.load_head(),
                        extra_files={n: tiny_bundle.root / n for n in (CHECK_FILE, EXAMPLES_FILE)})


def test_serve_shadows_a_refit_and_a_bundle_promotes_and_rolls_back_through_the_api(tmp_path, tiny_bundle, capsys,
                                                                                    monkeypatch):
    import shutil
    import subprocess
    import time

    from conftest import make_tiny_bundle
    from prometheus_client.parser import text_string_to_metric_families
    from test_api import TOKEN, _call, _station_with_api
    from test_daemon import serve_simulated_line

    from sortline.edge_runtime.cli import main

    older = _bundle_made(tiny_bundle, tmp_path / "older", "2020-01-01T00:00:00+00:00")
    (tmp_path / "work").mkdir()  # the bundle retrained on the desktop: another backbone, a store of its own
    newer = make_tiny_bundle(tmp_path / "newer", tmp_path / "work", retrained=True)
    assert newer.manifest.backbone_sha256 != tiny_bundle.manifest.backbone_sha256
    path, line, port = _station_with_api(tmp_path, tiny_bundle, 260)
    path.write_text(path.read_text() + '[shadow]\nenabled = true\nlog = "shadow.jsonl"\nmin_items = 20\n')
    seen: dict = {}

    def wait_shadowed(count: int) -> dict:
        deadline = time.monotonic() + 20
        while (status := _call(port, "/api/shadow")[1])["shadowed"] < count:
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        return status

    def operate() -> None:
        status, reply = _call(port, "/api/refit", {"force": True}, token=TOKEN)
        assert status == 200 and reply["shadowed"] and not reply["swapped"], reply
        assert _call(port, "/api/heads")[1]["serving"] == 0  # not live yet
        seen["shadow"] = wait_shadowed(10)
        seen["metrics"] = _call(port, "/metrics")[1]
        assert _call(port, "/api/shadow/promote", {})[0] == 401  # the token is needed
        api = ["--api", f"http://127.0.0.1:{port}"]
        assert main(["shadow", "status", *api]) == 0
        seen["cli_status"] = capsys.readouterr().out
        monkeypatch.delenv("SORTLINE_API_TOKEN", raising=False)
        assert main(["shadow", "promote", *api]) == 2  # the CLI without the token: refused by the station
        seen["cli_refused"] = capsys.readouterr().err
        monkeypatch.setenv("SORTLINE_API_TOKEN", TOKEN)
        assert main(["shadow", "promote", "--why", "checked", "--json", *api]) == 0
        reply = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert reply["candidate"] is None and reply["rollout"]["version"] == "head 1", reply
        heads = _call(port, "/api/heads")[1]
        assert (heads["current"], heads["serving"]) == (1, 1)
        status, reply = _call(port, "/api/shadow/rollback", {}, token=TOKEN)
        assert status == 200 and reply["rollout"]["ended"] == "rolled back", reply
        heads = _call(port, "/api/heads")[1]
        assert (heads["current"], heads["serving"]) == (0, 0)
        status, reply = _call(port, "/api/shadow/promote", {}, token=TOKEN)
        assert status == 409 and "no candidate" in reply["detail"]
        status, reply = _call(port, "/api/shadow/bundle", {"path": str(older.root)}, token=TOKEN)
        assert status == 409 and "before the live bundle" in reply["detail"], reply
        status, reply = _call(port, "/api/bundle/reload", {"path": str(older.root)}, token=TOKEN)
        assert status == 409 and "before the live bundle" in reply["detail"], reply
        status, reply = _call(port, "/api/shadow/bundle", {"path": str(newer.root)}, token=TOKEN)
        assert status == 200 and reply["kind"] == "bundle", reply
        live = reply["live"]["bundle"]
        wait_shadowed(5)
        status, reply = _call(port, "/api/shadow/promote", {}, token=TOKEN)
        assert status == 200 and reply["live"]["bundle"] == newer.version != live, reply
        time.sleep(0.8)  # a dozen items decided by the new bundle
        status, reply = _call(port, "/api/shadow/rollback", {}, token=TOKEN)
        assert status == 200 and reply["live"]["bundle"] == live, reply
        seen["final"] = reply

    tally, _ = serve_simulated_line(path, line, operate)
    assert tally.items == 260
    stats = seen["shadow"]["stats"]
    assert seen["shadow"]["candidate"] == "head 1" and stats["items"] >= 10 and stats["agreement"] is not None
    assert not seen["shadow"]["ready"] and "items seen" in seen["shadow"]["why"]
    names = {f.name for f in text_string_to_metric_families(seen["metrics"])}
    assert {"sortline_shadow_running", "sortline_shadow_items", "sortline_shadow_agreement",
            "sortline_shadow_accuracy", "sortline_shadow_unsure_rate", "sortline_shadow_unknown_rate",
            "sortline_shadow_class_agreement"} <= names
    if shutil.which("promtool"):
        check = subprocess.run(["promtool", "check", "metrics"], input=seen["metrics"], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    assert "candidate: head 1" in seen["cli_status"] and "agreement" in seen["cli_status"], seen["cli_status"]
    assert "401" in seen["cli_refused"]
    changes = [(e["event"], e["by"]) for e in seen["final"]["history"]]
    assert changes == [("shadow-promote", "operator"), ("shadow-rollback", "operator")] * 2
    events = [json.loads(x) for x in (tmp_path / "events.jsonl").read_text().splitlines()]
    items = [e for e in events if "event" not in e]
    assert sorted(e["item_id"] for e in items) == list(range(1, 261))
    assert {e["bundle"] for e in items} == {tiny_bundle.version, newer.version}
    stores = sorted(p.name for p in tmp_path.glob("enroll*.sqlite"))
    assert stores == ["enroll-" + newer.manifest.backbone_sha256[:12] + ".sqlite", "enroll.sqlite"]
    assert (tmp_path / "shadow.jsonl").stat().st_size > 0


def test_the_operator_page_shows_the_candidate_beside_the_live_head_and_promotes_it(tmp_path, tiny_bundle):
    """In a real browser: the shadow's section compares the candidate with the live head, and the
    promote button (with the token) puts it live."""
    import os
    import shutil
    import threading
    from pathlib import Path

    from conftest import chromium_browser

    browser = chromium_browser(1280, 1300)  # first: it skips where selenium or chromium is missing
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from test_api import TOKEN, _free_port

    from sortline.edge_runtime.daemon.api import start_api
    from sortline.edge_runtime.daemon.config import ApiSettings
    from sortline.edge_runtime.hil.runs import sort_on_simulated_line
    from sortline.edge_runtime.learning.enroll import Enroller
    from sortline.edge_runtime.watch import StationWatch
    from sortline.hardware.sim.line import LineConfig

    port = _free_port()
    pipeline = ItemPipeline(tiny_bundle, threads=1)
    enroller = Enroller(tiny_bundle, tmp_path / "enroll.sqlite")
    candidate = enroller.classifier(enroller.refit(C=0.3, force=True, activate=False).version)
    watch = StationWatch.build(None, None, shadow=ShadowPolicy(min_items=40))
    watch.shadow.start(HeadCandidate(candidate))
    shot, seen, done = tmp_path / "operator-shadow.png", {}, threading.Event()

    def beside(running):
        server = start_api(ApiSettings(port=port, token=TOKEN), running, pipeline, enroller, watch=watch)
        threading.Thread(target=use_the_page, daemon=True).start()
        return lambda: (done.wait(60), server.stop())

    def use_the_page() -> None:
        try:
            wait = WebDriverWait(browser, 40, ignored_exceptions=(StaleElementReferenceException,))
            browser.get(f"http://127.0.0.1:{port}/")
            # past min_items, the policy waits for labels (none on this line)
            wait.until(lambda b: "labelled items seen" in b.find_element(By.ID, "shadow-verdict").text)
            seen["state"] = browser.find_element(By.ID, "shadow-state").text
            seen["compare"] = browser.find_element(By.ID, "shadow-compare").text
            seen["verdict"] = browser.find_element(By.ID, "shadow-verdict").text
            browser.find_element(By.ID, "token").send_keys(TOKEN)
            section = browser.find_element(By.XPATH, "//section[h2[text()='Shadow']]")
            browser.execute_script("arguments[0].scrollIntoView()", section)
            browser.save_screenshot(str(shot))
            browser.find_element(By.ID, "promote").click()
            wait.until(lambda b: "is live" in b.find_element(By.ID, "message").text)
            seen["message"] = browser.find_element(By.ID, "message").text
            wait.until(lambda b: "head v1" in b.find_element(By.ID, "head").text)
            # the verdict is refreshed by its own poll, which may come a beat after the head's
            wait.until(lambda b: "by operator" in b.find_element(By.ID, "shadow-verdict").text)
            seen["after"] = browser.find_element(By.ID, "shadow-verdict").text
        except Exception as exc:  # reported by the test below, not lost on this thread
            seen["error"] = repr(exc)
        finally:
            done.set()

    try:
        run = sort_on_simulated_line(pipeline, LineConfig(items=500, seed=8, pitch_ms=30), progress=False,
                                     watch=watch, beside=beside)
    finally:
        browser.quit()
        enroller.close()
    assert "error" not in seen, seen.get("error")
    assert "head 1 beside" in seen["state"], seen
    assert "unsure" in seen["compare"] and "unknown" in seen["compare"] and "agreement" in seen["compare"]
    assert "labelled items seen" in seen["verdict"], seen["verdict"]  # no labels on this line
    assert seen["message"] == "head 1 is live" and "by operator" in seen["after"], seen
    assert run.summary["shadow"]["history"][0]["event"] == "shadow-promote"
    if os.environ.get("SORTLINE_UPDATE_DOCS"):
        shutil.copyfile(shot, Path(__file__).resolve().parents[1] / "docs" / "operator-shadow.png")


def test_the_adapt_loop_labels_after_the_alarm_refits_and_shadows(tmp_path, tiny_bundle):
    """hil/adapt.py on a short line: nothing is labelled before the drift alarm; after it the
    simulated operator labels the queue (labels reach the store and the shadow log), refits, and
    each refit runs in the shadow; the summary says where each step came."""
    from test_watch import SMALL

    from sortline.edge_runtime.hil.adapt import Operator, adapt_on_line, rolling_mcc
    from sortline.edge_runtime.hil.runs import make_scenario
    from sortline.edge_runtime.learning.store import EmbeddingStore
    from sortline.hardware.sim.line import LineConfig
    from sortline.hardware.sim.shifts import Shift

    scenario = make_scenario("avocado", 13, shift=Shift("cultivar", 250), distinct=900)
    pipeline = ItemPipeline(tiny_bundle, threads=1)
    policy = ShadowPolicy(auto=True, min_items=40, min_labelled=5, window_items=200)
    run, adapt = adapt_on_line(tiny_bundle, pipeline, LineConfig(items=900, seed=13, pitch_ms=20), scenario,
                               tmp_path, 250, Operator(labels_per_hour=36_000, refit_every=8), SMALL, policy,
                               progress=False)
    assert run.summary["lost"] == 0 and run.summary["items"] == 900
    assert adapt["alarm_at_item"] is not None and adapt["alarm_at_item"] >= 250, adapt
    assert adapt["labelled"] >= 8 and adapt["refits"] and adapt["refits"][0]["after_labels"] == 8, adapt
    store = EmbeddingStore.open_existing(tmp_path / "enroll.sqlite")
    try:
        sources = [s for s in store.examples().sources if s.startswith("queue:")]
        assert len(sources) == adapt["labelled"]  # every label an example
        assert len(store.heads()) == sum(r["version"] is not None for r in adapt["refits"])
    finally:
        store.close()
    events = [json.loads(x) for x in (tmp_path / "shadow.jsonl").read_text().splitlines()]
    assert [e["candidate"] for e in events if e.get("shadow") == "start"][0] == f"head {adapt['refits'][0]['version']}"
    assert any("label_of" in e for e in events)  # the operator's labels joined the shadow log
    assert adapt["mcc_before_shift"] is not None and adapt["shift_at_item"] == 250
    for promotion in adapt["promotions"]:
        assert promotion["by"] == "policy" and promotion["at_item"] > adapt["alarm_at_item"]
    at, mcc = rolling_mcc(run.decisions, run.truth, pipeline.labels)
    assert len(at) == len(mcc) > 5 and np.all(np.diff(at) > 0)


def test_the_adapt_loop_shadows_each_retrained_bundle_and_no_head_refit_replaces_it(tmp_path, tiny_bundle):
    """With a retrain (the desktop's `sortline fit`, here a stand-in that re-issues the live bundle
    and keeps what it was given): after every 8 labels, one retrain at a time, the queue's labels
    go to it as an item folder tree with their taps; the bundle it makes is loaded as the station
    loads one and shadowed; while it is the candidate or live, no head refit takes its place."""
    from test_watch import SMALL

    from sortline.edge_runtime.hil.adapt import Operator, adapt_on_line
    from sortline.edge_runtime.hil.runs import make_scenario
    from sortline.edge_runtime.labelling.book import folder_items
    from sortline.edge_runtime.model.bundle import with_policy
    from sortline.hardware.sim.line import LineConfig
    from sortline.hardware.sim.shifts import Shift

    given = []

    def retrain(labels, stop):
        data = folder_items(labels)
        given.append((len(data.items), data.sensor, {len(i.readings) for i in data.items}))
        time.sleep(1.0)  # the labels go on meanwhile
        return with_policy(tiny_bundle, tiny_bundle.manifest.decision, tmp_path / f"retrained-{len(given)}").root

    scenario = make_scenario("avocado", 13, shift=Shift("cultivar", 250), distinct=900)
    pipeline = ItemPipeline(tiny_bundle, threads=1)
    policy = ShadowPolicy(auto=True, min_items=40, min_labelled=5, window_items=200, rate_bound=0.99,
                          rollback_on_drift=False)  # no rollback: each promotion stays
    run, adapt = adapt_on_line(tiny_bundle, pipeline, LineConfig(items=900, seed=13, pitch_ms=20), scenario,
                               tmp_path / "run", 250, Operator(labels_per_hour=36_000, refit_every=4, retrain_after=8),
                               SMALL, policy, retrain=retrain, progress=False)
    assert run.summary["lost"] == 0 and run.summary["items"] == 900
    retrains = adapt["retrains"]
    assert len(retrains) == len(given) >= 2 and [r["error"] for r in retrains] == [None] * len(retrains), retrains
    for record, (items, sensor, readings) in zip(retrains, given):
        assert items == record["labels"] >= record["after_labels"] and sensor == "taps" and readings == {5}
    assert all(b["after_labels"] - a["after_labels"] >= 8 for a, b in zip(retrains, retrains[1:]))
    events = [json.loads(x) for x in (tmp_path / "run" / "shadow.jsonl").read_text().splitlines()]
    starts = [e["candidate"] for e in events if e.get("shadow") == "start"]
    first_bundle = next(k for k, name in enumerate(starts) if name.startswith("bundle "))
    assert starts[0].startswith("head ") and all(name.startswith("bundle ") for name in starts[first_bundle:]), starts
    assert {f"bundle {r['bundle']}" for r in retrains if r["bundle"]} >= set(starts[first_bundle:])


def test_the_running_tally_equals_a_count_of_the_records_kept():
    """Records leave (the log keeps the latest), come again and are labelled twice: the counts the
    policy reads stay those of the records in memory."""
    rng = np.random.default_rng(3)
    reasons = ["confident", "confident", "unsure", "unknown"]
    log = ShadowLog(keep=60)
    for step in range(400):
        item = int(rng.integers(0, 120))
        if step % 3 == 0:
            log.label(item, str(rng.choice(LABELS)))
            continue
        live, shadow = (Verdict(str(rng.choice(LABELS)), str(rng.choice(reasons)), 1, 0.5) for _ in range(2))
        log.add(ShadowRecord(item, 0, "b/head 0", "head 1", live, shadow, None))
    assert len(log) == 60
    assert log.tally.stats() == shadow_stats(log.records())
    assert log.tally.stats()["labelled"] > 5
