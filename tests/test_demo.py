"""The whole loop, end to end, on a tiny budget: the same code path as `sortline demo`."""

from __future__ import annotations

import json

import pytest

from sortline.edge_runtime.cli import main
from sortline.edge_runtime.model.bundle import load_bundle

FIELDS = ("items", "gate_commands", "lost", "duplicates", "accuracy", "mcc", "latency_ms_p50",
          "latency_ms_p99", "deadline_misses", "items_per_s", "faults")


@pytest.mark.slow
def test_demo_end_to_end_prints_json_summary_last(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--items", "40", "--pool-fruit", "64", "--labeled-fruit", "160", "--epochs", "1",
                 "--item-epochs", "3", "--out", str(out), "--quiet", "--json", "--shift", "light@30"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert all(field in summary for field in FIELDS)
    assert (summary["items"], summary["gate_commands"], summary["lost"], summary["duplicates"]) == (40, 40, 0, 0)
    assert summary["export"]["onnx_parity_fp32"]["min_cosine"] >= 0.999
    assert 0.0 <= summary["accuracy"] <= 1.0
    manifest = load_bundle(out / "bundle", public_key=summary["signed_with"]).manifest  # signed by default
    assert manifest.metrics["export"]["vs_fp32"]["mean_cosine"] > 0.95
    for name in ("summary.json", "summary.md", "events.jsonl", "confusion.png", "latency.png", "pretrain.png",
                 "pretrain.csv", "backbone.ckpt", "backbone.fp32.onnx", "backbone.int8.onnx"):
        assert (out / name).stat().st_size > 0, name
    assert len((out / "events.jsonl").read_text().splitlines()) == 40
    # the watch runs beside it (40 items are too few for its reference: no alarm), the queue in out/queue
    assert summary["drift"]["watched"] + summary["drift"]["sampled_out"] == 40 and not summary["drift"]["watching"]
    assert {"kept", "dropped"} <= set(summary["queue"]) and (out / "queue").is_dir()
    assert summary["config"]["shift"] == {"kind": "light", "at_item": 30, "camera": None}


@pytest.mark.slow
def test_demo_sorts_on_the_views_alone_with_sensor_none(tmp_path, capsys):
    """`sortline demo --sensor none`: a station without a tap sensor. The item stage trains the
    backbone on the labelled fruit, the head fuses no sensor, and items are decided as soon as
    their views are embedded (the line's taps are left aside)."""
    out = tmp_path / "demo"
    code = main(["demo", "--items", "40", "--pool-fruit", "32", "--labeled-fruit", "120", "--epochs", "0",
                 "--item-epochs", "2", "--image-size", "32", "--sensor", "none", "--out", str(out), "--quiet",
                 "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (summary["items"], summary["gate_commands"], summary["lost"], summary["duplicates"]) == (40, 40, 0, 0)
    manifest = load_bundle(out / "bundle").manifest
    assert manifest.fusion.sensor == "none" and manifest.fusion.sensor_features == ()
    assert manifest.metrics["item_stage"]["ran"] and manifest.metrics["item_stage"]["items"] == 120
    assert summary["latency_ms_p50"] < 40  # the fifth tap comes 42 ms after the announcement: not waited for
    assert summary["rejected_input"]["implausible_readings"] == 0
    assert (out / "items.csv").stat().st_size > 0
    from sortline.train.checkpoint import load_checkpoint

    assert load_checkpoint(out / "backbone.ckpt")[2]["method"].endswith("+ item stage")  # what the bundle holds
