"""The ``sortline`` command.

Edge commands run on an install without torch. The desktop registers its own commands
(demo, pretrain, evaluate, export) through the ``sortline.commands`` entry point, with handlers
that import torch only when they run; this module names none of them, so the edge package
never imports the desktop one.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import datetime
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from importlib.metadata import entry_points
from pathlib import Path

COMMANDS_GROUP = "sortline.commands"  # entry points: callables that add subcommands


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

    pipeline = ItemPipeline.for_station(args.bundle, threads=args.threads, runtime=args.runtime)
    run = replay_recording(pipeline, args.recording, speed=args.speed,
                           event_log=args.events, progress=not args.quiet)
    print(markdown(run.summary))
    faults = run.summary["faults"]
    injected = run.summary["faults_injected"]
    print("Faults (observed / injected): " + ", ".join(f"{k} {faults[k]}/{injected[k]}" for k in faults))
    summary = {**run.summary, "ok": run.summary["lost"] == 0 and run.summary["duplicates"] == 0}
    if not summary["ok"]:
        print(f"sortline: replay: {summary['lost']} items got no gate command and {summary['duplicates']} got "
              "two different ones", file=sys.stderr)
    return summary


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

    station_file = load_station_file(args.config)
    if args.runtime is not None or args.threads is not None:  # the command line overrides the file
        station_file = dataclasses.replace(station_file, runtime=args.runtime or station_file.runtime,
                                           threads=args.threads or station_file.threads)
    with _until_signalled() as stop:
        stats, faults = serve(station_file, stop, bundle=args.bundle)
    summary = {"items": stats.items, "gate_commands": stats.gate_commands, "deadline_misses": stats.deadline_misses,
               "reasons": dict(stats.reasons), "faults": faults}
    print(f"served {stats.items} items, {stats.gate_commands} gate commands, {stats.deadline_misses} deadline misses")
    return summary


def _bundle_verify(args: argparse.Namespace) -> dict:
    from .bundle import load_bundle
    from .pipeline import check_runs

    bundle = load_bundle(args.bundle, public_key=args.key)
    ran = check_runs(bundle)
    m = bundle.manifest
    head = f"head {bundle.load_head().n_features} features" if m.head else "no head (embeddings only)"
    labels = ", ".join(m.labels[:5]) + (f", … ({len(m.labels)} in all)" if len(m.labels) > 5 else "")
    signed = f", signature OK ({args.key})" if args.key else ""
    print(f"{bundle.root}: OK — {m.name}, {len(m.files)} files verified{signed}, input {m.input.size} px × "
          f"{len(m.input.channels)} channels, model ran: {ran['embedding'][0]}×{ran['embedding'][1]} embeddings, "
          f"{head}; labels: {labels or 'none'}")
    return {"ok": True, "bundle": str(bundle.root), "name": m.name, "version": bundle.version,
            "files": sorted(m.files), "signed": bool(args.key), "ran": ran}


def _bundle_keygen(args: argparse.Namespace) -> dict:
    from .bundle import keygen

    private, public = keygen(args.key)
    print(f"{private}: private key (keep it on the desktop that signs bundles)\n"
          f"{public}: public key (name it in the station file: [station] public_key)")
    return {"private_key": str(private), "public_key": str(public)}


def _bundle_sign(args: argparse.Namespace) -> dict:
    from .bundle import sign_bundle

    bundle = sign_bundle(args.bundle, args.key)
    print(f"{args.bundle}: signed ({bundle.version})")
    return {"ok": True, "bundle": str(args.bundle), "version": bundle.version}


def _label(args: argparse.Namespace) -> dict:
    from sortline.hardware.recording import Recording

    from .labels import LabelBook

    recording = Recording.open(args.recording)
    book = LabelBook(recording.root)
    if args.csv is not None:
        frames = recording.root / "frames"
        known = [int(p.name) for p in frames.iterdir() if p.name.isdigit()] if frames.is_dir() else []
        given = book.import_csv(args.csv, known_items=known)
        labels = book.labels
        print(f"{args.recording}: {given} labels from {args.csv}; {len(labels)} of {len(known)} items labelled "
              f"({', '.join(f'{k} {v}' for k, v in sorted(collections.Counter(labels.values()).items()))})")
        return {"ok": True, "given": given, "labelled": len(labels), "items": len(known)}
    from .label_page import LabelSession, serve_label_page

    classes = [c.strip() for c in (args.classes or "").split(",") if c.strip()]
    session = LabelSession(recording.root, classes or list(recording.meta.get("labels") or []))
    server = serve_label_page(session, port=args.port)
    url = f"http://127.0.0.1:{server.server_address[1]}/"
    print(f"labelling {len(session.order)} items of {args.recording} at {url} (Ctrl-C to stop; every label is "
          f"saved in {book.path} as it is given)", flush=True)
    with _until_signalled() as stop:
        stop.wait()
    server.shutdown()
    labels = session.book.labels
    print(f"{len(labels)} of {len(session.order)} items labelled")
    return {"ok": True, "url": url, "labelled": len(labels), "items": len(session.order)}


def _enroll(args: argparse.Namespace) -> dict:
    from .bundle import load_bundle
    from .enroll import Enroller, enroll_paths

    started = time.perf_counter()
    bundle = load_bundle(args.bundle)
    with Enroller(bundle, args.store) as enroller:
        added = enroll_paths(enroller, args.label, args.images)
        for warning in added.warnings():
            print(f"warning: {warning}", file=sys.stderr)
        refit = None
        if not args.no_refit:
            refit = enroller.refit(exits={args.label: args.exit} if args.exit is not None else None,
                                   force=args.force)
        counts = enroller.store.counts()
        exits = enroller.classifier().policy.exits if refit else {}
    seconds = round(time.perf_counter() - started, 3)
    version = refit.version if refit else None
    where = f"head version {version} is current ({len(refit.labels)} classes)" if refit else "no refit (--no-refit)"
    print(f"{args.label}: {len(added.ids)} examples added ({counts[args.label]} in all, exit "
          f"{exits.get(args.label, '-')}); {where}; {seconds} s")
    return {"ok": True, "label": args.label, "examples": counts[args.label], "added": len(added.ids),
            "head_version": version, "seconds": seconds, "refit": refit.metrics if refit else None,
            "duplicates": added.duplicates, "lookalikes": added.lookalikes}


def _heads(args: argparse.Namespace) -> dict:
    from .memory import BUNDLE_VERSION, EmbeddingStore

    with EmbeddingStore.open_existing(args.store) as store:
        if args.heads_command == "rollback":
            version = store.rollback(args.version)
            print(f"{args.store}: head version {version} is current"
                  + (" (the bundle's own head)" if version == BUNDLE_VERSION else ""))
            return {"ok": True, "head_version": version}
        current = store.current
        rows = [{"version": BUNDLE_VERSION, "parent": None, "created": "", "labels": None, "examples": None,
                 "metrics": {}}] + [r.summary() for r in store.heads()]
    for row in rows:
        row["current"] = row["version"] == current
        mark = "*" if row["current"] else " "
        if row["version"] == BUNDLE_VERSION:
            print(f"{mark} v0  the bundle's own head")
            continue
        m = row["metrics"]
        check = (f"held-back {m['held_back_accuracy']:.1%} of {m['held_back']}" if "held_back_accuracy" in m
                 else "no held-back check")
        print(f"{mark} v{row['version']:<3d} {row['created']}  from v{row['parent']}, {row['labels']} classes, "
              f"{row['examples']} examples, {check}")
    return {"heads": rows, "current": current}


def _bundle_policy(args: argparse.Namespace) -> dict:
    from .bundle import load_bundle, with_policy
    from .policy import load_policy

    bundle = load_bundle(args.bundle)
    policy = load_policy(args.policy, bundle.manifest.labels)
    written = with_policy(bundle, policy, args.out, private_key=args.key)
    signed = f", signed with {args.key}" if args.key else ""
    print(f"{args.out}: {written.version} with the policy of {args.policy}{signed}")
    return {"ok": True, "bundle": str(args.out), "version": written.version, "decision": policy.to_dict()}


def _exemplar_arg(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: an exemplar is NAME=IMAGE (a crop of the item)")
    return label, Path(path)


def _frames(paths: Sequence[Path]) -> list[Path]:
    """Image files, and the images in folders, in order."""
    from .datasets import images_in

    return [frame for path in paths for frame in (images_in(path) if path.is_dir() else [path])]


def _detect(args: argparse.Namespace) -> dict:
    import cv2

    from sortline.hardware.camera import FrameError
    from sortline.hardware.images import read_image

    from .bundle import load_bundle
    from .detect import DetectConfig, DetectError, Detector, draw, store_features
    from .keypoints import KeypointConfig
    from .memory import EmbeddingStore
    from .runtimes import make_embedder

    def read(path: Path):
        try:
            return read_image(path).rgb
        except FrameError as exc:
            raise DetectError(str(exc)) from exc

    if not args.exemplar and not args.store:
        raise DetectError("give the items to find: --exemplar NAME=CROP (one or more), or --store")
    keypoints = None if args.no_keypoints else KeypointConfig(min_inliers=args.min_inliers)
    config = DetectConfig(mode=args.mode, min_window=args.min_window, max_window=args.max_window,
                          threshold=args.threshold, keypoints=keypoints, windows=not args.no_windows)
    bundle = load_bundle(args.bundle)
    exemplars: dict[str, list] = {}
    for label, path in args.exemplar or ():
        exemplars.setdefault(label, []).append(read(path))
    features = None
    if args.store:
        with EmbeddingStore.open_existing(args.store) as store:
            features = store_features(store, bundle.manifest.embedding_dim, args.store_labels)
    embedder = make_embedder(args.runtime, bundle.backbone_path, bundle.manifest.input, threads=args.threads or 0)
    started = time.perf_counter()
    detector = Detector.build(embedder, bundle.manifest.input, exemplars, config, features)
    calibration = None
    if args.background:
        backgrounds = _frames(args.background)
        calibration = detector.calibrate((read(p) for p in backgrounds), args.false_per_frame)
        print(f"calibrated {len(detector.labels)} thresholds on {calibration['frames']} background frames "
              f"for {args.false_per_frame} false detections per frame")
    frame = read(args.image)
    windows = detector.scores(frame)
    found = detector.decide(windows)
    seconds = round(time.perf_counter() - started, 3)
    annotated = None
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        annotated = args.out / f"{args.image.stem}.detections.png"
        if not cv2.imwrite(str(annotated), cv2.cvtColor(draw(frame, found), cv2.COLOR_RGB2BGR)):
            raise DetectError(f"{annotated}: could not write the annotated image")
    for d in found:
        found_by = f"{d.inliers} keypoints" if d.inliers else f"cosine {d.score:.3f}"
        print(f"{d.label:24s} {found_by:>14s}  box {list(d.box)}")
    print(f"{len(found)} detections of {len(detector.labels)} classes in {args.image} ({frame.shape[1]}×"
          f"{frame.shape[0]}, {windows.windows} windows, {config.mode} mode, "
          f"{windows.placements} keypoint placements, {windows.seconds:.2f} s)"
          + (f"; annotated: {annotated}" if annotated else ""))
    if calibration is None:
        print(f"warning: thresholds not calibrated (every class at {config.threshold}); give --background frames "
              "without the items", file=sys.stderr)
    return {"ok": True, "image": str(args.image), "detections": [d.to_dict() for d in found],
            "mode": config.mode, "windows": windows.windows, "keypoint_placements": windows.placements,
            "seconds": seconds,
            "search_seconds": round(windows.seconds, 3), "labels": list(detector.labels),
            "calibration": calibration, "annotated": str(annotated) if annotated else None}


def _min_inliers(text: str) -> int:
    value = positive(int)(text)
    if value < 3:
        raise argparse.ArgumentTypeError(f"{value}: at least 3 matches fix a placement (rotation, scale, shift)")
    return value


def positive(kind: type):
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


def runtime_flags(parser: argparse.ArgumentParser, default: str | None = "auto") -> None:
    """``--runtime`` and ``--threads``, for every command that runs a bundle."""
    from .runtimes import AUTO, RUNTIMES

    parser.add_argument("--runtime", choices=[AUTO, *RUNTIMES], default=default,
                        help="inference runtime; auto (default) measures the installed ones on the bundle and "
                             "picks the fastest")
    parser.add_argument("--threads", type=positive(int), default=None,
                        help="intra-op threads (default: measured, see edge_runtime/runtimes.py)")


def _bench(args: argparse.Namespace) -> dict:
    from .bundle import load_bundle
    from .runtimes import bench_bundle

    result = bench_bundle(load_bundle(args.bundle), runtime=args.runtime, threads=args.threads,
                          budget_s=args.budget)
    for key, ms in result["runtimes"].items():
        mark = "  <- chosen" if key == result["chosen"] else ""
        print(f"{key:16s} {ms:8.3f} ms per item{mark}")
    for key, why in result["refused"].items():
        print(f"{key:16s} refused: {why}")
    print(f"auto compared them on {result['check_items']} check items and timed {result['rounds']} rounds in "
          f"{result['seconds']} s; whole item with {result['chosen']}: {result['items_per_s']:.1f} items/s "
          f"(preprocess, embed, fuse, head; median of {result['whole_item_runs']})")
    return result


def line_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lanes", type=positive(int), default=1,
                        help="lanes the controller announces items on (default 1)")
    parser.add_argument("--rate", type=positive(float), default=10.0,
                        help="items per second over all lanes (default 10)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sortline", description="Self-supervised recognition at the edge.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--log-json", action="store_true",
                        help="log one JSON object per line (time, level, logger, message), for journald or a collector")
    commands = parser.add_subparsers(dest="command", required=True)

    simulate = commands.add_parser("simulate", help="run a simulated line and record what a station would see")
    simulate.add_argument("--scenario", choices=["avocado", "checkout"], default="avocado")
    simulate.add_argument("--products", type=Path,
                          help="checkout: product photos, a labeled folder or split file (default: drawn products)")
    simulate.add_argument("--product-count", type=int, default=12, help="checkout: how many drawn products")
    simulate.add_argument("--items", type=int, default=500)
    simulate.add_argument("--faults", type=float, default=0.0, help="rate of every fault kind (e.g. 0.01)")
    simulate.add_argument("--seed", type=int, default=1000)
    line_flags(simulate)
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
    runtime_flags(serve, default=None)
    serve.add_argument("--json", action="store_true")
    serve.set_defaults(handler=_serve)

    replay = commands.add_parser("replay", help="play a recording to the station runtime and judge it")
    replay.add_argument("recording", type=Path)
    replay.add_argument("--bundle", type=Path, required=True)
    replay.add_argument("--speed", choices=["realtime", "max"], default="realtime",
                        help="recorded timing, or each item as soon as the station is free")
    replay.add_argument("--events", type=Path, help="write the station's event log (JSON lines) here")
    runtime_flags(replay)
    replay.add_argument("--quiet", action="store_true")
    replay.add_argument("--json", action="store_true")
    replay.set_defaults(handler=_replay)

    bench = commands.add_parser("bench", help="time every runtime and thread count on a bundle; show auto's pick")
    bench.add_argument("--bundle", type=Path, required=True)
    runtime_flags(bench)
    bench.add_argument("--budget", type=positive(float), default=2.0, help="seconds of timing (default 2)")
    bench.add_argument("--json", action="store_true")
    bench.set_defaults(handler=_bench)

    label = commands.add_parser("label", help="label a recording's items: from a CSV file, or on a local page")
    label.add_argument("recording", type=Path)
    label.add_argument("--csv", type=Path, help="'item_id,label' lines")
    label.add_argument("--classes", help="the page's classes, comma-separated (default: the recording's, and "
                                         "those already given)")
    label.add_argument("--port", type=int, default=0, help="the page's port on 127.0.0.1 (default: any free one)")
    label.add_argument("--json", action="store_true")
    label.set_defaults(handler=_label)

    enroll = commands.add_parser("enroll", help="learn a new item (or more of a known one) from a few images, "
                                                "and refit the head on the device")
    enroll.add_argument("--bundle", type=Path, required=True)
    enroll.add_argument("--store", type=Path, required=True,
                        help="the station's store (SQLite file: examples and head versions; made if missing)")
    enroll.add_argument("--label", required=True, help="the item's class name")
    enroll.add_argument("images", nargs="+", type=Path,
                        help="image files (one view each) or item folders (a recording's frames/<item>/)")
    enroll.add_argument("--exit", type=int, help="the exit for this class (default: the safe exit)")
    enroll.add_argument("--no-refit", action="store_true", help="only store the examples")
    enroll.add_argument("--force", action="store_true", help="refit even if known classes lose held-back accuracy")
    enroll.add_argument("--json", action="store_true")
    enroll.set_defaults(handler=_enroll)

    detect = commands.add_parser("detect", help="find enrolled items in a wide frame by sliding windows")
    detect.add_argument("--bundle", type=Path, required=True)
    detect.add_argument("--image", type=Path, required=True, help="the frame to search")
    detect.add_argument("--exemplar", type=_exemplar_arg, nargs="+", metavar="NAME=CROP",
                        help="an item to find and a crop of it (repeat a NAME for more crops)")
    detect.add_argument("--store", type=Path, help="also find the items of this enrollment store (its examples' "
                                                   "embeddings are their exemplars)")
    detect.add_argument("--store-labels", nargs="+", metavar="NAME", help="only these of the store's items")
    detect.add_argument("--mode", choices=("crops", "dense"), default="dense",
                        help="dense (default): pool every window from one feature map per scale; crops: embed every "
                             "window on its own, 20-30× slower (docs/detection.md)")
    detect.add_argument("--background", type=Path, nargs="+", metavar="IMG",
                        help="frames (or folders of them) without the items: thresholds for --false-per-frame")
    detect.add_argument("--false-per-frame", type=float, default=0.1,
                        help="false detections per frame the calibrated thresholds allow (default 0.1)")
    detect.add_argument("--threshold", type=float, default=0.5,
                        help="every class's cosine threshold when not calibrated (default 0.5)")
    detect.add_argument("--min-window", type=positive(int), default=48, help="smallest window side in px (48)")
    search = detect.add_mutually_exclusive_group()
    search.add_argument("--no-keypoints", action="store_true",
                        help="sliding windows only: do not also place the exemplars by their SIFT keypoints")
    search.add_argument("--no-windows", action="store_true",
                        help="keypoint placements only (items with print or texture: far fewer false detections)")
    detect.add_argument("--min-inliers", type=_min_inliers, default=6,
                        help="keypoint matches that must agree on an exemplar's placement (default 6, at least 3)")
    detect.add_argument("--max-window", type=positive(float), default=1.0,
                        help="largest base window, as a share of the frame's shorter side (1.0; windows up to "
                             "2.5 times as long on one side)")
    detect.add_argument("--out", type=Path, help="folder for the annotated frame (PNG)")
    detect.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime",
                        help="inference runtime (default onnxruntime)")
    detect.add_argument("--threads", type=positive(int), default=None, help="intra-op threads (default: all cores)")
    detect.add_argument("--json", action="store_true")
    detect.set_defaults(handler=_detect)

    heads = commands.add_parser("heads", help="the head versions in a station's store")
    heads_commands = heads.add_subparsers(dest="heads_command", required=True)
    listing = heads_commands.add_parser("list", help="every head version; * marks the current one")
    listing.add_argument("--store", type=Path, required=True)
    listing.add_argument("--json", action="store_true")
    listing.set_defaults(handler=_heads)
    rollback = heads_commands.add_parser("rollback", help="make an earlier head current (default: the parent)")
    rollback.add_argument("--store", type=Path, required=True)
    rollback.add_argument("version", nargs="?", type=int, help="0 is the bundle's own head")
    rollback.add_argument("--json", action="store_true")
    rollback.set_defaults(handler=_heads)

    for entry in entry_points(group=COMMANDS_GROUP):  # the desktop's commands, when installed
        entry.load()(commands)
    bundle = commands.add_parser("bundle", help="bundle tools")
    bundle_commands = bundle.add_subparsers(dest="bundle_command", required=True)
    verify = bundle_commands.add_parser(
        "verify", help="check a bundle's schema, every file's hash and its signature (--key), and run its model once")
    verify.add_argument("bundle", type=Path)
    verify.add_argument("--key", type=Path, help="public key: the bundle must be signed by its private key")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(handler=_bundle_verify)
    keygen = bundle_commands.add_parser("keygen", help="make an ed25519 key pair for signing bundles (KEY, KEY.pub)")
    keygen.add_argument("key", type=Path)
    keygen.add_argument("--json", action="store_true")
    keygen.set_defaults(handler=_bundle_keygen)
    sign = bundle_commands.add_parser("sign", help="sign a bundle (folder or archive) in place")
    sign.add_argument("bundle", type=Path)
    sign.add_argument("--key", type=Path, required=True, help="private key from 'sortline bundle keygen'")
    sign.add_argument("--json", action="store_true")
    sign.set_defaults(handler=_bundle_sign)
    policy = bundle_commands.add_parser("policy", help="a new version of a bundle with another decision policy "
                                                       "(class → exit, confidence, safe exit: docs/station.md)")
    policy.add_argument("bundle", type=Path)
    policy.add_argument("policy", type=Path, help="the policy file (TOML)")
    policy.add_argument("--out", type=Path, required=True, help="the new bundle (folder or archive)")
    policy.add_argument("--key", type=Path, help="sign the new bundle with this private key")
    policy.add_argument("--json", action="store_true")
    policy.set_defaults(handler=_bundle_policy)
    return parser


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``t`` (UTC, ISO 8601), ``level``, ``logger``, ``msg`` (and
    ``exc`` with a traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"t": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
                 "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.log_json:
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
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
    return 1 if isinstance(result, dict) and result.get("ok") is False else 0


if __name__ == "__main__":
    sys.exit(main())
