"""Commands of people at a station: ``label`` (a recording's items, from a CSV or on a page) and
``detect`` (enrolled items in a wide frame)."""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from . import flags


def _label(args: argparse.Namespace) -> dict:
    from sortline.edge_runtime.labelling.book import LabelBook
    from sortline.hardware.recording import Recording

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
    from sortline.edge_runtime.labelling.page import LabelSession, serve_label_page

    classes = [c.strip() for c in (args.classes or "").split(",") if c.strip()]
    session = LabelSession(recording.root, classes or list(recording.meta.get("labels") or []))
    server = serve_label_page(session, port=args.port)
    url = f"http://127.0.0.1:{server.port}/"
    print(f"labelling {len(session.order)} items of {args.recording} at {url} (Ctrl-C to stop; every label is "
          f"saved in {book.path} as it is given)", flush=True)
    with flags.until_signalled() as stop:
        stop.wait()
    server.stop()
    labels = session.book.labels
    print(f"{len(labels)} of {len(session.order)} items labelled")
    return {"ok": True, "url": url, "labelled": len(labels), "items": len(session.order)}


def _exemplar_arg(text: str) -> tuple[str, Path]:
    label, sep, path = text.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"{text!r}: an exemplar is NAME=IMAGE (a crop of the item)")
    return label, Path(path)


def _frames(paths: Sequence[Path]) -> list[Path]:
    """Image files, and the images in folders, in order."""
    from sortline.edge_runtime.datasets import images_in

    return [frame for path in paths for frame in (images_in(path) if path.is_dir() else [path])]


class _ReadFrames(Sequence):
    """Image files read when they are reached, not all held at once (calibration may pass twice)."""

    def __init__(self, paths: Sequence[Path]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        return _read(self.paths[i])


def _min_inliers(text: str) -> int:
    value = flags.positive(int)(text)
    if value < 3:
        raise argparse.ArgumentTypeError(f"{value}: at least 3 matches fix a placement (rotation, scale, shift)")
    return value


def _share(text: str) -> float:
    value = flags.positive(float, zero=True)(text)
    if value > 1.0:
        raise argparse.ArgumentTypeError(f"{value}: a share, 0..1")
    return value


def _read(path: Path):
    from sortline.edge_runtime.detection.config import DetectError
    from sortline.hardware.camera import FrameError
    from sortline.hardware.images import read_image

    try:
        return read_image(path).rgb
    except FrameError as exc:
        raise DetectError(str(exc)) from exc


def _detector(args: argparse.Namespace):
    """The detector the flags ask for, calibrated on ``--background`` frames; and its calibration."""
    from sortline.edge_runtime.detection.config import DetectConfig, DetectError
    from sortline.edge_runtime.detection.correlation import CorrelationConfig
    from sortline.edge_runtime.detection.detector import Detector, store_features
    from sortline.edge_runtime.detection.keypoints import KeypointConfig
    from sortline.edge_runtime.learning.store import EmbeddingStore
    from sortline.edge_runtime.model.bundle import load_bundle
    from sortline.edge_runtime.model.choice import choose_runtime
    from sortline.edge_runtime.model.runtimes import AUTO, make_embedder

    if not args.exemplar and not args.store:
        raise DetectError("give the items to find: --exemplar NAME=CROP (one or more), or --store")
    keypoints = None if args.no_keypoints else KeypointConfig(min_inliers=args.min_inliers)
    config = DetectConfig(mode=args.mode, min_window=args.min_window, max_window=args.max_window,
                          threshold=args.threshold, keypoints=keypoints, windows=not args.no_windows,
                          colour=args.colour,
                          correlation=None if args.no_correlation else CorrelationConfig())
    bundle = load_bundle(args.bundle)
    exemplars: dict[str, list] = {}
    for label, path in args.exemplar or ():
        exemplars.setdefault(label, []).append(_read(path))
    features = None
    if args.store:
        with EmbeddingStore.open_existing(args.store) as store:
            features = store_features(store, bundle.manifest.embedding_dim, args.store_labels)
    spec = bundle.manifest.input
    if args.runtime == AUTO:  # measured on the bundle's input size, as a station chooses
        embedder = choose_runtime(bundle.backbone_path, spec, AUTO, args.threads, budget_s=0.5).embedder
    else:  # all cores by default: a frame is one large input, not a line of small ones
        embedder = make_embedder(args.runtime, bundle.backbone_path, spec, threads=args.threads or 0)
    detector = Detector.build(embedder, spec, exemplars, config, features)
    calibration = None
    if args.background:
        calibration = detector.calibrate(_ReadFrames(_frames(args.background)), args.false_per_frame)
        print(f"calibrated {len(detector.labels)} thresholds on {calibration['frames']} background frames "
              f"for {args.false_per_frame} false detections per frame")
    return detector, calibration


def _detect(args: argparse.Namespace) -> dict:
    import cv2

    from sortline.edge_runtime.detection.config import DetectError
    from sortline.edge_runtime.detection.detector import draw

    started = time.perf_counter()
    detector, calibration = _detector(args)
    config = detector.config
    frame = _read(args.image)
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
        found_by = {"keypoints": f"{d.inliers} keypoints", "correlation": f"NCC {d.score:.3f}"}.get(
            d.found_by, f"window {d.score:.3f}")
        print(f"{d.label:24s} {found_by:>14s}  box {list(d.box)}")
    print(f"{len(found)} detections of {len(detector.labels)} classes in {args.image} ({frame.shape[1]}×"
          f"{frame.shape[0]}, {windows.windows} windows, {config.mode} mode, "
          f"{windows.correlations} correlation finds, {windows.placements} keypoint placements, "
          f"{windows.seconds:.2f} s)"
          + (f"; annotated: {annotated}" if annotated else ""))
    if calibration is None:
        print(f"warning: thresholds not calibrated (every class at {config.threshold}); give --background frames "
              "without the items", file=sys.stderr)
    return {"ok": True, "image": str(args.image), "detections": [d.to_dict() for d in found],
            "mode": config.mode, "colour": config.colour, "windows": windows.windows,
            "keypoint_placements": windows.placements,
            "correlation_finds": windows.correlations,
            "seconds": seconds, "search_seconds": round(windows.seconds, 3), "labels": list(detector.labels),
            "calibration": calibration, "annotated": str(annotated) if annotated else None}


def add(commands: argparse._SubParsersAction) -> None:
    from sortline.edge_runtime.detection.config import MODES, DetectConfig

    report = flags.report()
    label = commands.add_parser("label", parents=[report],
                                help="label a recording's items: from a CSV file, or on a local page")
    label.add_argument("recording", type=Path)
    label.add_argument("--csv", type=Path, help="'item_id,label' lines")
    label.add_argument("--classes", help="the page's classes, comma-separated (default: the recording's, and "
                                         "those already given)")
    label.add_argument("--port", type=int, default=0, help="the page's port on 127.0.0.1 (default: any free one)")
    label.set_defaults(handler=_label)

    detect = commands.add_parser("detect", parents=[flags.runtime(default="onnxruntime"), report],
                                 help="find enrolled items in a wide frame by sliding windows")
    detect.add_argument("--bundle", type=Path, required=True)
    detect.add_argument("--image", type=Path, required=True, help="the frame to search")
    detect.add_argument("--exemplar", type=_exemplar_arg, nargs="+", metavar="NAME=CROP",
                        help="an item to find and a crop of it (repeat a NAME for more crops)")
    detect.add_argument("--store", type=Path, help="also find the items of this enrollment store (its examples' "
                                                   "embeddings are their exemplars)")
    detect.add_argument("--store-labels", nargs="+", metavar="NAME", help="only these of the store's items")
    detect.add_argument("--mode", choices=MODES, default=MODES[0],
                        help="dense (default): pool every window from one feature map per scale; crops: embed every "
                             "window on its own, 20-30× slower (docs/detection.md)")
    detect.add_argument("--background", type=Path, nargs="+", metavar="IMG",
                        help="frames (or folders of them) without the items: thresholds for --false-per-frame")
    detect.add_argument("--false-per-frame", type=float, default=0.1,
                        help="false detections per frame the calibrated thresholds allow (default 0.1)")
    detect.add_argument("--threshold", type=float, default=0.5,
                        help="every class's cosine threshold when not calibrated (default 0.5)")
    detect.add_argument("--min-window", type=flags.positive(int), default=48, help="smallest window side in px (48)")
    detect.add_argument("--no-keypoints", action="store_true",
                        help="do not place the exemplars by their SIFT keypoints")
    detect.add_argument("--no-windows", action="store_true",
                        help="no sliding windows: keypoints and correlation only (items seen as their exemplars "
                             "were: far fewer false detections, no model run per frame)")
    detect.add_argument("--no-correlation", action="store_true",
                        help="do not find the exemplars by their pixels (normalised cross-correlation)")
    detect.add_argument("--min-inliers", type=_min_inliers, default=6,
                        help="keypoint matches that must agree on an exemplar's placement (default 6, at least 3)")
    detect.add_argument("--max-window", type=flags.positive(float), default=1.0,
                        help="largest base window, as a share of the frame's shorter side (1.0; windows up to "
                             "2.5 times as long on one side)")
    detect.add_argument("--colour", type=_share, default=DetectConfig.colour, metavar="SHARE",
                        help="of a window's score, the share from its colour histogram's likeness to the item's "
                             f"(0..1; default {DetectConfig.colour}; the rest is its embedding's cosine)")
    detect.add_argument("--out", type=Path, help="folder for the annotated frame (PNG)")
    detect.set_defaults(handler=_detect)
