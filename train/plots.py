"""Plots people look at, as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sortline.edge_runtime.station import StreamingHistogram  # noqa: E402


def confusion_png(matrix: Sequence[Sequence[int]], names: Sequence[str], path: Path, title: str) -> Path:
    cm = np.asarray(matrix)
    keep = [i for i in range(len(names)) if cm[i].sum() or cm[:, i].sum()]  # drop empty rows/cols
    cm, names = cm[np.ix_(keep, keep)], [names[i] for i in keep]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2.5, 1.1 * len(names) + 1.8), dpi=120)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{cm[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center",
                    color="white" if rates[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def latency_png(latency_ms: StreamingHistogram, compute_ms: StreamingHistogram, deadline_ms: float,
                path: Path) -> Path:
    """Two panels: the whole decision latency (mostly waiting for the sensor) and the part
    the station spends computing (capture, embedding, head), from the station's histograms."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=120)
    for ax, hist, what in ((axes[0], latency_ms, "announcement → gate command"),
                           (axes[1], compute_ms, "station compute per item")):
        lows, counts = hist.nonzero()
        if len(counts):  # regroup the fine log buckets into about 40 bars
            edges = np.geomspace(lows[0], lows[-1] * 1.05, 41)
            ax.hist(lows, bins=edges, weights=counts, color="#4477aa")
            ax.set_xscale("log")
        for q, style in ((50, ":"), (99, "-.")):
            v = hist.percentile(q)
            ax.axvline(v, color="black", linestyle=style, label=f"p{q} {v:.1f} ms")
        ax.set_xlabel(f"{what} (ms)")
        ax.legend(fontsize=8)
    axes[0].set_ylabel("items")
    fig.suptitle(f"decision latency; the gate deadline is {deadline_ms:.0f} ms after the announcement", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def loss_png(losses: Sequence[float], stds: Sequence[float], path: Path, title: str) -> Path:
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=120)
    ax.plot(losses, color="#4477aa", label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    twin = ax.twinx()
    twin.plot(stds, color="#ee7733", alpha=0.7, label="embedding std (collapse monitor)")
    twin.set_ylabel("embedding std")
    fig.legend(loc="center right", fontsize=8, bbox_to_anchor=(0.85, 0.6))
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _qualitative(n: int) -> list:
    """``n`` distinguishable colours: tab20, then tab20b and tab20c."""
    cmaps = [plt.get_cmap(name) for name in ("tab20", "tab20b", "tab20c")]
    colours = [cmap(i) for cmap in cmaps for i in range(20)]
    return [colours[i % len(colours)] for i in range(n)]


def confusion_heatmap_png(matrix: Sequence[Sequence[int]], names: Sequence[str], path: Path, title: str) -> Path:
    """A confusion matrix for many classes: row-normalised colour, no numbers (the Markdown
    report lists the largest confusions), classes with neither truth nor prediction left out."""
    cm = np.asarray(matrix)
    if len(names) <= 12:
        return confusion_png(cm, names, path, title)
    keep = [i for i in range(len(names)) if cm[i].sum() or cm[:, i].sum()]
    cm, names = cm[np.ix_(keep, keep)], [names[i] for i in keep]
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    return _class_matrix_png(rates, names, path, title, cmap="Blues", vmin=0.0, colour_label="share of the true class",
                             axes=("predicted", "true"))


def tsne_png(points: np.ndarray, labels: np.ndarray, names: Sequence[str], path: Path, title: str) -> Path:
    """t-SNE map coloured by class; with many classes each class's name sits at its median."""
    classes = np.unique(labels)
    colours = _qualitative(len(classes))
    markers = "os^Dv<>ph*"
    fig, ax = plt.subplots(figsize=(11, 9) if len(classes) > 20 else (8, 6.5), dpi=110)
    for i, c in enumerate(classes):
        at = points[labels == c]
        ax.scatter(at[:, 0], at[:, 1], s=14, color=colours[i], marker=markers[(i // 20) % len(markers)],
                   alpha=0.8, label=names[c], linewidths=0)
        if len(classes) > 20:
            mx, my = np.median(at, axis=0)
            ax.annotate(names[c], (mx, my), fontsize=6.5, ha="center", va="center", color="black",
                        bbox=dict(boxstyle="round,pad=0.12", fc="white", ec=colours[i], alpha=0.75, lw=0.8))
    if len(classes) <= 20:
        ax.legend(fontsize=8, markerscale=1.5, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def similarity_png(matrix: np.ndarray, names: Sequence[str], path: Path, title: str) -> Path:
    """Class-by-class cosine similarity of mean embeddings, in the given (clustered) order."""
    n = len(names)
    off_diagonal = matrix[~np.eye(n, dtype=bool)] if n > 1 else matrix.ravel()
    return _class_matrix_png(matrix, names, path, title, cmap="magma", vmin=float(np.percentile(off_diagonal, 2)),
                             colour_label="cosine similarity of class means")


def _class_matrix_png(matrix: np.ndarray, names: Sequence[str], path: Path, title: str, cmap: str, vmin: float,
                      colour_label: str, axes: tuple[str, str] = ("", "")) -> Path:
    """A class × class heatmap sized so that every class name stays legible."""
    n = len(names)
    side = max(5.5, 0.16 * n + 2.5)
    fig, ax = plt.subplots(figsize=(side + 1.2, side), dpi=110)
    shown = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=1.0, interpolation="nearest")
    font = 8 if n <= 30 else (7 if n <= 60 else 5.5)
    ax.set_xticks(range(n), names, rotation=90, fontsize=font)
    ax.set_yticks(range(n), names, fontsize=font)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    fig.colorbar(shown, ax=ax, fraction=0.035, label=colour_label)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def gradcam_png(images: np.ndarray, heatmaps: np.ndarray, captions: Sequence[str], path: Path, title: str,
                correct: Sequence[bool]) -> Path:
    """Pairs of panels per sample: the image, and the image under its Grad-CAM heatmap.
    ``images`` are ``N×C×S×S`` uint8; the first three channels are shown as RGB."""
    n = len(images)
    cols = 4  # samples per row, two panels each
    rows = int(np.ceil(n / cols))
    fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.55, rows * 1.85 + 0.5), dpi=120, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        rgb = np.transpose(images[i, :3], (1, 2, 0))
        ax_img, ax_cam = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        ax_img.imshow(rgb, interpolation="bilinear")
        ax_cam.imshow(rgb, interpolation="bilinear")
        ax_cam.imshow(heatmaps[i], cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
        ax_img.set_title(captions[i], fontsize=6.5, loc="left", color="black" if correct[i] else "#cc3311")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def learning_curves_png(panels: dict[str, dict[str, tuple[Sequence[float], Sequence[float]]]],
                        labels: dict[str, tuple[str, str]], path: Path, title: str,
                        log_x: set[str] = frozenset()) -> Path:
    """One panel per entry of ``panels`` (name → series name → (x, y)); ``labels`` gives each
    panel's axis labels; panels named in ``log_x`` get a logarithmic x axis."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.6), dpi=120, squeeze=False)
    for ax, (name, series) in zip(axes[0], panels.items()):
        for (label, (x, y)), colour in zip(series.items(), _qualitative(len(series))):
            ax.plot(x, y, label=label, color=colour, marker="o" if len(x) <= 12 else None, markersize=4)
        if name in log_x:
            ax.set_xscale("log")
            ticks = sorted({float(v) for x, _ in series.values() for v in x})
            ax.set_xticks(ticks, [f"{t:.3g}" for t in ticks])
            ax.minorticks_off()
        ax.set_xlabel(labels[name][0])
        ax.set_ylabel(labels[name][1])
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def adapt_png(at: np.ndarray, mcc: np.ndarray, adapt: dict, path: Path) -> Path:
    """``sortline demo --adapt``: rolling MCC over the items, with the shift, the alarm, the
    candidates' starts and the promotions (and rollbacks) marked."""
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(at, mcc, color="#1f4e79", lw=1.5, label="MCC, last 200 items")
    marks = [(adapt["shift_at_item"], "shift", "#b22222", "--"),
             (adapt["alarm_at_item"], "drift alarm", "#e67e22", ":")]
    marks += [(p.get("decided_from_item") or p["at_item"],
               "retrained bundle live" if p["candidate"].startswith("bundle ") else "head promoted",
               "#2e8b57" if p["candidate"].startswith("bundle ") else "#6b8e23", "-") for p in adapt["promotions"]]
    marks += [(r["at_item"], "rollback", "#7f3f98", "-.") for r in adapt["rollbacks"]]
    shown = set()
    for x, name, colour, style in marks:
        if x is not None:
            ax.axvline(x, color=colour, ls=style, lw=1.2, label=None if name in shown else name)
            shown.add(name)
    ax.set_xlabel("item")
    ax.set_ylabel("MCC")
    ax.set_ylim(min(0.0, float(np.nanmin(mcc)) if len(mcc) else 0.0) - 0.05, 1.0)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    after = [p["mcc_after"] for p in adapt["promotions"] if p.get("mcc_after") is not None]
    ax.set_title(f"MCC {adapt['mcc_before_shift']} before the shift, {adapt['mcc_after_shift']} after it, "
                 f"{' then '.join(str(a) for a in after) or '—'} on the 1,000 items after each promotion "
                 f"({adapt['labelled']} labels)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
