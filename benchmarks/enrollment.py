"""On-device enrollment on real photos (issue 15): fit the head on 71 grocery-store classes,
enroll the other 10 with 5 shots each, and measure what the station would see.

    python benchmarks/enrollment.py --checkpoint grocery.ckpt [--results]

The checkpoint is a backbone the repository makes; without ``--checkpoint`` the benchmark makes
one first: a 3-minute SimCLR (``sortline pretrain --method simclr``, its defaults) on the whole
train split without its labels, or with ``--recipe small-data`` the recipe of docs/quality.md
(``sortline pretrain --recipe small-data``, 30 minutes, its label stage on the labels) on the
train images of the 71 old classes alone (``--recipe supervised``: the same backbone and budget
trained from scratch on those labels alone, benchmarks/quality.py's baseline): the new classes'
images and labels never reach it,
as a new product never reached the bundle a station runs. The bundle is exported (int8) with a head on the 71 classes'
train images, which it carries as examples. Then, on the device side only (no torch is used past
the export):

- the 10 new classes are enrolled one at a time from 5 train image files each, as a station
  would (read, preprocess, embed, store, refit with the held-back check, commit): the time until
  each is live, and one whole ``sortline enroll`` process;
- on the val split: the old classes' accuracy before (the bundle's head, and the device's refit
  of it) and after, the new classes' accuracy, the unknown-item reject rate (new classes' val
  images before they were enrolled) and the known items falsely rejected;
- the few-shot regularisation: the same for several C and shot draws (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from sortline.edge_runtime.datasets import ImageSet, load_image_set
from sortline.edge_runtime.learning.enroll import REFIT_TOL, Enroller, enroll_paths
from sortline.edge_runtime.model.bundle import load_bundle
from sortline.edge_runtime.model.head import LogisticHead, OpenSet

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_name  # noqa: E402

GROCERY = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "grocery-store"
RESULTS = Path(__file__).parent / "results"


def remap(images: ImageSet, classes: list[int]) -> ImageSet:
    """The images of ``classes``, labelled 0..len(classes)-1 in that order."""
    keep = np.flatnonzero(np.isin(images.labels, classes))
    index = {c: i for i, c in enumerate(classes)}
    return ImageSet(tuple(images.paths[i] for i in keep), np.array([index[c] for c in images.labels[keep]]),
                    tuple(images.class_names[c] for c in classes))


def old_classes_split(data: Path, new: list[int], folder: Path) -> Path:
    """A split file of ``data``'s train images without the classes ``new`` (their labels kept as
    the file gives them), in ``folder`` beside links to the data's folders so its paths resolve."""
    lines = [line for line in (data / "train.txt").read_text().splitlines() if line.strip()]
    kept = [line for line in lines if int(line.split(",")[1]) not in set(new)]
    folder.mkdir(parents=True, exist_ok=True)
    for entry in data.iterdir():
        if entry.name not in ("train.txt", "val.txt") and not (folder / entry.name).exists():
            (folder / entry.name).symlink_to(entry.resolve())
    (folder / "train.txt").write_text("".join(f"{line}\n" for line in kept))
    return folder / "train.txt"


def features_of(enroller: Enroller, images: ImageSet) -> np.ndarray:
    from sortline.edge_runtime.learning.enroll import read_item

    return np.vstack([enroller.features([(read_item(p), [])]) for p in images.paths])


def accuracy(head: LogisticHead, openset: OpenSet | None, x: np.ndarray, names: list[str],
             labels: tuple[str, ...]) -> tuple[float, float]:
    """Top-1 accuracy (an unknown-rejected item counts as wrong) and the share rejected."""
    predicted = np.array(head.labels)[head.predict(x)]
    rejected = openset.unknown(x) if openset else np.zeros(len(x), bool)
    right = (predicted == np.array(names)) & ~rejected
    return float(right.mean()), float(rejected.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=GROCERY)
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--recipe", choices=("small-data", "supervised"),
                        help="without --checkpoint: train this recipe on the old classes' labeled images "
                             "(supervised: the same backbone from scratch on the labels alone, quality.py's baseline)")
    parser.add_argument("--budget-minutes", type=float, default=30.0, help="the recipe's time budget")
    parser.add_argument("--new-classes", type=int, default=10)
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--C", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0, 3.0])
    parser.add_argument("--work", type=Path, help="keep the bundle here, and reuse one already there")
    parser.add_argument("--results", action="store_true",
                        help="write benchmarks/results/enrollment{,-RECIPE}.{md,json}")
    args = parser.parse_args()

    work = args.work or Path(tempfile.mkdtemp(prefix="sortline-enroll-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    for store in work.glob("*.sqlite*"):  # every run enrolls from scratch
        store.unlink()
    from sortline.export.build import ExportConfig, build_bundle, preprocess_set
    from sortline.train.checkpoint import learned_from_labels, load_checkpoint

    train = load_image_set(args.data / "train.txt")
    val = load_image_set(args.data / "val.txt")
    rng = np.random.default_rng(0)
    all_classes = list(range(len(train.class_names)))
    new = sorted(rng.choice(all_classes, size=args.new_classes, replace=False).tolist())
    old = [c for c in all_classes if c not in new]
    old_train = remap(train, old)

    checkpoint = args.checkpoint
    pretrain_s = None
    if checkpoint is None and not (work / "grocery.ckpt").is_file():
        checkpoint = work / "grocery.ckpt"
        t = time.perf_counter()
        if args.recipe:
            command = ["sortline", "pretrain", "--recipe", args.recipe, "--max-seconds", str(args.budget_minutes * 60),
                       "--data", str(old_classes_split(args.data, new, work / "old-classes")), "--out", str(checkpoint)]
        else:
            command = ["sortline", "pretrain", "--method", "simclr", "--data", str(args.data / "train.txt"),
                       "--out", str(checkpoint)]
        subprocess.run(command, check=True)
        pretrain_s = round(time.perf_counter() - t, 1)
    checkpoint = checkpoint or work / "grocery.ckpt"

    t = time.perf_counter()
    if (work / "bundle" / "manifest.json").is_file():
        bundle = load_bundle(work / "bundle")
    else:
        backbone, spec, meta = load_checkpoint(checkpoint)
        x_old, old_train = preprocess_set(old_train, spec)
        bundle, _ = build_bundle(backbone, spec, x_old[:512], work / "bundle", ExportConfig(),
                                 labeled=(x_old, old_train), name="grocery-71",
                                 examples_trained_on=learned_from_labels(meta))
    export_s = time.perf_counter() - t
    print(f"bundle on {len(old)} classes ready in {export_s:.0f} s; {len(bundle.manifest.labels)} labels")

    names = list(train.class_names)
    val_names = [names[c] for c in val.labels]
    is_new_val = np.isin(val.labels, new)
    results: dict = {"cpu": cpu_name(), "checkpoint": str(checkpoint), "recipe": args.recipe,
                     "pretrain_seconds": pretrain_s, "old_classes": len(old),
                     "new_classes": [names[c] for c in new], "shots": args.shots, "val_images": len(val)}

    # --- the station's path: enroll the new classes one at a time, 5 image files each ----------
    with Enroller(bundle, work / "store.sqlite") as enroller:
        x_val = features_of(enroller, val)
        v0 = enroller.classifier(0)
        enroller.refit()  # the device's own head on the bundle's examples: the "before"
        c1 = enroller.classifier()
        before_old, before_old_rej = accuracy(c1.head, c1.openset, x_val[~is_new_val],
                                              [val_names[i] for i in np.flatnonzero(~is_new_val)], c1.labels)
        bundle_old, _ = accuracy(v0.head, None, x_val[~is_new_val],
                                 [val_names[i] for i in np.flatnonzero(~is_new_val)], v0.labels)
        unknown_rejected = float(c1.openset.unknown(x_val[is_new_val]).mean()) if c1.openset else 0.0
        # how well the open set's score (distance to the nearest class mean) tells a new class's
        # item from a known one, whatever the threshold: means and scales from every stored example
        seeded = enroller.store.examples()
        order = tuple(dict.fromkeys(seeded.labels))
        _, distance = OpenSet.fit(len(order), seeded.features, np.array([order.index(s) for s in seeded.labels])
                                  ).distances(x_val)
        open_set_auroc = roc_auc_score(is_new_val, distance)
        live_s, refit_s, warnings = [], [], 0
        shots = {}
        for c in new:
            pool = [train.paths[i] for i in np.flatnonzero(train.labels == c)]
            shots[c] = [pool[i] for i in rng.choice(len(pool), size=args.shots, replace=False)]
            started = time.perf_counter()
            added = enroll_paths(enroller, names[c], shots[c])
            refit = enroller.refit(exits={names[c]: 1})
            live_s.append(time.perf_counter() - started)
            refit_s.append(refit.seconds)
            warnings += len(added.warnings())
            print(f"{names[c]}: live in {live_s[-1]:.2f} s as head v{refit.version} "
                  f"(held-back known {refit.metrics.get('known_before')} → {refit.metrics.get('known_after')})")
        final = enroller.classifier()
        old_names = [val_names[i] for i in np.flatnonzero(~is_new_val)]
        new_names = [val_names[i] for i in np.flatnonzero(is_new_val)]
        after_old, after_old_rej = accuracy(final.head, final.openset, x_val[~is_new_val], old_names, final.labels)
        after_new, after_new_rej = accuracy(final.head, final.openset, x_val[is_new_val], new_names, final.labels)
        closed_old, _ = accuracy(final.head, None, x_val[~is_new_val], old_names, final.labels)
        closed_new, _ = accuracy(final.head, None, x_val[is_new_val], new_names, final.labels)
        closed_before, _ = accuracy(c1.head, None, x_val[~is_new_val], old_names, c1.labels)
        stored = enroller.store.examples()
    results["station"] = {
        "bundle_head_old_accuracy": round(bundle_old, 4),
        "device_head_old_accuracy": round(closed_before, 4),
        "old_accuracy_before": round(before_old, 4), "old_rejected_before": round(before_old_rej, 4),
        "unknown_reject_rate": round(unknown_rejected, 4), "open_set_auroc": round(float(open_set_auroc), 4),
        "open_set_before": "on" if c1.openset else "off (no example the backbone did not train on)",
        "examples_trained_on": bool(not seeded.calibrates.any()),
        "old_accuracy_after": round(after_old, 4), "old_rejected_after": round(after_old_rej, 4),
        "new_accuracy_after": round(after_new, 4), "new_rejected_after": round(after_new_rej, 4),
        "closed_set": {"old_before": round(closed_before, 4), "old_after": round(closed_old, 4),
                       "new_after": round(closed_new, 4)},
        "live_s_p50": round(float(np.median(live_s)), 3), "live_s_max": round(float(np.max(live_s)), 3),
        "refit_s_p50": round(float(np.median(refit_s)), 3),
        "examples": len(stored), "enroll_warnings": warnings,
        "open_set_median_threshold": round(float(np.median(final.openset.thresholds)), 4) if final.openset else None,
    }

    # --- one whole `sortline enroll` process (a fresh store, so it also seeds it) --------------
    def command(c: int) -> list[str]:
        return ["sortline", "enroll", "--bundle", str(bundle.root), "--store", str(work / "cli.sqlite"),
                "--label", names[c], *map(str, shots[c]), "--exit", "1", "--json"]

    subprocess.run(command(new[0]), check=True, capture_output=True)  # seeds the store; page cache warm
    t = time.perf_counter()
    out = subprocess.run(command(new[1]), check=True, capture_output=True, text=True)
    results["cli_process_s"] = round(time.perf_counter() - t, 3)
    results["cli_reported_s"] = json.loads(out.stdout.strip().splitlines()[-1])["seconds"]

    # --- the regularisation for few shots: all 10 classes at once, several draws ---------------
    # For each C: the 71-class head at that C (before) and with the 10 new classes (after), on the
    # same val images, so the drop is paired.
    sweep = {}
    with Enroller(bundle, work / "sweep.sqlite") as enroller:
        x_bundle = enroller.store.examples()
        x_train_new = {c: features_of(enroller, train.subset(np.flatnonzero(train.labels == c))) for c in new}
    old_order = tuple(dict.fromkeys(x_bundle.labels))
    y_old = np.array([old_order.index(label) for label in x_bundle.labels])
    # "all": every train image of the new classes (35 a class): the most a head on these features gives
    for shots, C in [(k, C) for k in [*sorted({1, args.shots}), "all"] for C in args.C]:
        with threadpool_limits(1):
            before = LogisticHead.fit(x_bundle.features, y_old, old_order, C=C, tol=REFIT_TOL)
        old_before = accuracy(before, None, x_val[~is_new_val], old_names, old_order)[0]
        rows = []
        for seed in range(args.seeds if shots != "all" else 1):
            draw = np.random.default_rng(100 + seed)
            chosen = {c: (np.arange(len(x_train_new[c])) if shots == "all" else
                          draw.choice(len(x_train_new[c]), shots, replace=False)) for c in new}
            feats = [x_bundle.features] + [x_train_new[c][chosen[c]] for c in new]
            labels_ = list(x_bundle.labels) + [names[c] for c in new for _ in chosen[c]]
            order = tuple(dict.fromkeys(labels_))
            y = np.array([order.index(label) for label in labels_])
            with threadpool_limits(1):
                head = LogisticHead.fit(np.vstack(feats), y, order, C=C, tol=REFIT_TOL, init=before)
            rows.append((accuracy(head, None, x_val[~is_new_val], old_names, order)[0] - old_before,
                         accuracy(head, None, x_val[is_new_val], new_names, order)[0]))
        rows = np.array(rows)
        sweep[f"{shots}-shot C={C}"] = {"shots": shots, "C": C, "old_before": round(old_before, 4),
                         "old_change": [round(float(rows[:, 0].mean()), 4), round(float(rows[:, 0].std()), 4)],
                         "new": [round(float(rows[:, 1].mean()), 4), round(float(rows[:, 1].std()), 4)]}
        print(f"{shots}-shot C={C}: old {old_before:.1%}, change {rows[:, 0].mean():+.1%} ± "
              f"{rows[:, 0].std():.1%}; new {rows[:, 1].mean():.1%} ± {rows[:, 1].std():.1%}")
    results["C_sweep"] = sweep
    print(json.dumps(results, indent=2))
    if args.results:
        RESULTS.mkdir(exist_ok=True)
        name = f"enrollment-{args.recipe}" if args.recipe else "enrollment"
        (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
        (RESULTS / f"{name}.md").write_text(markdown(results))


def backbone_words(r: dict) -> str:
    if r.get("recipe"):
        took = f", {r['pretrain_seconds']:.0f} s" if r.get("pretrain_seconds") else ""
        return (f"`sortline pretrain --recipe {r['recipe']}` on the {r['old_classes']} old classes' labeled train "
                f"images alone, ResNet-10, 64 px{took}")
    return "SimCLR ResNet-10, 64 px, without labels"


def markdown(r: dict) -> str:
    s = r["station"]
    lines = [
        "# On-device enrollment, grocery store (val split)",
        "",
        f"CPU: {r['cpu']}. Backbone: `{r['checkpoint']}` ({backbone_words(r)}). "
        f"Head fitted on {r['old_classes']} classes' train images; {len(r['new_classes'])} classes enrolled with "
        f"{r['shots']} train images each, one class at a time; {r['val_images']} val images.",
        "",
        "| | accuracy | rejected as unknown |",
        "|---|---|---|",
        f"| old classes, the bundle's head | {s['bundle_head_old_accuracy']:.1%} | - |",
        f"| old classes, device head before enrolling | {s['old_accuracy_before']:.1%} | "
        f"{s['old_rejected_before']:.1%} |",
        f"| new classes' items before enrolling (unknowns) | - | {s['unknown_reject_rate']:.1%} "
        f"(open set {s.get('open_set_before', 'on')}) |",
        f"| old classes after enrolling 10 | {s['old_accuracy_after']:.1%} | {s['old_rejected_after']:.1%} |",
        f"| new classes after enrolling | {s['new_accuracy_after']:.1%} | {s['new_rejected_after']:.1%} |",
        "",
        f"Without open-set rejection (closed set): old {s['closed_set']['old_before']:.1%} → "
        f"{s['closed_set']['old_after']:.1%}, new {s['closed_set']['new_after']:.1%}.",
        "",
        f"The open set's score (distance to the nearest class mean) tells the new classes' val items from the "
        f"old ones with AUROC {s.get('open_set_auroc', float('nan')):.2f} (0.5: no better than chance). "
        + ("The bundle's examples are images its backbone trained on, so the open set calibrates on enrolled "
           "examples only." if s.get("examples_trained_on") else ""),
        "",
        f"A new class is live (5 image files read, embedded, stored, refitted with the held-back check, "
        f"committed) in {s['live_s_p50']:.2f} s (median of 10; max {s['live_s_max']:.2f} s; the refit "
        f"{s.get('refit_s_p50', float('nan')):.2f} s of it), over "
        f"{s['examples']} stored examples. A whole `sortline enroll` process: {r['cli_process_s']:.2f} s "
        f"(it reports {r['cli_reported_s']:.2f} s inside).",
        "",
        "## Few-shot regularisation (all 10 classes at once; mean ± std over shot draws; the change is "
        "paired: the same val images before and after)",
        "",
        "| shots | C | old classes, 71-class head | old classes: change with the 10 new | new classes |",
        "|---|---|---|---|---|",
    ]
    for row in r["C_sweep"].values():
        change, new = row["old_change"], row["new"]
        if row["shots"] == "all":
            lines.append(f"| all (every train image) | {row['C']} | {row['old_before']:.1%} | {change[0]:+.1%} "
                         f"| {new[0]:.1%} |")
            continue
        lines.append(f"| {row['shots']} | {row['C']} | {row['old_before']:.1%} | {change[0]:+.1%} ± {change[1]:.1%} "
                     f"| {new[0]:.1%} ± {new[1]:.1%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
