"""Named pretraining recipes: the settings that work for a kind of data, and a schedule that
fits a time budget.

``sortline pretrain --recipe small-data --data D [--max-seconds S]`` is for a few thousand
real photos or item views on a CPU or one GPU. Its choices come from the ablations in
docs/quality.md (grocery-store photos, 2 CPU cores); each is a field below, so a flag given on
the command line still overrides it.

The budget is spent, not cut: the views/s of the model at each resolution of the schedule is
measured on the data before training, and the number of epochs at each resolution is chosen
so that the whole cosine schedule ends inside the budget (a hard stop past it still guards);
a tenth of the way into the last phase the run sets that phase's length again from the speed
it has itself kept (a probe of 8 steps can read the machine low or high).
Where some of the images have labels, the last ``label_stage`` share of the budget goes to the label
stage (:mod:`sortline.train.pseudolabels`): a teacher fitted on the labeled images labels the
rest, and the backbone trains on both beside its self-supervised loss.
"""

from __future__ import annotations

import copy
import csv
import math
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .data import ResolutionSchedule, ViewsDataset
from .loop import TrainConfig, train
from .methods.base import Method
from .recipe_book import RATE_MARGIN

# A stage planned from the speed a run has itself kept so far (the label stage, after the
# self-supervised stage at the same size) needs less margin: at 0.8 of a probe's, three 30-minute
# runs used 1,452, 1,589 and 1,674 s of their 1,800 (docs/quality.md).
RUN_RATE_MARGIN = 0.95
# The self-supervised stage re-plans its last phase once from its own speed, this share of the
# phase's planned steps into it (at least REPLAN_MIN_STEPS, the first of which are slower): a
# label-free 30-minute run planned at 0.8 of its probe ended 5 minutes early.
REPLAN_AT = 0.1
REPLAN_MIN_STEPS = 30
REPLAN_WARM_STEPS = 5  # steps after the phase's start that the speed leaves out


def last_phase_start(plan: Plan, steps_per_epoch: int) -> int:
    """The first step of ``plan``'s last resolution phase."""
    return round(plan.resolution.steps[-1][0] * steps_per_epoch)


def replan_step(plan: Plan, steps_per_epoch: int) -> int | None:
    """The step at which a run of ``plan`` re-plans (None: a plan too short to)."""
    start = last_phase_start(plan, steps_per_epoch)
    last = round(plan.epochs * steps_per_epoch) - start
    at = start + max(REPLAN_MIN_STEPS, round(REPLAN_AT * last))
    return at if at < start + last and plan.replanned is None else None


def steps_fitting(views_per_s: float, seconds: float, views_per_step: int) -> int:
    """Steps (at least one) that fit ``seconds`` at ``RUN_RATE_MARGIN`` of ``views_per_s``."""
    return max(1, math.floor(RUN_RATE_MARGIN * views_per_s * max(0.0, seconds) / views_per_step))


def stage_replan_step(planned_steps: int) -> int | None:
    """The step at which a stage planned at one speed throughout (the label stage) sets its length
    again from its own log, as the self-supervised stage does its last phase; None: too short to."""
    at = max(REPLAN_MIN_STEPS, round(REPLAN_AT * planned_steps))
    return at if at < planned_steps else None


def replanned_stage_total(log: Path, steps: int, views_per_step: int, seconds_left: float) -> int:
    """A stage's steps in all, set again after ``steps`` with ``seconds_left``, from the speed its
    own log shows after its first ``REPLAN_WARM_STEPS``."""
    rate = logged_rate(log, views_per_step, from_step=REPLAN_WARM_STEPS)
    return steps + steps_fitting(rate, seconds_left, views_per_step)


def replanned_total(plan: Plan, log: Path, steps: int, views_per_step: int, steps_per_epoch: int,
                    seconds_left: float) -> tuple[Plan, int]:
    """The plan again, after ``steps``, with ``seconds_left``: the last phase runs at
    ``RUN_RATE_MARGIN`` times the speed the run's log shows since the phase's start."""
    start = last_phase_start(plan, steps_per_epoch)
    rate = logged_rate(log, views_per_step, from_step=start + REPLAN_WARM_STEPS)
    total = steps + steps_fitting(rate, seconds_left, views_per_step)
    record = {"at_step": steps, "views_per_s": round(rate, 1), "margin": RUN_RATE_MARGIN,
              "epochs_before": plan.epochs}
    return Plan(total / steps_per_epoch, plan.resolution, plan.rates, plan.seconds, plan.margin, record), total


def measure_rate(model: Method, dataset: ViewsDataset, size: int, batch_size: int, steps: int = 8,
                 warmup: int = 3) -> float:
    """Steady training views per second of ``model`` at ``size`` px on ``dataset``'s images: the
    rate over ``steps - warmup`` steps after ``warmup`` (the first steps of a run allocate and
    pick kernels, and run a third slower here). It trains a copy; the model is untouched."""
    probe = copy.deepcopy(model)
    n = min(len(dataset), batch_size * steps)
    batch = max(1, min(batch_size, n // steps))
    sample = ViewsDataset(dataset.images[:n], dataset.augment, views=dataset.views, labels=dataset.labels[:n],
                          seed=dataset.seed + 1, resolution=ResolutionSchedule.constant(size))
    with tempfile.TemporaryDirectory(prefix="sortline-rate-") as tmp:
        log = Path(tmp) / "rate.csv"
        train(probe, sample, TrainConfig(epochs=1, batch_size=batch, warmup_steps=1, log_path=log), progress=False)
        return logged_rate(log, sample.views * batch, from_step=warmup)


def logged_rate(log: Path, views_per_step: int, from_step: int = 0) -> float:
    """Training views per second over the steps after ``from_step`` of a run's log (train's CSV),
    or over all of them when it has too few. The log's images/s is cumulative: step k ends at
    k·views_per_step / rate_k seconds. Raises ``ValueError`` for a log without steps."""
    with open(log, newline="") as f:
        ends = {int(r["step"]): int(r["step"]) * views_per_step / float(r["images_per_s"]) for r in csv.DictReader(f)}
    if not ends:
        raise ValueError(f"{log}: no steps logged")
    last = max(ends)
    if not 0 < from_step < last or from_step not in ends:
        return last * views_per_step / ends[last]
    return (last - from_step) * views_per_step / max(ends[last] - ends[from_step], 1e-6)


@dataclass(frozen=True)
class Plan:
    epochs: float
    resolution: ResolutionSchedule
    rates: dict[int, float]  # measured views/s per size
    seconds: float  # the training time planned
    margin: float = 1.0  # the fraction of the measured speed the plan assumed
    replanned: dict | None = None  # where the run set its length again, from its own speed

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "resolution": [list(s) for s in self.resolution.steps],
                "views_per_s": {str(k): round(v, 1) for k, v in self.rates.items()},
                "margin": self.margin, "planned_seconds": round(self.seconds, 1),
                **({"replanned": self.replanned} if self.replanned else {})}

    @classmethod
    def from_dict(cls, data: dict) -> Plan:
        """The plan :meth:`to_dict` wrote (KeyError, TypeError or ValueError for anything else)."""
        replanned = data.get("replanned")
        if replanned is not None and not isinstance(replanned, dict):
            raise TypeError(f"replanned is a {type(replanned).__name__}, not a mapping")
        return cls(float(data["epochs"]), ResolutionSchedule(tuple(tuple(s) for s in data["resolution"])),
                   {int(k): float(v) for k, v in data["views_per_s"].items()}, float(data["planned_seconds"]),
                   float(data.get("margin", 1.0)), replanned)


def plan_schedule(phases: tuple[tuple[float, int], ...], images: int, views: int, seconds: float,
                  rate: Callable[[int], float], margin: float = 1.0) -> Plan:
    """Whole epochs per phase so that phase ``k`` takes about its share of ``seconds`` at
    ``margin`` times the measured ``rate(size)`` views/s (at least one epoch each)."""
    if seconds <= 0 or images <= 0:
        raise ValueError("a schedule needs a positive time budget and at least one image")
    shares = [share for share, _ in phases]
    if any(s <= 0 for s in shares):
        raise ValueError(f"phase shares must be positive, got {shares}")
    rates = {size: rate(size) for _, size in phases}
    steps, start, planned = [], 0, 0.0
    for share, size in phases:
        epoch_s = views * images / (rates[size] * margin)
        n = max(1, math.floor(share / sum(shares) * seconds / epoch_s))
        steps.append((start, size))
        start += n
        planned += n * epoch_s
    return Plan(float(start), ResolutionSchedule(tuple(steps)), rates, planned, margin)


def plan_for(model: Method, dataset: ViewsDataset, phases: tuple[tuple[float, int], ...], seconds: float,
             batch_size: int, margin: float = RATE_MARGIN) -> Plan:
    """Measure the model's speed at each phase's size, then plan what is left of ``seconds`` at
    ``margin`` times that speed."""
    started = time.perf_counter()
    rates = {size: measure_rate(model, dataset, size, batch_size) for _, size in phases}
    spent = time.perf_counter() - started
    left = seconds - spent
    if left <= 0:
        raise ValueError(f"the time budget of {seconds:.0f} s was spent measuring the model's speed "
                         f"({spent:.0f} s); give a larger one")
    return plan_schedule(phases, len(dataset), dataset.views, left, rates.__getitem__, margin)
