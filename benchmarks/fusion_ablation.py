"""What each input adds on the simulated avocado line, beside what the views could give at most:
MCC and per-class recall of the fusion head for 1 RGB view, 4 RGB views, 4 RGB+NIR views, and
4 RGB+NIR views with the tap-pressure readings; and the ceiling of the views alone. With
``--scenario checkout``, the same for the simulated checkout: 1 view, its views, its views with
the scale's weight (``fusion_ablation_checkout.md``).

    python benchmarks/fusion_ablation.py [--scenario avocado] [--epochs 6] [--item-epochs 10]
                                         [--ceiling-seconds 480] [--test-items 1000]

Each row with all the views is a station trained the demo's way (SimCLR, ResNet-10, 64 px, on
the same unlabeled pool, then the item stage on the 600 labeled fruit with that row's inputs,
its linear layer the head: ``train/station_fit.py``), exported to int8 and scored with its own
bundle's head; the row with the sensor takes the views-only row's pretrained backbone
(``pretrained.ckpt``) and runs its own item stage with the readings. The one-view row fits a
logistic head on one view's embeddings of the RGB station's backbone. Scored on fruit of the
line's world, decided as the station decides them (int8 embeddings, view pooling, sensor
features, head).

The ceiling: the same backbone trained from scratch, supervised, on the views alone with the
labels of the whole pool (2,000 fruit), for the demo's training budget (``--ceiling-seconds``:
SimCLR's 6 minutes and the item stage's 2), exported and scored the same way. It bounds what the
views give at this resolution, so the rows say whether a gap is in the features or the renders.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, matthews_corrcoef, recall_score

from sortline.edge_runtime.model.embedder import OnnxEmbedder
from sortline.edge_runtime.model.fusion import FusionSpec, fit_fusion_head, fuse
from sortline.export.build import ExportConfig, export_model
from sortline.train.backbones import build_backbone
from sortline.train.data import model_input, views_to_uint8
from sortline.train.demo import DemoConfig, train_station_bundle
from sortline.train.sim_data import SimItem, sim_items
from sortline.train.station_fit import FitConfig, train_on_items

RGB = ("r", "g", "b")
CASES = {  # name, backbone channels (None: the scenario's), views used, sensor
    "avocado": [("1 RGB view", RGB, 1, "none"),
                ("4 RGB views", RGB, 4, "none"),
                ("4 RGB+NIR views", None, 4, "none"),
                ("4 RGB+NIR views + taps", None, 4, "taps")],
    "checkout": [("1 view", None, 1, "none"),
                 ("2 views", None, 2, "none"),
                 ("2 views + weight", None, 2, "scale")],
}


def _views(items: list[SimItem], n: int) -> list[SimItem]:
    return [SimItem(item.label, item.views[:n], item.readings) for item in items]


def _score(name: str, embedder, labeled, test, classes, views: int, sensor: str, seed: int,
           readings_expected: int = 5) -> dict:
    fusion = FusionSpec.for_sensor(sensor, readings_expected if sensor != "none" else 0)
    fitted = fit_fusion_head(embedder, _views(labeled, views), classes, fusion, seed=seed)
    features = np.stack([fuse(embedder.embed_views(item.views), item.readings, fitted.fusion)
                         for item in _views(test, views)])
    return _row(name, np.array([item.label for item in test]), fitted.head.predict_proba(features).argmax(axis=1),
                classes, {"head": "fitted"})


def _score_station(name: str, trained, test, classes) -> dict:
    """A row decided by a trained station's own bundle: its int8 backbone, its fusion, its head."""
    manifest, head = trained.manifest, trained.bundle.load_head()
    embedder = OnnxEmbedder(trained.bundle.backbone_path, manifest.input)
    features = np.stack([fuse(embedder.embed_views(item.views), item.readings, manifest.fusion) for item in test])
    return _row(name, np.array([item.label for item in test]), head.predict_proba(features).argmax(axis=1), classes,
                {"head": "the item stage's" if manifest.metrics["item_stage"]["ran"] else "fitted",
                 "item_stage": {k: manifest.metrics["item_stage"].get(k) for k in ("steps", "seconds", "sensor")}})


def _row(name: str, truth: np.ndarray, predicted: np.ndarray, classes, extra: dict | None = None) -> dict:
    recall = recall_score(truth, predicted, labels=range(len(classes)), average=None, zero_division=0)
    row = {"inputs": name, "mcc": round(float(matthews_corrcoef(truth, predicted)), 4),
           "accuracy": round(float(accuracy_score(truth, predicted)), 4),
           "recall": {c: round(float(r), 3) for c, r in zip(classes, recall)}, **(extra or {})}
    print(f"  {name:34s} MCC {row['mcc']:.4f}  recall {row['recall']}", flush=True)
    return row


def _ceiling(trained, pool_items: list[SimItem], seconds: float, work: Path, seed: int):
    """The same architecture from scratch, supervised on the pool's views with all its labels."""
    spec = trained.manifest.input
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    backbone = build_backbone("resnet10", in_channels=len(spec.channels))
    report = train_on_items(backbone, pool_items, trained.manifest.labels, spec,
                            FitConfig(item_epochs=1000.0, item_seconds=seconds, seed=seed), work).report
    rng = np.random.default_rng(seed)
    views = np.concatenate([views_to_uint8(item.views, spec) for item in pool_items[:64]])
    sample = model_input(views[rng.choice(len(views), size=min(256, len(views)), replace=False)], spec)
    exported = export_model(backbone, spec, sample, work, ExportConfig(precision="int8", seed=seed))
    return exported.embedder, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float, default=6.0)
    parser.add_argument("--item-epochs", type=float, default=30.0, help="the item stage (0: none)")
    parser.add_argument("--ceiling-seconds", type=float, default=480.0)
    parser.add_argument("--test-items", type=int, default=1000)
    parser.add_argument("--pool-fruit", type=int, default=2000, help="unlabeled fruit to pretrain on (and the "
                        "ceiling's labeled ones)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--scenario", choices=sorted(CASES), default="avocado")
    parser.add_argument("--name", help="results file name (default fusion_ablation, or _checkout)")
    args = parser.parse_args()
    args.name = args.name or ("fusion_ablation" if args.scenario == "avocado" else f"fusion_ablation_{args.scenario}")
    cases = CASES[args.scenario]
    rows, backbones = [], {}
    started_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sortline-ablation-") as work:
        full_views = max(views for _, _, views, _ in cases)
        for _, channels, views, sensor in cases:  # one station for each set of inputs with all the views
            key = (channels, sensor if views == full_views else "none")
            if key in backbones:
                continue
            name = f"{'rgb' if channels else 'own'}-{key[1]}"
            pretrained = Path(work) / f"{'rgb' if channels else 'own'}-none" / "pretrained.ckpt"
            started = time.perf_counter()
            cfg = DemoConfig(epochs=args.epochs, item_epochs=args.item_epochs, channels=channels, seed=args.seed,
                             pool_fruit=args.pool_fruit, progress=True, scenario=args.scenario, sensor=key[1],
                             checkpoint=pretrained if pretrained.is_file() else None)
            backbones[key] = train_station_bundle(cfg, Path(work) / name, {})
            print(f"{name}: trained and exported in {time.perf_counter() - started:.0f} s", flush=True)
        first = backbones[(None, "none")]
        classes = first.manifest.labels
        labeled = list(sim_items(first.scenarios["labeled"], 600))
        test = list(sim_items(first.scenarios["line"], args.test_items, desc="render test"))
        readings = first.scenarios["line"].readings_expected
        for name, channels, views, sensor in cases:
            if views == full_views:
                rows.append(_score_station(name, backbones[(channels, sensor)], test, classes))
                if sensor != "none":  # the same station when its sensor has failed: every reading missing
                    rows.append(_score_station(f"{name}, the sensor failed", backbones[(channels, sensor)],
                                               [SimItem(item.label, item.views, []) for item in test], classes))
                continue
            trained = backbones[(channels, "none")]
            embedder = OnnxEmbedder(trained.bundle.backbone_path, trained.manifest.input)
            rows.append(_score(name, embedder, labeled, test, classes, views, sensor, args.seed, readings))
        ceiling = None
        if args.ceiling_seconds > 0:
            pool = list(sim_items(first.scenarios["pool"], args.pool_fruit, desc="render pool with labels"))
            embedder, report = _ceiling(first, pool, args.ceiling_seconds, Path(work) / "ceiling", args.seed)
            views = first.manifest.input.views
            what = "RGB+NIR views" if "nir" in first.manifest.input.channels else "views"
            ceiling = _score(f"ceiling: {views} {what}, supervised", embedder, labeled, test, classes, views, "none",
                             args.seed)
            ceiling["train"] = {k: report.get(k) for k in ("items", "steps", "seconds", "images_per_s")}
    _report(args, rows, ceiling, test, classes, time.perf_counter() - started_all)


def _report(args, rows: list[dict], ceiling: dict | None, test, classes, seconds: float) -> None:
    counts = np.bincount([item.label for item in test], minlength=len(classes))
    stage = f"then the item stage, {args.item_epochs:g} epochs on the 600 labeled items" if args.item_epochs else \
        "no item stage"
    line = "avocado line" if args.scenario == "avocado" else "checkout"
    md = [f"# Fusion ablation on the simulated {line}\n",
          f"SimCLR ResNet-10, 64 px, {args.epochs:g} epochs on {args.pool_fruit:,} unlabeled items, {stage}; "
          f"int8; each row with all the views decided by its own station's head (the item stage's linear layer, "
          f"trained with that row's inputs; a fitted logistic head where the stage is off), the one-view row and "
          f"the ceiling by a logistic head fitted on the 600 labeled items; scored on {len(test)} items of the "
          f"line's world "
          f"({dict(zip(classes, counts.tolist()))}). "
          f"{seconds / 60:.0f} minutes in all.\n"]
    per_class = len(classes) <= 6  # else the lowest and the mean recall
    columns = [f"recall {c}" for c in classes] if per_class else ["lowest recall", "mean recall"]
    md += ["| inputs | MCC | " + " | ".join(columns) + " | of the ceiling's MCC |",
           "|---|---:|" + "---:|" * len(columns) + "---:|"]
    for r in [*rows, *([ceiling] if ceiling else [])]:
        share = f"{r['mcc'] / ceiling['mcc']:.2f}" if ceiling and r is not ceiling else "–"
        recalls = [r["recall"][c] if n else "–" for c, n in zip(classes, counts)]  # a class the test lacks: no recall
        seen = [x for x in recalls if x != "–"]
        cells = recalls if per_class else [min(seen), round(float(np.mean(seen)), 3)]
        md.append(f"| {r['inputs']} | {r['mcc']} | " + " | ".join(str(x) for x in cells) + f" | {share} |")
    if ceiling:
        md.append(f"\nThe ceiling trained from scratch for {ceiling['train']['seconds']} s "
                  f"({ceiling['train']['steps']} steps) on the views of {args.pool_fruit:,} labeled items.")
    if args.scenario == "avocado":
        rgb, rgbn = rows[1]["recall"]["internal"], rows[2]["recall"]["internal"]
        md.append(f"\nNIR and the internal defect: recall of `internal` {rgb} with 4 RGB views, {rgbn} with "
                  f"RGB+NIR ({100 * (rgbn - rgb):+.1f} points).")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text("\n".join(md) + "\n")
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {"scenario": args.scenario, "epochs": args.epochs, "item_epochs": args.item_epochs, "rows": rows,
         "ceiling": ceiling}, indent=2) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
