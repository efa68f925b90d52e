"""Soak: the daemon (``sortline serve``, its own process) sorts a long simulated line with every
fault kind injected, and must give every item exactly one gate command with flat memory.

    python benchmarks/soak.py --items 100000 --results

The simulated line runs in a child process and speaks to the daemon over real pseudo-terminals;
the daemon's cameras stream rendered fruit from image folders, as in tests/test_daemon.py, so
the view faults of hardware/sim/faults.py (lost, late, corrupt views) do not reach it: those
are soaked in-process by ``sortline simulate``. Every serial fault kind is injected at
``--fault-rate`` (default 1%). The daemon's resident memory (VmRSS) is sampled every second;
growth is measured from the end of warm-up (10% of the items) to the end.

Prints and (with ``--results``) writes benchmarks/results/soak.md, soak.json and soak.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cpu_name  # benchmarks/machine.py
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def camera_folders(root: Path, views: int = 4, frames: int = 3) -> None:
    import cv2

    from sortline.hardware.sim.avocado import make_fruit, render_views

    for v in range(views):
        for kind in ("rgb", "nir"):
            (root / f"v{v}-{kind}").mkdir(parents=True, exist_ok=True)
    for k in range(frames):
        for v, view in enumerate(render_views(make_fruit(k, 3))):
            cv2.imwrite(str(root / f"v{v}-rgb" / f"{k}.png"), cv2.cvtColor(view.rgb, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(root / f"v{v}-nir" / f"{k}.png"), view.nir)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--pitch-ms", type=float, default=10.0, help="time between items (10 ms: 100 items/s)")
    parser.add_argument("--fault-rate", type=float, default=0.01, help="rate of every fault kind")
    parser.add_argument("--bundle", type=Path, help="the bundle to serve (default: the tests' tiny bundle)")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--results", action="store_true", help="write benchmarks/results/soak.*")
    args = parser.parse_args()

    from sortline.hardware.sim.avocado import AvocadoScenario
    from sortline.hardware.sim.faults import FaultRates
    from sortline.hardware.sim.line import LineConfig
    from sortline.hardware.sim.process import LineProcess

    work = Path(tempfile.mkdtemp(prefix="sortline-soak-"))
    camera_folders(work / "cams")
    bundle = args.bundle
    if bundle is None:
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import make_tiny_bundle

        bundle = make_tiny_bundle(work / "bundle", work).root
    rates = FaultRates(**{f.name: args.fault_rate for f in dataclasses.fields(FaultRates)})
    config = LineConfig(items=args.items, seed=args.seed, pitch_ms=args.pitch_ms, deadline_ms=300, faults=rates)
    line = LineProcess(config, AvocadoScenario(args.seed))
    station = work / "station.toml"
    lines = ["[station]", f'bundle = "{bundle}"', 'event_log = "events.jsonl"',
             "[controller]", f'port = "{line.port("controller")}"', "[sensor]", 'kind = "taps"',
             f'port = "{line.port("taps")}"', "[rig]", "tolerance_ms = 200", "wait_ms = 60"]
    for v in range(4):
        lines += ["[[views]]", f'rgb = "folder:cams/v{v}-rgb"', f'nir = "folder:cams/v{v}-nir"']
    station.write_text("\n".join(lines) + "\n")
    daemon_log = open(work / "daemon.log", "w")
    daemon = subprocess.Popen([sys.executable, "-m", "sortline.edge_runtime.cli", "serve", "--config", str(station),
                               "--json"], stdout=subprocess.PIPE, stderr=daemon_log, text=True)
    samples: list[tuple[int, float]] = []  # (items announced, RSS MB)
    started = time.monotonic()
    try:
        time.sleep(4.0)  # the daemon measures its thread policy and opens its ports and cameras
        if daemon.poll() is not None:
            raise SystemExit(f"the daemon exited at start (rc {daemon.returncode}); see {work / 'daemon.log'}")
        line.start()
        with tqdm(total=args.items, desc="soak", unit="item", dynamic_ncols=True) as bar:
            while not line.wait_announced(1.0):
                announced = line.announced
                bar.update(announced - bar.n)
                if (mb := rss_mb(daemon.pid)) is not None:
                    samples.append((announced, mb))
                if daemon.poll() is not None:
                    raise SystemExit(f"the daemon died (rc {daemon.returncode}); see {work / 'daemon.log'}")
            bar.update(args.items - bar.n)
        tally = line.wait()
        if (mb := rss_mb(daemon.pid)) is not None:
            samples.append((args.items, mb))
    finally:
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
        out, _ = daemon.communicate(timeout=60)
        line.stop()
        daemon_log.close()
    seconds = time.monotonic() - started
    summary = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    warm = [mb for n, mb in samples if n >= args.items * 0.1]
    baseline, final = (warm[0], warm[-1]) if warm else (float("nan"), float("nan"))
    result = {
        "cpu": cpu_name(), "items": args.items, "pitch_ms": args.pitch_ms, "fault_rate": args.fault_rate,
        "gate_commands": tally.gate_commands, "lost": tally.lost, "duplicates": tally.duplicates,
        "late": tally.late, "unknown_item": tally.unknown_item, "injected": tally.injected,
        "daemon_rc": daemon.returncode, "daemon_faults": summary.get("faults"),
        "daemon_reasons": summary.get("reasons"),
        "rss_mb_after_warmup": round(baseline, 1), "rss_mb_end": round(final, 1),
        "rss_mb_max": round(max(mb for _, mb in samples), 1) if samples else None,
        "rss_growth_pct": round(100 * (final - baseline) / baseline, 2), "seconds": round(seconds, 1),
    }
    ok = (tally.lost == 0 and tally.duplicates == 0 and tally.gate_commands == args.items
          and daemon.returncode == 0 and result["rss_growth_pct"] < 5.0)
    result["ok"] = ok
    print(json.dumps(result, indent=1))
    if args.results:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "soak.json").write_text(json.dumps({**result, "rss_samples": samples}) + "\n")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3.2))
        ax.plot([n for n, _ in samples], [mb for _, mb in samples])
        ax.axvline(args.items * 0.1, color="grey", linestyle=":", label="end of warm-up")
        ax.set_xlabel("items announced")
        ax.set_ylabel("daemon RSS (MB)")
        ax.set_title(f"sortline serve, {args.items:,} items, every fault at {args.fault_rate:.0%}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(RESULTS / "soak.png", dpi=110)
        rows = "\n".join(f"| {k} | {v} |" for k, v in result.items() if k not in ("injected", "daemon_faults",
                                                                                  "daemon_reasons"))
        (RESULTS / "soak.md").write_text(
            f"# Soak: the daemon over {args.items:,} items\n\nCommand: `python benchmarks/soak.py --items {args.items} "
            f"--results` ({result['cpu']}, {os.cpu_count()} cores)\n\n| | |\n|---|---|\n{rows}\n\n"
            f"Injected at the line: `{json.dumps(tally.injected)}`\n\nSeen by the daemon: "
            f"`{json.dumps(summary.get('faults'))}`\n\nReasons: `{json.dumps(summary.get('reasons'))}`\n\n"
            "![RSS](soak.png)\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
