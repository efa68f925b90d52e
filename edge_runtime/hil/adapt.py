"""The loop from a drift alarm to a promoted head, on a simulated line: ``sortline demo --adapt``.

A :class:`SimulatedOperator` stands beside the running station as a person would: once the drift
watch has raised an alarm it labels the queue of unsure items at a fixed pace of line time
(``labels_per_hour``), the truth of the simulated line standing in for the person's eye, the most
worth-labelling item first (while a candidate runs: among the items the candidate saw, so the
labels also judge it). Each label becomes an example in the station's store (the queue's
``on_label``: ``enroll_label``, not for an item a retrained bundle decided) and joins the shadow
log. After every ``refit_every`` labels, unless the running candidate is about to be promoted, it
refits a head from the store as a candidate (not live) and puts it in the shadow, in place of the
one before; the shadow's policy promotes it when it has shown itself (``watch/shadow.py``), and
rolls it back if its rates worsen. With a ``Retrain`` (the desktop's, train/retrain.py), every
``retrain_after`` labels the queue's labelled items are exported and the bundle is retrained on
them; the bundle it makes is loaded as a station loads one and shadowed in place of a head, and
promoted the same way.

:func:`adapt_summary` reads the run afterwards: where the alarm and the promotions came, and the
MCC on the items before the shift, between the shift and the first promotion, and on the
``after_items`` items from the first one it decided (:class:`DecidedBy`), and after each promotion.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from sklearn.metrics import matthews_corrcoef

from sortline.edge_runtime.learning.enroll import Enroller, RefitRefused, enroll_label
from sortline.edge_runtime.model.bundle import Bundle
from sortline.edge_runtime.model.pipeline import Decision, ItemPipeline
from sortline.edge_runtime.station.observers import ObservedItem
from sortline.edge_runtime.station.wiring import RunningStation
from sortline.edge_runtime.watch import (
    BundleCandidate,
    DriftConfig,
    HeadCandidate,
    QueueConfig,
    ShadowPolicy,
    StationHost,
    StationWatch,
    check_newer,
)
from sortline.edge_runtime.watch.unsure import export
from sortline.hardware.sim.line import LineConfig, Scenario

from .report import judged_classes
from .runs import LineRun, sort_on_simulated_line

log = logging.getLogger(__name__)
AFTER_ITEMS = 1000  # the span after a promotion whose MCC is reported
ROLLING = 200  # items in the rolling MCC of the plot


@dataclass(frozen=True)
class Operator:
    """How the simulated operator works: labels per hour of line time, labels between refits, and
    the labels after which the desktop retrains the bundle on them (0: never)."""

    labels_per_hour: float = 3600.0
    refit_every: int = 30
    retrain_after: int = 0


# The desktop's side of a retrain: the queue's labelled items (an item folder tree, as `sortline
# queue export` writes it) → a new bundle (its folder), trained from the live bundle's backbone;
# it gives up when the event is set (the line has ended).
Retrain = Callable[[Path, threading.Event], Path]


RETRAIN_AFTER = 100  # `sortline demo --adapt`: labels before the desktop retrains the bundle on them

# The demo's shadow: promotes by itself once it has seen 200 items and 20 labelled ones
ADAPT_POLICY = ShadowPolicy(auto=True, min_items=200, min_labelled=20, window_items=1000)


def adapt_on_line(bundle: Bundle, pipeline: ItemPipeline, line: LineConfig, scenario: Scenario, out: Path,
                  shift_at: int, operator: Operator = Operator(), drift: DriftConfig = DriftConfig(),
                  policy: ShadowPolicy = ADAPT_POLICY, retrain: Retrain | None = None,
                  public_key: Path | None = None, **kwargs) -> tuple[LineRun, dict]:
    """The line with the whole loop beside it: a fresh store, queue and shadow log in ``out``, the
    watch with a shadow whose ``policy`` promotes by itself, the simulated operator (and, with
    ``retrain`` and ``operator.retrain_after``, the desktop that retrains the bundle, its bundles
    checked against ``public_key`` where given); ``kwargs`` go to :func:`sort_on_simulated_line`.
    Returns the run and its ``adapt`` summary."""
    for stale in ("enroll.sqlite", "enroll.sqlite-wal", "enroll.sqlite-shm", "shadow.jsonl"):
        (out / stale).unlink(missing_ok=True)
    for stale in ("queue", "retrain"):
        shutil.rmtree(out / stale, ignore_errors=True)
    classes = scenario.classes
    with Enroller(bundle, out / "enroll.sqlite") as enroller:
        # a simulated hour passes in seconds: the queue's hourly cap would keep a handful of items
        queue = QueueConfig(out / "queue", per_hour=1_000_000, drift_per_hour=1_000_000)
        watch = StationWatch.build(drift, queue, on_label=partial(enroll_label, enroller), shadow=policy,
                                   shadow_log=out / "shadow.jsonl")
        person = SimulatedOperator(watch, enroller, lambda i: classes[t] if (t := scenario.label(i)) < len(classes)
                                   else None, operator, retrain, out / "retrain", public_key)
        decided = DecidedBy()
        run = sort_on_simulated_line(pipeline, line, scenario, watch=watch, beside=person.beside,
                                     observers=[decided, *kwargs.pop("observers", ())], **kwargs)
        return run, adapt_summary(run.decisions, run.truth, pipeline.labels, shift_at, watch, person, decided)


class SimulatedOperator:
    """Labels the queue after an alarm, refits, and hands each refit to the shadow; with a
    ``retrain``, has the desktop retrain the bundle on all the labels each time
    ``operator.retrain_after`` more are given (one retrain at a time, in a thread of its own: the
    labels go on meanwhile) and shadows each bundle it makes.
    While a retrained bundle is the candidate, or live, no head refit takes its place: the store's
    examples are the first bundle's embeddings."""

    def __init__(self, watch: StationWatch, enroller: Enroller, truth: Callable[[int], str | None],
                 operator: Operator = Operator(), retrain: Retrain | None = None,
                 work: Path | None = None, public_key: Path | None = None) -> None:
        if watch.drift is None or watch.queue is None or watch.shadow is None:
            raise ValueError("the simulated operator needs the drift watch, the queue and the shadow")
        if not operator.labels_per_hour > 0 or operator.refit_every < 1 or operator.retrain_after < 0:
            raise ValueError("labels_per_hour > 0, refit_every ≥ 1 and retrain_after ≥ 0")
        if retrain is not None and operator.retrain_after and work is None:
            raise ValueError("a retrain needs a folder to export the labelled items to")
        self.watch, self.enroller, self.truth = watch, enroller, truth
        self.every_s = 3600.0 / operator.labels_per_hour
        self.refit_every, self.retrain_after = operator.refit_every, operator.retrain_after if retrain else 0
        self._retrain, self._work, self._public_key = retrain, work, public_key
        self.labelled: list[int] = []  # item ids, in the order labelled
        self.refits: list[dict] = []  # {"version", "after_labels", "refused"}
        self.retrains: list[dict] = []  # {"after_labels", "labels" (exported), "seconds", "bundle", "error"}
        self._since_refit = 0
        self._candidate_from: int | None = None  # the first item a running candidate saw
        self._first_bundle: ItemPipeline | None = None
        self._retrained: ItemPipeline | None = None  # made by the desktop, not yet shadowed
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def beside(self, running: RunningStation) -> Callable[[], None]:
        """For ``sort_on_line(beside=…)``: promotions through the station and its store; starts the
        operator and returns what stops it."""
        self.watch.shadow.host = StationHost(running.station, self.enroller)
        self._first_bundle = running.station.pipeline
        self._start(self._run, "simulated-operator")
        return self.stop

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def _start(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            if not self.watch.drift.summary()["alarms"]:
                continue  # nothing tells the operator yet that the line changed
            try:
                self._label_one()
                shadow = self.watch.shadow
                if self._retrain_due():
                    self.retrains.append({"after_labels": len(self.labelled), "seconds": None, "bundle": None,
                                          "error": None})
                    self._start(self._desktop, "desktop-retrain")
                if self._retrained is not None and (shadow.candidate is None or not shadow.verdict[0]):
                    retrained, self._retrained = self._retrained, None
                    shadow.start(BundleCandidate(retrained))
                elif self._since_refit >= self.refit_every and self._heads_may_change():
                    self._refit()  # a first candidate, or one that has not shown itself: all the labels now
            except Exception:  # the operator's mistakes are logged; the line goes on
                log.exception("the simulated operator failed")

    def _retrain_due(self) -> bool:
        """No retrain running, and ``retrain_after`` labels given since the last one began."""
        if not self.retrain_after or (self.retrains and self.retrains[-1]["seconds"] is None):
            return False
        return len(self.labelled) - (self.retrains[-1]["after_labels"] if self.retrains else 0) >= self.retrain_after

    def _heads_may_change(self) -> bool:
        """A head refit may take the candidate's place: no retrained bundle is the candidate or
        live, and the candidate (if any) has not shown itself yet."""
        shadow = self.watch.shadow
        if shadow.host is not None and shadow.host.live_bundle() is not self._first_bundle:
            return False
        return shadow.candidate is None or (shadow.candidate.kind == "head" and not shadow.verdict[0])

    def _desktop(self) -> None:
        """Export the labelled items, have the desktop retrain, load what it made (as the station
        loads a bundle: verified, its runtime measured) for the operator to shadow."""
        record, started = self.retrains[-1], time.perf_counter()
        try:
            folder = self._work / f"labels-{len(self.retrains)}"
            shutil.rmtree(folder, ignore_errors=True)
            record["labels"] = export(self.watch.queue, folder)  # the labels given by now
            path = self._retrain(folder, self._stop)
            pipeline = ItemPipeline.for_station(path, threads=1, public_key=self._public_key)
            check_newer(pipeline.manifest, self.watch.shadow.host.live_bundle().manifest)
            record["bundle"] = pipeline.version
            self._retrained = pipeline
        except Exception as exc:  # a retrain that fails leaves the heads' loop as it was
            if self._stop.is_set():
                log.info("the line ended during a retrain: given up")
            else:
                log.exception("the desktop's retrain failed")
            record["error"] = f"{type(exc).__name__}: {exc}"
        record["seconds"] = round(time.perf_counter() - started, 1)

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


class DecidedBy:
    """Which version decided each item ("bundle V" and "head N", as candidates are named): an
    observer beside the line that keeps one entry an item. A promotion's ``at_item`` is the last
    item the shadow's thread had taken, which lags the station by the items it has not caught up
    with; the items a promoted version decided are read here."""

    def __init__(self) -> None:
        self.items: dict[int, tuple[str, str]] = {}

    def offer(self, item: ObservedItem) -> None:
        self.items[item.item_id] = (f"bundle {item.pipeline.version}", f"head {item.decision.head_version}")

    def first(self, version: str) -> int | None:
        """The first item ``version`` decided."""
        return min((i for i, names in self.items.items() if version in names), default=None)


def adapt_summary(decisions: Sequence[Decision], truth: Mapping[int, int], labels: Sequence[str], shift_at: int,
                  watch: StationWatch, operator: SimulatedOperator, decided: DecidedBy,
                  after_items: int = AFTER_ITEMS) -> dict:
    """The run's ``adapt`` section (module docstring); ``truth`` as the run's (class indices). A
    promotion counts from the first item its version decided."""
    alarms = [a for a in watch.drift.summary()["alarms"] if a["at_item"] >= shift_at]
    history = watch.shadow.history
    ordered = sorted(decisions, key=lambda d: d.item_id)

    def span(at: int | None) -> list[Decision]:  # the after_items items from item `at` on
        return [d for d in ordered if at is not None and at <= d.item_id < at + after_items]

    def mcc_after(at: int | None) -> float | None:
        items = span(at)
        return _mcc(items, truth, labels) if len(items) >= after_items // 2 else None

    promotions = []
    for e in history:
        if e["event"] == "shadow-promote":
            decided_from = decided.first(e["candidate"])
            promotions.append({**{k: e[k] for k in ("candidate", "at_item", "by", "why")},
                               "decided_from_item": decided_from, "mcc_after": mcc_after(decided_from)})
    first = promotions[0] if promotions else {"decided_from_item": None, "mcc_after": None}
    bundle = next((p for p in promotions if p["candidate"].startswith("bundle ")), {})
    promoted_at = first["decided_from_item"]
    before = [d for d in ordered if d.item_id < shift_at]
    after_shift = [d for d in ordered if d.item_id >= shift_at and (promoted_at is None or d.item_id <= promoted_at)]
    return {
        "shift_at_item": shift_at,
        "alarm_at_item": alarms[0]["at_item"] if alarms else None,
        "labelled": len(operator.labelled),
        "refits": operator.refits,
        "retrains": operator.retrains,
        "promoted_at_item": promoted_at,
        "promotions": promotions,
        "rollbacks": [{k: e[k] for k in ("version", "at_item", "by", "why")} for e in history
                      if e["event"] == "shadow-rollback"],
        "mcc_before_shift": _mcc(before, truth, labels),
        "mcc_after_shift": _mcc(after_shift, truth, labels),
        "mcc_after_promotion": first["mcc_after"],
        "items_after_promotion": len(span(promoted_at)),
        "bundle_promoted_at_item": bundle.get("decided_from_item"),
        "mcc_after_bundle_promotion": bundle.get("mcc_after"),
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

