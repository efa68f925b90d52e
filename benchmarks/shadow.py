"""The shadow, promotion and rollback against issue 31's targets, on the simulated avocado line.

    python benchmarks/shadow.py adapt --bundle AVOCADO --seeds 5 [--retrain-after 50 --items 16000]
    python benchmarks/shadow.py overhead --bundle AVOCADO

- ``adapt``: ``cultivar@2000`` on a line of ``--items`` items at ``--rate`` items/s, the whole loop
  beside the station (hil/adapt.py: the drift alarm, the simulated operator labelling the queue
  at ``--labels-per-hour`` of line time, a refit every ``--refit-every`` labels, the shadow's
  policy promoting); per line world: the alarm, the promotion, MCC before the shift, after it and
  on the 1,000 items after the promotion. With ``--retrain-after N`` the desktop also retrains the
  bundle every N labels (train/retrain.py: ``sortline fit`` from the demo's backbone on its
  labelled items and the queue's, one thread, niced) and the shadow runs each bundle it makes; the
  MCC on the 1,000 items after the first retrained bundle's promotion is reported beside
  (``--results``: shadow_adapt_retrain.md).
- ``overhead``: decision p99 at 8 lanes × 15 items/s with nothing in the shadow, with a head
  candidate (a refit of the bundle's own examples) and with a bundle candidate (the same bundle
  again: the same size), runs alternated in one process; then the station offered ``--overload-rate``
  items/s (twice what it embeds) with a bundle candidate and without: late items and how many the
  shadow dropped.

The bundle is the avocado one from ``sortline demo`` (SimCLR ResNet-10, taps). ``--results`` writes
benchmarks/results/shadow_<part>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from drift import line_seeds  # benchmarks/drift.py: line worlds the demo bundles never saw
from machine import cpu_name, write_results  # benchmarks/machine.py

AT = 2000


def adapt(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.hil.adapt import Operator, adapt_on_line
    from sortline.edge_runtime.hil.runs import make_scenario
    from sortline.edge_runtime.model.bundle import load_bundle
    from sortline.edge_runtime.model.pipeline import ItemPipeline
    from sortline.hardware.sim.line import LineConfig
    from sortline.hardware.sim.shifts import Shift

    rows, retrain = [], None
    bundle = load_bundle(args.bundle)
    if args.retrain_after:  # the desktop: the demo's labelled world and the backbone beside its bundle
        from sortline.train.demo import worlds
        from sortline.train.retrain import desktop_retrain
        from sortline.train.sim_data import sim_items

        demo = args.bundle.parent
        labeled = list(sim_items(make_scenario("avocado", worlds(args.demo_seed)["labeled"]), args.labeled_fruit))
        retrain = desktop_retrain(Path(tempfile.mkdtemp(prefix="sortline-desktop-")), labeled, bundle.manifest.labels,
                                  demo / "backbone.ckpt", bundle.manifest.decision, args.demo_seed)
    for seed in line_seeds(args.seeds):
        out = Path(tempfile.mkdtemp(prefix="sortline-adapt-"))
        pipeline = ItemPipeline.for_station(bundle)
        scenario = make_scenario("avocado", seed, shift=Shift("cultivar", AT), distinct=min(args.items, 5000))
        line = LineConfig(items=args.items, seed=seed, pitch_ms=1000 / args.rate)
        run, result = adapt_on_line(bundle, pipeline, line, scenario, out, AT,
                                    Operator(args.labels_per_hour, args.refit_every, args.retrain_after),
                                    retrain=retrain, progress=False)
        row = {"seed": seed, **{k: result[k] for k in ("alarm_at_item", "labelled", "promoted_at_item",
                                                       "mcc_before_shift", "mcc_after_shift", "mcc_after_promotion",
                                                       "items_after_promotion", "bundle_promoted_at_item",
                                                       "mcc_after_bundle_promotion", "promotions", "retrains")},
               "refits": len(result["refits"]), "rollbacks": len(result["rollbacks"]),
               "mcc_run": run.summary["mcc"], "lost": run.summary["lost"], "late": run.summary["deadline_misses"],
               "latency_ms_p99": run.summary["latency_ms_p99"]}
        if row["mcc_after_promotion"] is not None:
            row["gap"] = round(row["mcc_before_shift"] - row["mcc_after_promotion"], 4)
        if row["mcc_after_bundle_promotion"] is not None:
            row["bundle_gap"] = round(row["mcc_before_shift"] - row["mcc_after_bundle_promotion"], 4)
        rows.append(row)
        print(json.dumps(row), flush=True)
    table = ["| world | alarm at | labels | first promotion at | MCC before shift | after shift | 1,000 after it "
             "| gap | retrained bundle promoted at | 1,000 after it | gap | latest promotion: at, 1,000 after it "
             "| refits / retrains / promotions / rollbacks |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        table.append(f"| {r['seed']} | {r['alarm_at_item']} | {r['labelled']} | {r['promoted_at_item']} | "
                     f"{r['mcc_before_shift']} | {r['mcc_after_shift']} | {r['mcc_after_promotion']} | "
                     f"{r.get('gap', '—')} | {r['bundle_promoted_at_item'] or '—'} | "
                     f"{r['mcc_after_bundle_promotion'] or '—'} | {r.get('bundle_gap', '—')} | "
                     f"{_latest(r['promotions'])} | {r['refits']} / "
                     f"{len(r['retrains'])} / {len(r['promotions'])} / {r['rollbacks']} |")
    gaps = [r.get("bundle_gap", r.get("gap")) if args.retrain_after else r.get("gap") for r in rows]
    within = sum(1 for g in gaps if g is not None and g <= 0.05)
    return {"rows": rows, "within_0_05": f"{within}/{len(rows)}", "table": "\n".join(table)}


def _latest(promotions: list[dict]) -> str:
    if not promotions:
        return "—"
    last = promotions[-1]
    return f"{last['candidate'].split('@')[0]} at {last['decided_from_item']}, {last['mcc_after'] or '—'}"


def _run(bundle: Path, seed: int, items: int, rate: float, shadow: str | None, work: Path) -> dict:
    from sortline.edge_runtime.hil.runs import make_scenario, sort_on_simulated_line
    from sortline.edge_runtime.learning.enroll import Enroller
    from sortline.edge_runtime.model.bundle import load_bundle
    from sortline.edge_runtime.model.pipeline import ItemPipeline
    from sortline.edge_runtime.watch import BundleCandidate, HeadCandidate, ShadowPolicy, StationWatch
    from sortline.hardware.sim.line import LineConfig

    loaded = load_bundle(bundle)
    pipeline = ItemPipeline.for_station(loaded)
    watch = None
    if shadow is not None:
        watch = StationWatch.build(None, None, shadow=ShadowPolicy(window_items=10**6))
        if shadow == "head":
            with Enroller(loaded, work / f"store-{time.monotonic_ns()}.sqlite") as enroller:
                candidate = HeadCandidate(enroller.classifier(enroller.refit(force=True, activate=False).version))
        else:  # the same bundle loaded again, as `serve` loads a candidate: its own runtime, one thread
            candidate = BundleCandidate(ItemPipeline.for_station(load_bundle(bundle), threads=1))
        watch.shadow.start(candidate)
    scenario = make_scenario("avocado", seed)
    run = sort_on_simulated_line(pipeline, LineConfig(items=items, seed=seed, pitch_ms=1000 / rate, lanes=8),
                                 scenario, progress=False, watch=watch)
    s = run.summary
    return {"p99": s["latency_ms_p99"], "p50": s["latency_ms_p50"], "compute_p99": s["compute_ms_p99"],
            "overload": s["overload"], "late": s["deadline_misses"], "lost": s["lost"], "items": s["items"],
            "shadowed": s.get("shadow", {}).get("shadowed", 0), "shadow_sampled_out": s.get("shadow", {}).get(
                "sampled_out", 0)}


def overhead(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="sortline-shadow-"))
    modes = ("off", "head", "bundle")
    runs: dict[str, list[dict]] = {m: [] for m in modes}
    for rep in range(args.repeats):
        for mode in (modes if rep % 2 == 0 else modes[::-1]):
            runs[mode].append(_run(args.bundle, 63, args.items, 120.0, None if mode == "off" else mode, work))
            print(mode, runs[mode][-1], flush=True)
    p99 = {m: statistics.median(r["p99"] for r in rs) for m, rs in runs.items()}
    overloaded = {}
    for mode in ("off", "bundle", "off-again"):
        overloaded[mode] = _run(args.bundle, 73, args.items, args.overload_rate,
                                "bundle" if mode == "bundle" else None, work)
        print("overload", mode, overloaded[mode], flush=True)
    table = ["| shadow | decision p99 ms (median of runs) | ratio to off | runs |", "|---|---:|---:|---|"]
    for m in modes:
        table.append(f"| {m} | {p99[m]} | {round(p99[m] / p99['off'], 3)} | "
                     f"{', '.join(str(r['p99']) for r in runs[m])} |")
    table += ["", f"Offered {args.overload_rate} items/s (8 lanes):", "",
              "| shadow | late | shed (overload) | lost | shadowed | shadow dropped |",
              "|---|---:|---:|---:|---:|---:|"]
    for mode, r in overloaded.items():
        table.append(f"| {mode} | {r['late']} | {r['overload']} | {r['lost']} | {r['shadowed']} | "
                     f"{r['shadow_sampled_out']} |")
    return {"runs": runs, "p99_median": p99, "ratio_head": round(p99["head"] / p99["off"], 3),
            "ratio_bundle": round(p99["bundle"] / p99["off"], 3), "overloaded": overloaded, "table": "\n".join(table)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["adapt", "overhead"])
    parser.add_argument("--bundle", type=Path, required=True, help="the avocado demo bundle")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--items", type=int, help="items per run (adapt 5000, overhead 6000)")
    parser.add_argument("--rate", type=float, default=40.0, help="adapt: items per second")
    parser.add_argument("--labels-per-hour", type=float, default=3600.0, help="adapt: the operator's pace")
    parser.add_argument("--refit-every", type=int, default=30, help="adapt: labels between refits")
    parser.add_argument("--retrain-after", type=int, default=0,
                        help="adapt: labels between the desktop's retrains of the bundle (0: heads only); it needs "
                             "the demo's folder (BUNDLE's parent: backbone.ckpt)")
    parser.add_argument("--demo-seed", type=int, default=0, help="adapt: the demo's --seed (its labelled world)")
    parser.add_argument("--labeled-fruit", type=int, default=600, help="adapt: the demo's --labeled-fruit")
    parser.add_argument("--repeats", type=int, default=2, help="overhead: runs of each mode")
    parser.add_argument("--overload-rate", type=float, default=400.0, help="overhead: the overloaded run's rate")
    parser.add_argument("--results", action="store_true")
    args = parser.parse_args()
    args.items = args.items or {"adapt": 5000, "overhead": 6000}[args.part]
    started = time.time()
    result = {"adapt": adapt, "overhead": overhead}[args.part](args)
    result.update(cpu=cpu_name(), seconds=round(time.time() - started), cores=os.cpu_count(),
                  args={k: str(v) for k, v in vars(args).items()})
    print(result["table"])
    if args.results:
        write_results("shadow", "adapt_retrain" if args.part == "adapt" and args.retrain_after else args.part,
                      "Shadow", result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
