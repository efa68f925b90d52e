"""Every training method on grocery-store, judged by logistic regression on frozen embeddings.

    python benchmarks/ssl_methods_grocery.py [--data ../shared/datasets/grocery-store]
        [--backbone resnet10] [--image-size 64] [--epochs 15] [--methods simclr,moco,...] [--out DIR]

Each method pretrains the same backbone from the same random initialisation for the same
number of epochs over the train split (the self-supervised ones without its labels; supcon with
them; distill with them, a supcon teacher from the same run, and the train images once more as
its unlabeled pool). Then the backbone is frozen, train and val go through the edge
preprocessing, a logistic regression is fitted on the train embeddings with the train labels,
and val accuracy is reported beside the same backbone at random initialisation. The budget is
stated in epochs (equal data for every method), and each run's wall time is measured and shown.

Writes ``ssl_methods_grocery.md`` and ``.json`` to --out after every method, so a long run
that is stopped keeps what it finished.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from sortline.train.backbones import build_backbone
from sortline.train.checkpoint import load_checkpoint
from sortline.train.data import load_training_set
from sortline.train.evaluate import embed, linear_probe
from sortline.train.methods import METHODS
from sortline.train.pretraining import PretrainConfig, run_pretrain

ORDER = ["simclr", "moco", "byol", "simsiam", "barlow", "rotnet", "jigsaw", "supcon", "distill"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/grocery-store"))
    parser.add_argument("--backbone", default="resnet10")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=15.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--methods", default=",".join(ORDER))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}")
    if "distill" in methods and "supcon" not in methods:
        parser.error("distill needs the supcon teacher of the same run: list supcon too")

    train_split, val_split = args.data / "train.txt", args.data / "val.txt"
    train = load_training_set(train_split, args.image_size, progress=True)
    val = load_training_set(val_split, args.image_size, progress=True)
    names = train.class_names
    print(f"train {len(train)} images, val {len(val)}, {len(names)} classes, {args.image_size} px")

    rows: list[dict] = []
    args.out.mkdir(parents=True, exist_ok=True)

    def probe(backbone, label: str, extra: dict) -> None:
        t = time.perf_counter()
        scores, _ = linear_probe(embed(backbone, train.images, train.spec), train.labels,
                                 embed(backbone, val.images, val.spec), val.labels, names)
        rows.append({"method": label, **scores.to_dict(), "probe_s": round(time.perf_counter() - t, 1), **extra})
        print(f"{label}: val accuracy {scores.accuracy:.2%} (MCC {scores.mcc:.3f})", flush=True)
        write(rows, args)

    torch.manual_seed(args.seed)
    probe(build_backbone(args.backbone, in_channels=3), "random init", {"labels": "–"})
    with tempfile.TemporaryDirectory(prefix="ssl-grocery-") as tmp:
        work = Path(tmp)
        for method in tqdm(methods, desc="methods", unit="method"):
            extra = {}
            if method == "distill":
                extra = {"teacher": work / "supcon.ckpt", "unlabeled": train_split}
            report = run_pretrain(PretrainConfig(
                method=method, data=train_split, out=work / f"{method}.ckpt", backbone=args.backbone,
                epochs=args.epochs, batch_size=args.batch_size, image_size=args.image_size, seed=args.seed,
                progress=False, **extra))
            backbone, _, _ = load_checkpoint(work / f"{method}.ckpt")
            probe(backbone, method, {
                "labels": "train" if METHODS[method].needs_labels else "none",
                "steps": report["steps"], "train_s": report["seconds"], "images_per_s": report["images_per_s"],
                "final_loss": report["final_loss"], "embedding_std": report["final_embedding_std"]})


def write(rows: list[dict], args: argparse.Namespace) -> None:
    base = rows[0]["accuracy"]
    lines = [
        f"# Training methods on grocery-store: {args.backbone}, {args.image_size} px, "
        f"{args.epochs:g} epochs of the train split each",
        "",
        "Logistic regression (the edge head, C=1) on frozen embeddings of the train split, "
        "accuracy on the val split (296 images, 81 classes).",
        "",
        "| method | labels used in pretraining | val accuracy | Δ vs random init | balanced acc. | macro-F1 | MCC "
        "| steps | train s | images/s | embedding std |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['labels']} | {r['accuracy']:.1%} | {r['accuracy'] - base:+.1%} "
            f"| {r['balanced_accuracy']:.1%} | {r['macro_f1']:.3f} | {r['mcc']:.3f} | {r.get('steps', '–')} "
            f"| {r.get('train_s', '–')} | {r.get('images_per_s', '–')} | {r.get('embedding_std', '–')} |")
    lines += ["", f"Command: `python benchmarks/ssl_methods_grocery.py --backbone {args.backbone} "
              f"--image-size {args.image_size} --epochs {args.epochs:g} --batch-size {args.batch_size}`", ""]
    (args.out / "ssl_methods_grocery.md").write_text("\n".join(lines))
    (args.out / "ssl_methods_grocery.json").write_text(json.dumps(
        {"backbone": args.backbone, "image_size": args.image_size, "epochs": args.epochs,
         "batch_size": args.batch_size, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
