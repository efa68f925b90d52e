"""Training speed of every method on every backbone, on this machine; and SimCLR beside its peer.

    python benchmarks/train_speed.py [--backbones resnet10,resnet18,...] [--methods ...]
        [--image-size 64] [--batch-size 64] [--steps 6] [--out DIR]
    python benchmarks/train_speed.py --peer DATA [--backbones resnet18,resnet10] [--image-size 64]
        [--batch-size 128] [--steps 10] [--peer-workers 2]

Each (backbone, method) trains for ``--steps`` steps after two warm-up steps (which build the
kernels) on random RGB images through the real loop: augmentation in the main process, bf16
autocast where the CPU has it, channels-last. Images/s counts every augmented view the
backbone saw (RotNet: each of the four rotations; Jigsaw: the image, not its nine tiles).
Ratios are against SimCLR on the same backbone, measured in the same run.

``--peer DATA`` (an image set: folder or split file) times SimCLR as ``sortline pretrain`` runs it
against LightlySSL's SimCLR as its documentation writes it (image files decoded by PIL in
DataLoader workers, its SimCLRTransform, NT-Xent, SGD, fp32; a benchmark-only dependency, ``pip
install -c constraints.txt -e '.[peer]'``), with the same backbone, resolution and batch, in one
process, one after the other; and the peer again with its images held in memory at the working
resolution, to show what decoding costs it. It also splits sortline's step into its parts
(augmentation, forward, backward, optimiser). Writes ``train_speed_peer.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_name  # benchmarks/machine.py

from sortline.edge_runtime.datasets import load_image_set
from sortline.edge_runtime.model.preprocess import InputSpec
from sortline.train.augment import MultiChannelAugment
from sortline.train.backbones import BACKBONES, build_backbone
from sortline.train.data import ViewsDataset, image_set_arrays
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


def sortline_simclr(images: np.ndarray, spec: InputSpec, backbone: str, batch: int, steps: int,
                    amp: str = "auto") -> dict:
    """SimCLR through the real loop, as ``sortline pretrain`` runs it: images kept decoded at
    the working resolution, whole batches augmented at once."""
    torch.manual_seed(0)
    model = build_method("simclr", build_backbone(backbone, in_channels=3))
    dataset = ViewsDataset(images, MultiChannelAugment(spec), views=2)
    per_epoch = len(images) // batch
    train(model, dataset, TrainConfig(epochs=3 / per_epoch, batch_size=batch, warmup_steps=1, amp=amp), progress=False)
    result = train(model, dataset, TrainConfig(epochs=steps / per_epoch, batch_size=batch, warmup_steps=1, amp=amp),
                   progress=False)
    return {"images_per_s": result.steps * batch / result.seconds, "steps": result.steps}


def step_parts(images: np.ndarray, spec: InputSpec, backbone: str, batch: int, steps: int) -> dict:
    """Seconds a step spends in each part, timed one after the other (medians over ``steps``)."""
    torch.manual_seed(0)
    model = build_method("simclr", build_backbone(backbone, in_channels=3)).to(memory_format=torch.channels_last)
    model.train()
    dataset = ViewsDataset(images, MultiChannelAugment(spec), views=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    bf16 = bf16_available(torch.device("cpu"))
    parts: dict[str, list[float]] = {"augmentation": [], "forward": [], "backward": [], "optimiser": []}
    for step in range(steps + 2):
        t0 = time.perf_counter()
        first = step * batch % (len(images) - batch + 1)
        views, labels = dataset.__getitems__(list(range(first, first + batch)))
        t1 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = model(views, labels)
        t2 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t3 = time.perf_counter()
        optimizer.step()
        t4 = time.perf_counter()
        if step >= 2:
            for name, seconds in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[name].append(seconds)
    return {name: float(np.median(v)) for name, v in parts.items()}


def lightly_simclr(paths: list[Path] | None, images: np.ndarray | None, backbone: str, size: int, batch: int,
                   steps: int, workers: int) -> dict:
    """LightlySSL 1.6's SimCLR as its documentation's PyTorch example writes it, on the same
    backbone: image files (``paths``) or images in memory at the working resolution (``images``)."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform
    from PIL import Image

    transform = SimCLRTransform(input_size=size)

    class Files(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(paths) if paths is not None else len(images)

        def __getitem__(self, i: int):
            if paths is not None:
                image = Image.open(paths[i]).convert("RGB")
            else:
                image = Image.fromarray(np.ascontiguousarray(images[i].transpose(1, 2, 0)))
            return transform(image), 0

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = build_backbone(backbone, in_channels=3)
            self.projection_head = SimCLRProjectionHead(self.backbone.embedding_dim, 512, 128)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.projection_head(self.backbone(x))

    torch.manual_seed(0)
    model = Model()
    criterion = NTXentLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.06)
    loader = torch.utils.data.DataLoader(Files(), batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                                         persistent_workers=workers > 0)
    done, start, warm = 0, 0.0, 3
    while done < steps + warm:
        for (x0, x1), _ in loader:
            loss = criterion(model(x0), model(x1))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            done += 1
            if done == warm:
                start = time.perf_counter()
            if done == steps + warm:
                break
    return {"images_per_s": steps * batch / (time.perf_counter() - start), "steps": steps}


def peer(args: argparse.Namespace) -> None:
    image_set = load_image_set(args.peer)
    data = image_set_arrays(image_set, args.image_size, progress=True)
    spec, n = data.spec, args.batch_size
    bf16 = bf16_available(torch.device("cpu"))
    backbones = args.backbones.split(",")
    runs = {
        "sortline (as `sortline pretrain`: decoded once, batched augmentation, channels-last, bf16 where the CPU "
        "has it)": lambda b: sortline_simclr(data.images, spec, b, n, args.steps),
        "sortline, fp32": lambda b: sortline_simclr(data.images, spec, b, n, args.steps, "off"),
        f"LightlySSL 1.6 SimCLR (its example: files, PIL, {args.peer_workers} workers, fp32)": lambda b: lightly_simclr(
            list(image_set.paths), None, b, args.image_size, n, args.steps, args.peer_workers),
        f"LightlySSL, images in memory at {args.image_size} px": lambda b: lightly_simclr(
            None, data.images, b, args.image_size, n, args.steps, args.peer_workers),
    }
    peer_run = list(runs)[2]
    rows: dict[str, dict[str, dict]] = {}
    parts: dict[str, dict[str, float]] = {}
    for backbone in backbones:
        rows[backbone] = {}
        for name, run in runs.items():
            rows[backbone][name] = run(backbone)
            print(f"{backbone} {name}: {rows[backbone][name]['images_per_s']:.1f} images/s", flush=True)
        parts[backbone] = step_parts(data.images, spec, backbone, n, args.steps)
    cpu = args.cpu or cpu_name()
    lines = [f"# SimCLR beside LightlySSL: {', '.join(backbones)}, {args.image_size} px, batch {n}",
             "", f"CPU: {cpu}, {torch.get_num_threads()} threads; bf16 autocast available: {bf16}. "
             f"{len(data.images)} images of `{args.peer}`; {args.steps} timed steps after the warm-up, one run "
             "after the other in one process. Images/s counts images (two views each).", "",
             "| backbone | run | images/s | s per epoch | × LightlySSL |", "|---|---|---:|---:|---:|"]
    for backbone, by_run in rows.items():
        base = by_run[peer_run]["images_per_s"]
        lines += [f"| {backbone} | {name} | {row['images_per_s']:.0f} | {len(data.images) / row['images_per_s']:.1f} | "
                  f"{row['images_per_s'] / base:.2f} |" for name, row in by_run.items()]
    lines += ["", "sortline's step, part by part (median seconds, timed one after the other):", "",
              "| backbone | " + " | ".join(next(iter(parts.values()))) + " |", "|---|" + "---:|" * 4]
    for backbone, by_part in parts.items():
        total = sum(by_part.values())
        lines.append(f"| {backbone} | " + " | ".join(f"{s:.3f} ({s / total:.0%})" for s in by_part.values()) + " |")
    lines += ["", f"Command: `python benchmarks/train_speed.py --peer {args.peer} --backbones {args.backbones} "
              f"--image-size {args.image_size} --batch-size {n} --steps {args.steps} "
              f"--peer-workers {args.peer_workers}`", ""]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train_speed_peer.md").write_text("\n".join(lines))
    (args.out / "train_speed_peer.json").write_text(json.dumps(
        {"config": {k: str(v) for k, v in vars(args).items()}, "runs": rows, "step_parts_s": parts}, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--methods", default=",".join(ORDER))
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--peer", type=Path, help="an image set: time SimCLR beside LightlySSL's on it")
    parser.add_argument("--peer-workers", type=int, default=2, help="the peer's DataLoader workers")
    parser.add_argument("--cpu", help="the CPU's name for the table (default: lscpu's)")
    args = parser.parse_args()
    if args.peer:
        return peer(args)
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
