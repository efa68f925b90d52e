"""Does the model look at the defect? Grad-CAM on the simulated avocado line's defect items,
scored against where the renderer put the scab and the bruise.

    python benchmarks/defect_gradcam.py --checkpoint demo-out/backbone.ckpt [--items 1000]
    python benchmarks/defect_gradcam.py --checkpoint simclr.ckpt --item-stage   # the stage here

``--checkpoint``: a backbone the demo's way (``sortline demo --sensor none`` leaves the one its
bundle holds, item stage included, in ``demo-out/backbone.ckpt``). A views-only head (mean and
max of the four views, as the station pools them) is fitted on the demo's 600 labelled fruit;
then for every fruit of the line's world whose class it gets right and that has a scab (classes
external and both) or a bruise (internal and both), each view's Grad-CAM for the item's class
(train/explain.py, the heads' pooling included) is compared with that view's defect mask
(hardware/sim/avocado.py ``defect_masks``), on the views where the defect covers at least
``--min-pixels`` pixels:

- **pointing game** (Zhang et al. 2016): the heatmap's peak lies on the defect, within half a
  Grad-CAM cell, beside the chance of that for a point drawn on the fruit at random;
- **energy on the defect**: the share of the heatmap's mass on the defect, against the share of
  the fruit the defect covers (a heatmap blind to the defect would get the latter: the lift is
  the ratio).

Scabs are judged in every view, bruises too (a bruise is visible only in NIR; the heatmap is
over the whole input). Results: ``benchmarks/results/defect_gradcam.{md,json}`` and
``docs/defect-gradcam.png`` (RGB, NIR, heatmap and the mask's outline for a few items).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sortline.edge_runtime.model.fusion import FusionSpec, fit_fusion_head  # noqa: E402
from sortline.hardware.sim.avocado import AvocadoScenario, defect_masks, make_fruit  # noqa: E402
from sortline.train.checkpoint import load_checkpoint  # noqa: E402
from sortline.train.data import views_to_uint8  # noqa: E402
from sortline.train.demo import worlds  # noqa: E402
from sortline.train.evaluate import embed  # noqa: E402
from sortline.train.explain import grad_cam, pick_stage  # noqa: E402
from sortline.train.sim_data import sim_items  # noqa: E402
from sortline.train.station_fit import DEFAULT_ITEM_EPOCHS, FitConfig, train_on_items  # noqa: E402


class TorchEmbedder:
    """The checkpoint's fp32 embeddings (train/evaluate.py ``embed``): the numbers Grad-CAM
    differentiates, as an Embedder for ``fit_fusion_head``."""

    def __init__(self, backbone, spec) -> None:
        self.backbone, self.spec = backbone, spec

    def embed_views(self, views) -> np.ndarray:
        return embed(self.backbone, views_to_uint8(views, self.spec), self.spec)


def score_view(heat: np.ndarray, mask: np.ndarray, inside: np.ndarray,
               tolerance: int) -> tuple[bool, float, float, float]:
    """(peak on the defect within ``tolerance`` px, the chance of that for a point drawn on the
    fruit at random, heatmap mass on the defect, its share of the fruit)."""
    on = mask > 0.5
    near = cv2.dilate(on.astype(np.uint8), np.ones((2 * tolerance + 1,) * 2, np.uint8)) > 0
    peak = np.unravel_index(int(heat.argmax()), heat.shape)
    mass = float((heat * on).sum() / max(heat.sum(), 1e-12))
    return bool(near[peak]), float(near[inside].mean()), mass, float(on.sum() / max(inside.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--item-stage", action="store_true",
                        help="run the item stage (train/station_fit.py, its defaults) on the labelled fruit first, "
                             "for a checkpoint saved before it")
    parser.add_argument("--items", type=int, default=1000, help="fruit of the line's world to look at")
    parser.add_argument("--labeled", type=int, default=600)
    parser.add_argument("--min-pixels", type=int, default=12, help="a view counts where the defect covers this many")
    parser.add_argument("--seed", type=int, default=0, help="the demo's seed (its worlds)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--png", type=Path, default=Path("docs/defect-gradcam.png"))
    args = parser.parse_args()
    started = time.perf_counter()
    backbone, spec, meta = load_checkpoint(args.checkpoint)
    seeds = worlds(args.seed)
    labeled_world, line_world = AvocadoScenario(seeds["labeled"]), AvocadoScenario(seeds["line"])
    classes = ("A", "external", "internal", "both")
    labeled = list(sim_items(labeled_world, args.labeled, desc="labelled fruit"))
    if args.item_stage:
        import tempfile

        with tempfile.TemporaryDirectory() as work:
            stage_report = train_on_items(backbone, labeled, classes, spec,
                                          FitConfig(item_epochs=DEFAULT_ITEM_EPOCHS, seed=args.seed),
                                          Path(work)).report
        meta = {"method": f"{meta.get('method')} + item stage ({stage_report.get('steps')} steps, "
                          f"{stage_report.get('seconds')} s)"}
    embedder = TorchEmbedder(backbone, spec)
    fitted = fit_fusion_head(embedder, labeled, classes, FusionSpec.for_sensor("none", 0))
    stage, cells = pick_stage(backbone, spec.size)
    tolerance = max(1, spec.size // cells[0] // 2)
    scores: dict[str, list[tuple[bool, float, float, float]]] = {"scab": [], "bruise": []}
    examples, right, looked = [], 0, 0
    for item_id, item in enumerate(sim_items(line_world, args.items, desc="line fruit")):
        if item.label == 0:
            continue
        looked += 1
        views = views_to_uint8(item.views, spec)
        cam = grad_cam(backbone, fitted.head, views, spec, stage=stage, fusion=fitted.fusion)
        if int(cam.predicted[0]) != item.label:
            continue
        right += 1
        masks = defect_masks(make_fruit(item_id, line_world.seed), size=spec.size, views=spec.views)
        for kind in ("scab", "bruise"):
            for v in range(spec.views):
                mask = getattr(masks, kind)[v]
                if (mask > 0.5).sum() >= args.min_pixels:
                    scores[kind].append(score_view(cam.heatmaps[v], mask, masks.fruit[v], tolerance))
                    if len(examples) < 6 and kind == ("scab", "bruise")[len(examples) % 2]:
                        examples.append((item_id, item, v, cam.heatmaps[v], mask, kind))
    rows = []
    for kind, got in scores.items():
        if not got:
            continue
        hits, chance, mass, share = (np.array(x, np.float64) for x in zip(*got))
        rows.append({"defect": kind, "views": len(got), "pointing_game": round(float(hits.mean()), 3),
                     "pointing_by_chance": round(float(chance.mean()), 3),
                     "energy_on_defect": round(float(mass.mean()), 3),
                     "defect_share_of_fruit": round(float(share.mean()), 3),
                     "lift": round(float(mass.mean() / max(share.mean(), 1e-9)), 2)})
    report = {"checkpoint": str(args.checkpoint), "method": meta.get("method"), "stage": stage, "cells": list(cells),
              "tolerance_px": tolerance, "defect_items": looked, "right": right, "rows": rows,
              "seconds": round(time.perf_counter() - started, 1)}
    _write(args, report, examples, spec)


def _write(args, report: dict, examples: list, spec) -> None:
    md = ["# Grad-CAM on the defect items of the simulated avocado line\n",
          f"Backbone `{report['checkpoint']}` ({report['method']}), a views-only head on {args.labeled} labelled "
          f"fruit; Grad-CAM at stage {report['stage']} ({report['cells'][0]}×{report['cells'][1]} cells at "
          f"{spec.size} px), pointing tolerance {report['tolerance_px']} px. Of {report['defect_items']} defect "
          f"fruit among {args.items}, {report['right']} classified right are scored, on each view where the defect "
          f"covers at least {args.min_pixels} pixels. {report['seconds']:.0f} s.\n",
          "| defect | views | pointing game | by chance | heatmap mass on the defect | defect's share of the fruit "
          "| lift |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    md += [f"| {r['defect']} | {r['views']} | {r['pointing_game']} | {r['pointing_by_chance']} | "
           f"{r['energy_on_defect']} | {r['defect_share_of_fruit']} | {r['lift']} |" for r in report["rows"]]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "defect_gradcam.md").write_text("\n".join(md) + "\n")
    (args.out / "defect_gradcam.json").write_text(json.dumps(report, indent=2) + "\n")
    print("\n".join(md))
    if not examples:
        return
    fig, axes = plt.subplots(len(examples), 3, figsize=(7.5, 2.5 * len(examples)), squeeze=False)
    for row, (item_id, item, v, heat, mask, kind) in zip(axes, examples):
        view = item.views[v]
        rgb = cv2.resize(view.rgb, (spec.size, spec.size), interpolation=cv2.INTER_AREA)
        nir = cv2.resize(view.nir, (spec.size, spec.size), interpolation=cv2.INTER_AREA)
        row[0].imshow(rgb)
        row[1].imshow(nir, cmap="gray")
        row[2].imshow(rgb)
        row[2].imshow(heat, cmap="jet", alpha=0.45)
        for ax in row:
            ax.contour(mask > 0.5, levels=[0.5], colors="white", linewidths=1)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(f"#{item_id} {kind}, view {v}", fontsize=8)
    axes[0][0].set_title("RGB", fontsize=9)
    axes[0][1].set_title("NIR", fontsize=9)
    axes[0][2].set_title("Grad-CAM", fontsize=9)
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")


if __name__ == "__main__":
    main()
