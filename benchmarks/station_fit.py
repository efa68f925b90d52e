"""A station's own line to a bundle, timed step by step, on the simulated avocado line (issue 14):

    python benchmarks/station_fit.py [--items 600] [--check-items 500] [--demo] [--results]

1. record the line (``sortline simulate``; a real station runs ``sortline record``), then delete
   its ground truth, as a real station's recording has none;
2. label it from a CSV file (``sortline label REC --csv``);
3. ``sortline fit`` (default settings: SimCLR 6 epochs / 360 s, int8, fusion head);
4. record a second run of the line and ``sortline replay`` it to the bundle.

With ``--demo`` the same second recording is replayed to the bundle that ``sortline demo``
(default settings) fits on rendered items, the baseline the issue compares with. Every step
runs as its own ``sortline`` process, timed from outside.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_name  # noqa: E402

RESULTS = Path(__file__).parent / "results"
KEYS = ("items", "lost", "duplicates", "accuracy", "mcc", "latency_ms_p50", "latency_ms_p99", "deadline_misses")


def run(steps: dict[str, float], name: str, *args: str) -> dict | None:
    started = time.perf_counter()
    done = subprocess.run(["sortline", *args], capture_output=True, text=True, check=True)
    steps[name] = round(time.perf_counter() - started, 1)
    print(f"{name}: {steps[name]} s", flush=True)
    last = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    return json.loads(last) if last.startswith("{") else None


def strip_truth(recording: Path) -> Path:
    meta = json.loads((recording / "recording.json").read_text())
    rows = [json.loads(line) for line in (recording / "truth.jsonl").read_text().splitlines()]
    csv = recording.parent / "labels.csv"
    csv.write_text("item_id,label\n" + "".join(f"{r['item_id']},{meta['labels'][r['label']]}\n" for r in rows))
    (recording / "truth.jsonl").write_text("".join(json.dumps({**r, "label": None}) + "\n" for r in rows))
    (recording / "recording.json").write_text(json.dumps({**meta, "labels": []}))
    return csv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=600)
    parser.add_argument("--check-items", type=int, default=500)
    parser.add_argument("--demo", action="store_true", help="also replay to the bundle of `sortline demo`")
    parser.add_argument("--work", type=Path)
    parser.add_argument("--results", action="store_true", help="write benchmarks/results/station_fit.{md,json}")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="sortline-station-fit-"))
    work.mkdir(parents=True, exist_ok=True)
    steps: dict[str, float] = {}
    line, check = work / "rec-line", work / "rec-check"
    run(steps, "record the line", "simulate", "--scenario", "avocado", "--items", str(args.items), "--rate", "20",
        "--seed", "31", "--record", str(line), "--quiet")
    csv = strip_truth(line)
    run(steps, "label (CSV)", "label", str(line), "--csv", str(csv))
    fitted = run(steps, "fit", "fit", "--data", str(line), "--out", str(work / "bundle"), "--quiet", "--json")
    run(steps, "record a second run", "simulate", "--scenario", "avocado", "--items", str(args.check_items),
        "--rate", "10", "--seed", "32", "--record", str(check), "--quiet")
    replay = run(steps, "replay", "replay", str(check), "--bundle", str(work / "bundle"), "--quiet", "--json")
    results = {"cpu": cpu_name(), "items": args.items, "check_items": args.check_items, "steps_s": steps,
               "fit_stages_s": fitted["seconds"], "replay": {k: replay[k] for k in KEYS}}
    if args.demo:
        run(steps, "demo (defaults)", "demo", "--out", str(work / "demo"), "--quiet", "--json")
        demo = run(steps, "replay (demo bundle)", "replay", str(check), "--bundle", str(work / "demo" / "bundle"),
                   "--quiet", "--json")
        results["replay_demo_bundle"] = {k: demo[k] for k in KEYS}
    print(json.dumps(results, indent=2))
    if args.results:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "station_fit.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / "station_fit.md").write_text(markdown(results))


def markdown(r: dict) -> str:
    lines = ["# From a recorded line to a bundle (simulated avocado line)", "",
             f"CPU: {r['cpu']}. {r['items']} items recorded and labelled from a CSV file; the bundle is checked on "
             f"a second recording of {r['check_items']} items.", "",
             "| step | seconds |", "|---|---|"]
    lines += [f"| {name} | {s} |" for name, s in r["steps_s"].items()]
    lines += ["", f"`sortline fit` stages: {r['fit_stages_s']}.", "",
              "| bundle | items | lost | accuracy | MCC | p50 ms | p99 ms | deadline misses |",
              "|---|---|---|---|---|---|---|---|"]
    for name, key in (("sortline fit on the recording", "replay"), ("sortline demo", "replay_demo_bundle")):
        if key in r:
            x = r[key]
            lines.append(f"| {name} | {x['items']} | {x['lost']} | {x['accuracy']} | {x['mcc']} | "
                         f"{x['latency_ms_p50']} | {x['latency_ms_p99']} | {x['deadline_misses']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
