"""Training speed of every method on every backbone, on this machine.

    python benchmarks/train_speed.py [--backbones resnet10,resnet18,...] [--methods ...]
        [--image-size 64] [--batch-size 64] [--steps 6] [--out DIR]

Each (backbone, method) trains for ``--steps`` steps after two warm-up steps (which build the
kernels) on random RGB images through the real loop: augmentation in the main process, bf16
autocast where the CPU has it, channels-last. Images/s counts every augmented view the
backbone saw (RotNet: each of the four rotations; Jigsaw: the image, not its nine tiles).
Ratios are against SimCLR on the same backbone, measured in the same run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from sortline.edge_runtime.model.preprocess import InputSpec
from sortline.train.augment import MultiChannelAugment
from sortline.train.backbones import BACKBONES, build_backbone
from sortline.train.data import ViewsDataset
from sortline.train.loop import TrainConfig, bf16_available, train
from sortline.train.methods import METHODS, build_method

ORDER = ["simclr", "moco", "byol", "simsiam", "barlow", "rotnet", "jigsaw", "supcon", "distill"]


def measure(backbone_name: str, method: str, images: np.ndarray, labels: np.ndarray, spec: InputSpec,
            batch: int, steps: int) -> float:
    torch.manual_seed(0)
    backbone = build_backbone(backbone_name, in_channels=3)
    extra = {"teacher": build_backbone(backbone_name, in_channels=3)} if method == "distill" else {}
    model = build_method(method, backbone, **extra)
    if method == "distill":  # half the batch unlabeled, as in use: those rows also go through the teacher
        labels = np.where(np.arange(len(labels)) % 2 == 0, labels, -1)
    dataset = ViewsDataset(images, MultiChannelAugment(spec), views=model.views,
                           labels=labels if model.needs_labels else None)
    per_epoch = len(images) // batch
    train(model, dataset, TrainConfig(epochs=2 / per_epoch, batch_size=batch, warmup_steps=1), progress=False)
    result = train(model, dataset, TrainConfig(epochs=steps / per_epoch, batch_size=batch, warmup_steps=1),
                   progress=False)
    views = result.images * (4 if method == "rotnet" else 1)
    return views / result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--methods", default=",".join(ORDER))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    backbones = args.backbones.split(",")
    methods = args.methods.split(",")
    if "simclr" not in methods:
        methods.insert(0, "simclr")  # the baseline of every ratio
    unknown = (set(backbones) - set(BACKBONES)) | (set(methods) - set(METHODS))
    if unknown:
        parser.error(f"unknown names {sorted(unknown)}")
    spec = InputSpec.for_channels(("r", "g", "b"), args.image_size)
    rng = np.random.default_rng(0)
    n = args.batch_size * 4
    images = rng.integers(0, 255, (n, 3, args.image_size, args.image_size), dtype=np.uint8)
    labels = np.arange(n) % 16
    results: dict[str, dict[str, float]] = {}
    for b in backbones:
        results[b] = {}
        for m in methods:
            results[b][m] = round(measure(b, m, images, labels, spec, args.batch_size, args.steps), 1)
            print(f"{b:20s} {m:8s} {results[b][m]:8.1f} images/s", flush=True)
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    lines = [f"# Training speed: images/s (ratio to SimCLR on the same backbone), {args.image_size} px, "
             f"batch {args.batch_size}, {device}, bf16 autocast {bf16_available(torch.device('cpu'))}", "",
             "| backbone | " + " | ".join(methods) + " |", "|---|" + "---:|" * len(methods)]
    for b in backbones:
        base = results[b]["simclr"]
        lines.append(f"| {b} | " + " | ".join(f"{results[b][m]:.0f} ({results[b][m] / base:.2f}×)" for m in methods)
                     + " |")
    lines += ["", f"Command: `python benchmarks/train_speed.py --image-size {args.image_size} "
              f"--batch-size {args.batch_size} --steps {args.steps}`", ""]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_speed.md").write_text("\n".join(lines))
    (args.out / "train_speed.json").write_text(json.dumps({"config": vars(args) | {"out": str(args.out)},
                                                           "images_per_s": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
