"""What each input adds on the simulated avocado line: MCC of the fusion head for 1 RGB view,
4 RGB views, 4 RGB+NIR views, and 4 RGB+NIR views with the tap-pressure readings.

    python benchmarks/fusion_ablation.py [--epochs 6] [--test-items 1000] [--out benchmarks/results]

Two backbones are pretrained the demo's way (SimCLR, ResNet-10, 64 px, on the same unlabeled
pool): one on RGB, one on RGB+NIR; each exported to int8. The heads are fitted on the same 600
labeled fruit and scored on fruit of the line's world, decided as the station decides them
(int8 embeddings, view pooling, sensor features, logistic head).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, matthews_corrcoef

from sortline.edge_runtime.model.embedder import OnnxEmbedder
from sortline.edge_runtime.model.fusion import FusionSpec, fit_fusion_head, fuse
from sortline.train.demo import DemoConfig, train_station_bundle
from sortline.train.sim_data import SimItem, sim_items

RGB = ("r", "g", "b")
CASES = [  # name, backbone channels, views used, sensor
    ("1 RGB view", RGB, 1, "none"),
    ("4 RGB views", RGB, 4, "none"),
    ("4 RGB+NIR views", None, 4, "none"),
    ("4 RGB+NIR views + taps", None, 4, "taps"),
]


def _views(items: list[SimItem], n: int) -> list[SimItem]:
    return [SimItem(item.label, item.views[:n], item.readings) for item in items]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, default=6.0)
    parser.add_argument("--test-items", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    rows, backbones = [], {}
    with tempfile.TemporaryDirectory(prefix="sortline-ablation-") as work:
        for channels in (RGB, None):
            name = "rgb" if channels else "rgbn"
            started = time.perf_counter()
            cfg = DemoConfig(epochs=args.epochs, channels=channels, seed=args.seed, progress=True)
            trained = train_station_bundle(cfg, Path(work) / name, {})
            backbones[channels] = trained
            print(f"{name}: trained and exported in {time.perf_counter() - started:.0f} s", flush=True)
        first = next(iter(backbones.values()))
        classes = first.manifest.labels
        labeled = list(sim_items(first.scenarios["labeled"], 600))
        test = list(sim_items(first.scenarios["line"], args.test_items, desc="render test"))
        truth = np.array([item.label for item in test])
        for name, channels, views, sensor in CASES:
            trained = backbones[channels]
            embedder = OnnxEmbedder(trained.bundle.backbone_path, trained.manifest.input)
            fusion = FusionSpec.for_sensor(sensor, 5 if sensor == "taps" else 0)
            fitted = fit_fusion_head(embedder, _views(labeled, views), classes, fusion, seed=args.seed)
            head, fusion = fitted.head, fitted.fusion
            features = np.stack([fuse(embedder.embed_views(item.views), item.readings, fusion)
                                 for item in _views(test, views)])
            predicted = head.predict_proba(features).argmax(axis=1)
            rows.append({"inputs": name, "mcc": round(float(matthews_corrcoef(truth, predicted)), 4),
                         "accuracy": round(float(accuracy_score(truth, predicted)), 4)})
            print(f"  {name:26s} MCC {rows[-1]['mcc']:.4f}  accuracy {rows[-1]['accuracy']:.4f}", flush=True)
    counts = np.bincount(truth, minlength=len(classes))
    md = ["# Fusion ablation on the simulated avocado line\n",
          f"SimCLR ResNet-10, 64 px, {args.epochs:g} epochs on 2,000 unlabeled fruit, int8; heads on 600 labeled "
          f"fruit; scored on {len(test)} fruit of the line's world ({dict(zip(classes, counts.tolist()))}).\n",
          "| inputs | MCC | accuracy |", "|---|---:|---:|"]
    md += [f"| {r['inputs']} | {r['mcc']} | {r['accuracy']} |" for r in rows]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fusion_ablation.md").write_text("\n".join(md) + "\n")
    (args.out / "fusion_ablation.json").write_text(json.dumps({"epochs": args.epochs, "rows": rows}, indent=2) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
