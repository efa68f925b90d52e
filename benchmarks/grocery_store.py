"""grocery-store end to end within a compute budget, beside the published numbers.

    python benchmarks/grocery_store.py [--budget-minutes 60] [--data ../shared/datasets/grocery-store]
        [--backbone resnet18] [--method simclr] [--image-size 64] [--out benchmarks/results]

1. Pretrain the backbone on the train split's images without their labels (self-supervised).
2. ``sortline evaluate`` on it: logistic regression on frozen embeddings with the train labels,
   k-NN, retrieval mAP (val queries against the train gallery), 5-shot (mean ± std over 5
   draws), 1-shot from the iconic product photos, fine-tuning the whole backbone with all
   labels and with 5 per class, and the baselines: the same architecture at random
   initialisation (frozen) and trained from scratch with the same labels.
3. A table beside the published numbers (Klasson et al., WACV 2019: DenseNet-169 from scratch
   67.3%; ImageNet DenseNet-169 features + softmax 71.7%; fine-tuned 84–85%).

The budget is wall time for everything, data loading included. It is shared out before the
start: pretraining gets half, each all-label fine-tuning run (pretrained, scratch) a sixth,
and the rest is left for the 5-shot runs, the frozen protocols and the plots. The number of
epochs of each run comes from its measured speed, so a run ends its cosine schedule
instead of being cut; a hard stop at each share guards the total.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from sortline.train.augment import AugmentConfig, MultiChannelAugment
from sortline.train.backbones import build_backbone
from sortline.train.checkpoint import save_checkpoint
from sortline.train.data import ViewsDataset, load_training_set
from sortline.train.eval_report import EvaluateConfig, run_evaluation
from sortline.train.finetune import FineTuneConfig
from sortline.train.loop import TrainConfig, train
from sortline.train.methods import build_method

PRETRAIN_SHARE = 0.50
FINETUNE_SHARE = 1 / 6  # each of: fine-tune with all labels, scratch with all labels
PUBLISHED = [  # Klasson, Zhang, Kjellström: "A hierarchical grocery store image dataset with visual and
    # semantic labels", WACV 2019; test split, fine-grained classes, full-resolution images
    ("DenseNet-169 trained from scratch, all labels", "67.3%"),
    ("ImageNet DenseNet-169 features + softmax classifier", "71.7%"),
    ("ImageNet DenseNet-169 fine-tuned, all labels", "84–85%"),
]


def views_per_second(method: str, backbone: str, data, batch_size: int, steps: int = 6) -> float:
    """Measured training speed in views per second, after two warm-up steps."""
    net = build_method(method, build_backbone(backbone, in_channels=len(data.spec.channels)))
    augment = MultiChannelAugment(data.spec, AugmentConfig.recipe("colour-safe"))
    train(copy.deepcopy(net), ViewsDataset(data.images[:2 * batch_size], augment, views=net.views),
          TrainConfig(epochs=1, batch_size=batch_size), progress=False)
    timed = train(net, ViewsDataset(data.images[:steps * batch_size], augment, views=net.views),
                  TrainConfig(epochs=1, batch_size=batch_size), progress=False)
    return timed.images / timed.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-minutes", type=float, default=60.0, help="wall time for everything")
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/grocery-store"))
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--method", default="simclr")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    start = time.perf_counter()
    budget = args.budget_minutes * 60
    train_split, val_split = args.data / "train.txt", args.data / "val.txt"

    data = load_training_set(train_split, args.image_size, progress=True)
    rate = views_per_second(args.method, args.backbone, data, args.batch_size)
    views = build_method(args.method, build_backbone(args.backbone, in_channels=3)).views
    pretrain_s = PRETRAIN_SHARE * budget
    epochs = max(1.0, 0.95 * pretrain_s * rate / (views * len(data)))
    print(f"{args.method} {args.backbone} at {args.image_size} px: {rate:.0f} views/s measured; "
          f"{epochs:.1f} epochs fit {pretrain_s / 60:.1f} min", flush=True)

    with tempfile.TemporaryDirectory(prefix="grocery-") as tmp:
        ckpt = Path(tmp) / f"{args.method}-{args.backbone}.ckpt"
        torch.manual_seed(args.seed)
        method = build_method(args.method, build_backbone(args.backbone, in_channels=3))
        dataset = ViewsDataset(data.images, MultiChannelAugment(data.spec, AugmentConfig.recipe("colour-safe")),
                               views=method.views, seed=args.seed)  # no labels: self-supervised
        result = train(method, dataset, TrainConfig(epochs=epochs, batch_size=args.batch_size, seed=args.seed,
                                                    max_seconds=pretrain_s, log_path=ckpt.with_suffix(".csv")))
        save_checkpoint(ckpt, method.backbone.cpu().to(memory_format=torch.contiguous_format).eval(), data.spec,
                        method=args.method, data=str(train_split), images=len(data), labeled=0,
                        train=result.to_dict())
        pretrain = {"epochs": round(epochs, 1), **result.to_dict()}
        print(f"pretrained: {result.steps} steps in {result.seconds:.0f} s", flush=True)

        # Fine-tuning runs one view per image; give each all-label run its share of the budget.
        finetune_s = FINETUNE_SHARE * budget
        finetune_epochs = max(1.0, 0.9 * finetune_s * rate / len(data))
        report = args.out / "grocery_store"
        config = EvaluateConfig(
            train=train_split, test=val_split, checkpoint=ckpt,
            protocols=("linear", "knn", "retrieval", "kshot:1", "kshot:5", "oneshot", "finetune", "finetune:5"),
            baselines=True, seeds=5, report=report, seed=args.seed,
            finetune=FineTuneConfig(epochs=finetune_epochs, max_seconds=finetune_s))
        summary = run_evaluation(config)
    total = time.perf_counter() - start
    write(summary, pretrain, rate, finetune_epochs, total, args)
    print((args.out / "grocery_store.md").read_text())


def _pct(row: dict) -> str:
    spread = f" ± {row['accuracy_std']:.1%}" if "accuracy_std" in row else ""
    return f"{row['accuracy']:.1%}{spread}"


def write(summary: dict, pretrain: dict, rate: float, finetune_epochs: float, total_s: float,
          args: argparse.Namespace) -> None:
    rows = {r["protocol"]: r for r in summary["protocols"]}
    ours = [
        ("random init (frozen) + logistic regression, all labels", "linear (random init)"),
        (f"{args.method} (no labels) + logistic regression, all labels", "linear"),
        (f"{args.method} + k-NN (k=20, cosine), all labels", "knn"),
        (f"{args.method} + retrieval, 1-NN (mAP beside)", "retrieval"),
        (f"{args.method} + logistic regression, 5 labels per class", "kshot:5"),
        (f"{args.method} + logistic regression, 1 label per class (train photo)", "kshot:1"),
        (f"{args.method} + logistic regression, 1 iconic image per class", "oneshot"),
        (f"{args.method} fine-tuned, all labels", "finetune"),
        (f"{args.backbone} from scratch, all labels", "scratch"),
        (f"{args.method} fine-tuned, 5 labels per class", "finetune:5"),
        (f"{args.backbone} from scratch, 5 labels per class", "scratch:5"),
    ]
    lines = [
        f"# grocery-store, {args.budget_minutes:g}-minute CPU budget: {args.backbone}, {args.image_size} px",
        "",
        f"Pretraining: {args.method} on the {summary['train_images']} train images without labels, "
        f"{pretrain['steps']} steps ({pretrain['epochs']} epochs planned from {rate:.0f} views/s measured) "
        f"in {pretrain['seconds']:.0f} s. Fine-tuning: {finetune_epochs:.1f} epochs planned per run. "
        f"Everything, data loading included, took {total_s / 60:.1f} min on this machine.",
        "",
        f"Scores are on the val split ({summary['test_images']} images, {summary['test_classes']} of the "
        f"{summary['classes']} classes); the published ones are on the test split at full resolution.",
        "",
        "| model | accuracy | balanced acc. | macro-F1 | MCC | mAP |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for label, key in ours:
        if key not in rows:
            continue
        r = rows[key]
        m = f"{r['map']:.3f}" if r.get("map") is not None else "–"
        lines.append(f"| {label} | {_pct(r)} | {r['balanced_accuracy']:.1%} | {r['macro_f1']:.3f} "
                     f"| {r['mcc']:.3f} | {m} |")
    stopped = [r["protocol"] for r in summary["protocols"] if r.get("stopped_early")]
    if pretrain["steps"] < pretrain["total_steps"]:
        stopped.insert(0, f"pretraining ({pretrain['steps']} of {pretrain['total_steps']} steps)")
    if stopped:
        lines += ["", "Stopped by the hard stop at their share of the budget, before the end of their schedule: "
                  + ", ".join(stopped) + "."]
    lines += ["", "Published (test split):", "", "| model | accuracy |", "|---|---:|"]
    lines += [f"| {label} | {value} |" for label, value in PUBLISHED]
    lines += ["", f"Command: `python benchmarks/grocery_store.py --budget-minutes {args.budget_minutes:g} "
              f"--backbone {args.backbone} --method {args.method} --image-size {args.image_size}`",
              "", "Full report with plots: [grocery_store/report.md](grocery_store/report.md)", ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "grocery_store.md").write_text("\n".join(lines))
    (args.out / "grocery_store.json").write_text(json.dumps(
        {"budget_minutes": args.budget_minutes, "total_seconds": round(total_s, 1), "backbone": args.backbone,
         "method": args.method, "image_size": args.image_size, "pretrain": pretrain,
         "views_per_s": round(rate, 1), "finetune_epochs": round(finetune_epochs, 1),
         "published": dict(PUBLISHED),
         "rows": summary["protocols"]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
