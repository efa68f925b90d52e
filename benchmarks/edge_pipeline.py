"""The station's capacity, from the model alone to the whole station on a simulated N-lane line.

    python benchmarks/edge_pipeline.py [--sizes default,production] [--rates 50,100,200,400,800]
                                       [--lanes 8] [--epochs 0] [--seconds 6] [--out benchmarks/results]

For each bundle size (default: ResNet-10 at 64 px; production: ResNet-18 at 128 px; both 4 views
× RGB+NIR with 5 taps, trained by the demo's own path, ``--epochs 0`` keeping the random
initialisation: speed does not depend on the weights), in one run:

1. the compute limit on pre-captured items: the whole item (preprocess, embed, fuse, head) one
   at a time with the station's thread policy, the same with ONNX Runtime's default threads,
   and batched 8 items at a time as the station's flow does under load;
2. the same model in PyTorch fp32 eager on the same items (the baseline of the ratios);
3. the whole station against the simulated line (devices in their own process) at offered
   rates stepping past its capacity: achieved items/s, decision latency p50/p99/p99.9,
   deadline misses, late and lost items, overload exits, MCC; and each serial link's
   utilisation at that rate.

Writes ``edge_pipeline.md`` and ``edge_pipeline.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name  # benchmarks/machine.py

from sortline.edge_runtime.hil.runs import sort_on_simulated_line
from sortline.edge_runtime.model.choice import choose_runtime
from sortline.edge_runtime.model.fusion import fuse
from sortline.edge_runtime.model.pipeline import ItemPipeline
from sortline.edge_runtime.model.preprocess import preprocess_views
from sortline.edge_runtime.station import StationConfig
from sortline.edge_runtime.station.links import item_bytes
from sortline.hardware.camera import ItemCapture
from sortline.hardware.serial_link import DEFAULT_BAUD
from sortline.hardware.sim.line import LineConfig
from sortline.hardware.sim.process import CachedScenario
from sortline.train.demo import DemoConfig, train_station_bundle

SIZES = {"default": ("resnet10", 64), "production": ("resnet18", 128)}
DEADLINE_MS = 300


def link_bytes_per_item() -> dict[str, int]:
    """The station's own account of bytes per item on each link (5 taps)."""
    return item_bytes("taps", 5)


def timed(fn, n: int) -> np.ndarray:
    times = np.empty(n)
    for i in range(n):
        t = time.perf_counter()
        fn(i)
        times[i] = time.perf_counter() - t
    return times


def compute_limits(bundle, backbone: torch.nn.Module, items: list, reps: int = 3) -> dict:
    """Items/s of the whole item on pre-captured items, for each way of running it."""
    station = ItemPipeline(bundle, threads=1, spin=False)
    default = ItemPipeline(bundle)  # ONNX Runtime's defaults: one thread per core, spinning
    n = len(items)
    spec, fusion, head = station.manifest.input, station.manifest.fusion, station.head

    def one(pipeline):
        return lambda i: pipeline.classify(items[i % n][0], items[i % n][1])

    def batched(pipeline, size: int = 8):
        def run(i: int) -> None:
            chunk = [items[(i * size + k) % n] for k in range(size)]
            inputs = [preprocess_views(c.present, spec) for c, _ in chunk]
            embeddings = pipeline.embedder.embed_batch(np.concatenate(inputs))
            start = 0
            for (capture, readings), x in zip(chunk, inputs):
                pipeline.decide(capture.item_id, embeddings[start:start + len(x)], readings)
                start += len(x)

        return run

    torch.set_num_threads(2)
    backbone = backbone.eval()

    @torch.inference_mode()
    def eager(i: int) -> None:
        capture, readings = items[i % n]
        x = torch.from_numpy(preprocess_views(capture.present, spec))
        head.predict_proba(fuse(backbone(x).numpy(), readings, fusion))

    results = {}
    cases = (("ORT 1 thread, no spin, 1 item", one(station), 1),
             ("ORT default (2 threads, spin), 1 item", one(default), 1),
             ("ORT 1 thread, no spin, batches of 8", batched(station), 8),
             ("ORT default, batches of 8", batched(default), 8),
             ("PyTorch fp32 eager (2 threads), 1 item", eager, 1))
    for name, fn, per_call in cases:
        timed(fn, 10)  # warm up
        runs = np.concatenate([timed(fn, max(20, 3 * n // per_call)) for _ in range(reps)])
        results[name] = {"items_per_s": round(per_call / float(np.median(runs)), 1),
                         "ms_per_item_p50": round(float(np.median(runs)) * 1000 / per_call, 3),
                         "ms_per_call_p99": round(float(np.percentile(runs, 99)) * 1000, 3)}
    return results


def line_runs(bundle, scenario, rates: list[float], lanes: int, seconds: float, seed: int) -> list[dict]:
    per_item = link_bytes_per_item()
    rows = []
    for rate in rates:
        items = int(max(300, rate * seconds))
        config = LineConfig(items=items, seed=seed, pitch_ms=1000 / rate, deadline_ms=DEADLINE_MS, lanes=lanes)
        run = sort_on_simulated_line(ItemPipeline.for_station(bundle), config, scenario, progress=False)
        s = run.summary
        line_s = items / rate
        by_model = _decided_by_model(s)
        rows.append({
            "offered_per_s": rate, "items": s["items"], "lanes": lanes,
            "achieved_per_s": round(by_model / line_s, 1),
            "latency_ms_p50": s["latency_ms_p50"], "latency_ms_p99": s["latency_ms_p99"],
            "latency_ms_p999": s["latency_ms_p999"], "compute_ms_p50": s["compute_ms_p50"],
            "deadline_misses": s["deadline_misses"], "late": s["late"], "lost": s["lost"],
            "duplicates": s["duplicates"], "overload": s["overload"], "mcc": s["mcc"],
            "flow_queue_max": run.stats.flow_queue_max,
            "link_utilisation": {k: round(rate * b * 10 / DEFAULT_BAUD, 3) for k, b in per_item.items()},
        })
        print(f"  offered {rate:6.0f}/s: achieved {rows[-1]['achieved_per_s']:6.1f}/s, p99 {s['latency_ms_p99']} ms, "
              f"misses {s['deadline_misses']}, overload {s['overload']}, lost {s['lost']}", flush=True)
    return rows


POLICIES = {  # (embedding workers, intra-op threads each (None: measured at load), spinning)
    "measured at load, no spin (the station's)": (1, None, False),
    "1 worker × 1 thread, no spin": (1, 1, False),
    "1 worker × 2 threads, no spin": (1, 2, False),
    "1 worker × 2 threads, spin": (1, 2, True),
    "2 workers × 1 thread, no spin": (2, 1, False),
}


def policy_runs(bundle, scenario, rate: float, lanes: int, seconds: float, seed: int) -> dict:
    """The whole station past its capacity under each thread policy: what it still decides."""
    out = {}
    items = int(max(300, rate * seconds))
    for name, (workers, threads, spin) in POLICIES.items():
        config = LineConfig(items=items, seed=seed, pitch_ms=1000 / rate, deadline_ms=DEADLINE_MS, lanes=lanes)
        pipeline = ItemPipeline.for_station(bundle) if threads is None else ItemPipeline(bundle, threads, spin)
        run = sort_on_simulated_line(pipeline, config, scenario,
                                     station_config=StationConfig(workers=workers), progress=False)
        s = run.summary
        by_model = _decided_by_model(s)
        out[name] = {"decided_by_model_per_s": round(by_model / (items / rate), 1), "overload": s["overload"],
                     "deadline_misses": s["deadline_misses"], "lost": s["lost"],
                     "latency_ms_p99": s["latency_ms_p99"]}
        print(f"  {name:40s} decides {out[name]['decided_by_model_per_s']}/s of {rate:.0f}/s offered, "
              f"misses {s['deadline_misses']}, lost {s['lost']}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="default,production")
    parser.add_argument("--rates", default="100,200,400,800,1600")
    parser.add_argument("--lanes", type=int, default=8)
    parser.add_argument("--epochs", type=float, default=0.0, help="pretraining epochs for each bundle (0: random)")
    parser.add_argument("--seconds", type=float, default=6.0, help="line time per offered rate")
    parser.add_argument("--policy-rate", type=float, default=1000.0,
                        help="the offered rate (past capacity) at which thread policies are compared")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    report = {"cpu": cpu_name(), "cores": torch.get_num_threads(), "lanes": args.lanes, "deadline_ms": DEADLINE_MS,
              "link_bytes_per_item": link_bytes_per_item(), "baud": DEFAULT_BAUD, "sizes": {}}
    print(f"CPU: {report['cpu']}")
    with tempfile.TemporaryDirectory(prefix="sortline-bench-") as work:
        for size in args.sizes.split(","):
            backbone_name, px = SIZES[size]
            print(f"{size}: {backbone_name} at {px} px — building the bundle", flush=True)
            cfg = DemoConfig(backbone=backbone_name, image_size=px, epochs=args.epochs, pool_fruit=256,
                             labeled_fruit=600, progress=False)
            trained = train_station_bundle(cfg, Path(work) / size, {})
            line = trained.scenarios["line"]
            scenario = CachedScenario(line, 1000)
            scenario.prerender(range(1000))
            items = [(_capture(scenario, i), list(scenario.readings(i, 0))) for i in range(200)]
            limits = compute_limits(trained.bundle, trained.backbone, items)
            choice = choose_runtime(trained.bundle.backbone_path, trained.manifest.input)
            print(f"  the station picks {choice.summary()}")
            eager = limits["PyTorch fp32 eager (2 threads), 1 item"]["items_per_s"]
            for name, row in limits.items():
                row["vs_eager"] = round(row["items_per_s"] / eager, 2)
                print(f"  {name:28s} {row['items_per_s']:8.1f} items/s  ({row['vs_eager']}× eager)")
            rows = line_runs(trained.bundle, scenario, rates, args.lanes, args.seconds, seed=cfg.seed * 10 + 3)
            policies = policy_runs(trained.bundle, scenario, args.policy_rate, args.lanes, args.seconds,
                                   seed=cfg.seed * 10 + 3)
            limit = max(row["items_per_s"] for name, row in limits.items() if "PyTorch" not in name)
            clean = [r["offered_per_s"] for r in rows
                     if r["deadline_misses"] == r["overload"] == r["lost"] == 0]
            on_time = [r["offered_per_s"] for r in rows if r["deadline_misses"] == r["lost"] == 0]
            report["sizes"][size] = {"backbone": backbone_name, "image_size": px, "cpu": report["cpu"],
                                     "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                     "compute": limits, "line": rows,
                                     "policies": policies, "policy_rate": args.policy_rate,
                                     "runtime_chosen": choice.key,
                                     "runtime_item_ms": {c.key: round(c.ms, 3) for c in choice.candidates
                                                         if c.refused is None},
                                     "highest_clean_rate": max(clean, default=0.0),
                                     "highest_on_time_rate": max(on_time, default=0.0),
                                     "highest_clean_vs_compute_limit": round(max(clean, default=0.0) / limit, 2)}
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / "edge_pipeline.json"
    if previous.is_file():  # sizes not run this time keep their last results (each is one run)
        kept = json.loads(previous.read_text()).get("sizes", {})
        report["sizes"] = {**{k: v for k, v in kept.items() if k not in report["sizes"]}, **report["sizes"]}
    previous.write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "edge_pipeline.md").write_text(markdown(report))
    print(markdown(report))


def _capture(scenario, item_id: int) -> ItemCapture:
    return ItemCapture(item_id, tuple(scenario.render(item_id, scenario.frame_px, scenario.views)))


def _decided_by_model(summary: dict) -> int:
    """Items the model decided (confident or unsure), not sent to the safe exit unseen."""
    return sum(n for reason, n in summary["reasons"].items() if reason in ("confident", "unsure"))


def markdown(report: dict) -> str:
    lines = ["# Edge pipeline: compute limit and the whole station\n",
             f"CPU: {report['cpu']}, {report['cores']} threads. {report['lanes']} lanes, deadline "
             f"{report['deadline_ms']} ms, 4 views × RGB+NIR + 5 taps, serial links at {report['baud']} baud "
             f"({report['link_bytes_per_item']} bytes per item; a link over 100% could not carry that rate at "
             f"{report['baud']} baud, while pseudo-terminals do not pace bytes). The backbones are untrained "
             "(speed does not depend on the weights): MCC only shows how much of the line the model decided.\n"]
    for size, r in report["sizes"].items():
        lines += [f"## {size}: {r['backbone']}, {r['image_size']} px\n",
                  f"Measured {r.get('measured', '?')} on {r.get('cpu', '?')}; every ratio below is within this run.\n",
                  "| whole item, pre-captured | items/s | ms/item p50 | × PyTorch eager |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {row['items_per_s']} | {row['ms_per_item_p50']} | {row['vs_eager']} |"
                  for name, row in r["compute"].items()]
        lines += ["", f"The station measured its runtime and thread count at load: {r['runtime_chosen']} (one item: "
                  + ", ".join(f"{ms} ms on {key}" for key, ms in r["runtime_item_ms"].items())
                  + "). Whole station on the simulated line, offered rates stepping past its capacity:", "",
                  "| offered/s | achieved/s | p50 ms | p99 ms | p99.9 ms | misses | late | lost | overload | "
                  "MCC | controller link | tap link |", "|---" * 12 + "|"]
        lines += [f"| {x['offered_per_s']:.0f} | {x['achieved_per_s']} | {x['latency_ms_p50']} | {x['latency_ms_p99']} "
                  f"| {x['latency_ms_p999']} | {x['deadline_misses']} | {x['late']} | {x['lost']} | {x['overload']} "
                  f"| {x['mcc']} | {x['link_utilisation']['controller']:.0%} | {x['link_utilisation']['taps']:.0%} |"
                  for x in r["line"]]
        lines += ["", f"Highest offered rate with no miss, no overload exit and nothing lost: "
                  f"{r['highest_clean_rate']:.0f}/s = {r['highest_clean_vs_compute_limit']}× the best compute "
                  f"limit above (the rates step by 2×). Highest with every command before its gate and nothing "
                  f"lost: {r.get('highest_on_time_rate', 0):.0f}/s.\n",
                  f"Thread policies, offered {r['policy_rate']:.0f} items/s:\n",
                  "| policy | decided by the model /s | overload exits | misses | lost | p99 ms |",
                  "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {name} | {p['decided_by_model_per_s']} | {p['overload']} | {p['deadline_misses']} | {p['lost']} "
                  f"| {p['latency_ms_p99']} |" for name, p in r["policies"].items()]
        lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
