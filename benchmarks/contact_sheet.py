"""A contact sheet of the simulated avocado line's classes: for each class, fruit with their four
views in RGB and, below, in NIR, so a person can check the renders against their description
(hardware/sim/avocado.py, docs/defects.md).

    python benchmarks/contact_sheet.py [--per-class 1] [--seed 3] [--out docs/avocado-classes.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from sortline.hardware.sim.avocado import CLASSES, FRAME_PX, VIEWS, make_fruit, render_views

SCALE = 1  # views at their rendered 80 px
LABEL_W = 150


def _row(views: list[np.ndarray]) -> np.ndarray:
    big = [cv2.resize(v, None, fx=SCALE, fy=SCALE, interpolation=cv2.INTER_NEAREST) for v in views]
    gap = np.full((FRAME_PX * SCALE, 4, 3), 255, np.uint8)
    return np.concatenate([x for v in big for x in (v, gap)][:-1], axis=1)


def _label(text: str, height: int) -> np.ndarray:
    panel = np.full((height, LABEL_W, 3), 255, np.uint8)
    for i, line in enumerate(text.split("\n")):
        cv2.putText(panel, line, (8, 28 + 22 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (30, 36, 48), 1, cv2.LINE_AA)
    return panel


def sheet(per_class: int, seed: int) -> np.ndarray:
    rows = []
    for label, name in enumerate(CLASSES):
        for k in range(per_class):
            fruit = make_fruit(100 + 7 * k, seed, label=label)
            views = render_views(fruit, FRAME_PX, VIEWS)
            rgb = _row([v.rgb for v in views])
            nir = _row([cv2.cvtColor(v.nir, cv2.COLOR_GRAY2RGB) for v in views])
            block = np.concatenate([rgb, np.full((4, rgb.shape[1], 3), 255, np.uint8), nir], axis=0)
            text = f"{name}\nripeness {fruit.ripeness:.2f}\nRGB (top)\nNIR (below)"
            rows.append(np.concatenate([_label(text, block.shape[0]), block], axis=1))
            rows.append(np.full((12, rows[-1].shape[1], 3), 255, np.uint8))
    return np.concatenate(rows[:-1], axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--per-class", type=int, default=1)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("docs/avocado-classes.png"))
    args = parser.parse_args()
    image = sheet(args.per_class, args.seed)
    if not cv2.imwrite(str(args.out), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
        raise SystemExit(f"{args.out}: could not write")
    print(f"{args.out}: {image.shape[1]}×{image.shape[0]}")


if __name__ == "__main__":
    main()
