"""Every inference runtime on the same exported ONNX files, side by side, and what ``auto`` picks.

    python benchmarks/runtimes.py [--sizes default production] [--out benchmarks/results]

For the default bundle (ResNet-10, 64 px) and a production-size one (ResNet-18, 128 px), both
4 views of RGB+NIR, built as the demo builds them (``--epochs 0``: the weights do not change the
speed), it times the int8 bundle on ONNX Runtime and OpenVINO at 1 and 2 threads, the fp32 ONNX
on both, and the PyTorch fp32 eager model, interleaved round by round in one process (so every
ratio is within one run on one CPU), at a batch of one item (4 views) and of two items (8
views). It then asks ``auto`` (edge_runtime/runtimes.py) for its pick, and sorts the same
simulated avocado line with the pick and with ONNX Runtime to show the decisions do not change
(MCC). Writes ``runtimes.md`` and ``runtimes.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sortline.edge_runtime.hil import sort_on_simulated_line
from sortline.edge_runtime.pipeline import ItemPipeline
from sortline.edge_runtime.runtimes import choose_runtime, installed_runtimes, make_embedder
from sortline.export.onnx_export import export_backbone
from sortline.hardware.sim.line import LineConfig
from sortline.train.demo import DemoConfig, train_station_bundle

SIZES = {"default": ("resnet10", 64), "production": ("resnet18", 128)}


def cpu_model() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    flags = next((line for line in out.splitlines() if line.startswith("Flags")), "")
    model = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    isa = "AVX-512 VNNI" if "avx512_vnni" in flags else "AVX2" if "avx2" in flags else "?"
    return f"{model} ({isa}{', AMX' if 'amx_tile' in flags else ''})"


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
    choice = choose_runtime(bundle.backbone_path, spec)
    config = LineConfig(items=line_items, seed=41, pitch_ms=20.0, deadline_ms=300)
    mcc = {}
    for label, pipeline in (("auto", ItemPipeline(bundle, embedder=choice.embedder)),
                            ("onnxruntime", ItemPipeline(bundle, embedder=make_embedder(
                                "onnxruntime", bundle.backbone_path, spec, threads=choice.threads)))):
        run = sort_on_simulated_line(pipeline, config, trained.scenarios["line"], progress=False)
        mcc[label] = {"mcc": run.summary["mcc"], "lost": run.summary["lost"],
                      "deadline_misses": run.summary["deadline_misses"]}
    at_threads = {c.key: c.ms for c in choice.candidates if c.refused is None and c.threads == choice.threads}
    fastest = min(at_threads.values())
    return {"backbone": backbone_name, "image_size": px, "views": spec.views, "channels": list(spec.channels),
            "ms": table, "auto": {"chosen": choice.key, "candidates_ms": {c.key: round(c.ms, 3)
                                                                          for c in choice.candidates
                                                                          if c.refused is None},
                                  "refused": {c.key: c.refused for c in choice.candidates if c.refused},
                                  "vs_fastest_at_its_threads": round(at_threads[choice.key] / fastest, 3),
                                  "seconds": round(choice.seconds, 2)},
            "decisions": mcc}


def markdown(report: dict) -> str:
    lines = ["# Inference runtimes side by side", "",
             f"CPU: {report['cpu']}, {report['cores']} cores. Command: `python benchmarks/runtimes.py`. Median ms per "
             "batch, every runtime taking turns round by round in one process; lower is better.", ""]
    for size, r in report["sizes"].items():
        names = list(next(iter(r["ms"].values())))
        lines += [f"## {size}: {r['backbone']}, {r['image_size']} px, {r['views']} views × "
                  f"{len(r['channels'])} channels", "",
                  "| runtime | " + " | ".join(r["ms"]) + " |", "|---" + "|---:" * len(r["ms"]) + "|"]
        base = "onnxruntime int8, 2 threads"
        for name in names:
            cells = [f"{r['ms'][b][name]} ({r['ms'][b][base] / r['ms'][b][name]:.2f}×)" for b in r["ms"]]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        a = r["auto"]
        lines += ["", f"(×: speed relative to ONNX Runtime int8 at 2 threads, the station's runtime before "
                  f"the choice existed.) `auto` timed {', '.join(f'{k} {v} ms' for k, v in a['candidates_ms'].items())}"
                  f" on one item in {a['seconds']} s and picked **{a['chosen']}**, "
                  f"{a['vs_fastest_at_its_threads']}× the fastest at its thread count. Decisions on the simulated "
                  f"avocado line: " + ", ".join(f"{k} MCC {v['mcc']} (lost {v['lost']}, misses "
                                                f"{v['deadline_misses']})" for k, v in r["decisions"].items()) + ".",
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
    report = {"cpu": cpu_model(), "cores": os.cpu_count(), "measured": time.strftime("%Y-%m-%d %H:%M UTC",
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
