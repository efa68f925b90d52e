"""The desktop's subcommands (demo, pretrain, evaluate, export), registered into the ``sortline``
command through the ``sortline.commands`` entry point. Nothing here imports torch: each handler
imports :mod:`sortline.train.commands` when its command runs, so ``sortline --help`` and the
edge commands stay fast, and an edge install says what to install instead of a traceback."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from sortline.edge_runtime.cli import flags
from sortline.edge_runtime.daemon.config import API_PORT
from sortline.edge_runtime.errors import SortlineError
from sortline.edge_runtime.hil.adapt import RETRAIN_AFTER

from .methods import METHODS
from .recipe_book import RECIPES


class DesktopMissing(SortlineError):
    """A desktop command on an install without its packages."""


def _desktop(name: str):
    def run(args: argparse.Namespace) -> dict:
        try:
            commands = importlib.import_module("sortline.train.commands")
        except ImportError as exc:
            raise DesktopMissing(f"sortline {args.command} needs the desktop packages ({exc.name} is missing): "
                                 "pip install 'sortline[train]'") from exc
        return getattr(commands, name)(args)

    return run


def register(commands: argparse._SubParsersAction) -> None:
    report, quiet, signing = flags.report(), flags.quiet(), flags.signing()
    demo = commands.add_parser("demo", parents=[flags.line(), flags.runtime(), flags.watch(), flags.plant(), quiet,
                                                report, signing],
                               help="the whole loop on a simulated avocado line")
    demo.add_argument("--items", type=int, default=500, help="items to sort (default 500)")
    demo.add_argument("--backbone", default="resnet10", help="the backbone to pretrain (default resnet10)")
    demo.add_argument("--image-size", type=int, default=64, help="the model's input size in px (default 64)")
    demo.add_argument("--scenario", choices=["avocado", "checkout"], default="avocado",
                      help="a fruit-sorting line with a tap sensor, or a checkout with a scale")
    demo.add_argument("--products", type=Path,
                      help="checkout: product photos, a labeled folder or split file (default: drawn products)")
    demo.add_argument("--product-count", type=int, default=12, help="checkout: how many drawn products")
    demo.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default demo-out)")
    demo.add_argument("--pool-fruit", "--pool-items", type=int, default=2000, help="unlabeled items for pretraining")
    demo.add_argument("--labeled-fruit", "--labeled-items", type=int, default=600,
                      help="labeled items for the fusion head")
    demo.add_argument("--epochs", type=float, default=6.0, help="pretraining epochs over the pool (0: random init)")
    demo.add_argument("--item-epochs", type=float,
                      help="the item stage: epochs over the labelled fruit, all views of each together with the "
                           "sensor's readings, at most 150 s; its linear layer is the head (default 30; 0: none, "
                           "the head fitted afterwards; docs/defects.md)")
    demo.add_argument("--sensor", choices=["none"],
                      help="none: the head decides on the views alone (a station without a tap sensor or scale)")
    demo.add_argument("--recipe", choices=sorted(RECIPES),
                      help="pretrain with this recipe (its backbone and schedule, within 6 minutes) instead of "
                           "--epochs of SimCLR on --backbone")
    demo.add_argument("--faults", type=float, default=0.0,
                      help="inject every fault kind on the simulated line at this rate (e.g. 0.01)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--serve", action="store_true",
                      help="keep the station's HTTP API and operator page up while it sorts (use a large --items)")
    demo.add_argument("--port", type=int, default=API_PORT, help=f"--serve: the port on 127.0.0.1 ({API_PORT})")
    demo.add_argument("--adapt", action="store_true",
                      help="with --shift: a simulated operator labels the queue after the drift alarm, refits, and "
                           "the shadow promotes the new head when it shows itself (docs/adaptation.md)")
    demo.add_argument("--labels-per-hour", type=flags.positive(float), default=3600.0,
                      help="--adapt: the simulated operator's pace, labels per hour of line time (default 3600)")
    demo.add_argument("--refit-every", type=flags.positive(int), default=30,
                      help="--adapt: refit a candidate after this many labels (default 30)")
    demo.add_argument("--retrain-after", type=flags.positive(int, zero=True), default=RETRAIN_AFTER,
                      help="--adapt: after this many labels the desktop retrains the bundle on them (`sortline "
                           f"fit` from its backbone) and the shadow runs it (default {RETRAIN_AFTER}; 0: heads only)")
    demo.set_defaults(handler=_desktop("demo"))

    pretrain = commands.add_parser(
        "pretrain", parents=[quiet, report], help="pretrain a backbone (self-supervised, supcon, distill, supervised)")
    how = pretrain.add_mutually_exclusive_group(required=True)
    how.add_argument("--method", choices=list(METHODS))
    how.add_argument("--recipe", choices=sorted(RECIPES),
                     help="small-data: the settings that work on a few thousand real photos (docs/quality.md), "
                          "fitted to --max-seconds (default 1800); supervised: its backbone and budget trained "
                          "from scratch on the labels (the baseline); the flags below override their choices")
    pretrain.add_argument("--data", type=Path, required=True,
                          help="a folder of images, a split file, a multi-view item folder or a recording")
    pretrain.add_argument("--backbone",
                          help="resnet10 (default), resnet18, resnet50, mobilenet_v3_small or mobilenet_v3_large")
    pretrain.add_argument("--pool", choices=["avg", "lca"], help="global average (default) or LCA pooling")
    pretrain.add_argument("--weights", type=Path, help="start from a local weights file (never downloaded)")
    pretrain.add_argument("--epochs", type=float, help="passes over the data (default 10; a recipe fits them "
                          "to --max-seconds)")
    pretrain.add_argument("--batch-size", type=int, help="default 128")
    pretrain.add_argument("--image-size", type=int, help="default 64 (a recipe: its last resolution)")
    pretrain.add_argument("--lr", type=float, help="default 0.002")
    pretrain.add_argument("--max-seconds", type=float, help="stop at a step boundary past this time budget")
    pretrain.add_argument("--augment", choices=["colour-safe", "simclr", "exemplar"],
                          help="augmentation recipe (colour-safe keeps hue and saturation; simclr is the paper's; "
                               "exemplar adds any turn and tighter crops, for fine-tuning on detection exemplars)")
    pretrain.add_argument("--solarize", type=float, help="probability of solarizing the RGB channels")
    pretrain.add_argument("--channel-shuffle", type=float, help="probability of CH-Rand (RGB channels permuted)")
    pretrain.add_argument("--tile-shuffle", type=float, help="probability of shuffling 2×2 tiles")
    pretrain.add_argument("--balanced", action="store_true", help="class-balanced sampling (needs labels)")
    pretrain.add_argument("--pairs", type=Path, help="supcon/distill: 'image_a, image_b' lines instead of labels")
    pretrain.add_argument("--teacher", type=Path, help="distill: the teacher's checkpoint")
    pretrain.add_argument("--unlabeled", type=Path,
                          help="distill, or a recipe with labeled --data: unlabeled images for the teacher to label")
    pretrain.add_argument("--label-stage", type=float, metavar="SHARE",
                          help="a recipe, where the data has labels: the share of the budget for the label stage "
                               "(a teacher pseudo-labels the unlabeled images, then the backbone trains on the "
                               "labels with a supervised contrast; small-data: 0.75; 0: none, self-supervised only)")
    pretrain.add_argument("--negatives", type=Path,
                          help="supcon: images of none of the classes (e.g. the empty line, shelves), each its "
                               "own class, so the classes are pushed away from them")
    pretrain.add_argument("--hard-negatives", type=int, default=64,
                          help="supcon/distill: keep this many hardest negatives per anchor (0: all)")
    pretrain.add_argument("--workers", type=int, help="data-loading processes (default: 0 on CPU, up to 8 on GPU)")
    pretrain.add_argument("--resume", type=Path, help="continue exactly from a training state (OUT.state.pt)")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--skip-unreadable", action="store_true", help="leave unreadable images out, not stop")
    pretrain.add_argument("--out", type=Path, default=Path("backbone.ckpt"))
    pretrain.set_defaults(handler=_desktop("pretrain"))

    evaluate = commands.add_parser(
        "evaluate", parents=[quiet, report], help="judge a backbone's embeddings: probes, k-NN, retrieval, "
                                   "few-shot, fine-tuning, with plots")
    model = evaluate.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", type=Path, help="a sortline backbone checkpoint")
    model.add_argument("--bundle", type=Path, help="a bundle: its exported model, as the station runs it")
    evaluate.add_argument("--train", type=Path, required=True,
                          help="labeled gallery / training images (any data set form)")
    evaluate.add_argument("--test", type=Path, required=True, help="labeled images to score (any data set form)")
    evaluate.add_argument("--protocol", action="append",
                          help="linear, knn, retrieval, kshot:K, oneshot, finetune[:K], scratch[:K]; repeat or "
                               "separate by commas (default: linear,knn,retrieval,kshot:1,kshot:5,oneshot)")
    evaluate.add_argument("--references", type=Path, help="oneshot: one image per class (default: the iconic "
                          "images of a split file's classes.csv)")
    evaluate.add_argument("--seeds", type=int, default=5, help="k-shot: random draws of the K images (5)")
    evaluate.add_argument("--neighbours", type=int, default=20, help="knn: neighbours (20)")
    evaluate.add_argument("--baselines", action="store_true",
                          help="also the same architecture at random init, and scratch beside each finetune")
    evaluate.add_argument("--colour-histogram", action="store_true",
                          help="also an HSV colour histogram alone (the floor a learned feature must clear) and "
                               "fused with the embedding, on every frozen protocol")
    evaluate.add_argument("--finetune-epochs", type=float, default=30.0)
    evaluate.add_argument("--finetune-lr", type=float, default=5e-4)
    evaluate.add_argument("--finetune-max-seconds", type=float, help="stop each fine-tuning run past this")
    evaluate.add_argument("--report", type=Path, help="write report.md, report.json and the plots here")
    evaluate.add_argument("--gradcam-samples", type=int, default=16)
    evaluate.add_argument("--skip-unreadable", action="store_true", help="leave unreadable images out, not stop")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.set_defaults(handler=_desktop("evaluate"))

    fit = commands.add_parser(
        "fit", parents=[quiet, report, signing],
        help="a station's own items (recordings, item folders) → a verified, signed bundle")
    fit.add_argument("--data", type=Path, nargs="+", required=True,
                     help="recordings (labelled with 'sortline label') and item folder trees (ITEMS/<class>/<item>/)")
    fit.add_argument("--out", type=Path, required=True, help="the bundle to write")
    source = fit.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", type=Path, help="take this backbone instead of pretraining one")
    source.add_argument("--epochs", type=float, default=6.0, help="SimCLR epochs over every item's views (6)")
    source.add_argument("--recipe", choices=sorted(RECIPES),
                        help="pretrain with this recipe (its backbone and schedule) within --max-seconds")
    fit.add_argument("--item-epochs", type=float,
                     help="the item stage: epochs over the labelled items, all views of each together with the "
                          "sensor's readings, at most 150 s; its linear layer is the head (default 30; 0: none, "
                          "the head fitted afterwards; docs/defects.md)")
    fit.add_argument("--policy", type=Path, help="decision policy file (TOML): class → exit, confidence, safe exit")
    fit.add_argument("--backbone", default="resnet10")
    fit.add_argument("--image-size", type=int, default=64)
    fit.add_argument("--max-seconds", type=float, default=360.0, help="pretraining time budget (360)")
    fit.add_argument("--name", help="bundle name (default: the output's file name)")
    fit.add_argument("--seed", type=int, default=0)
    fit.set_defaults(handler=_desktop("fit"))

    export = commands.add_parser(
        "export", parents=[report, signing], help="a trained backbone → ONNX (int8/fp16) → verified bundle")
    export.add_argument("--checkpoint", type=Path, required=True, help="a sortline backbone checkpoint")
    export.add_argument("--calibration", type=Path, required=True,
                        help="images for parity and int8 ranges: a folder or a split file")
    precision = export.add_mutually_exclusive_group()
    precision.add_argument("--int8", dest="precision", action="store_const", const="int8", help="static int8")
    precision.add_argument("--fp16", dest="precision", action="store_const", const="fp16", help="float16")
    export.set_defaults(precision="fp32")
    export.add_argument("--labeled", type=Path, help="labeled images for the accuracy check and the head "
                        "(default: the calibration set, when it is labeled)")
    export.add_argument("--max-drop", type=float, default=0.5, help="accuracy points the probe may lose (0.5)")
    export.add_argument("--force", action="store_true", help="export even when the accuracy drop is over the limit")
    export.add_argument("--skip-unreadable", action="store_true", help="leave unreadable images out, not stop")
    export.add_argument("--name", help="bundle name for the manifest (default: the checkpoint's file name)")
    export.add_argument("--policy", type=Path, help="decision policy file (TOML) for the labelled classes")
    export.add_argument("--out", type=Path, required=True,
                        help="bundle to write: a folder, or an archive when it ends in .tar, .tar.gz or .tgz")
    export.set_defaults(handler=_desktop("export"))

