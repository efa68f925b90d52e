"""The run summary that demo and replay print: what the line saw, how right the station was,
how fast it decided. Field names are the ones DESIGN.md promises to other tools."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, matthews_corrcoef

from sortline.edge_runtime.model.bundle import DecisionPolicy
from sortline.edge_runtime.model.pipeline import Decision
from sortline.edge_runtime.station import StationStats
from sortline.hardware.sim.referee import LineTally

NO_LABEL = "(none)"


def judged_classes(decisions: Sequence[Decision], truth: Mapping[int, int],
                   labels: Sequence[str]) -> tuple[list[Decision], list[int], list[int]]:
    """The decisions of items whose truth is known, their true and their predicted class indices
    into ``labels``. An item the head never saw (or named a class it lacks) counts as a wrong
    answer, ``len(labels)``, not as a skipped one."""
    index = {name: i for i, name in enumerate(labels)}
    judged = [d for d in decisions if d.item_id in truth]
    y_pred = [index.get(d.label, len(labels)) if d.label else len(labels) for d in judged]
    return judged, [truth[d.item_id] for d in judged], y_pred


def summarize(
    decisions: Sequence[Decision],
    truth: Mapping[int, int],
    labels: Sequence[str],
    policy: DecisionPolicy,
    tally: LineTally,
    stats: StationStats,
    wall_s: float,
    faults: Mapping[str, int] | None = None,
) -> dict:
    """``truth`` maps item id → true class index into ``labels``."""
    judged, y_true, y_pred = judged_classes(decisions, truth, labels)
    names = [*labels, NO_LABEL]
    cm = confusion_matrix(y_true, y_pred, labels=list(range(len(names)))) if judged else np.zeros((0, 0))
    right_exit = sum(1 for d, t in zip(judged, y_true) if t < len(labels) and d.exit == policy.exits.get(labels[t]))
    safe = sum(1 for d in judged if d.exit == policy.safe_exit)
    return {
        "items": tally.items,
        "gate_commands": tally.gate_commands,
        "lost": tally.lost,
        "duplicates": tally.duplicates,
        "accuracy": round(float(accuracy_score(y_true, y_pred)), 4) if judged else None,
        "mcc": round(float(matthews_corrcoef(y_true, y_pred)), 4) if judged else None,
        "latency_ms_p50": round(stats.latency_ms.percentile(50), 2),
        "latency_ms_p99": round(stats.latency_ms.percentile(99), 2),
        "latency_ms_p999": round(stats.latency_ms.percentile(99.9), 2),
        "compute_ms_p50": round(stats.compute_ms.percentile(50), 2),
        "compute_ms_p99": round(stats.compute_ms.percentile(99), 2),
        "deadline_misses": stats.deadline_misses + tally.late,
        "late": tally.late,
        "overload": stats.overload,
        # items over the time they took, first announcement to last command (not start-up and waits)
        "items_per_s": round(tally.items / span, 2) if (span := tally.span_s or wall_s) > 0 else None,
        "faults": dict(faults or {}),
        "retransmissions": tally.retransmissions,
        "unannounced": stats.unannounced,
        "event_log_errors": stats.log_errors,
        "routing": {"right_exit": right_exit, "safe_exit": safe, "wrong_exit": len(judged) - right_exit - safe},
        "reasons": dict(stats.reasons),
        "confusion": {"labels": names, "matrix": cm.tolist()},
        "class_counts": {names[i]: int(n) for i, n in enumerate(np.bincount(y_true, minlength=len(labels)))
                         if i < len(labels) or n},  # "(none)": items of a class the head does not know
    }


def markdown(summary: Mapping) -> str:
    """The summary as a Markdown report: headline figures, then the confusion matrix."""
    keys = ["items", "gate_commands", "lost", "duplicates", "accuracy", "mcc",
            "latency_ms_p50", "latency_ms_p99", "compute_ms_p50", "compute_ms_p99", "deadline_misses", "items_per_s"]
    keys += [k for k in ("runtime",) if k in summary]
    lines = ["| metric | value |", "|---|---|", *(f"| {k} | {summary[k]} |" for k in keys)]
    routing = summary["routing"]
    lines += ["", f"Routing: {routing['right_exit']} to the right exit, {routing['safe_exit']} to the safe exit, "
              f"{routing['wrong_exit']} to a wrong exit. Reasons: {summary['reasons']}."]
    names = summary["confusion"]["labels"]
    lines += ["", "Confusion (rows: true class, columns: predicted):", "",
              "| true \\ predicted | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for name, row in zip(names, summary["confusion"]["matrix"]):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    return "\n".join(lines) + "\n"
