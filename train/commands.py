"""Handlers of the desktop subcommands. The CLI (edge_runtime/cli.py) imports this module only
when one of them runs, so edge installs never import torch."""

from __future__ import annotations

import argparse
from pathlib import Path

from sortline.edge_runtime.datasets import DatasetError, load_image_set
from sortline.edge_runtime.preprocess import InputSpec
from sortline.export.build import ExportConfig, build_bundle, preprocess_set

from .checkpoint import load_checkpoint


def demo(args: argparse.Namespace) -> dict:
    from .demo import DemoConfig, run_demo

    summary = run_demo(DemoConfig(items=args.items, out=args.out, pool_fruit=args.pool_fruit,
                                  labeled_fruit=args.labeled_fruit, epochs=args.epochs, seed=args.seed,
                                  faults=args.faults, progress=not args.quiet))
    print((Path(args.out) / "summary.md").read_text())
    print(f"bundle, event log, plots and summary.json are in {args.out}/")
    return summary


def export(args: argparse.Namespace) -> dict:
    backbone, spec, meta = load_checkpoint(args.checkpoint)
    if "nir" in spec.channels:
        raise DatasetError("this checkpoint wants a NIR channel, which image files do not have; "
                         "its bundle is written by the run that trained it (sortline demo)")
    config = ExportConfig(precision=args.precision, max_drop_points=args.max_drop, force=args.force)
    calibration_set = load_image_set(args.calibration)
    calibration, calibration_set = preprocess_set(calibration_set, spec, skip_unreadable=args.skip_unreadable)
    if args.labeled is not None:
        images = load_image_set(args.labeled)
        if not images.labeled:
            raise DatasetError(f"{args.labeled}: has no labels; the accuracy check and the head need them")
        labeled = preprocess_set(images, spec, skip_unreadable=args.skip_unreadable)
    else:  # the calibration images, when they carry labels
        labeled = (calibration, calibration_set) if calibration_set.labeled else None
    bundle, report = build_bundle(backbone, spec, calibration, args.out, config, labeled=labeled,
                                  name=args.name or Path(args.checkpoint).stem, metrics={"checkpoint": meta})
    probe = report.get("probe")
    print(f"{bundle.root}: {config.precision} backbone, {len(bundle.manifest.labels)} classes, "
          f"parity cosine ≥ {report['onnx_parity_fp32']['min_cosine']:.5f}, "
          f"size {report['model_bytes'][config.precision] / 1e6:.1f} MB"
          + (f", probe {probe['accuracy_fp32']:.2%} → {probe[f'accuracy_{config.precision}']:.2%}" if probe else ""))
    return {"bundle": str(bundle.root), **report}


def pretrain(args: argparse.Namespace) -> dict:
    """Self-supervised pretraining on an image data set (labels, if any, are not used)."""
    import numpy as np
    import torch

    from .augment import MultiChannelAugment
    from .backbones import build_backbone
    from .checkpoint import save_checkpoint
    from .data import PairDataset, views_to_uint8
    from .loop import TrainConfig, train
    from .methods import build_method

    spec = InputSpec(size=args.image_size, channels=("r", "g", "b"), mean=(0.5,) * 3, std=(0.25,) * 3, views=1)
    images = load_image_set(args.data)
    frames = [frame for _, frame in images.read(skip_unreadable=args.skip_unreadable)]
    pool = np.concatenate([views_to_uint8([f], spec) for f in frames])
    torch.manual_seed(args.seed)
    backbone = build_backbone(args.backbone, in_channels=len(spec.channels), weights=args.weights)
    model = build_method(args.method, backbone)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = train(model, PairDataset(pool, MultiChannelAugment(spec)),
                   TrainConfig(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                               max_seconds=args.max_seconds, log_path=out.with_suffix(".csv")),
                   progress=not args.quiet)
    save_checkpoint(out, model.backbone.cpu().eval(), spec, method=args.method, data=str(args.data),
                    images=len(pool), train=result.to_dict())
    print(f"{out}: {args.method} {args.backbone}, {result.steps} steps on {len(pool)} images in "
          f"{result.seconds:.0f} s ({result.images_per_s:.0f} images/s), loss {result.to_dict()['first_loss']} → "
          f"{result.to_dict()['final_loss']}")
    return {"checkpoint": str(out), "method": args.method, "images": len(pool), **result.to_dict()}
