"""Plots people look at, as PNG."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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


def latency_png(latencies_ms: Sequence[float], compute_ms: Sequence[float], deadline_ms: float, path: Path) -> Path:
    """Two panels: the whole decision latency (mostly waiting for the sensor) and the part
    the station spends computing (capture, embedding, head)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=120)
    for ax, values, what in ((axes[0], latencies_ms, "announcement → gate command"),
                             (axes[1], compute_ms, "station compute per item")):
        ax.hist(values, bins=40, color="#4477aa")
        for q, style in ((50, ":"), (99, "-.")):
            v = float(np.percentile(values, q))
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
