"""Recognition quality of a pretraining recipe on real photos, beside a colour histogram.

    python benchmarks/quality.py [--budget-minutes 30] [--seeds 3] [--first-seed 0] [--recipe small-data]
        [--labels none|all|K] [--baseline supervised] [--holdout SHARE]
        [--data ../shared/datasets/grocery-store] [--out benchmarks/results]
        [--backbone B] [--image-size PX] [--colour-weight W] [--phases 0.5:48,0.5:64] [--label-stage SHARE]
        [--lr LR] [--name N] [--keep DIR]

For each seed: ``sortline pretrain --recipe`` on the train split's images without their labels,
within the budget (measuring and planning included), or with ``--labels all`` (or K per class,
the rest unlabeled) its label stage in the recipe's share of the budget (or ``--label-stage`` SHARE);
then the frozen protocols of ``sortline evaluate`` on the val split: logistic regression with
all train labels, k-NN (k=20), logistic regression on 5 train images per class (5 draws), and on
the one iconic photo per class. The HSV colour histogram is scored by the same protocols in the
same run, alone and fused with the embedding (reported apart: the target is for the learned features alone).

``--baseline supervised`` trains the same backbone from scratch instead, with cross-entropy on
all the train labels, the same augmentation, resolution and budget (the recipe ``supervised``),
and scores it by the same protocols: the baseline the recipe's label stage must beat.
``--holdout SHARE`` keeps that share of each class's train images apart and scores on them in
place of val, for choosing a setting (``--lr``) without looking at val.

Results are the mean ± standard deviation over the seeds (pretraining and evaluation seeds
alike). On a machine with CUDA the recipe runs at twice its resolution unless --image-size is
given. The flags after --out override one choice of the recipe each, for the ablations in
docs/quality.md; --name keeps their results apart, --keep DIR the checkpoints.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from sortline.train.data import UNLABELED, TrainingSet, load_training_set
from sortline.train.eval_report import FUSED, HISTOGRAM, EvaluateConfig, run_evaluation
from sortline.train.pretraining import PretrainConfig, run_pretrain
from sortline.train.recipe_book import get_recipe

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_name  # noqa: E402  (benchmarks/machine.py)

PROTOCOLS = ("linear", "knn", "kshot:5", "oneshot")
LABELS = {"linear": "LR, all labels", "knn": "k-NN (20)", "kshot:5": "LR, 5 per class", "oneshot": "LR, 1 iconic"}
VARIANTS = (("", "learned features alone"), (HISTOGRAM, "colour histogram (baseline)"),
            (FUSED, "learned + colour histogram (fused)"))
HOW = {"none": "without labels", "all": "with the train labels in the label stage ({share})",
       "k": "with {k} labels per class in the label stage ({share}; the rest pseudo-labeled)"}
PUBLISHED = "on the test split: DenseNet-169 from scratch with all labels 67.3%; ImageNet features + softmax 71.7%"


def parse_phases(text: str) -> tuple[tuple[float, int], ...]:
    try:
        phases = tuple((float(a), int(b)) for a, b in (part.split(":") for part in text.split(",")))
    except ValueError:
        raise argparse.ArgumentTypeError(f"phases are SHARE:PX,SHARE:PX..., got {text!r}") from None
    if not phases or any(share <= 0 or size < 16 for share, size in phases):
        raise argparse.ArgumentTypeError(f"phases need positive shares and sizes of at least 16 px, got {text!r}")
    return phases


def parse_labels(text: str) -> str | int:
    if text in ("none", "all"):
        return text
    try:
        k = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"labels are none, all or K per class, got {text!r}") from None
    if k < 1:
        raise argparse.ArgumentTypeError(f"K must be at least 1, got {k}")
    return k


def training_data(cfg: PretrainConfig, labels: str | int, seed: int) -> TrainingSet | None:
    """The train split with ``labels`` per class kept (None: as the file gives it, all)."""
    if labels == "all":
        return None
    data = load_training_set(cfg.data, cfg.image_size, progress=False)
    keep = np.zeros(len(data), bool)
    if labels != "none":
        rng = np.random.default_rng(seed)
        for c in np.unique(data.labels):
            keep[rng.permutation(np.flatnonzero(data.labels == c))[:labels]] = True
    return TrainingSet(data.images, np.where(keep, data.labels, UNLABELED), data.class_names, data.spec)


def holdout_split(data: Path, share: float, folder: Path) -> Path:
    """A data folder like ``data`` whose ``train.txt`` keeps the first ``1 - share`` of each
    class's train images and whose ``val.txt`` holds the last (at least one): a place to choose
    settings without looking at val. The last in file order, not a random draw: photos taken one
    after another look alike, and a random draw scores near-copies of training images (the colour
    histogram gave 89.8 % on a random fifth of train, 35 % on val). The images and
    ``classes.csv`` are linked, not copied."""
    lines = [line for line in (data / "train.txt").read_text().splitlines() if line.strip()]
    labels = np.array([int(line.split(",")[1]) for line in lines])
    held = np.zeros(len(lines), bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        if len(members) > 1:
            held[members[len(members) - max(1, round(share * len(members))):]] = True
    folder.mkdir(parents=True, exist_ok=True)
    for entry in data.iterdir():
        if entry.name not in ("train.txt", "val.txt") and not (folder / entry.name).exists():
            (folder / entry.name).symlink_to(entry.resolve())
    (folder / "train.txt").write_text("".join(f"{line}\n" for line, h in zip(lines, held) if not h))
    (folder / "val.txt").write_text("".join(f"{line}\n" for line, h in zip(lines, held) if h))
    return folder


def run_seed(args: argparse.Namespace, seed: int, tmp: Path) -> dict:
    data = holdout_split(args.data, args.holdout, tmp / "holdout") if args.holdout else args.data
    overrides = dict(backbone=args.backbone, image_size=args.image_size, colour_weight=args.colour_weight,
                     phases=args.phases, augment=args.augment, label_stage=args.label_stage, lr=args.lr)
    if overrides["image_size"] is None and torch.cuda.is_available():
        overrides["image_size"] = 2 * get_recipe(args.recipe).image_size
    cfg = PretrainConfig.from_recipe(args.recipe, data / "train.txt", max_seconds=args.budget_minutes * 60,
                                     seed=seed, out=tmp / f"seed{seed}.ckpt", **overrides)
    started = time.perf_counter()
    pretrain = run_pretrain(cfg, training_data(cfg, args.labels, seed))
    pretrain["wall_seconds"] = round(time.perf_counter() - started, 1)
    print(f"seed {seed}: pretrained in {pretrain['wall_seconds']:.0f} s, plan {pretrain.get('plan')}", flush=True)
    summary = run_evaluation(EvaluateConfig(
        train=data / "train.txt", test=data / "val.txt", checkpoint=cfg.out, protocols=PROTOCOLS,
        colour_histogram=True, seeds=5, seed=seed, progress=False))
    rows = {(r["model"] if r["model"] in (HISTOGRAM, FUSED) else "", r["protocol"].split(" (")[0]): r
            for r in summary["protocols"]}
    scores = {f"{variant}|{protocol}": rows[(variant, protocol)]["accuracy"]
              for variant, _ in VARIANTS for protocol in PROTOCOLS}
    return {"seed": seed, "pretrain": pretrain, "scores": scores, "config": {
        "backbone": cfg.backbone, "image_size": cfg.image_size, "colour_weight": cfg.colour_weight,
        "augment": cfg.augment, "method": cfg.method}, "test_images": summary["test_images"],
        "train_images": summary["train_images"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="pretraining wall time per seed")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--recipe", default="small-data")
    parser.add_argument("--labels", type=parse_labels, default="none",
                        help="train labels the recipe may use: none (self-supervised only), all, or K per class")
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/grocery-store"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--backbone")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--colour-weight", type=float)
    parser.add_argument("--augment")
    parser.add_argument("--phases", type=parse_phases, help="SHARE:PX,... in place of the recipe's")
    parser.add_argument("--label-stage", type=float, metavar="SHARE",
                        help="the budget's share for the label stage, in place of the recipe's")
    parser.add_argument("--lr", type=float, help="the peak learning rate, in place of the recipe's")
    parser.add_argument("--baseline", choices=("supervised",),
                        help="train the baseline instead of the recipe: the same backbone from scratch, "
                             "cross-entropy on all train labels, the same augmentation and budget")
    parser.add_argument("--holdout", type=float, metavar="SHARE",
                        help="score on this share of each class's train images, kept out of training, not on val")
    parser.add_argument("--name", help="file name of the results (quality, or quality_supervised)")
    parser.add_argument("--keep", type=Path, help="keep each seed's checkpoint and logs in this folder")
    args = parser.parse_args()
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.holdout is not None and not 0 < args.holdout < 1:
        parser.error("--holdout must be a share in (0, 1)")
    if args.baseline:
        if args.recipe != "small-data" or args.labels != "none" or args.label_stage is not None:
            parser.error("--baseline supervised is its own recipe, with all train labels")
        args.recipe, args.labels = "supervised", "all"
    args.name = args.name or ("quality_supervised" if args.baseline else "quality")
    started = time.perf_counter()
    runs = []
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        keep = args.keep or Path(tmp)
        keep.mkdir(parents=True, exist_ok=True)
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            runs.append(run_seed(args, seed, keep))
    write(args, runs, time.perf_counter() - started)
    print((args.out / f"{args.name}.md").read_text())


def label_share(args: argparse.Namespace) -> float:
    """The budget's share the runs gave their label stage: ``--label-stage``, else the recipe's."""
    return args.label_stage if args.label_stage is not None else get_recipe(args.recipe).label_stage


def how(args: argparse.Namespace) -> str:
    """How the runs used the labels, in words."""
    if get_recipe(args.recipe).method == "supervised":
        return "from scratch with cross-entropy on the labels alone (no self-supervision)"
    if args.labels == "none":
        return HOW["none"]
    share = label_share(args)
    words = {0.5: "the second half", 0.75: "the last three quarters"}.get(share, f"the last {share:g} of the budget")
    return HOW["all" if args.labels == "all" else "k"].format(share=words, k=args.labels)


def _stats(runs: list[dict], key: str) -> tuple[float, float]:
    values = np.array([r["scores"][key] for r in runs])
    return float(values.mean()), float(values.std())


def write(args: argparse.Namespace, runs: list[dict], total_s: float) -> None:
    first = runs[0]
    cfg = first["config"]
    device = (torch.cuda.get_device_name() if torch.cuda.is_available()
              else f"{cpu_name()}, {torch.get_num_threads()} threads")
    table = {variant or "learned": {p: dict(zip(("mean", "std"), _stats(runs, f"{variant}|{p}"))) for p in PROTOCOLS}
             for variant, _ in VARIANTS}
    hist, learned = table[HISTOGRAM]["linear"]["mean"], table["learned"]["linear"]["mean"]
    lines = [
        f"# Recognition quality: recipe {args.recipe}, {args.budget_minutes:g} min of pretraining per seed",
        "",
        f"{cfg['method']} + {cfg['backbone']} at {cfg['image_size']} px (colour weight {cfg['colour_weight']}), "
        f"pretrained {how(args)} on the "
        f"{first['train_images']} grocery-store train photos; scored on "
        f"{'a held-out ' + format(args.holdout, 'g') + ' of each class of train' if args.holdout else 'the val split'} "
        f"({first['test_images']} photos, 81 classes). {len(runs)} seeds, mean ± std; k-shot and 5-shot "
        f"also average 5 draws per seed. Device: {device}. Everything took {total_s / 60:.1f} min.",
        "",
        "| features | " + " | ".join(LABELS[p] for p in PROTOCOLS) + " |",
        "|---|" + "---:|" * len(PROTOCOLS),
    ]
    for variant, label in VARIANTS:
        row = table[variant or "learned"]
        cells = ["–" if (variant, p) == (FUSED, "knn") else f"{row[p]['mean']:.1%} ± {row[p]['std']:.1%}"
                 for p in PROTOCOLS]  # k-NN over two unscaled spaces side by side means little
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    epochs = [r["pretrain"]["plan"]["epochs"] for r in runs]
    steps = [r["pretrain"]["steps"] for r in runs]
    stages = [r["pretrain"]["label_stage"] for r in runs if "label_stage" in r["pretrain"]]
    lines += [
        "",
        f"Learned features alone, LR with all labels: {learned:.1%}, {100 * (learned - hist):+.1f} points against "
        f"the colour histogram (target: at least +10 points, and at least 44% on val).",
        "",
    ]
    if stages:
        lines += [
            f"Label stage per seed: {', '.join(str(st['given']) for st in stages)} labeled images, "
            f"{', '.join(str(st['pseudo']) for st in stages)} pseudo-labeled "
            f"({', '.join(str(st['unsure']) for st in stages)} left below the threshold), "
            f"{', '.join(str(st.get('steps', 0)) for st in stages)} steps in "
            f"{', '.join(str(st.get('seconds', 0)) for st in stages)} s after the teacher's "
            f"{', '.join(str(st['teacher_seconds']) for st in stages)} s.",
            "",
        ]
    lines += [
        f"Pretraining per seed: {', '.join(f'{e:g}' for e in epochs)} epochs planned, "
        f"{', '.join(str(s) for s in steps)} steps, resolution steps "
        f"{first['pretrain']['plan']['resolution']} (epoch, px), measured views/s "
        f"{first['pretrain']['plan']['views_per_s']}, wall "
        f"{', '.join(str(r['pretrain']['wall_seconds']) for r in runs)} s.",
        "",
        f"Published for reference, {PUBLISHED}.",
        "",
        f"Command: `python benchmarks/quality.py --budget-minutes {args.budget_minutes:g} --seeds {len(runs)}"
        + (f" --first-seed {args.first_seed}" if args.first_seed else "")
        + "".join(f" --{k.replace('_', '-')} {v}" for k, v in (
            ("baseline", args.baseline),
            ("recipe", args.recipe if args.recipe != "small-data" and not args.baseline else None),
            ("labels", args.labels if args.labels != "none" and not args.baseline else None),
            ("backbone", args.backbone),
            ("image_size", args.image_size), ("colour_weight", args.colour_weight), ("augment", args.augment),
            ("phases", ",".join(f"{a:g}:{b}" for a, b in args.phases) if args.phases else None),
            ("label_stage", args.label_stage), ("lr", args.lr), ("holdout", args.holdout),
            ("name", args.name if args.name not in ("quality", "quality_supervised") else None))
            if v is not None) + "`",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.md").write_text("\n".join(lines))
    (args.out / f"{args.name}.json").write_text(json.dumps(
        {"recipe": args.recipe, "labels": args.labels, "label_stage": label_share(args),
         "budget_minutes": args.budget_minutes, "lr": args.lr, "holdout": args.holdout, "device": device,
         "total_seconds": round(total_s, 1), "table": table, "runs": runs}, indent=2, default=str) + "\n")
    plot(args, table)


def plot(args: argparse.Namespace, table: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.27
    x = np.arange(len(PROTOCOLS))
    for i, (variant, label) in enumerate(VARIANTS):
        row = table[variant or "learned"]
        shown = [p != "knn" or variant != FUSED for p in PROTOCOLS]  # as in the table
        ax.bar(x + (i - 1) * width, [100 * row[p]["mean"] if ok else np.nan for p, ok in zip(PROTOCOLS, shown)],
               width, yerr=[100 * row[p]["std"] if ok else 0 for p, ok in zip(PROTOCOLS, shown)], label=label,
               capsize=3)
    ax.axhline(44, color="k", linestyle="--", linewidth=1, label="target on val (LR, all labels)")
    ax.set_xticks(x, [LABELS[p] for p in PROTOCOLS])
    ax.set_ylabel("val accuracy (%)")
    ax.set_ylim(0, 60)
    labels = {"none": "", "all": ", all train labels"}.get(args.labels, f", {args.labels} train labels per class")
    ax.set_title(f"grocery-store val, recipe {args.recipe}, {args.budget_minutes:g} min{labels}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out / f"{args.name}.png", dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
