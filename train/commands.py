"""Handlers of the desktop subcommands. The CLI (edge_runtime/cli.py) imports this module only
when one of them runs, so edge installs never import torch."""

from __future__ import annotations

import argparse
from pathlib import Path

from sortline.edge_runtime.datasets import DatasetError, load_image_set
from sortline.edge_runtime.model.bundle import public_key_path, sign_bundle, signing_key
from sortline.export.build import ExportConfig, build_bundle, preprocess_set

from .checkpoint import learned_from_labels, load_checkpoint


def _sign(bundle: Path, key: Path | None) -> str:
    """Sign the bundle just written (with ``key``, else the default key); the public key's path."""
    key = signing_key(key)
    sign_bundle(bundle, key)
    public = public_key_path(key)
    print(f"{bundle}: signed; a station runs it with [station] public_key = \"{public}\"")
    return str(public)


def demo(args: argparse.Namespace) -> dict:
    from .demo import DemoConfig, run_demo

    summary = run_demo(DemoConfig(items=args.items, out=args.out, scenario=args.scenario, products=args.products,
                                  product_count=args.product_count, pool_fruit=args.pool_fruit,
                                  labeled_fruit=args.labeled_fruit, epochs=args.epochs, seed=args.seed,
                                  item_epochs=args.item_epochs, sensor=args.sensor,
                                  faults=args.faults, progress=not args.quiet, lanes=args.lanes,
                                  pitch_ms=1000 / args.rate, backbone=args.backbone, image_size=args.image_size,
                                  runtime=args.runtime, threads=args.threads, recipe=args.recipe, key=args.key,
                                  serve_port=args.port if args.serve else None, shift=args.shift,
                                  watch=not args.no_watch, queue=args.queue, adapt=args.adapt,
                                  labels_per_hour=args.labels_per_hour, refit_every=args.refit_every,
                                  retrain_after=args.retrain_after,
                                  mqtt=args.mqtt, opcua=args.opcua,
                                  **({"false_alarm_items": args.false_alarm_items} if args.false_alarm_items else {})))
    print((Path(args.out) / "summary.md").read_text())
    from sortline.edge_runtime.cli.flags import drift_line, plant_line

    print(drift_line(summary))
    if (said := plant_line(summary)) is not None:
        print(said)
    if "adapt" in summary:
        from sortline.edge_runtime.cli.flags import adapt_line

        print(adapt_line(summary["adapt"]))
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
    policy = None
    if args.policy is not None:
        if labeled is None:
            raise DatasetError("--policy needs labelled images (--labeled, or a labelled calibration set)")
        from sortline.edge_runtime.model.policy import load_policy

        policy = load_policy(args.policy, labeled[1].class_names)
    bundle, report = build_bundle(backbone, spec, calibration, args.out, config, labeled=labeled,
                                  name=args.name or Path(args.checkpoint).stem, metrics={"checkpoint": meta},
                                  policy=policy, examples_trained_on=learned_from_labels(meta))
    report["signed_with"] = _sign(bundle.root, args.key)
    probe = report.get("probe")
    print(f"{bundle.root}: {config.precision} backbone, {len(bundle.manifest.labels)} classes, "
          f"parity cosine ≥ {report['onnx_parity_fp32']['min_cosine']:.5f}, "
          f"size {report['model_bytes'][config.precision] / 1e6:.1f} MB"
          + (f", probe {probe['accuracy_fp32']:.2%} → {probe[f'accuracy_{config.precision}']:.2%}"
             if probe and "skipped" not in probe else f", probe {probe['skipped']}" if probe else ""))
    return {"bundle": str(bundle.root), **report}


def fit(args: argparse.Namespace) -> dict:
    """A station's own labelled items → pretrain (or --checkpoint) → int8 → fusion head → bundle."""
    import time

    from tqdm import tqdm

    from sortline.edge_runtime.labelling.book import load_items
    from sortline.edge_runtime.model.policy import load_policy

    from .station_fit import FitConfig, fit_items

    started = time.perf_counter()
    timings: dict[str, float] = {}
    data = load_items(args.data, progress=None if args.quiet else lambda ids: tqdm(ids, desc="items", unit="item"))
    timings["load"] = round(time.perf_counter() - started, 1)
    labelled = [item.label for item in data.items if item.label is not None]
    policy = load_policy(args.policy, sorted(set(labelled))) if args.policy else None
    cfg = FitConfig(backbone=args.backbone, image_size=args.image_size, epochs=args.epochs,
                    item_epochs=args.item_epochs, max_pretrain_s=args.max_seconds, checkpoint=args.checkpoint,
                    recipe=args.recipe, seed=args.seed,
                    progress=not args.quiet)
    fitted = fit_items(data, args.out, cfg, policy, timings, name=args.name or args.out.name)
    signed_with = _sign(args.out, args.key)
    m = fitted.manifest
    print(f"{fitted.bundle.root}: {len(m.labels)} classes from {len(labelled)} labelled of {len(data.items)} items, "
          f"{data.views} views × {''.join(m.input.channels).upper()}, sensor {data.sensor}"
          f" ({data.readings_expected} readings an item); stages {timings} s")
    return {"ok": True, "bundle": str(fitted.bundle.root), "version": fitted.bundle.version, "labels": list(m.labels),
            "items": len(data.items), "labelled": len(labelled), "sensor": data.sensor, "views": data.views,
            "channels": list(m.input.channels), "seconds": timings, "signed_with": signed_with}


def pretrain(args: argparse.Namespace) -> dict:
    """Pretrain a backbone with any method on images, item folders or recordings."""
    from .pretraining import PretrainConfig, run_pretrain

    tunable = dict(backbone=args.backbone, pool=args.pool, epochs=args.epochs, batch_size=args.batch_size,
                   image_size=args.image_size, lr=args.lr, augment=args.augment, max_seconds=args.max_seconds,
                   label_stage=args.label_stage)
    rest = dict(weights=args.weights, seed=args.seed, solarize=args.solarize, channel_shuffle=args.channel_shuffle,
                tile_shuffle=args.tile_shuffle, balanced=args.balanced, pairs=args.pairs, teacher=args.teacher,
                unlabeled=args.unlabeled, negatives=args.negatives, hard_negatives=args.hard_negatives or None,
                workers=args.workers, skip_unreadable=args.skip_unreadable, out=args.out, resume=args.resume,
                progress=not args.quiet)
    if args.recipe:
        config = PretrainConfig.from_recipe(args.recipe, args.data, **tunable, **rest)
    else:
        config = PretrainConfig(method=args.method, data=args.data,
                                **{k: v for k, v in tunable.items() if v is not None}, **rest)
    report = run_pretrain(config)
    if "label_stage" in report:
        stage = report["label_stage"]
        print(f"label stage: {stage['given']} labeled images, {stage['pseudo']} pseudo-labeled by the teacher "
              f"({stage['unsure']} left unlabeled), {stage.get('steps', 0)} steps in {stage.get('seconds', 0):.0f} s")
    how = f"recipe {config.recipe} ({config.method})" if config.recipe else config.method
    print(f"{report['checkpoint']}: {how} {config.backbone}, {report['steps']} steps on {report['images']} "
          f"images in {report['seconds']:.0f} s ({report['images_per_s']:.0f} images/s), "
          f"loss {report['first_loss']} → {report['final_loss']}, embedding std {report['final_embedding_std']}")
    return report


def evaluate(args: argparse.Namespace) -> dict:
    """Every protocol for one backbone; a report with plots when --report is given."""
    from .eval_report import DEFAULT_PROTOCOLS, EvaluateConfig, run_evaluation
    from .finetune import FineTuneConfig

    protocols = tuple(p.strip() for arg in args.protocol or () for p in arg.split(",") if p.strip())
    config = EvaluateConfig(
        train=args.train, test=args.test, checkpoint=args.checkpoint, bundle=args.bundle,
        protocols=protocols or DEFAULT_PROTOCOLS, references=args.references, seeds=args.seeds,
        neighbours=args.neighbours, baselines=args.baselines, colour_histogram=args.colour_histogram,
        finetune=FineTuneConfig(epochs=args.finetune_epochs, lr=args.finetune_lr,
                                max_seconds=args.finetune_max_seconds),
        report=args.report, gradcam_samples=args.gradcam_samples, skip_unreadable=args.skip_unreadable,
        seed=args.seed, progress=not args.quiet)
    summary = run_evaluation(config)
    width = max(len(r["protocol"]) for r in summary["protocols"])
    for r in summary["protocols"]:
        spread = f" ± {r['accuracy_std']:.1%}" if "accuracy_std" in r else ""
        map_text = f", mAP {r['map']:.3f}" if r.get("map") is not None else ""
        print(f"{r['protocol']:<{width}}  accuracy {r['accuracy']:.1%}{spread}, balanced {r['balanced_accuracy']:.1%}, "
              f"macro-F1 {r['macro_f1']:.3f}, MCC {r['mcc']:.3f}{map_text}")
    for note in summary["notes"]:
        print(f"note: {note}")
    if args.report:
        print(f"report: {args.report}/report.md")
    return summary
