"""Every inference runtime on the same exported ONNX files, side by side, and what ``auto`` picks.

    python benchmarks/runtimes.py [--sizes default production] [--out benchmarks/results]

For the default bundle (ResNet-10, 64 px) and a production-size one (ResNet-18, 128 px), both
4 views of RGB+NIR, built as the demo builds them (``--epochs 0``: the weights do not change the
speed), it times the int8 bundle on ONNX Runtime and OpenVINO at 1 and 2 threads, the fp32 ONNX
on both, and the PyTorch fp32 eager model, interleaved round by round in one process (so every
ratio is within one run on one CPU), at a batch of one item (4 views) and of two items (8
views). It then asks ``auto`` (edge_runtime/model/runtimes.py) for its pick, and sorts the same
simulated avocado line with the pick and with ONNX Runtime to show the decisions do not change
(MCC). Writes ``runtimes.md`` and ``runtimes.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name  # benchmarks/machine.py
from sklearn.metrics import matthews_corrcoef

from sortline.edge_runtime.hil.runs import sort_on_simulated_line
from sortline.edge_runtime.model.choice import load_check_set
from sortline.edge_runtime.model.pipeline import ItemPipeline, item_probabilities
from sortline.edge_runtime.model.runtimes import installed_runtimes, make_embedder
from sortline.export.onnx_export import export_backbone
from sortline.hardware.camera import ItemCapture
from sortline.hardware.sim.line import LineConfig
from sortline.train.demo import DemoConfig, train_station_bundle

SIZES = {"default": ("resnet10", 64), "production": ("resnet18", 128)}


def interleaved(runners: dict[str, callable], rounds: int) -> dict[str, float]:
    """Median ms per call of each runner, the runners taking turns round by round."""
    for run in runners.values():
        run()
        run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            t = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t)
    return {name: round(float(np.median(ts)) * 1000, 3) for name, ts in times.items()}


def measure(size: str, work: Path, rounds: int, line_items: int) -> dict:
    backbone_name, px = SIZES[size]
    cfg = DemoConfig(backbone=backbone_name, image_size=px, epochs=0, pool_fruit=64, labeled_fruit=400,
                     progress=False)
    trained = train_station_bundle(cfg, work / size, {})
    bundle, spec = trained.bundle, trained.manifest.input
    fp32 = export_backbone(trained.backbone.eval(), spec, work / size / "backbone.fp32.onnx")
    runtimes = installed_runtimes()
    models = {"int8": bundle.backbone_path, "fp32": fp32}
    embedders = {f"{name} {precision}, {threads} thread{'s' if threads > 1 else ''}":
                 make_embedder(name, path, spec, threads=threads)
                 for precision, path in models.items() for name in runtimes
                 for threads in ((1, 2) if precision == "int8" else (2,))}
    # What each runtime's numerics do to the head on the bundle's real check items: class
    # probabilities against ONNX Runtime int8 (the embeddings the head was fitted on) and fp32.
    check, head = load_check_set(bundle), bundle.load_head()
    scores = {name: item_probabilities(e.embed_batch(check), head, trained.manifest) for name, e in embedders.items()}
    int8_ref, fp32_ref = scores["onnxruntime int8, 1 thread"], scores["onnxruntime fp32, 2 threads"]
    head_diff = {name: {"vs_onnxruntime_int8": round(float(np.abs(p - int8_ref).max()), 3),
                        "vs_fp32": round(float(np.abs(p - fp32_ref).max()), 3)} for name, p in scores.items()}
    torch.set_num_threads(2)
    model = trained.backbone.eval()
    rng = np.random.default_rng(0)
    table: dict[str, dict[str, float]] = {}
    for items in (1, 2):
        batch = rng.normal(0, 1, (items * spec.views, len(spec.channels), px, px)).astype(np.float32)
        tensor = torch.from_numpy(batch)
        runners = {name: (lambda e=e, b=batch: e.embed_batch(b)) for name, e in embedders.items()}

        @torch.inference_mode()
        def eager(x: torch.Tensor = tensor) -> None:
            model(x)

        runners["PyTorch fp32 eager, 2 threads"] = eager
        table[f"batch {items * spec.views}"] = interleaved(runners, rounds)
    # auto, as a user runs it: `sortline bench` in a fresh process (this one has run torch and holds
    # every runtime's threads, which would disturb the timing)
    bench = json.loads(subprocess.run([sys.executable, "-m", "sortline.edge_runtime.cli", "bench", "--bundle",
                                       str(bundle.root), "--json"], capture_output=True, text=True,
                                      check=True).stdout.strip().splitlines()[-1])
    chosen_runtime, chosen_threads = bench["chosen"].split("/")
    picked = ItemPipeline(bundle, embedder=make_embedder(chosen_runtime, bundle.backbone_path, spec,
                                                         threads=int(chosen_threads)))
    # Decisions: the same items (views and taps, rendered once) through the pick and through ONNX
    # Runtime, judged against the truth; then the pick runs the whole station on the line.
    scenario = trained.scenarios["line"]
    items = [(ItemCapture(i, tuple(scenario.render(i, scenario.frame_px, scenario.views))),
              list(scenario.readings(i, 0)), scenario.label(i)) for i in range(1, line_items + 1)]
    reference = ItemPipeline(bundle, embedder=make_embedder("onnxruntime", bundle.backbone_path, spec,
                                                            threads=int(chosen_threads)))
    index = {label: k for k, label in enumerate(trained.manifest.labels)}
    truth = [label for _, _, label in items]
    predicted = {name: [pipeline.classify(c, r) for c, r, _ in items]
                 for name, pipeline in (("onnxruntime", reference), (bench["chosen"], picked))}
    decisions = {name: {"mcc": round(float(matthews_corrcoef(truth, [index.get(d.label, -1) for d in ds])), 4)}
                 for name, ds in predicted.items()}
    a, b = predicted.values()
    decisions["same_exit"] = f"{sum(x.exit == y.exit for x, y in zip(a, b))}/{len(a)}"
    decisions["max_confidence_diff"] = round(max(abs(x.confidence - y.confidence) for x, y in zip(a, b)), 4)
    run = sort_on_simulated_line(picked, LineConfig(items=line_items, seed=41, pitch_ms=20.0, deadline_ms=300),
                                 scenario, progress=False)
    decisions["line_with_pick"] = {k: run.summary[k] for k in ("mcc", "lost", "deadline_misses", "runtime")}
    threads = int(chosen_threads)
    at_threads = {key: ms for key, ms in bench["runtimes"].items() if key.endswith(f"/{threads}")}
    suffix = f"int8, {threads} thread{'s' if threads > 1 else ''}"
    row = table[f"batch {spec.views}"]
    in_table = {name: ms for name, ms in row.items() if name.endswith(suffix)}
    return {"backbone": backbone_name, "image_size": px, "views": spec.views, "channels": list(spec.channels),
            "ms": table, "auto": {"chosen": bench["chosen"], "candidates_ms": bench["runtimes"],
                                  "refused": bench["refused"], "check_items": bench["check_items"],
                                  "vs_fastest_at_its_threads": round(at_threads[bench["chosen"]]
                                                                     / min(at_threads.values()), 3),
                                  "vs_fastest_in_table": round(in_table[f"{chosen_runtime} {suffix}"]
                                                               / min(in_table.values()), 3),
                                  "whole_items_per_s": bench["items_per_s"]},
            "head_probability_diff": head_diff,
            "min_cosine_vs_onnxruntime": bench["min_cosine"],
            "max_prob_diff_vs_onnxruntime": bench["max_prob_diff"],
            "decisions": decisions}


def markdown(report: dict) -> str:
    lines = ["# Inference runtimes side by side", "",
             f"CPU: {report['cpu']}, {report['cores']} cores. Command: `python benchmarks/runtimes.py`. Median ms per "
             "batch, every runtime taking turns round by round in one process; lower is better.", ""]
    for size, r in report["sizes"].items():
        names = list(next(iter(r["ms"].values())))
        lines += [f"## {size}: {r['backbone']}, {r['image_size']} px, {r['views']} views × "
                  f"{len(r['channels'])} channels", "",
                  "| runtime | " + " | ".join(r["ms"]) + " | head Δp vs ORT int8 | head Δp vs fp32 |",
                  "|---" + "|---:" * (len(r["ms"]) + 2) + "|"]
        base = "onnxruntime int8, 2 threads"
        for name in names:
            cells = [f"{r['ms'][b][name]} ({r['ms'][b][base] / r['ms'][b][name]:.2f}×)" for b in r["ms"]]
            diff = r["head_probability_diff"].get(name, {})
            cells += [str(diff.get("vs_onnxruntime_int8", "—")), str(diff.get("vs_fp32", "—"))]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        a = r["auto"]
        lines += ["", "(×: speed relative to ONNX Runtime int8 at 2 threads, the station's runtime before "
                  "the choice existed. Head Δp: the largest change of a class probability of the bundle's head on "
                  "its check items, against ONNX Runtime int8, whose embeddings the head was fitted on, and "
                  "against fp32.) `sortline bench` (auto, in a fresh process) timed "
                  + ", ".join(f"{k} {v} ms" for k, v in a["candidates_ms"].items())
                  + f" on one item and picked **{a['chosen']}** ({a['whole_items_per_s']} whole items/s), "
                  f"{a['vs_fastest_at_its_threads']}× the time of the fastest accepted candidate at its thread count "
                  f"and {a['vs_fastest_in_table']}× the fastest int8 runtime at that count in the table above "
                  f"(refused ones included). Agreement with ONNX Runtime "
                  f"on the bundle's {a['check_items']} check items (accepted candidates): min cosine "
                  f"{r['min_cosine_vs_onnxruntime']}, largest probability difference "
                  f"{r['max_prob_diff_vs_onnxruntime']}; refused: {a['refused'] or 'none'}.", "",
                  f"Decisions on the same {r['decisions']['same_exit'].split('/')[1]} simulated avocados (views and "
                  f"taps): " + ", ".join(f"{k} MCC {v['mcc']}" for k, v in r["decisions"].items()
                                         if isinstance(v, dict) and k != "line_with_pick")
                  + f"; the same exit for {r['decisions']['same_exit']}, confidences at most "
                  f"{r['decisions']['max_confidence_diff']} apart. The whole station on the simulated line with "
                  f"the pick: {r['decisions']['line_with_pick']}.",
                  ""]
    return "\n".join(lines)


def main() -> None:
    import os

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES))
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--line-items", type=int, default=600)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    report = {"cpu": cpu_name(), "cores": os.cpu_count(), "measured": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                     time.gmtime()), "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            print(f"{size}: building and timing", flush=True)
            report["sizes"][size] = measure(size, Path(tmp), args.rounds, args.line_items)
            print(json.dumps(report["sizes"][size], indent=1), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtimes.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "runtimes.md").write_text(markdown(report))
    print(markdown(report))


if __name__ == "__main__":
    main()
