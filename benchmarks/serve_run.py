"""A long run of ``sortline demo --serve``, watched from outside the way an operator's
Prometheus would: RSS, items/s and decision latency over time, and lost items at the end.

    python benchmarks/serve_run.py --minutes 30 [--rate 20] [--results]

The demo runs as its own process (SimCLR pretraining skipped with ``--epochs 0`` unless
``--epochs`` is given: the run is about the daemon, not the model). Every ``--every`` seconds
this scrapes ``/metrics`` and reads the process's RSS from /proc; at the end it writes
``benchmarks/results/serve_run.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_name  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def rss_mb(pid: int) -> float:
    """The resident set of ``pid`` and its children (the line's simulator runs in one)."""
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        kids = [int(x) for x in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _children(k)]


def scrape(port: int) -> dict:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out: dict = {"buckets": {}}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "sortline_items_total":
                out["items"] = s.value
            elif s.name == "sortline_deadline_misses_total":
                out["deadline_misses"] = s.value
            elif s.name == "sortline_decision_latency_seconds_bucket":
                out["buckets"][s.labels["le"]] = s.value
    return out


def percentile_ms(buckets: dict, q: float) -> float | None:
    """From cumulative histogram buckets: the upper bound of the bucket holding quantile q."""
    bounds = sorted((float(k), v) for k, v in buckets.items())
    total = bounds[-1][1] if bounds else 0
    if not total:
        return None
    for bound, count in bounds:
        if count >= q * total:
            return bound * 1000
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=20.0, help="items per second")
    parser.add_argument("--epochs", type=float, default=0.0)
    parser.add_argument("--every", type=float, default=10.0, help="seconds between samples")
    parser.add_argument("--results", action="store_true")
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    items = int(args.minutes * 60 * args.rate)
    out = Path(tempfile.mkdtemp(prefix="sortline-serve-run-"))
    command = ["sortline", "demo", "--serve", "--port", str(port), "--items", str(items), "--rate", str(args.rate),
               "--epochs", str(args.epochs), "--out", str(out), "--quiet", "--json"]
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "SORTLINE_API_TOKEN": "serve-run-token-0123456789"})
    samples = []
    try:
        while demo.poll() is None:
            time.sleep(args.every)
            try:
                m = scrape(port)
            except OSError:
                continue  # not serving yet (training, rendering) or already done
            samples.append({"t": round(time.monotonic(), 1), "rss_mb": round(rss_mb(demo.pid), 1),
                            "items": m.get("items", 0), "deadline_misses": m.get("deadline_misses", 0),
                            "p50_ms": percentile_ms(m["buckets"], 0.5), "p99_ms": percentile_ms(m["buckets"], 0.99)})
            print(json.dumps(samples[-1]), flush=True)
        stdout, stderr = demo.communicate()
    except KeyboardInterrupt:
        demo.send_signal(signal.SIGINT)
        stdout, stderr = demo.communicate()
    if demo.returncode != 0:
        sys.exit(f"the demo failed ({demo.returncode}): {stderr[-2000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    t0 = samples[0]["t"]
    for s in samples:
        s["t"] = round(s["t"] - t0, 1)
    served_s = samples[-1]["t"]
    steady = [s for s in samples if s["t"] >= 60] or samples
    results = {
        "cpu": cpu_name(), "command": " ".join(command), "minutes_served": round(served_s / 60, 1),
        "items": summary["items"], "gate_commands": summary["gate_commands"], "lost": summary["lost"],
        "duplicates": summary["duplicates"], "deadline_misses": summary["deadline_misses"],
        "items_per_s": summary["items_per_s"], "latency_ms_p50": summary["latency_ms_p50"],
        "latency_ms_p99": summary["latency_ms_p99"], "latency_ms_p999": summary["latency_ms_p999"],
        "rss_mb_first_minute": steady[0]["rss_mb"], "rss_mb_end": samples[-1]["rss_mb"],
        "rss_mb_max": max(s["rss_mb"] for s in samples), "samples": samples,
    }
    print(json.dumps({k: v for k, v in results.items() if k != "samples"}, indent=2))
    if args.results:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "serve_run.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / "serve_run.md").write_text(markdown(results))
        plot(results, RESULTS / "serve_run.png")


def markdown(r: dict) -> str:
    growth = 100 * (r["rss_mb_end"] / r["rss_mb_first_minute"] - 1)
    return "\n".join([
        "# `sortline demo --serve`, a long run", "",
        f"CPU: {r['cpu']}. `{r['command']}`; scraped /metrics and /proc every 10 s "
        f"(`benchmarks/serve_run.py`). Served {r['minutes_served']} minutes.", "",
        "| items | gate commands | lost | duplicates | deadline misses | items/s | p50 ms | p99 ms | p99.9 ms |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {r['items']} | {r['gate_commands']} | {r['lost']} | {r['duplicates']} | {r['deadline_misses']} | "
        f"{r['items_per_s']} | {r['latency_ms_p50']} | {r['latency_ms_p99']} | {r['latency_ms_p999']} |", "",
        f"RSS (demo process and the simulated line's): {r['rss_mb_first_minute']} MB after the first minute, "
        f"{r['rss_mb_end']} MB at the end ({growth:+.1f}%), {r['rss_mb_max']} MB at most. "
        "Over time: `serve_run.png`.", ""])


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in r["samples"]]
    fig, axes = plt.subplots(3, 1, figsize=(8, 7), sharex=True)
    axes[0].plot(t, [s["rss_mb"] for s in r["samples"]])
    axes[0].set_ylabel("RSS, MB")
    rates = [0.0] + [(b["items"] - a["items"]) / max(1e-9, b["t"] - a["t"])
                     for a, b in zip(r["samples"], r["samples"][1:])]
    axes[1].plot(t, rates)
    axes[1].set_ylabel("items/s")
    axes[2].plot(t, [s["p50_ms"] for s in r["samples"]], label="p50 (bucket bound)")
    axes[2].plot(t, [s["p99_ms"] for s in r["samples"]], label="p99 (bucket bound)")
    axes[2].set_ylabel("decision latency, ms")
    axes[2].set_xlabel("minutes")
    axes[2].legend()
    fig.suptitle(f"sortline demo --serve: {r['items']} items, {r['lost']} lost")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
