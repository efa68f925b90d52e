"""The shadow log and what it shows: a candidate head or bundle against the live one, item by item.

Each item the candidate saw is one :class:`ShadowRecord`: the live decision and the candidate's
on the same item (class, reason, exit, confidence) and, once an operator labelled the item in the
queue of unsure items, its label. From the records (:func:`shadow_stats`):

- agreement, overall and per live outcome (an outcome is the class for a confident decision,
  else its reason: ``unsure``, ``unknown``), and the live-against-shadow confusion of outcomes;
- on the labelled items, both versions' accuracy on the same items (the head's best class against
  the label) and the paired counts: items only the live one got right (``b``), only the shadow
  (``c``);
- the share of unsure and of unknown decisions of each, on the same items.

:func:`judge` applies the station's :class:`ShadowPolicy` to them. The candidate is promoted only
when it has seen ``min_items`` items and ``min_labelled`` labelled ones, its accuracy on the
labelled items is *shown* not worse than the live one's (the lower one-sided 95 % bound of the
paired difference, Wald with Agresti and Min's half added to each cell, above ``-margin``), and
it is not more often unsure (not by more than ``rate_bound``, nor by a paired sign test at
``alpha``), nor more often unknown. A head fitted on the station rejects items far from its
examples as unknown, calibrated to reject ``target_frr`` (5 %) of known ones, where a bundle's own
head rejects none: against such a live head the candidate's unknown rate is held to its own
calibrated rate plus ``rate_bound``, not to zero; against a live head that rejects too, by the same
paired test as the unsure rate. A candidate as good as the live one needs many labels to pass;
one clearly better passes on a few dozen; a candidate fitted on wrong labels does not pass.

The queue keeps the items the live head was unsure of, so the labelled items lean towards where
the live head is weak: the accuracies are those of such items, not of the line (docs/adaptation.md).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from scipy.stats import binomtest, norm

from sortline.edge_runtime.errors import ConfigError
from sortline.edge_runtime.model.pipeline import CONFIDENT, UNKNOWN, UNSURE, Decision
from sortline.edge_runtime.station.events import EventLog

KEEP = 20_000  # records held in memory (the latest); the log file keeps every one, rotated
MAX_LINE = 4096  # a shadow log line longer than this is not one the station wrote


@dataclass(frozen=True)
class Verdict:
    """What one version made of an item."""

    label: str | None  # the head's best class
    reason: str
    exit: int
    confidence: float

    @classmethod
    def of(cls, decision: Decision) -> Verdict:
        return cls(decision.label, decision.reason, decision.exit, round(decision.confidence, 4))

    @property
    def outcome(self) -> str:
        return str(self.label) if self.reason == CONFIDENT else self.reason

    @property
    def unsure(self) -> bool:
        return self.reason == UNSURE

    @property
    def unknown(self) -> bool:
        return self.reason == UNKNOWN


@dataclass
class ShadowRecord:
    item_id: int
    lane: int
    live_version: str
    shadow_version: str
    live: Verdict
    shadow: Verdict
    label: str | None = None  # the operator's, from the queue

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ShadowRecord:
        return cls(int(data["item_id"]), int(data["lane"]), str(data["live_version"]), str(data["shadow_version"]),
                   Verdict(**data["live"]), Verdict(**data["shadow"]), data.get("label"))


class ShadowLog:
    """The records of the current candidate: the latest ``keep`` in memory, every one in the log
    file (JSON lines, rotated like the event log; a label is a line of its own)."""

    def __init__(self, path: Path | None = None, keep: int = KEEP, max_mb: float = 64.0) -> None:
        self.path = path
        self.keep = keep
        self._records: OrderedDict[int, ShadowRecord] = OrderedDict()
        self.tally = Tally()  # over the records in memory
        self._file = EventLog(path, int(max_mb * (1 << 20))) if path is not None else None

    def __len__(self) -> int:
        return len(self._records)

    def start(self, candidate: str, live: str, at_item: int | None) -> None:
        """A new candidate: its records start afresh."""
        self._records.clear()
        self.tally = Tally()
        self._write({"shadow": "start", "candidate": candidate, "live": live, "at_item": at_item})

    def add(self, record: ShadowRecord) -> None:
        if (before := self._records.pop(record.item_id, None)) is not None:
            self.tally.add(before, -1)
        self._records[record.item_id] = record
        self.tally.add(record)
        while len(self._records) > self.keep:
            self.tally.add(self._records.popitem(last=False)[1], -1)
        self._write(record.to_dict())

    def label(self, item_id: int, label: str) -> bool:
        """The operator's label of an item; False when the candidate did not see it."""
        record = self._records.get(item_id)
        if record is None:
            return False
        self.tally.label(record, record.label, -1)
        record.label = label
        self.tally.label(record, label)
        self._write({"label_of": item_id, "label": label})
        return True

    def records(self) -> list[ShadowRecord]:
        return list(self._records.values())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()

    def _write(self, line: dict) -> None:
        if self._file is not None:
            self._file.write(line)  # a full disk is counted and logged by the event log, never raised


def read_log(path: Path) -> list[ShadowRecord]:
    """The records of the latest candidate in a shadow log file, its labels applied; lines that
    are not the station's (too long, not JSON, wrong fields) are skipped."""
    records: dict[int, ShadowRecord] = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if len(line) > MAX_LINE:
                continue
            try:
                data = json.loads(line)
                if data.get("shadow") == "start":
                    records.clear()
                elif "label_of" in data:
                    if (record := records.get(int(data["label_of"]))) is not None:
                        record.label = str(data["label"])
                else:
                    record = ShadowRecord.from_dict(data)
                    records[record.item_id] = record
            except (ValueError, TypeError, KeyError, AttributeError):
                continue
    return list(records.values())


# --- what the records show --------------------------------------------------------------------


def paired_lower_bound(b: int, c: int, n: int, alpha: float) -> float:
    """The lower one-sided ``1 - alpha`` bound of (shadow accuracy − live accuracy) on ``n`` paired
    items, ``b`` right only by the live version, ``c`` only by the shadow: Wald with half an item
    added to each cell of the 2×2 table (Agresti & Min 2005), which keeps its coverage at small n."""
    if n <= 0:
        return -1.0
    n2, b2, c2 = n + 2, b + 0.5, c + 0.5
    difference = (c2 - b2) / n2
    variance = max(((b2 + c2) - (c2 - b2) ** 2 / n2) / n2**2, 0.0)
    return difference - float(norm.ppf(1 - alpha)) * math.sqrt(variance)


class Tally:
    """Running counts over shadow records, kept as records come, are labelled and leave, so the
    statistics cost the same at 20 items as at 20,000 (the shadow's thread must not hold the
    interpreter for long: the station's loop shares it)."""

    KINDS = ("unsure", "unknown")

    def __init__(self) -> None:
        self.items = self.agree = 0
        self.per_class: dict[str, list[int]] = {}  # live outcome: [items, agreeing]
        self.confusion: dict[tuple[str, str], int] = {}
        self.labelled = self.live_right = self.shadow_right = self.b = self.c = 0
        self.rates = {f"{who}_{kind}": 0 for who in ("live", "shadow", "more", "fewer") for kind in self.KINDS}

    @classmethod
    def of(cls, records: Sequence[ShadowRecord]) -> Tally:
        tally = cls()
        for record in records:
            tally.add(record)
        return tally

    def add(self, r: ShadowRecord, sign: int = 1) -> None:
        """Count a record in (``sign`` −1: out)."""
        live, shadow = r.live.outcome, r.shadow.outcome
        self.items += sign
        self.agree += sign * (live == shadow)
        seen = self.per_class.setdefault(live, [0, 0])
        seen[0] += sign
        seen[1] += sign * (live == shadow)
        self.confusion[live, shadow] = self.confusion.get((live, shadow), 0) + sign
        for kind in self.KINDS:
            mine, theirs = getattr(r.shadow, kind), getattr(r.live, kind)
            self.rates[f"live_{kind}"] += sign * theirs
            self.rates[f"shadow_{kind}"] += sign * mine
            self.rates[f"more_{kind}"] += sign * (mine and not theirs)
            self.rates[f"fewer_{kind}"] += sign * (theirs and not mine)
        self.label(r, r.label, sign)

    def label(self, r: ShadowRecord, label: str | None, sign: int = 1) -> None:
        """Count ``r``'s right answers for ``label`` in (or out)."""
        if label is None:
            return
        live, shadow = r.live.label == label, r.shadow.label == label
        self.labelled += sign
        self.live_right += sign * live
        self.shadow_right += sign * shadow
        self.b += sign * (live and not shadow)
        self.c += sign * (shadow and not live)

    def stats(self, alpha: float = 0.05) -> dict:
        """Agreement, confusion and (on labelled items) both accuracies; see the module's docstring."""
        n, m = self.items, self.labelled
        outcomes = sorted({o for pair, count in self.confusion.items() if count for o in pair})
        matrix = [[self.confusion.get((a, b), 0) for b in outcomes] for a in outcomes]
        rates = {}
        for kind in self.KINDS:
            for who in ("live", "shadow"):
                rates[f"{who}_{kind}_rate"] = round(self.rates[f"{who}_{kind}"] / n, 4) if n else None
            rates[f"{kind}_more"], rates[f"{kind}_fewer"] = self.rates[f"more_{kind}"], self.rates[f"fewer_{kind}"]
        return {
            "items": n,
            "agreement": round(self.agree / n, 4) if n else None,
            "agreement_per_class": {k: {"items": v[0], "agreement": round(v[1] / v[0], 4)}
                                    for k, v in sorted(self.per_class.items()) if v[0]},
            "confusion": {"outcomes": outcomes, "matrix": matrix},  # rows: live, columns: shadow
            "labelled": m,
            "live_accuracy": round(self.live_right / m, 4) if m else None,
            "shadow_accuracy": round(self.shadow_right / m, 4) if m else None,
            "live_only_right": self.b,
            "shadow_only_right": self.c,
            "difference_lower_bound": round(paired_lower_bound(self.b, self.c, m, alpha), 4) if m else None,
            **rates,
        }


def shadow_stats(records: Sequence[ShadowRecord], alpha: float = 0.05) -> dict:
    """The statistics of ``records`` (a shadow log read back): :meth:`Tally.stats`."""
    return Tally.of(records).stats(alpha)


@dataclass(frozen=True)
class ShadowPolicy:
    """When a candidate is promoted by itself, and when a promoted version is rolled back."""

    auto: bool = False  # promote by itself when the policy holds (else the operator promotes)
    min_items: int = 500  # the candidate saw at least this many items
    min_labelled: int = 30  # and this many of them were labelled by the operator
    margin: float = 0.02  # shown no worse than the live version by more than this (accuracy)
    alpha: float = 0.05  # the paired tests' level
    rate_bound: float = 0.05  # how much the unsure, unknown (or, after a promotion, safe-exit) rate may rise
    window_items: int = 1000  # after a promotion, watch this many items decided by the new version
    window_s: float = 0.0  # or this long (0: items only); whichever ends first
    min_window_items: int = 100  # items before the rollback check starts
    rollback_on_drift: bool = True  # a drift alarm on the items raised in the window rolls back

    def __post_init__(self) -> None:
        if self.min_items < 1 or self.min_labelled < 0 or self.window_items < 1 or self.min_window_items < 1:
            raise ConfigError("shadow: min_items, window_items and min_window_items ≥ 1, min_labelled ≥ 0")
        if not (0 <= self.margin < 1 and 0 < self.alpha < 0.5 and 0 < self.rate_bound < 1 and self.window_s >= 0):
            raise ConfigError("shadow: margin in [0, 1), alpha in (0, 0.5), rate_bound in (0, 1), window_s ≥ 0")


def judge(stats: dict, policy: ShadowPolicy, unknown_allowance: float | None = None) -> tuple[bool, str]:
    """Whether the candidate may be promoted by the policy, and why (or why not).
    ``unknown_allowance``: the candidate's own calibrated unknown rate, when the live head rejects
    nothing as unknown (module docstring); None: the unknown rates are compared paired."""
    if stats["items"] < policy.min_items:
        return False, f"{stats['items']} of {policy.min_items} items seen"
    if stats["labelled"] < max(policy.min_labelled, 1):
        return False, f"{stats['labelled']} of {max(policy.min_labelled, 1)} labelled items seen"
    lower = stats["difference_lower_bound"]
    if lower <= -policy.margin:
        return False, (f"not shown as accurate as the live version on {stats['labelled']} labelled items "
                       f"({stats['shadow_accuracy']:.1%} against {stats['live_accuracy']:.1%}; the difference's "
                       f"lower bound {lower:+.3f} is not above {-policy.margin:+.3f})")
    for kind in ("unsure", "unknown"):
        mine, theirs = stats[f"shadow_{kind}_rate"], stats[f"live_{kind}_rate"]
        if kind == "unknown" and unknown_allowance is not None:
            if mine > unknown_allowance + policy.rate_bound:
                return False, (f"unknown on {mine:.1%} of the items, more than its open set's calibrated "
                               f"{unknown_allowance:.0%} + {policy.rate_bound:.0%} (more labels of the new items help)")
            continue
        more, fewer = stats[f"{kind}_more"], stats[f"{kind}_fewer"]
        p = float(binomtest(more, more + fewer, 0.5, alternative="greater").pvalue) if more else 1.0
        if mine - theirs > policy.rate_bound or p < policy.alpha:
            return False, f"{kind} on {mine:.1%} of the items against {theirs:.1%} live (sign test p = {p:.3g})"
    return True, (f"{stats['shadow_accuracy']:.1%} against {stats['live_accuracy']:.1%} on {stats['labelled']} "
                  f"labelled items (lower bound {lower:+.3f}); unsure {stats['shadow_unsure_rate']:.1%} against "
                  f"{stats['live_unsure_rate']:.1%}, unknown {stats['shadow_unknown_rate']:.1%} against "
                  f"{stats['live_unknown_rate']:.1%} on {stats['items']} items")

