"""The drift watch and the queue of unsure items against issue 30's targets, on the simulated line.

    python benchmarks/drift.py delays --bundle AVOCADO --checkout-bundle CHECKOUT --seeds 5
    python benchmarks/drift.py soak --bundle AVOCADO --items 100000
    python benchmarks/drift.py overhead --bundle AVOCADO
    python benchmarks/drift.py adapt --bundle AVOCADO --seeds 5

- ``delays``: each shift (blur:1, nir-gain, light, cultivar on the avocado line; product on the
  checkout) injected at item 2,000 of a line of 3,000 at 100 items/s, per seed: the first alarm
  after the shift, its delay in items, whether its kind (and camera) is right, and any alarm
  before the shift (a false one).
- ``soak``: a stable line of ``--items`` items at 100 items/s with the thresholds as shipped:
  alarms (all false), the queue folder's largest size against its cap, and the resident memory.
- ``overhead``: decision p99 at 8 lanes × 15 items/s with the watch and queue on and off, runs
  alternated in one process; then the line overloaded (``--overload-rate``), on and off
  alternated (``--overload-repeats``): items shed, and items late (never, the target).
- ``adapt``: after ``cultivar@2000``, 50 items labelled from the queue's ranking of its entries of
  items 2,000-2,999 against 50 picked at random from the same span (the mean of ``--draws``
  draws), and more random labels (``--label-counts``); each set added to a copy of the bundle's
  examples and the head refitted; MCC on items 3,000-3,999 (mean over seeds), beside the MCC on
  items 1,000-1,999 (before the shift) and that of the bundle's head with no labels at all, as
  it is and with its input standardisation moved by the span's mean change (the mean of items
  2,000-2,999 less that of items 0-1,999, no label used: AdaBN's idea at the head).

Bundles: the avocado one from ``sortline demo`` (its default bundle: SimCLR ResNet-10, taps), the
checkout one from ``sortline demo --scenario checkout``. ``--results`` writes
benchmarks/results/drift_<part>.md and .json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from machine import cpu_name  # benchmarks/machine.py

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SHIFTS = ("blur:1", "nir-gain", "light", "cultivar", "product")
AT = 2000


def line_seeds(count: int) -> list[int]:
    """Worlds the demo bundles never saw: ``sortline demo --seed S`` pretrains on world 10·S+1 and
    fits its head on the first 600 items of world 10·S+2 (a line of those would replay the head's
    own training items); 10·k+3 are line worlds."""
    return [10 * k + 3 for k in range(count)]


def _run(bundle: Path, scenario: str, seed: int, items: int, rate: float, shift: str | None, lanes: int = 1,
         watch=None, observers=()):
    from sortline.edge_runtime.hil.runs import make_scenario, sort_on_simulated_line
    from sortline.edge_runtime.model.pipeline import ItemPipeline
    from sortline.hardware.sim.line import LineConfig
    from sortline.hardware.sim.shifts import Shift

    pipeline = ItemPipeline.for_station(bundle)
    # every item its own (the simulator repeats items every 1,000 ids unless told otherwise, and an
    # exact repeat of a reference item is no item a real line sees); the soak repeats, to fit in memory
    line = make_scenario(scenario, seed, shift=Shift.parse(f"{shift}@{AT}") if shift else None,
                         distinct=min(items, 5000))
    config = LineConfig(items=items, seed=seed, pitch_ms=1000 / rate, lanes=lanes)
    return sort_on_simulated_line(pipeline, config, line, progress=False, watch=watch, observers=observers)


def _watch(queue: Path | None = None, per_hour: int = 120, drift_per_hour: int = 120):
    from sortline.edge_runtime.watch import DriftConfig, QueueConfig, StationWatch

    return StationWatch.build(DriftConfig(), QueueConfig(queue, per_hour=per_hour, drift_per_hour=drift_per_hour)
                              if queue else None)


def _right(shift: str, alarm: dict) -> bool:
    kind = shift.split(":")[0]
    if kind in ("cultivar", "product"):
        return alarm["kind"] == "items"
    if alarm["kind"] != "camera":
        return False
    if kind == "blur":
        return alarm["camera"] == int(shift.split(":")[1]) and alarm["statistic"] in ("sharpness", "contrast")
    return alarm["statistic"] == ("level_nir" if kind == "nir-gain" else "level_r") or \
        (kind == "light" and alarm["statistic"].startswith("level_"))


def delays(args: argparse.Namespace) -> dict:
    rows = []
    for shift in args.shifts:
        scenario, bundle = ("checkout", args.checkout_bundle) if shift == "product" else ("avocado", args.bundle)
        for seed in line_seeds(args.seeds):
            run = _run(bundle, scenario, seed, args.items, args.rate, shift, watch=_watch())
            alarms = run.summary["drift"]["alarms"]
            before = [a for a in alarms if a["at_item"] < AT]
            after = [a for a in alarms if a["at_item"] >= AT]
            first = after[0] if after else None
            rows.append({"shift": shift, "seed": seed, "delay": first["at_item"] - AT if first else None,
                         "right": bool(first) and _right(shift, first), "first": first, "false_before": len(before),
                         "alarms_after": len(after), "mcc": run.summary["mcc"]})
            said = first and (first["kind"], first["statistic"], first["camera"])
            print(f"{shift:9s} seed {seed}: first alarm {said} after {rows[-1]['delay']} items; "
                  f"{len(before)} before the shift", flush=True)
    table = ["| shift | delay median (items) | delay max | kind/camera right | false alarms before the shift |",
             "|---|---:|---:|---|---:|"]
    for shift in args.shifts:
        mine = [r for r in rows if r["shift"] == shift]
        found = [r["delay"] for r in mine if r["delay"] is not None]
        median, worst = (statistics.median(found), max(found)) if found else ("—", "—")
        table.append(f"| {shift}@{AT} | {median} | {worst} | "
                     f"{sum(r['right'] for r in mine)}/{len(mine)} | {sum(r['false_before'] for r in mine)} |")
    return {"rows": rows, "table": "\n".join(table)}


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6


def soak(args: argparse.Namespace) -> dict:
    queue = Path(tempfile.mkdtemp(prefix="sortline-drift-soak-")) / "queue"
    watch = _watch(queue)
    cap_mb = watch.queue.config.max_mb
    samples: list[tuple[float, float, float]] = []
    done = threading.Event()

    def sample() -> None:
        start = time.monotonic()
        while not done.wait(5.0):
            samples.append((time.monotonic() - start, _rss_mb(), _folder_mb(queue)))

    threading.Thread(target=sample, daemon=True).start()
    run = _run(args.bundle, "avocado", 53, args.items, args.rate, None, watch=watch)
    done.set()
    warm = [s for s in samples if s[0] > samples[-1][0] * 0.1] if samples else []
    result = {"items": args.items, "alarms": run.summary["drift"]["alarms"], "queue": run.summary["queue"],
              "queue_mb_max": round(max((s[2] for s in samples), default=0.0), 2), "queue_cap_mb": cap_mb,
              "rss_mb_after_warmup": round(warm[0][1], 1) if warm else None,
              "rss_mb_half": round(next(s[1] for s in samples if s[0] >= samples[-1][0] / 2), 1) if samples else None,
              "rss_mb_end": round(samples[-1][1], 1) if samples else None,
              "watch": {k: run.summary["drift"][k] for k in ("offered", "watched", "sampled_out", "busy_ms_per_item")},
              "latency_ms_p99": run.summary["latency_ms_p99"], "lost": run.summary["lost"],
              "duplicates": run.summary["duplicates"]}
    print(json.dumps(result, indent=1))
    return result


def overhead(args: argparse.Namespace) -> dict:
    runs = {"on": [], "off": []}
    for rep in range(args.repeats):
        for mode in (("on", "off") if rep % 2 == 0 else ("off", "on")):
            queue = Path(tempfile.mkdtemp(prefix="sortline-drift-p99-")) / "queue" if mode == "on" else None
            run = _run(args.bundle, "avocado", 63, args.items, 120.0, None, lanes=8,
                       watch=_watch(queue) if mode == "on" else None)
            s = run.summary
            runs[mode].append({"p99": s["latency_ms_p99"], "p50": s["latency_ms_p50"],
                               "compute_p99": s["compute_ms_p99"], "overload": s["overload"],
                               "late": s["deadline_misses"], "sampled_out": s["drift"].get("sampled_out", 0)})
            print(mode, runs[mode][-1], flush=True)
    p99 = {mode: statistics.median(r["p99"] for r in rs) for mode, rs in runs.items()}
    compute = {mode: statistics.median(r["compute_p99"] for r in rs) for mode, rs in runs.items()}
    # overload: more than the station can take, runs with the watch and queue on and off alternated: shed, never late
    overload = {"rate": args.overload_rate, "on": [], "off": []}
    for rep in range(args.overload_repeats):
        for mode in (("on", "off") if rep % 2 == 0 else ("off", "on")):
            queue = Path(tempfile.mkdtemp(prefix="sortline-drift-overload-")) / "queue"
            s = _run(args.bundle, "avocado", 73 + rep, args.items, args.overload_rate, None, lanes=8,
                     watch=_watch(queue) if mode == "on" else None).summary
            overload[mode].append({"overload": s["overload"], "late": s["deadline_misses"], "lost": s["lost"],
                                   "p99": s["latency_ms_p99"], "sampled_out": s["drift"].get("sampled_out", 0),
                                   "items": s["items"]})
            print("overload", mode, overload[mode][-1], flush=True)
    return {"runs": runs, "p99_median": p99, "ratio": round(p99["on"] / p99["off"], 3), "compute_p99_median": compute,
            "compute_ratio": round(compute["on"] / compute["off"], 3), "overloaded": overload,
            "late_overloaded": {mode: sum(r["late"] for r in overload[mode]) for mode in ("on", "off")}}


class Recorder:
    """Every observed item's features and truth (an Observer beside the watch)."""

    def __init__(self) -> None:
        self.items: dict[int, np.ndarray] = {}

    def offer(self, item) -> None:
        if item.embeddings is not None:
            self.items[item.item_id] = item.pipeline.features(item.item_id, item.embeddings, item.readings)


def adapt(args: argparse.Namespace) -> dict:
    from sklearn.metrics import matthews_corrcoef

    from sortline.edge_runtime.learning.enroll import Enroller
    from sortline.edge_runtime.model.bundle import load_bundle
    from sortline.edge_runtime.watch.unsure import rank_entries
    from sortline.hardware.sim.avocado import CLASSES

    bundle = load_bundle(args.bundle)
    counts = [c for c in args.label_counts if c != 50]  # random 50 is its own column, beside the queue's 50
    rows = []
    for seed in line_seeds(args.seeds):
        work = Path(tempfile.mkdtemp(prefix="sortline-drift-adapt-"))
        recorder = Recorder()
        # a simulated hour is seconds: no hourly caps here
        watch = _watch(work / "queue", per_hour=100_000, drift_per_hour=100_000)
        run = _run(args.bundle, "avocado", seed, 4000, args.rate, "cultivar", watch=watch, observers=[recorder])
        truth = run.truth
        span = [i for i in range(AT, AT + 1000) if i in recorder.items]
        test = [i for i in range(AT + 1000, AT + 2000) if i in recorder.items]
        x_test = np.array([recorder.items[i] for i in test])
        y_test = [truth[i] for i in test]
        early = [i for i in range(AT - 1000, AT) if i in recorder.items]
        head = bundle.load_head()
        moved = np.mean([recorder.items[i] for i in span], axis=0) - np.mean(
            [recorder.items[i] for i in range(AT) if i in recorder.items], axis=0)
        mean_shifted = dataclasses.replace(head, mean=head.mean + moved)  # standardised on the new line

        def refit(ids: list[int], name: str, work=work, truth=truth, features=recorder.items, x_test=x_test,
                  y_test=y_test) -> float:
            with Enroller(bundle, work / f"{name}.sqlite") as enroller:
                for i in ids:
                    enroller.add(CLASSES[truth[i]], features[i][None], f"{name}:{i}")
                enroller.refit(force=True)
                head = enroller.classifier().head
            predicted = [CLASSES.index(head.labels[k]) for k in head.predict_proba(x_test).argmax(axis=1)]
            return float(matthews_corrcoef(y_test, predicted))

        # the queue's ranking of what it kept from the span (as the operator page lists the queue
        # once the items before the shift are labelled or cleared)
        kept = [e for e in watch.queue.ranked() if AT <= e.item_id < AT + 1000 and e.item_id in recorder.items]
        queued = [int(key.split("-")[0]) for key in rank_entries(kept)[:50]]
        draws = [random.Random(seed * 1000 + d).sample(span, 50) for d in range(args.draws)]
        base = matthews_corrcoef(y_test, head.predict(x_test))
        random_mcc = [refit(ids, f"random{d}") for d, ids in enumerate(draws)]
        more = {}
        for count in counts:
            runs = [refit(random.Random(seed * 1000 + d).sample(span, count), f"random{count}-{d}")
                    for d in range(args.draws)]
            more[str(count)] = [round(float(np.mean(runs)), 4), round(float(np.std(runs)), 4)]
        row = {"seed": seed, "before": round(float(base), 4), "queue_kept": len(kept),
               "before_shift": round(float(matthews_corrcoef(
                   [truth[i] for i in early], head.predict(np.array([recorder.items[i] for i in early])))), 4),
               "mean_shifted": round(float(matthews_corrcoef(y_test, mean_shifted.predict(x_test))), 4),
               "random_more": more,
               "alarm_at": next((a["at_item"] for a in watch.summary()["drift"]["alarms"] if a["kind"] == "items"),
                                None),
               "queue": round(refit(queued, "queue"), 4), "queue_defects": sum(truth[i] != 0 for i in queued),
               "random": round(float(np.mean(random_mcc)), 4), "random_std": round(float(np.std(random_mcc)), 4),
               "random_defects": round(float(np.mean([sum(truth[i] != 0 for i in ids) for ids in draws])), 1)}
        rows.append(row)
        print(row, flush=True)
    mean = {k: round(float(np.mean([r[k] for r in rows])), 4)
            for k in ("before_shift", "before", "mean_shifted", "queue", "random")}
    table = ["| line world | alarm at | queue kept (of the span) | MCC before the shift | bundle's head after it | "
             "the same, mean-shifted (no labels) | queue's 50 | random 50 | "
             + " | ".join(f"random {c}" for c in counts) + " |", "|" + "---:|" * (8 + len(counts))]
    table += [f"| {r['seed']} | {r['alarm_at']} | {r['queue_kept']} | {r['before_shift']:.3f} | {r['before']:.3f} | "
              f"{r['mean_shifted']:.3f} | {r['queue']:.3f} | {r['random']:.3f} ± {r['random_std']:.3f} | "
              + " | ".join(f"{r['random_more'][str(c)][0]:.3f} ± {r['random_more'][str(c)][1]:.3f}" for c in counts)
              + " |" for r in rows]
    table.append(f"| mean | | | {mean['before_shift']:.3f} | {mean['before']:.3f} | {mean['mean_shifted']:.3f} | "
                 f"{mean['queue']:.3f} | {mean['random']:.3f} | "
                 + " | ".join(f"{np.mean([r['random_more'][str(c)][0] for r in rows]):.3f}" for c in counts) + " |")
    table.append("")
    table.append(f"MCC on items 3,000-3,999; random N: the mean ± std of {args.draws} draws of N labelled items "
                 "from items 2,000-2,999.")
    return {"rows": rows, "mean": mean, "gain_queue": round(mean["queue"] - mean["before"], 4),
            "gain_random": round(mean["random"] - mean["before"], 4),
            "queue_wins": sum(r["queue"] > r["random"] for r in rows), "table": "\n".join(table)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["delays", "soak", "overhead", "adapt"])
    parser.add_argument("--bundle", type=Path, required=True, help="the avocado demo bundle")
    parser.add_argument("--checkout-bundle", type=Path, help="the checkout demo bundle (delays: the product shift)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--shifts", nargs="+", default=list(SHIFTS), help=f"delays: which shifts ({' '.join(SHIFTS)})")
    parser.add_argument("--items", type=int, help="items per run (delays 3000, soak 100000, overhead 6000)")
    parser.add_argument("--rate", type=float, default=100.0, help="items per second (delays, soak, adapt)")
    parser.add_argument("--repeats", type=int, default=2, help="overhead: runs with the watch on and off each")
    parser.add_argument("--overload-repeats", type=int, default=3,
                        help="overhead: overloaded runs with the watch on and off each")
    parser.add_argument("--draws", type=int, default=10, help="adapt: random picks per line world, averaged")
    parser.add_argument("--label-counts", type=int, nargs="+", default=[50, 100, 200],
                        help="adapt: how many random labels each refit gets (50 is always one)")
    parser.add_argument("--overload-rate", type=float, default=400.0,
                        help="overhead: items per second of the overloaded run (more than the station can take)")
    parser.add_argument("--results", action="store_true")
    args = parser.parse_args()
    args.items = args.items or {"delays": 3000, "soak": 100_000, "overhead": 6000, "adapt": 4000}[args.part]
    started = time.time()
    result = {"delays": delays, "soak": soak, "overhead": overhead, "adapt": adapt}[args.part](args)
    result.update(cpu=cpu_name(), seconds=round(time.time() - started), args={k: str(v) for k, v in vars(args).items()},
                  cores=os.cpu_count())
    if "table" in result:
        print(result["table"])
    if args.results:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / f"drift_{args.part}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
        md = [f"# Drift watch: {args.part}", "", f"CPU: {result['cpu']}, {result['cores']} cores; "
              f"{result['seconds']} s; `python benchmarks/drift.py {args.part}`", ""]
        md.append(result.get("table") or "```\n" + json.dumps({k: v for k, v in result.items() if k != "rows"},
                                                            indent=1, default=str) + "\n```")
        (RESULTS / f"drift_{args.part}.md").write_text("\n".join(md) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
