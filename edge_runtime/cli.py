"""The ``sortline`` command.

Edge commands run on an install without torch. Desktop commands are named here by module
path and imported only when invoked, so the edge package never imports the desktop one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path


def _desktop(name: str):
    """A handler in sortline.train.commands, imported only when its command runs (needs torch)."""

    def run(args: argparse.Namespace) -> dict:
        return getattr(importlib.import_module("sortline.train.commands"), name)(args)

    return run


def _simulate(args: argparse.Namespace) -> dict:
    from sortline.hardware.sim.faults import FaultRates
    from sortline.hardware.sim.line import LineConfig

    from .hil import make_scenario, record_simulation

    config = LineConfig(items=args.items, seed=args.seed, pitch_ms=1000 / args.rate, lanes=args.lanes,
                        faults=FaultRates.uniform(args.faults))
    scenario = make_scenario(args.scenario, args.seed, args.products, args.product_count)
    result = record_simulation(config, args.record, scenario, progress=not args.quiet)
    injected = ", ".join(f"{k} {v}" for k, v in sorted(result["injected"].items())) or "none"
    print(f"{args.record}: {result['items']} items, {result['captures']} captures, {result['serial_bytes']} serial "
          f"bytes in {result['seconds']} s; faults injected: {injected}; controller silences: {result['silences']}")
    return result


def _replay(args: argparse.Namespace) -> dict:
    from .hil import replay_recording
    from .pipeline import ItemPipeline
    from .report import markdown

    run = replay_recording(ItemPipeline.for_station(args.bundle), args.recording, speed=args.speed,
                           event_log=args.events, progress=not args.quiet)
    print(markdown(run.summary))
    faults = run.summary["faults"]
    injected = run.summary["faults_injected"]
    print("Faults (observed / injected): " + ", ".join(f"{k} {faults[k]}/{injected[k]}" for k in faults))
    return run.summary


@contextlib.contextmanager
def _until_signalled() -> Iterator[threading.Event]:
    """An event that SIGINT (Ctrl-C) or SIGTERM (systemd stop) sets, for a clean shutdown; the
    previous handlers come back afterwards."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _record(args: argparse.Namespace) -> dict:
    from .config import load_station_file
    from .daemon import record_station

    if args.items is None and args.seconds is None:
        print("recording until Ctrl-C", file=sys.stderr)
    with _until_signalled() as stop:
        result = record_station(load_station_file(args.config), args.out, items=args.items, seconds=args.seconds,
                                stop=stop, progress=not args.quiet)
    print(f"{args.out}: {result['items']} items, {result['captures']} captures, {result['serial_bytes']} serial "
          f"bytes in {result['seconds']} s")
    return result


def _serve(args: argparse.Namespace) -> dict:
    from .config import load_station_file
    from .daemon import serve

    with _until_signalled() as stop:
        stats, faults = serve(load_station_file(args.config), stop, bundle=args.bundle)
    summary = {"items": stats.items, "gate_commands": stats.gate_commands, "deadline_misses": stats.deadline_misses,
               "reasons": dict(stats.reasons), "faults": faults}
    print(f"served {stats.items} items, {stats.gate_commands} gate commands, {stats.deadline_misses} deadline misses")
    return summary


def _bundle_verify(args: argparse.Namespace) -> dict:
    from .bundle import load_bundle

    bundle = load_bundle(args.bundle)
    m = bundle.manifest
    head = f"head {bundle.load_head().n_features} features" if m.head else "no head (embeddings only)"
    labels = ", ".join(m.labels[:5]) + (f", … ({len(m.labels)} in all)" if len(m.labels) > 5 else "")
    print(f"{bundle.root}: OK — {m.name}, {len(m.files)} files verified, input {m.input.size} px × "
          f"{len(m.input.channels)} channels, {head}; labels: {labels or 'none'}")
    return {"ok": True, "bundle": str(bundle.root), "name": m.name, "files": sorted(m.files)}


def _positive(kind: type):
    """An argparse type: a number of ``kind`` above zero."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"{text!r} must be above zero")
        return value

    return parse


def _line_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lanes", type=_positive(int), default=1,
                        help="lanes the controller announces items on (default 1)")
    parser.add_argument("--rate", type=_positive(float), default=10.0,
                        help="items per second over all lanes (default 10)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sortline", description="Self-supervised recognition at the edge.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="the whole loop on a simulated avocado line")
    demo.add_argument("--items", type=int, default=500, help="items to sort (default 500)")
    _line_flags(demo)
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
    demo.add_argument("--faults", type=float, default=0.0,
                      help="inject every fault kind on the simulated line at this rate (e.g. 0.01)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    demo.set_defaults(handler=_desktop("demo"))

    pretrain = commands.add_parser("pretrain", help="pretrain a backbone (self-supervised, supcon or distill)")
    pretrain.add_argument("--method", required=True,
                          choices=["simclr", "moco", "byol", "simsiam", "barlow", "rotnet", "jigsaw", "supcon",
                                   "distill"])
    pretrain.add_argument("--data", type=Path, required=True,
                          help="a folder of images, a split file, a multi-view item folder or a recording")
    pretrain.add_argument("--backbone", default="resnet10",
                          help="resnet10, resnet18, resnet50, mobilenet_v3_small or mobilenet_v3_large")
    pretrain.add_argument("--pool", choices=["avg", "lca"], default="avg", help="global average or LCA pooling")
    pretrain.add_argument("--weights", type=Path, help="start from a local weights file (never downloaded)")
    pretrain.add_argument("--epochs", type=float, default=10.0)
    pretrain.add_argument("--batch-size", type=int, default=128)
    pretrain.add_argument("--image-size", type=int, default=64)
    pretrain.add_argument("--lr", type=float, default=2e-3)
    pretrain.add_argument("--max-seconds", type=float, help="stop at a step boundary past this time budget")
    pretrain.add_argument("--augment", choices=["colour-safe", "simclr"], default="colour-safe",
                          help="augmentation recipe (colour-safe keeps hue and saturation; simclr is the paper's)")
    pretrain.add_argument("--solarize", type=float, help="probability of solarizing the RGB channels")
    pretrain.add_argument("--channel-shuffle", type=float, help="probability of CH-Rand (RGB channels permuted)")
    pretrain.add_argument("--tile-shuffle", type=float, help="probability of shuffling 2×2 tiles")
    pretrain.add_argument("--balanced", action="store_true", help="class-balanced sampling (needs labels)")
    pretrain.add_argument("--pairs", type=Path, help="supcon/distill: 'image_a, image_b' lines instead of labels")
    pretrain.add_argument("--teacher", type=Path, help="distill: the teacher's checkpoint")
    pretrain.add_argument("--unlabeled", type=Path, help="distill: unlabeled images for the teacher's targets")
    pretrain.add_argument("--hard-negatives", type=int, default=64,
                          help="supcon/distill: keep this many hardest negatives per anchor (0: all)")
    pretrain.add_argument("--workers", type=int, help="data-loading processes (default: 0 on CPU, up to 8 on GPU)")
    pretrain.add_argument("--resume", type=Path, help="continue exactly from a training state (OUT.state.pt)")
    pretrain.add_argument("--seed", type=int, default=0)
    pretrain.add_argument("--skip-unreadable", action="store_true", help="leave unreadable images out, not stop")
    pretrain.add_argument("--out", type=Path, default=Path("backbone.ckpt"))
    pretrain.add_argument("--quiet", action="store_true", help="no progress bar")
    pretrain.add_argument("--json", action="store_true")
    pretrain.set_defaults(handler=_desktop("pretrain"))

    simulate = commands.add_parser("simulate", help="run a simulated line and record what a station would see")
    simulate.add_argument("--scenario", choices=["avocado", "checkout"], default="avocado")
    simulate.add_argument("--products", type=Path,
                          help="checkout: product photos, a labeled folder or split file (default: drawn products)")
    simulate.add_argument("--product-count", type=int, default=12, help="checkout: how many drawn products")
    simulate.add_argument("--items", type=int, default=500)
    simulate.add_argument("--faults", type=float, default=0.0, help="rate of every fault kind (e.g. 0.01)")
    simulate.add_argument("--seed", type=int, default=1000)
    _line_flags(simulate)
    simulate.add_argument("--record", type=Path, required=True, help="a new folder for the recording")
    simulate.add_argument("--quiet", action="store_true")
    simulate.add_argument("--json", action="store_true")
    simulate.set_defaults(handler=_simulate)

    record = commands.add_parser("record", help="record a real station's devices and cameras to a folder")
    record.add_argument("--config", type=Path, required=True, help="the station file (TOML)")
    record.add_argument("--out", type=Path, required=True, help="a new folder for the recording")
    record.add_argument("--items", type=int, help="stop after this many announced items")
    record.add_argument("--seconds", type=float, help="stop after this long (default: at Ctrl-C)")
    record.add_argument("--quiet", action="store_true")
    record.add_argument("--json", action="store_true")
    record.set_defaults(handler=_record)

    serve = commands.add_parser("serve", help="run the station daemon until SIGINT/SIGTERM")
    serve.add_argument("--config", type=Path, required=True, help="the station file (TOML)")
    serve.add_argument("--bundle", type=Path, help="override the station file's bundle")
    serve.add_argument("--json", action="store_true")
    serve.set_defaults(handler=_serve)

    replay = commands.add_parser("replay", help="play a recording to the station runtime and judge it")
    replay.add_argument("recording", type=Path)
    replay.add_argument("--bundle", type=Path, required=True)
    replay.add_argument("--speed", choices=["realtime", "max"], default="realtime",
                        help="recorded timing, or each item as soon as the station is free")
    replay.add_argument("--events", type=Path, help="write the station's event log (JSON lines) here")
    replay.add_argument("--quiet", action="store_true")
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(handler=_replay)

    evaluate = commands.add_parser("evaluate", help="judge a backbone's embeddings: probes, k-NN, retrieval, "
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
    evaluate.add_argument("--finetune-epochs", type=float, default=30.0)
    evaluate.add_argument("--finetune-lr", type=float, default=5e-4)
    evaluate.add_argument("--finetune-max-seconds", type=float, help="stop each fine-tuning run past this")
    evaluate.add_argument("--report", type=Path, help="write report.md, report.json and the plots here")
    evaluate.add_argument("--gradcam-samples", type=int, default=16)
    evaluate.add_argument("--skip-unreadable", action="store_true", help="leave unreadable images out, not stop")
    evaluate.add_argument("--seed", type=int, default=0)
    evaluate.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluate.add_argument("--json", action="store_true", help="print the summary as JSON on the last line")
    evaluate.set_defaults(handler=_desktop("evaluate"))

    export = commands.add_parser("export", help="a trained backbone → ONNX (int8/fp16) → verified bundle")
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
    export.add_argument("--out", type=Path, required=True,
                        help="bundle to write: a folder, or an archive when it ends in .tar, .tar.gz or .tgz")
    export.add_argument("--json", action="store_true")
    export.set_defaults(handler=_desktop("export"))

    bundle = commands.add_parser("bundle", help="bundle tools")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True)
    verify = bundle_commands.add_parser("verify", help="check a bundle's schema and every file's hash")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=_bundle_verify)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .errors import SortlineError

    try:
        result = args.handler(args)
    except (SortlineError, FileNotFoundError) as exc:
        print(f"sortline: error: {exc}", file=sys.stderr)
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "error": str(exc)}))
        return 2
    if getattr(args, "json", False):
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
