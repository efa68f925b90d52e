"""The loop from a drift alarm to a promoted head, on a simulated line: ``sortline demo --adapt``.

A :class:`SimulatedOperator` stands beside the running station as a person would: once the drift
watch has raised an alarm it labels the queue of unsure items at a fixed pace of line time
(``labels_per_hour``), the truth of the simulated line standing in for the person's eye, the most
worth-labelling item first (while a candidate runs: among the items the candidate saw, so the
labels also judge it). Each label becomes an example in the station's store (the queue's
``on_label``) and joins the shadow log. After every ``refit_every`` labels, unless the running
candidate is about to be promoted, it refits a head from the store as a candidate (not live) and
puts it in the shadow, in place of the one before;
the shadow's policy promotes it when it has shown itself (``watch/shadow.py``), and rolls it back
if its rates worsen.

:func:`adapt_summary` reads the run afterwards: where the alarm and the promotions came, and the
MCC on the items before the shift, between the shift and the first promotion, and on the
``after_items`` items after it.
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import matthews_corrcoef

from sortline.edge_runtime.learning.enroll import Enroller, RefitRefused
from sortline.edge_runtime.model.bundle import Bundle
from sortline.edge_runtime.model.pipeline import Decision, ItemPipeline
from sortline.edge_runtime.station.wiring import RunningStation
from sortline.edge_runtime.watch import (
    DriftConfig,
    HeadCandidate,
    QueueConfig,
    ShadowPolicy,
    StationHost,
    StationWatch,
)
from sortline.hardware.sim.line import LineConfig, Scenario

from .report import judged_classes
from .runs import LineRun, sort_on_simulated_line

log = logging.getLogger(__name__)
AFTER_ITEMS = 1000  # the span after a promotion whose MCC is reported
ROLLING = 200  # items in the rolling MCC of the plot


@dataclass(frozen=True)
class Operator:
    """How the simulated operator works: labels per hour of line time, labels between refits."""

    labels_per_hour: float = 3600.0
    refit_every: int = 30


# The demo's shadow: promotes by itself once it has seen 200 items and 20 labelled ones
ADAPT_POLICY = ShadowPolicy(auto=True, min_items=200, min_labelled=20, window_items=1000)


def adapt_on_line(bundle: Bundle, pipeline: ItemPipeline, line: LineConfig, scenario: Scenario, out: Path,
                  shift_at: int, operator: Operator = Operator(), drift: DriftConfig = DriftConfig(),
                  policy: ShadowPolicy = ADAPT_POLICY, **kwargs) -> tuple[LineRun, dict]:
    """The line with the whole loop beside it: a fresh store, queue and shadow log in ``out``, the
    watch with a shadow whose ``policy`` promotes by itself, the simulated operator; ``kwargs``
    go to :func:`sort_on_simulated_line`. Returns the run and its ``adapt`` summary."""
    for stale in ("enroll.sqlite", "enroll.sqlite-wal", "enroll.sqlite-shm", "shadow.jsonl"):
        (out / stale).unlink(missing_ok=True)
    shutil.rmtree(out / "queue", ignore_errors=True)
    classes = scenario.classes
    with Enroller(bundle, out / "enroll.sqlite") as enroller:
        # a simulated hour passes in seconds: the queue's hourly cap would keep a handful of items
        queue = QueueConfig(out / "queue", per_hour=1_000_000, drift_per_hour=1_000_000)
        watch = StationWatch.build(drift, queue, on_label=enroller.add, shadow=policy, shadow_log=out / "shadow.jsonl")
        person = SimulatedOperator(watch, enroller, lambda i: classes[t] if (t := scenario.label(i)) < len(classes)
                                   else None, operator.labels_per_hour, operator.refit_every)
        run = sort_on_simulated_line(pipeline, line, scenario, watch=watch, beside=person.beside, **kwargs)
        return run, adapt_summary(run.decisions, run.truth, pipeline.labels, shift_at, watch, person)


class SimulatedOperator:
    """Labels the queue after an alarm, refits, and hands each refit to the shadow (module docstring)."""

    def __init__(self, watch: StationWatch, enroller: Enroller, truth: Callable[[int], str | None],
                 labels_per_hour: float = 3600.0, refit_every: int = 30) -> None:
        if watch.drift is None or watch.queue is None or watch.shadow is None:
            raise ValueError("the simulated operator needs the drift watch, the queue and the shadow")
        if not labels_per_hour > 0 or refit_every < 1:
            raise ValueError("labels_per_hour > 0 and refit_every ≥ 1")
        self.watch, self.enroller, self.truth = watch, enroller, truth
        self.every_s = 3600.0 / labels_per_hour
        self.refit_every = refit_every
        self.labelled: list[int] = []  # item ids, in the order labelled
        self.refits: list[dict] = []  # {"version", "after_labels", "refused"}
        self._since_refit = 0
        self._candidate_from: int | None = None  # the first item a running candidate saw
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beside(self, running: RunningStation) -> Callable[[], None]:
        """For ``sort_on_line(beside=…)``: promotions through the station and its store; starts the
        operator and returns what stops it."""
        self.watch.shadow.host = StationHost(running.station, self.enroller)
        self._thread = threading.Thread(target=self._run, name="simulated-operator", daemon=True)
        self._thread.start()
        return self.stop

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            if not self.watch.drift.summary()["alarms"]:
                continue  # nothing tells the operator yet that the line changed
            try:
                self._label_one()
                shadow = self.watch.shadow
                if self._since_refit >= self.refit_every and (shadow.candidate is None or not shadow.verdict[0]):
                    self._refit()  # a first candidate, or one that has not shown itself: all the labels now
            except Exception:  # the operator's mistakes are logged; the line goes on
                log.exception("the simulated operator failed")

    def _label_one(self) -> None:
        shadow, queue = self.watch.shadow, self.watch.queue
        running = shadow.candidate is not None
        if not running:
            self._candidate_from = None
        elif self._candidate_from is None:
            self._candidate_from = shadow.last_item or 0
        for entry in queue.ranked():
            if entry.label is not None or (running and entry.item_id <= (self._candidate_from or 0)):
                continue
            label = self.truth(entry.item_id)
            if label is None:
                continue  # an item the catalog lacks: the simulated operator leaves it
            queue.label(entry.key, label)
            self.labelled.append(entry.item_id)
            self._since_refit += 1
            return

    def _refit(self) -> None:
        self._since_refit = 0
        shadow = self.watch.shadow
        if self.refits and shadow.candidate is not None:  # why the one it replaces was not promoted
            self.refits[-1]["replaced"] = shadow.status()["why"]
        try:
            report = self.enroller.refit(activate=False)
        except RefitRefused as exc:
            self.refits.append({"version": None, "after_labels": len(self.labelled), "refused": str(exc)})
            return
        self.refits.append({"version": report.version, "after_labels": len(self.labelled), "refused": None})
        shadow.start(HeadCandidate(self.enroller.classifier(report.version)))


def _mcc(decisions: Sequence[Decision], truth: Mapping[int, int], labels: Sequence[str]) -> float | None:
    judged, y_true, y_pred = judged_classes(decisions, truth, labels)
    if len(judged) < 20:
        return None
    return round(float(matthews_corrcoef(y_true, y_pred)), 4)


def adapt_summary(decisions: Sequence[Decision], truth: Mapping[int, int], labels: Sequence[str], shift_at: int,
                  watch: StationWatch, operator: SimulatedOperator, after_items: int = AFTER_ITEMS) -> dict:
    """The run's ``adapt`` section (module docstring); ``truth`` as the run's (class indices)."""
    alarms = [a for a in watch.drift.summary()["alarms"] if a["at_item"] >= shift_at]
    history = watch.shadow.history
    promotions = [e for e in history if e["event"] == "shadow-promote"]
    promoted_at = promotions[0]["at_item"] if promotions else None
    ordered = sorted(decisions, key=lambda d: d.item_id)
    before = [d for d in ordered if d.item_id < shift_at]
    after_shift = [d for d in ordered if d.item_id >= shift_at and (promoted_at is None or d.item_id <= promoted_at)]
    after = [d for d in ordered if promoted_at is not None and promoted_at < d.item_id <= promoted_at + after_items]
    return {
        "shift_at_item": shift_at,
        "alarm_at_item": alarms[0]["at_item"] if alarms else None,
        "labelled": len(operator.labelled),
        "refits": operator.refits,
        "promoted_at_item": promoted_at,
        "promotions": [{k: e[k] for k in ("candidate", "at_item", "by", "why")} for e in promotions],
        "rollbacks": [{k: e[k] for k in ("version", "at_item", "by", "why")} for e in history
                      if e["event"] == "shadow-rollback"],
        "mcc_before_shift": _mcc(before, truth, labels),
        "mcc_after_shift": _mcc(after_shift, truth, labels),
        "mcc_after_promotion": _mcc(after, truth, labels) if len(after) >= after_items // 2 else None,
        "items_after_promotion": len(after),
    }


def rolling_mcc(decisions: Sequence[Decision], truth: Mapping[int, int], labels: Sequence[str],
                window: int = ROLLING, step: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """MCC over a sliding window of ``window`` items, every ``step`` items: (item ids, values)."""
    ordered = [d for d in sorted(decisions, key=lambda d: d.item_id) if d.item_id in truth]
    at, values = [], []
    for end in range(window, len(ordered) + 1, step):
        value = _mcc(ordered[end - window:end], truth, labels)
        if value is not None:
            at.append(ordered[end - 1].item_id)
            values.append(value)
    return np.array(at), np.array(values)

