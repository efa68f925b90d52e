"""Detection on real photos: items pasted into frames made of store photos of other products,
found again.

    python benchmarks/detection.py --bundle B [--scenes 40] [--background-frames 10]   # the station set
    python benchmarks/detection.py --set iconic --bundle B [B2 ...] [--scenes 60] [--crop-scenes 10]
    python benchmarks/detection.py --bundle - --write-finetune-data DIR     # data for the fine-tuning
    python benchmarks/detection.py --set ceiling --bundle B [--shots 5]     # the station set's items at their boxes

The station set (issue 36, the default): each class's exemplar is a small, soft, JPEG-compressed
crop of one of its store photos, as a station's camera gives; the frames hold it again at a new
scale (own view), or a crop of another photo of the class (other view), or the iconic images
below; every detector row has the template-matching floor beside it, on the same frames and
calibration; plain items (fruit and vegetables) are reported on their own. Results:
``benchmarks/results/detection_station.{json,md}``.

The iconic set (issue 17), described from here on: grocery-store iconic images, one exemplar
per class.

Each bundle is an RGB bundle the repository's own recipe makes (``sortline pretrain`` on the
train split's photos, then ``sortline export``; the commands that made the
committed results are in docs/detection.md). The 81 classes are split by coarse class (all the
apples on one side) into 40 classes to find and 41 whose photos are the backdrop, so no frame
shows, behind the pasted items, another photo of an item searched for. For each bundle:

- the 40 iconic images are the exemplars (one crop per class, the station's enrollment shot);
- frames are 480×640 mosaics of four val-split photos of the backdrop classes; one to three
  iconic images are pasted into each, 20–40 % of the frame's shorter side, turned by a quarter
  turn and up to 25°, relit (gain 0.7–1.3, offset ±20 per channel), half of them partly covered
  by clutter;
- thresholds are calibrated on mosaics of other val photos (a third of them, kept apart) with
  nothing pasted, for 0.5 false detections per frame over all classes;
- dense mode runs on every scene, with the keypoint placements (the default) and without them
  (windows only); crop mode, with them, on the first ``--crop-scenes`` (it is slow); the dense
  run's placements are also scored alone: AP at IoU 0.5 (mean over the classes present),
  precision and recall at the calibrated thresholds, the window stage's windows per second and
  the frame's p50/p99 time. Dense is compared with crops on the frames both ran;
- an ablation of dense mode's window choices (windows only) on the first bundle.

Results: ``benchmarks/results/detection.{json,md}`` and an annotated frame per bundle (white:
the truth; coloured: the detections at the calibrated thresholds).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from sortline.edge_runtime.detection.config import DetectError
from sortline.edge_runtime.detection.correlation import CorrelationConfig
from sortline.edge_runtime.detection.detector import DetectConfig, Detector, draw
from sortline.edge_runtime.detection.evaluation import PasteConfig, iou, paste_scenes, score_detections
from sortline.edge_runtime.detection.keypoints import KeypointConfig
from sortline.edge_runtime.detection.pooling import unit
from sortline.edge_runtime.model.bundle import load_bundle
from sortline.edge_runtime.model.embedder import OnnxEmbedder
from sortline.hardware.images import read_image

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_name  # noqa: E402

GROCERY = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "grocery-store"
RESULTS = Path(__file__).parent / "results"
FALSE_PER_FRAME = 0.5


def read_classes(data: Path) -> list[dict]:
    with open(data / "classes.csv", newline="") as f:
        return list(csv.DictReader(f))


def split_classes(rows: list[dict], seed: int) -> tuple[set[str], set[str]]:
    """The classes to find and the classes whose store photos are the backdrop, split by
    coarse class (all the apples on one side), so that no backdrop photo shows an item that
    is searched for, or another variety of it; about half the classes each."""
    coarse = sorted({row["Coarse Class Name (str)"] for row in rows})
    np.random.default_rng(seed).shuffle(coarse)
    targets: set[str] = set()
    for name in coarse:
        if len(targets) >= len(rows) // 2:
            break
        targets.update(r["Class Name (str)"] for r in rows if r["Coarse Class Name (str)"] == name)
    return targets, {r["Class Name (str)"] for r in rows} - targets


def iconic_exemplars(data: Path, classes: set[str] | None = None) -> dict[str, np.ndarray]:
    return {row["Class Name (str)"]: read_image(data / row["Iconic Image Path (str)"].lstrip("/")).rgb
            for row in read_classes(data) if classes is None or row["Class Name (str)"] in classes}


def split_photos(data: Path, split: str, classes: set[str]) -> list[Path]:
    """The split's photos of ``classes`` (a photo's class is the folder it is in)."""
    paths = [data / line.split(",")[0].strip() for line in (data / f"{split}.txt").read_text().splitlines() if line]
    return [p for p in paths if p.parent.name in classes]


def write_finetune_data(data: Path, out: Path, negatives: int, seed: int, copies: int) -> None:
    """Links to the iconic images, a folder per class (``copies`` links each, so that a batch
    holds several augmentations of each item: positives for each other), and to ``negatives``
    train-split photos of the backdrop classes (never the val photos the scenes are made of)."""
    rows = read_classes(data)
    targets, backdrop = split_classes(rows, seed)
    for row in rows:
        if row["Class Name (str)"] not in targets:
            continue
        folder = out / "exemplars" / row["Class Name (str)"]
        folder.mkdir(parents=True, exist_ok=True)
        source = (data / row["Iconic Image Path (str)"].lstrip("/")).resolve()
        for k in range(copies):
            link = folder / f"{source.stem}-{k}{source.suffix}"
            link.unlink(missing_ok=True)
            link.symlink_to(source)
    train = split_photos(data, "train", backdrop)
    (out / "negatives").mkdir(parents=True, exist_ok=True)
    for i in np.random.default_rng(seed).choice(len(train), negatives, replace=False):
        source = train[i].resolve()
        (out / "negatives" / source.name).unlink(missing_ok=True)
        (out / "negatives" / source.name).symlink_to(source)
    print(f"{out}: {len(targets)} exemplar classes, {negatives} negatives (train photos of the other classes)")


def mosaics(paths: list[Path]):
    """A background maker: 2×2 store photos drawn from ``paths``."""
    cache: dict[Path, np.ndarray] = {}

    def photo(path: Path) -> np.ndarray:
        if path not in cache:
            cache[path] = cv2.resize(read_image(path).rgb, (320, 240), interpolation=cv2.INTER_AREA)
        return cache[path]

    def make(rng: np.random.Generator) -> np.ndarray:
        tiles = [photo(paths[i]) for i in rng.choice(len(paths), 4, replace=False)]
        return np.vstack([np.hstack(tiles[:2]), np.hstack(tiles[2:])])

    return make


def run_mode(detector: Detector, scenes, label: str) -> tuple[dict, dict]:
    """The detector's run on ``scenes``, and the same run's keypoint placements alone."""
    everything, placements = ({"ranked": [], "decided": [], "times": [], "window_times": [], "windows": 0}
                              for _ in range(2))
    for scene in tqdm(scenes, desc=label, leave=False):
        scored = detector.scores(scene.image)
        placed = scored.part("keypoints")
        for run, part in ((everything, scored), (placements, placed)):
            run["windows"] += part.windows
            run["times"].append(part.seconds)
            run["window_times"].append(part.seconds - part.keypoint_seconds)
            run["ranked"].append(detector.decide(part, -np.inf))
            run["decided"].append(detector.decide(part))
    return everything, placements


def summary(run: dict, scenes) -> dict:
    """AP, precision and recall; the window stage's windows per second (keypoint matching
    not counted), and the whole search's time per frame."""
    score = score_detections(run["ranked"], scenes, run["decided"])
    t = np.asarray(run["times"])
    window_s = float(np.sum(run["window_times"]))
    return {**{k: v for k, v in score.to_dict().items() if k != "per_class_ap50"}, "frames": len(scenes),
            "windows_per_frame": run["windows"] // len(scenes),
            "windows_per_s": round(run["windows"] / window_s) if window_s > 0 else 0,
            "frame_p50_s": round(float(np.percentile(t, 50)), 3), "frame_p99_s": round(float(np.percentile(t, 99)), 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bundle", type=Path, nargs="+", required=True)
    parser.add_argument("--data", type=Path, default=GROCERY)
    parser.add_argument("--scenes", type=int, default=40)
    parser.add_argument("--crop-scenes", type=int, default=10)
    parser.add_argument("--backgrounds", type=int, default=20)
    parser.add_argument("--min-window", type=int, default=64)
    parser.add_argument("--max-window", type=float, default=0.5, help="largest base window, of the shorter side")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--write-finetune-data", type=Path, metavar="DIR",
                        help="only write DIR/exemplars (one folder per class: its iconic image) and DIR/negatives "
                             "(--negatives train-split store photos), the fine-tuning data, and stop")
    parser.add_argument("--negatives", type=int, default=320)
    parser.add_argument("--copies", type=int, default=8, help="links to each exemplar in the fine-tuning data")
    parser.add_argument("--ablation-scenes", type=int, default=30,
                        help="dense mode's choices, one changed at a time, on the first bundle and this many scenes")
    parser.add_argument("--set", choices=("station", "iconic", "timing", "ceiling"), default="station",
                        help="station: small, soft exemplars from store photos, the template-matching floor beside "
                             "every row (issue 36); iconic: the catalogue images and the window ablation (issue 17); "
                             "timing: the default detector against the earlier one, frame by frame alternately; "
                             "ceiling: the station set's items at their true boxes, ranked against the 40 exemplars")
    parser.add_argument("--background-frames", type=int, default=10, help="the station set's calibration frames")
    parser.add_argument("--rows", nargs="+", metavar="TEXT",
                        help="the station set: only the detector rows whose name holds one of these")
    parser.add_argument("--name", default="detection_station", help="the station set's results file name")
    parser.add_argument("--shots", type=int, default=1,
                        help="the station set and ceiling: exemplars per class (the first is the own view's; the "
                             "others crops of further train photos of the class)")
    args = parser.parse_args()
    if args.set in ("station", "timing", "ceiling") and not args.write_finetune_data:
        {"station": station_benchmark, "timing": timing_benchmark, "ceiling": ceiling_benchmark}[args.set](args)
        return
    if args.write_finetune_data:
        write_finetune_data(args.data, args.write_finetune_data, args.negatives, args.seed, args.copies)
        return

    targets, backdrop = split_classes(read_classes(args.data), args.seed)
    exemplars = iconic_exemplars(args.data, targets)
    val = split_photos(args.data, "val", backdrop)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(val))
    calibration_photos = [val[i] for i in order[: len(val) // 3]]
    scene_photos = [val[i] for i in order[len(val) // 3:]]
    paste = PasteConfig(size=(480, 640), scale=(0.2, 0.4))
    scenes = paste_scenes(exemplars, mosaics(scene_photos), args.scenes, seed=args.seed + 1, config=paste)
    make_background = mosaics(calibration_photos)
    backgrounds = [cv2.resize(make_background(np.random.default_rng(1000 + i)), (640, 480),
                              interpolation=cv2.INTER_AREA) for i in range(args.backgrounds)]
    crop_scenes = scenes[: args.crop_scenes]
    results = {"cpu": cpu_name(), "scenes": args.scenes, "crop_scenes": len(crop_scenes),
               "backgrounds": args.backgrounds, "classes": len(exemplars), "false_per_frame": FALSE_PER_FRAME,
               "min_window": args.min_window, "max_window": args.max_window,
               "targets": sorted(targets), "backdrop_classes": len(backdrop), "backdrop_photos": len(val),
               "paste": {k: getattr(paste, k) for k in paste.__dataclass_fields__},
               "bundles": {}}
    args.out.mkdir(parents=True, exist_ok=True)
    for path in args.bundle:
        bundle = load_bundle(path)
        embedder = OnnxEmbedder(bundle.backbone_path, bundle.manifest.input, threads=args.threads)
        entry: dict = {"bundle": str(path), "name": bundle.manifest.name, "version": bundle.version,
                       "input": bundle.manifest.input.size, "metrics": bundle.manifest.metrics.get("pretraining", {})}
        for mode, keypoints in (("dense", KeypointConfig()), ("dense_windows", None), ("crops", KeypointConfig())):
            started = time.perf_counter()
            detector = Detector.build(embedder, bundle.manifest.input, {k: [v] for k, v in exemplars.items()},
                                      DetectConfig(mode=mode.split("_")[0], min_window=args.min_window,
                                                   max_window=args.max_window, keypoints=keypoints,
                                                   correlation=None))  # issue 17's stages
            build_s = time.perf_counter() - started
            detector.calibrate(tqdm(backgrounds, desc=f"{path.name} {mode} calibration", leave=False),
                               FALSE_PER_FRAME)
            on = crop_scenes if mode == "crops" else scenes
            run, placed = run_mode(detector, on, f"{path.name} {mode}")
            entry[mode] = {**summary(run, on), "prototypes_s": round(build_s, 2)}
            if mode == "dense":
                entry["keypoints"] = summary(placed, on)
                dense_run = run
                picture = draw(scenes[0].image, run["decided"][0])
                for _, box in scenes[0].boxes:  # the truth, thin and white
                    cv2.rectangle(picture, box[:2], box[2:], (255, 255, 255), 1)
                png = args.out / f"detection-{bundle.manifest.name}.png"
                cv2.imwrite(str(png), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
                entry["example"] = png.name
            elif mode == "crops":
                subset = {k: dense_run[k][: len(on)] for k in ("ranked", "decided", "times", "window_times")}
                subset["windows"] = entry["dense"]["windows_per_frame"] * len(on)
                entry["dense_on_crop_scenes"] = summary(subset, on)
            print(f"{path.name} {mode}: {json.dumps(entry[mode])}", flush=True)
        entry["speedup"] = round(entry["dense"]["windows_per_s"] / entry["crops"]["windows_per_s"], 1)
        entry["ap_gap_points"] = round(100 * (entry["dense_on_crop_scenes"]["ap50"] - entry["crops"]["ap50"]), 1)
        results["bundles"][path.name] = entry
    if args.ablation_scenes:
        results["ablation"] = ablation(load_bundle(args.bundle[0]), exemplars, scenes[: args.ablation_scenes],
                                       backgrounds, args)
    (args.out / "detection.json").write_text(json.dumps(results, indent=1))
    write_markdown(results, args)


# -- the station set (issue 36) --------------------------------------------------------------

RANKED_PER_FRAME = 1000  # detections a frame that AP ranks, whatever their margin (under threshold too)
STATION_PASTE = PasteConfig(size=(480, 640), items=(3, 3), scale=(0.7, 1.4), relative=True, rotation=0.0,
                            quarter_turns=False, gain=(0.85, 1.15), bias=10.0, occlusion=0.0)


def degrade(photo: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A station's exemplar from a store photo: 50–75 % of its shorter side about its centre
    (where the product is; off it by up to a fifth of the margin), 75–100 % as wide as tall,
    down to 48–128 px on its longer side, softened (Gaussian, σ 0.6–1.2 px) and JPEG-compressed
    (quality 40–75), as a crop from a conveyor or shelf camera comes."""
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.5, 0.75))
    y, x = ((m - side) // 2 + int(rng.integers(-((m - side) // 5), (m - side) // 5 + 1)) for m in (h, w))
    aspect = rng.uniform(0.75, 1.0)
    crop = photo[y:y + side, x:x + max(8, int(side * aspect))]
    longer = int(rng.integers(48, 129))
    f = longer / max(crop.shape[:2])
    small = cv2.resize(crop, (max(8, round(crop.shape[1] * f)), max(8, round(crop.shape[0] * f))),
                       interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), rng.uniform(0.6, 1.2))
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(small, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(40, 76))])
    return cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def station_exemplars(data: Path, targets: set[str], seed: int, shots: int = 1
                      ) -> tuple[dict[str, list[np.ndarray]], dict[str, np.ndarray], set[str]]:
    """Per class to find: its exemplars (the first a degraded crop of one train photo; with
    ``shots`` > 1 the others from further photos, drawn apart so the first two stay as they
    were), another view (a degraded crop of a different train photo of the class), and which
    classes are plain (fruit and vegetables: no print)."""
    rng, more = np.random.default_rng(seed), np.random.default_rng(seed + 100)
    own, other = {}, {}
    photos = split_photos(data, "train", targets)
    for label in sorted(targets):
        mine = sorted(p for p in photos if p.parent.name == label)
        a, b = rng.choice(len(mine), 2, replace=False)
        own[label] = [degrade(read_image(mine[a]).rgb, rng)]
        other[label] = degrade(read_image(mine[b]).rgb, rng)
        rest = [i for i in range(len(mine)) if i not in (a, b)]
        for i in more.choice(rest, min(shots - 1, len(rest)), replace=False):
            own[label].append(degrade(read_image(mine[i]).rgb, more))
    plain = {row["Class Name (str)"] for row in read_classes(data)
             if row["Iconic Image Path (str)"].split("/")[2] in ("Fruit", "Vegetables")}
    return own, other, plain & targets


STATION_ROWS = {  # name → DetectConfig changes from the defaults
    "template matching (the floor: grey NCC, full frame)": {
        "windows": False, "keypoints": None, "correlation": CorrelationConfig(max_level=0, colour=False)},
    "before: windows + keypoints (the earlier default)": {"correlation": None, "colour": 0.0},
    "windows only, cosine": {"keypoints": None, "correlation": None, "colour": 0.0},
    "windows only, cosine and colour": {"keypoints": None, "correlation": None},
    "keypoints only": {"windows": False, "correlation": None},
    "correlation only, every exemplar at 12 px (before the finer level)": {
        "windows": False, "keypoints": None, "correlation": CorrelationConfig(fine_above=1.0)},
    "correlation only": {"windows": False, "keypoints": None},
    "all three, windows by cosine (the default before colour)": {"colour": 0.0},
    "all three (the default)": {},
}


def _station_row(detector: Detector, scenes, plain: set[str], desc: str) -> tuple[dict, list]:
    """One calibrated detector on one set of scenes: recall and false detections per frame at
    its thresholds, AP (plain and printed items apart), time per frame; and its decisions."""
    ranked, decided, times = [], [], []
    for scene in tqdm(scenes, desc=desc, leave=False):
        scored = detector.scores(scene.image)
        times.append(scored.seconds)
        ranked.append(detector.decide(scored, -np.inf, RANKED_PER_FRAME))
        decided.append(detector.decide(scored))
    score = score_detections(ranked, scenes, decided)
    aps = score.per_class
    return {"ap50": round(score.ap, 4), "recall": round(score.recall, 4),
            "false_per_frame": round(score.false_positives / len(scenes), 3),
            "precision": round(score.precision, 4), "items": score.items,
            "plain_ap50": round(float(np.mean([v for k, v in aps.items() if k in plain])), 4),
            "printed_ap50": round(float(np.mean([v for k, v in aps.items() if k not in plain])), 4),
            "frame_p50_s": round(float(np.percentile(times, 50)), 3),
            "frame_p99_s": round(float(np.percentile(times, 99)), 3)}, decided


def station_photos(args: argparse.Namespace) -> tuple[set[str], list[Path], list[np.ndarray]]:
    """The classes to find; the backdrop classes' val photos the scenes are made of; and the empty
    calibration frames, made of the other third of them."""
    targets, backdrop = split_classes(read_classes(args.data), args.seed)
    val = split_photos(args.data, "val", backdrop)
    order = np.random.default_rng(args.seed).permutation(len(val))
    make_background = mosaics([val[i] for i in order[: len(val) // 3]])
    backgrounds = [cv2.resize(make_background(np.random.default_rng(1000 + i)), (640, 480),
                              interpolation=cv2.INTER_AREA) for i in range(args.background_frames)]
    return targets, [val[i] for i in order[len(val) // 3:]], backgrounds


def station_benchmark(args: argparse.Namespace) -> None:
    targets, scene_photos, backgrounds = station_photos(args)
    own, other, plain = station_exemplars(args.data, targets, args.seed, args.shots)
    first = {k: v[0] for k, v in own.items()}  # the exemplar the own view shows
    iconic_name = "iconic (catalogue images, issue 17's set)"
    iconic = {k: [v] for k, v in iconic_exemplars(args.data, targets).items()}
    sets = {
        "own view": paste_scenes(first, mosaics(scene_photos), args.scenes, seed=args.seed + 1,
                                 config=STATION_PASTE),
        "other view": paste_scenes(other, mosaics(scene_photos), args.scenes, seed=args.seed + 2,
                                   config=STATION_PASTE),
        iconic_name: paste_scenes({k: v[0] for k, v in iconic.items()}, mosaics(scene_photos),
                                  max(1, args.scenes // 2), seed=args.seed + 3,
                                  config=PasteConfig(size=(480, 640), scale=(0.2, 0.4))),
    }
    searched = [(own, ("own view", "other view")), (iconic, (iconic_name,))]  # exemplars → the sets they serve
    bundle = load_bundle(args.bundle[0])
    embedder = OnnxEmbedder(bundle.backbone_path, bundle.manifest.input, threads=args.threads)
    results = {"cpu": cpu_name(), "bundle": bundle.manifest.name, "classes": len(own), "plain": sorted(plain),
               "scenes": {k: len(v) for k, v in sets.items()}, "background_frames": len(backgrounds),
               "false_per_frame": FALSE_PER_FRAME, "shots": args.shots,
               "exemplar_sides": sorted(max(v.shape[:2]) for v in first.values()),
               "rows": {name: {} for name in sets}}
    args.out.mkdir(parents=True, exist_ok=True)
    for exemplars, set_names in searched:
        for row, change in STATION_ROWS.items():
            if args.rows and not any(text in row for text in args.rows):
                continue
            try:  # one detector, calibrated once, for every set its exemplars serve
                detector = Detector.build(embedder, bundle.manifest.input, exemplars, DetectConfig(**change))
            except DetectError as exc:  # keypoints only: a plain exemplar has none
                for set_name in set_names:
                    results["rows"][set_name][row] = {"skipped": str(exc)}
                continue
            started = time.perf_counter()
            detector.calibrate(tqdm(backgrounds, desc=f"{row} calibration", leave=False), FALSE_PER_FRAME)
            calibration_s = round(time.perf_counter() - started, 1)
            for set_name in set_names:
                entry, decided = _station_row(detector, sets[set_name], plain, f"{set_name}: {row}")
                entry["calibration_s"] = calibration_s
                entry["correlation_fine"] = detector.calibration.get("correlation_fine", [])
                results["rows"][set_name][row] = entry
                print(f"{set_name} | {row}: {json.dumps(entry)}", flush=True)
                if set_name == "other view" and row == "all three (the default)":
                    scene = sets[set_name][0]
                    picture = draw(scene.image, decided[0])
                    for _, box in scene.boxes:
                        cv2.rectangle(picture, box[:2], box[2:], (255, 255, 255), 1)
                    cv2.imwrite(str(args.out / f"{args.name}.png"), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    sheet = np.full((2 * 136, 8 * 136, 3), 255, np.uint8)  # the first eight classes: exemplar over other view
    for i, label in enumerate(sorted(own)[:8]):
        for j, crop in enumerate((first[label], other[label])):
            sheet[j * 136 + 4: j * 136 + 4 + crop.shape[0], i * 136 + 4: i * 136 + 4 + crop.shape[1]] = crop
    cv2.imwrite(str(args.out / f"{args.name}_exemplars.png"), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    lines = ["# Detection with a station's exemplars: small, soft, plain, beside the template-matching floor", "",
             f"CPU: {results['cpu']}, {args.threads} threads. Bundle {results['bundle']}. {results['classes']} "
             f"classes ({len(plain)} of them plain: fruit and vegetables), "
             + ("one exemplar each: a crop of a store photo" if args.shots == 1 else
                f"{args.shots} exemplars each (crops of as many store photos; the own view shows the first)")
             + f", {min(results['exemplar_sides'])}–{max(results['exemplar_sides'])} px on its longer side, "
             "softened and JPEG-compressed. 480×640 frames of store photos of other classes, three items pasted in "
             "each at 0.7–1.4× the exemplar's size, relit (gain 0.85–1.15, offset ±10). Own view: the exemplar's "
             "pixels; other view: a crop of another photo of the class, degraded the same way; iconic: the "
             "catalogue images of issue 17, larger, turned and partly covered. Thresholds from "
             f"{results['background_frames']} frames without the items, for {FALSE_PER_FRAME} false detections "
             "a frame over all classes. Recall and false detections per frame at those thresholds; AP at IoU 0.5 "
             f"over the best {RANKED_PER_FRAME} detections of each frame, thresholds or not.",
             "", "| scenes | detector | recall@0.5 | false/frame | AP@0.5 | AP plain | AP printed | frame p50 | "
             "frame p99 |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for set_name, rows in results["rows"].items():
        for row, e in rows.items():
            if "skipped" in e:
                lines.append(f"| {set_name} | {row} | – | – | – | – | – | – | – |")
                continue
            lines.append(f"| {set_name} | {row} | {e['recall']:.3f} | {e['false_per_frame']:.2f} | {e['ap50']:.3f} | "
                         f"{e['plain_ap50']:.3f} | {e['printed_ap50']:.3f} | {e['frame_p50_s']:.2f} s | "
                         f"{e['frame_p99_s']:.2f} s |")
    lines += ["", "–: the keypoints alone refuse a set where an exemplar has too few keypoints to be found by "
              "them (a plain one); the default leaves those to the other stages.",
              "", f"Command: `python benchmarks/detection.py --bundle {args.bundle[0].name} --scenes {args.scenes}"
              + (f" --seed {args.seed}" if args.seed else "") + (f" --shots {args.shots}" if args.shots > 1 else "")
              + (" --rows " + " ".join(f"'{r}'" for r in args.rows) if args.rows else "")
              + (f" --name {args.name}" if args.name != "detection_station" else "") + "` "
              "(how the bundle was made: docs/detection.md)", "",
              f"![exemplars (top) and other views (bottom)]({args.name}_exemplars.png)", ""]
    if "all three (the default)" in results["rows"]["other view"]:  # its picture was drawn
        lines += [f"![other view, the default detector]({args.name}.png)", ""]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")


TIMED = {  # name → DetectConfig changes from the defaults
    "before: windows by cosine, correlation at 16 px with 4 peaks a size": {
        "colour": 0.0, "correlation": CorrelationConfig(min_side=16, peaks=4)},
    "the default (colour in the windows, correlation at 12 px with 2 peaks)": {},
}


def timing_benchmark(args: argparse.Namespace) -> None:
    """Time per frame of the default detector against the earlier one, on the station set's own-view
    scenes with its 40 exemplars, the two run alternately on each frame, so that whatever else slows
    the machine falls on both: p50, p99 and their ratio."""
    targets, scene_photos, backgrounds = station_photos(args)
    own = {k: v[0] for k, v in station_exemplars(args.data, targets, args.seed)[0].items()}
    scenes = paste_scenes(own, mosaics(scene_photos), args.scenes, seed=args.seed + 1, config=STATION_PASTE)
    bundle = load_bundle(args.bundle[0])
    embedder = OnnxEmbedder(bundle.backbone_path, bundle.manifest.input, threads=args.threads)
    detectors = {name: Detector.build(embedder, bundle.manifest.input, {k: [v] for k, v in own.items()},
                                      DetectConfig(**change)) for name, change in TIMED.items()}
    for detector in detectors.values():  # thresholds decide how many rows the suppression sees
        detector.calibrate(backgrounds, FALSE_PER_FRAME)
    times: dict[str, list[float]] = {name: [] for name in detectors}
    for scene in tqdm([scenes[0], *scenes], desc="frames"):  # the first frame twice: a warm-up, not counted
        for name, detector in detectors.items():
            started = time.perf_counter()
            detector.decide(detector.scores(scene.image))
            times[name].append(time.perf_counter() - started)
    rows = {name: {"p50_s": round(float(np.percentile(t[1:], 50)), 3),
                   "p99_s": round(float(np.percentile(t[1:], 99)), 3),
                   "frames_per_s": round(len(t[1:]) / sum(t[1:]), 2)} for name, t in times.items()}
    before, after = (rows[name]["p50_s"] for name in TIMED)
    results = {"cpu": cpu_name(), "bundle": bundle.manifest.name, "exemplars": len(own), "frames": len(scenes),
               "threads": args.threads, "rows": rows, "p50_ratio_default_to_before": round(after / before, 3)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "detection_timing.json").write_text(json.dumps(results, indent=1))
    lines = ["# Detection time per 480×640 frame, the default against the earlier detector", "",
             f"CPU: {results['cpu']}, {args.threads} threads. Bundle {results['bundle']}, {len(own)} exemplars, "
             f"{len(scenes)} own-view frames of the station set (seed {args.seed}), each searched by both detectors in "
             f"turn, each calibrated on {len(backgrounds)} empty frames. The whole search and the decision.", "",
             "| detector | frame p50 | frame p99 | frames/s |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['p50_s']:.3f} s | {r['p99_s']:.3f} s | {r['frames_per_s']:.2f} |"
              for name, r in rows.items()]
    lines += ["", f"p50 ratio, the default to the earlier: {results['p50_ratio_default_to_before']:.2f}", "",
              f"Command: `python benchmarks/detection.py --set timing --bundle {args.bundle[0].name} --scenes "
              f"{args.scenes}`", ""]
    (args.out / "detection_timing.md").write_text("\n".join(lines))
    print("\n".join(lines))


ABLATION = {
    "default (dense, centred, mirrored context, 1 box, 4 sides, agnostic NMS)": {},
    "not centred": {"center": False},
    "prototypes without context": {"context": False},
    "2×2 layout per window": {"grid": 2},
    "LCA pooling of each window": {"pool": "lca"},
    "3 window sides (aspect up to 2:1)": {"shapes": (1.0, 1.5, 2.0)},
    "base window seen at 128 px": {"window_px": 128},
    "NMS per class": {"agnostic": False},
}


def ablation(bundle, exemplars, scenes, backgrounds, args) -> dict:
    embedder = OnnxEmbedder(bundle.backbone_path, bundle.manifest.input, threads=args.threads)
    out = {"bundle": bundle.manifest.name, "frames": len(scenes), "rows": {}}
    for name, change in ABLATION.items():
        config = DetectConfig(mode="dense", min_window=args.min_window, max_window=args.max_window, keypoints=None,
                              correlation=None, **change)
        detector = Detector.build(embedder, bundle.manifest.input, {k: [v] for k, v in exemplars.items()}, config)
        detector.calibrate(backgrounds, FALSE_PER_FRAME)
        out["rows"][name] = summary(run_mode(detector, scenes, name)[0], scenes)
        print(f"ablation {name}: {json.dumps(out['rows'][name])}", flush=True)
    return out


def ceiling_benchmark(args: argparse.Namespace) -> None:
    """What the windows' features tell apart where a window is placed perfectly: each pasted item
    of the station set, cut out at its true box and embedded alone (no backdrop, no misplaced
    window), ranked against the 40 classes' exemplars by the bundle's cosine, by the colour
    histogram and by the two mixed as the default windows mix them (uncentred: a lone crop has no
    frame to centre on); the other view also against ``--shots`` exemplars a class. Not the
    detector's recall (no thresholds, no backdrop to beat): what its windows could reach at best."""
    targets, scene_photos, backgrounds = station_photos(args)
    own, other, plain = station_exemplars(args.data, targets, args.seed, args.shots)
    labels = sorted(own)
    bundle = load_bundle(args.bundle[0])
    embedder = OnnxEmbedder(bundle.backbone_path, bundle.manifest.input, threads=args.threads)
    colour_weight = DetectConfig().colour
    results = {"cpu": cpu_name(), "bundle": bundle.manifest.name, "classes": len(labels), "seed": args.seed,
               "colour_weight": colour_weight, "sets": {}}
    scenes = {"own view": paste_scenes({k: v[0] for k, v in own.items()}, mosaics(scene_photos), args.scenes,
                                       seed=args.seed + 1, config=STATION_PASTE),
              "other view": paste_scenes(other, mosaics(scene_photos), args.scenes, seed=args.seed + 2,
                                         config=STATION_PASTE)}
    truth = {name: [(label, scene.image[y1:y2, x1:x2]) for scene in frames
                    for label, (x1, y1, x2, y2) in scene.boxes] for name, frames in scenes.items()}
    embedded = {}  # each set's crops, embedded once
    for name, shots in (("own view", 1), ("other view", 1), ("other view", args.shots))[: 3 if args.shots > 1 else 2]:
        exemplars = {k: v[:shots] for k, v in own.items()}
        # the crops mode's prototypes (the exemplars' mean unit embedding) and colour histograms, unturned
        lone = Detector.build(embedder, bundle.manifest.input, exemplars,
                              DetectConfig(mode="crops", rotations=(0,), keypoints=None, correlation=None))
        crops = [crop for _, crop in truth[name]]
        if name not in embedded:
            embedded[name] = lone.embedding.crop_embeddings(crops)
        index = np.array([labels.index(label) for label, _ in truth[name]])
        is_plain = np.array([label in plain for label, _ in truth[name]])
        cosine = unit(embedded[name]) @ lone.prototypes[(0, 0)].T
        colour = lone.colours.crop_scores(crops, center=False)
        entry = {"items": len(crops), "shots": shots}
        for score_name, score in (("cosine", cosine), ("colour", colour),
                                  ("mixed", (1 - colour_weight) * cosine + colour_weight * colour)):
            rank = (score > score[np.arange(len(index)), index][:, None]).sum(axis=1)  # 0: the true class first
            entry[score_name] = {"top1": round(float(np.mean(rank == 0)), 3),
                                 "top5": round(float(np.mean(rank < 5)), 3),
                                 "top1_plain": round(float(np.mean(rank[is_plain] == 0)), 3),
                                 "top1_printed": round(float(np.mean(rank[~is_plain] == 0)), 3)}
        windows = Detector.build(embedder, bundle.manifest.input, exemplars, DetectConfig(keypoints=None,
                                                                                          correlation=None))
        entry["windows"] = _over_backdrop(windows, scenes[name], backgrounds)
        results["sets"][f"{name}, {shots} exemplar{'s' if shots > 1 else ''} a class"] = entry
        print(f"{name}, {shots} shots: {json.dumps(entry)}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=1))
    lines = ["# The station set's items at their true boxes: what the windows' features could find", "",
             f"CPU: {results['cpu']}. Bundle {results['bundle']}, seed {args.seed}, {len(labels)} exemplars. Each "
             "pasted item cut out at its true box, embedded alone, ranked against the classes' exemplars (the share "
             "whose own class ranks first: what the windows' features tell apart at a perfect placement, before "
             "any backdrop or threshold; chance is "
             f"{1 / len(labels):.3f}). Mixed: {1 - colour_weight:.1f} cosine + {colour_weight:.1f} colour, as the "
             "windows mix them.", "",
             "| scenes | items | score | top-1 | top-5 | top-1 plain | top-1 printed |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for name, entry in results["sets"].items():
        for score_name in ("cosine", "colour", "mixed"):
            e = entry[score_name]
            lines.append(f"| {name} | {entry['items']} | {score_name} | {e['top1']:.3f} | {e['top5']:.3f} | "
                         f"{e['top1_plain']:.3f} | {e['top1_printed']:.3f} |")
    lines += ["", "The windows as the detector scores them (dense, cosine and colour mixed, centred on the frame), "
              "at the window of IoU ≥ 0.5 with the item that scores best for its class: the share of items ranked "
              "first there, and the share scoring above every window of their class in the "
              f"{len(backgrounds)} empty calibration frames (a threshold more lenient than the calibrated one, which "
              "extrapolates beyond them); and how many windows of the item's own frame, off the item, score higher "
              "for its class (median).", "",
              "| scenes | placed (a window at IoU ≥ 0.5) | first at that window | above every empty frame's window | "
              "windows off it above it in its frame |", "|---|---:|---:|---:|---:|"]
    for name, entry in results["sets"].items():
        w = entry["windows"]
        lines.append(f"| {name} | {w['placed']:.3f} | {w['top1']:.3f} | {w['above_backdrop']:.3f} | "
                     f"{w['above_in_frame_median']:.0f} |")
    lines += ["", f"Command: `python benchmarks/detection.py --set ceiling --bundle {args.bundle[0].name} --scenes "
              f"{args.scenes}" + (f" --seed {args.seed}" if args.seed else "")
              + (f" --shots {args.shots}" if args.shots > 1 else "") + f" --name {args.name}`", ""]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")


def _over_backdrop(detector: Detector, scenes, backgrounds: list[np.ndarray]) -> dict:
    """The windows at each item: placed (a window at IoU ≥ 0.5), its class first among all at
    the best such window, its score there above every window of its class in ``backgrounds``,
    and the windows of its own frame, off the item, that score higher for its class."""
    highest = np.max([detector.scores(rgb).scores.max(axis=0) for rgb in backgrounds], axis=0)
    placed, first, above, in_frame = [], [], [], []
    for scene in scenes:
        scored = detector.scores(scene.image)
        boxes, scores = scored.boxes[: scored.windows], scored.scores[: scored.windows]
        for label, box in scene.boxes:
            c = detector.labels.index(label)
            overlap = np.array([iou(b, box) for b in boxes])
            near = np.flatnonzero(overlap >= 0.5)
            placed.append(len(near) > 0)
            i = near[np.argmax(scores[near, c])] if len(near) else int(np.argmax(scores[:, c]))
            first.append(len(near) > 0 and scores[i].argmax() == c)
            above.append(len(near) > 0 and scores[i, c] > highest[c])
            in_frame.append(int(((scores[:, c] > scores[i, c]) & (overlap == 0)).sum()))  # off the item
    return {"placed": round(float(np.mean(placed)), 3), "top1": round(float(np.mean(first)), 3),
            "above_backdrop": round(float(np.mean(above)), 3),
            "above_in_frame_median": float(np.median(in_frame))}


def write_markdown(results: dict, args: argparse.Namespace) -> None:
    lines = ["# Detection of enrolled items: grocery-store iconic images pasted into store photos",
             "",
             f"CPU: {results['cpu']}, {args.threads} threads. {results['classes']} classes, one exemplar each (the "
             f"iconic image); {results['scenes']} frames of 480×640 with 1–3 pasted items each; thresholds "
             f"calibrated on {results['backgrounds']} frames without items for {results['false_per_frame']} false "
             "detections per frame. AP at IoU 0.5 (mean over the classes present); precision and recall at the "
             "calibrated thresholds. Modes: the windows and the keypoint placements together (the default), the "
             "windows alone (`--no-keypoints`), and the same run's keypoint placements alone. Windows/s counts the "
             "window stage's time only; the frame times are the whole search's.",
             "",
             "| bundle | mode | frames | AP@0.5 | precision | recall | windows/frame | windows/s | frame p50 "
             "| frame p99 |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, e in results["bundles"].items():
        for mode, key in (("dense + keypoints", "dense"), ("dense, windows only", "dense_windows"),
                          ("keypoints only (`--no-windows`)", "keypoints"),
                          ("dense + keypoints (crop frames)", "dense_on_crop_scenes"),
                          ("crops + keypoints", "crops")):
            r = e[key]
            lines.append(f"| {name} | {mode} | {r['frames']} | {r['ap50']:.3f} | {r['precision']:.3f} | "
                         f"{r['recall']:.3f} | {r['windows_per_frame']} | {r['windows_per_s']:,} | "
                         f"{r['frame_p50_s']:.2f} s | {r['frame_p99_s']:.2f} s |")
    lines += ["", "| bundle | dense windows/s ÷ crops | dense AP − crops AP (same frames) |", "|---|---:|---:|"]
    for name, e in results["bundles"].items():
        lines.append(f"| {name} | {e['speedup']}× | {e['ap_gap_points']:+.1f} points |")
    if "ablation" in results:
        a = results["ablation"]
        lines += ["", f"Dense mode's choices, one changed at a time, windows only ({a['bundle']}, the first "
                      f"{a['frames']} frames):",
                  "", "| variant | AP@0.5 | precision | recall | windows/frame | windows/s |",
                  "|---|---:|---:|---:|---:|---:|"]
        for name, r in a["rows"].items():
            lines.append(f"| {name} | {r['ap50']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
                         f"{r['windows_per_frame']} | {r['windows_per_s']:,} |")
    lines += ["", f"Command: `python benchmarks/detection.py --bundle {' '.join(b.name for b in args.bundle)} "
                  f"--scenes {args.scenes} --crop-scenes {args.crop_scenes}` (how the bundles were made: "
                  "docs/detection.md)", ""]
    for name, e in results["bundles"].items():
        lines.append(f"![{name}]({e['example']})")
    (args.out / "detection.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
