"""A candidate beside the live version, its promotion, and the rollback watch after it.

:class:`Shadow` is a consumer of an :class:`~.runner.ItemWatch` of its own (a thread that drops
items while the station is behind, and keeps to its share of a core), so a candidate never
delays a live decision. For each item the live version decided with its head, the candidate
decides too; both go to the shadow log (:mod:`.shadow`). The operator's labels from the queue
of unsure items join their items' records.

A promotion (the operator's, or the policy's when ``auto``) puts the candidate live in one swap
between two items (:mod:`.candidates`); each item is decided by exactly one version, and the
event log's ``head_version`` and ``bundle`` say which. Then a :class:`Rollout` watches the next
``window_items`` items the new version decides: if its unsure, unknown or safe-exit rate rises
by more than ``rate_bound``, significantly, above what it was promoted on (its own rates in the
shadow, when it ran there for at least ``min_window_items`` items; else the previous version's on
its latest items), or the drift watch raises an alarm on the items, the previous version comes
back by itself, and the event log says why. The operator may roll back at any time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from scipy.stats import binomtest

from sortline.edge_runtime.model.pipeline import PAUSED, UNKNOWN, UNSURE
from sortline.edge_runtime.station.observers import ObservedItem

from .candidates import Candidate, Host, ShadowError
from .drift import ITEMS, DriftWatch
from .shadow import ShadowLog, ShadowPolicy, ShadowRecord, Verdict, judge

log = logging.getLogger(__name__)
RATES = ("unsure-rate", "unknown-rate", "safe-exit-rate")
JUDGE_EVERY = 25  # items between two looks of the policy at the shadow log
CHECK_EVERY = 10  # items between two rollback checks


def rate_flags(item: ObservedItem) -> tuple[bool, bool, bool]:
    d = item.decision
    return d.reason == UNSURE, d.reason == UNKNOWN, d.exit == item.pipeline.policy.safe_exit


@dataclass
class Rollout:
    """The watch window after a promotion."""

    policy: ShadowPolicy
    version: Candidate  # what went live
    undo: Candidate  # what was live before
    at_item: int | None
    baseline: list[tuple[int, int]]  # per rate: the hits and items it is held to
    by: str
    baseline_from: str = "the previous version"  # or "its shadow"
    started: float = field(default_factory=time.monotonic)
    items: int = 0
    hits: list[int] = field(default_factory=lambda: [0] * len(RATES))
    ended: str | None = None  # "kept", "rolled back"

    def take(self, item: ObservedItem, drift: DriftWatch | None) -> str | None:
        """Count the item; a reason to roll back, if there is one now."""
        if self.ended is not None or not self.version.decides(item):
            return None
        self.items += 1
        for k, hit in enumerate(rate_flags(item)):
            self.hits[k] += hit
        if self.items >= self.policy.min_window_items and self.items % CHECK_EVERY == 0:
            if (why := self._worse()) is not None:
                return why
        if self.policy.rollback_on_drift and drift is not None:
            for alarm in drift.active():
                if alarm.kind == ITEMS and self.at_item is not None and alarm.at_item >= self.at_item:
                    return f"drift alarm on the items ({alarm.statistic}) at item {alarm.at_item}"
        window_s = self.policy.window_s
        if self.items >= self.policy.window_items or (window_s and time.monotonic() - self.started >= window_s):
            self.ended = "kept"
        return None

    def _worse(self) -> str | None:
        for name, hits, (before_hits, before_n) in zip(RATES, self.hits, self.baseline):
            before = before_hits / before_n if before_n else 0.0
            after = hits / self.items
            bound = min(before + self.policy.rate_bound, 0.999)
            if after > bound and binomtest(hits, self.items, bound, alternative="greater").pvalue < self.policy.alpha:
                return (f"{name} {after:.1%} on {self.items} items after the promotion, against {before:.1%} "
                        f"on {before_n} items of {self.baseline_from} (bound +{self.policy.rate_bound:.0%})")
        return None

    def to_dict(self) -> dict:
        return {"version": self.version.name, "previous": self.undo.name, "at_item": self.at_item, "by": self.by,
                "items": self.items, "window_items": self.policy.window_items, "ended": self.ended,
                "rates_after": {n: round(h / self.items, 4) if self.items else None for n, h in zip(RATES, self.hits)},
                "rates_expected": {n: round(h / m, 4) if m else None for n, (h, m) in zip(RATES, self.baseline)},
                "expected_from": self.baseline_from}


class Shadow:
    """Runs the candidate (module docstring); thread-safe: the API promotes and rolls back."""

    def __init__(self, policy: ShadowPolicy = ShadowPolicy(), log_file: ShadowLog | None = None,
                 host: Host | None = None, events: Callable[[dict], None] | None = None,
                 drift: DriftWatch | None = None) -> None:
        self.policy = policy
        self.log = log_file if log_file is not None else ShadowLog()
        self.host, self.events, self.drift = host, events, drift
        self.candidate: Candidate | None = None
        self.rollout: Rollout | None = None
        self.history: list[dict] = []  # promotions and rollbacks, latest last
        self.changes: dict[tuple[str, str], int] = {}  # ("promote" | "rollback", by whom): how many
        self.shadowed = 0  # items the candidate decided
        self.errors = 0  # items it could not decide (logged)
        self.last_item: int | None = None
        self.verdict: tuple[bool, str] = (False, "no candidate")
        self._baseline: deque[tuple[bool, bool, bool]] = deque(maxlen=policy.window_items)
        self._lock = threading.RLock()

    # --- the operator's side ------------------------------------------------------------------

    def start(self, candidate: Candidate) -> None:
        """Shadow ``candidate`` from the next item on (in place of any other)."""
        with self._lock:
            self.candidate, self.shadowed, self.verdict = candidate, 0, (False, "just started")
            live = self._live()
            self.log.start(candidate.name, f"{live['bundle']}/head {live['head']}" if live else "", self.last_item)
        self._emit("shadow-start", candidate=candidate.name, at_item=self.last_item)

    def stop(self, why: str = "stopped by the operator") -> None:
        with self._lock:
            candidate, self.candidate = self.candidate, None
        if candidate is not None:
            self._emit("shadow-stop", candidate=candidate.name, why=why)

    def forget(self, why: str) -> None:
        """A new bundle was loaded by other means: the candidate and the way back belong to the old one."""
        self.stop(why)
        with self._lock:
            self.rollout = None
            self._baseline.clear()

    def promote(self, by: str = "operator", why: str = "") -> dict:
        """Put the candidate live now; the rollback watch starts."""
        started = time.perf_counter()
        with self._lock:
            candidate = self.candidate
            if candidate is None:
                raise ShadowError("no candidate to promote: start one (a refit, or a head or bundle to shadow)")
            baseline, source = self._expected(candidate)
            undo = candidate.go_live(self._host())
            self.candidate, self._baseline = None, deque(maxlen=self.policy.window_items)
            self.rollout = Rollout(self.policy, candidate, undo, self.last_item, baseline, by, source)
        seconds = time.perf_counter() - started
        log.warning("%s promoted by %s at item %s in %.3f s: %s", candidate.name, by, self.last_item, seconds, why)
        return self._record("shadow-promote", candidate=candidate.name, previous=undo.name, by=by, why=why,
                            at_item=self.last_item, seconds=round(seconds, 4), stats=self.stats())

    def _expected(self, candidate: Candidate) -> tuple[list[tuple[int, int]], str]:
        """Per rate, hits and items the rollback watch holds the new version to (module docstring)."""
        records = self.log.records()  # the log holds the current candidate's only
        if len(records) >= self.policy.min_window_items:
            safe = self._host().live_bundle().policy.safe_exit
            flags = [(r.shadow.unsure, r.shadow.unknown, r.shadow.exit == safe) for r in records]
            source = "its shadow"
        else:
            flags, source = list(self._baseline), "the previous version"
        return [(sum(f[k] for f in flags), len(flags)) for k in range(len(RATES))], source

    def _judge(self, candidate: Candidate, stats: dict) -> tuple[bool, str]:
        """The policy on ``stats``; a live head without an open set holds the candidate's unknown
        rate to the share its own open set rejects by design (shadow.py)."""
        if self._host().live_head().openset is not None:
            return judge(stats, self.policy)
        openset = candidate.classifier.openset
        return judge(stats, self.policy, openset.target_frr if openset is not None else 0.0)

    def rollback(self, by: str = "operator", why: str = "") -> dict:
        """Put the version before the latest promotion back live."""
        started = time.perf_counter()
        with self._lock:
            rollout = self.rollout
            if rollout is None or rollout.ended == "rolled back":
                raise ShadowError("nothing to roll back: no promotion since the station started, or it was "
                                  "rolled back already")
            rollout.undo.go_live(self._host())
            rollout.ended = "rolled back"
        seconds = time.perf_counter() - started
        log.warning("%s rolled back to %s by %s at item %s: %s", rollout.version.name, rollout.undo.name, by,
                    self.last_item, why)
        return self._record("shadow-rollback", version=rollout.version.name, back_to=rollout.undo.name, by=by,
                            why=why, at_item=self.last_item, seconds=round(seconds, 4))

    def label(self, item_id: int, label: str) -> None:
        """An operator's label of an item (from the queue of unsure items)."""
        with self._lock:
            self.log.label(item_id, label)

    def stats(self) -> dict:
        with self._lock:
            return self.log.tally.stats(self.policy.alpha)

    def status(self) -> dict:
        with self._lock:
            candidate, rollout = self.candidate, self.rollout
            stats = self.stats()
            attached = candidate is not None and self.host is not None
            ready, why = self._judge(candidate, stats) if attached else (False, "no candidate")
            return {"candidate": candidate.name if candidate else None,
                    "kind": candidate.kind if candidate else None,
                    "live": self._live(),
                    "shadowed": self.shadowed, "errors": self.errors, "auto": self.policy.auto,
                    "ready": ready, "why": why, "stats": stats,
                    "rollout": rollout.to_dict() if rollout else None, "history": self.history[-20:]}

    # --- the shadow's thread --------------------------------------------------------------------

    def take(self, item: ObservedItem) -> None:
        if item.decision.reason == PAUSED:
            return
        self.last_item = item.item_id
        rollout = self.rollout
        if rollout is not None and rollout.ended is None:
            why = rollout.take(item, self.drift)
            if why is not None:
                try:
                    self.rollback("policy", why)
                except ShadowError:
                    pass  # the operator rolled back meanwhile
            elif rollout.ended == "kept":
                self._record("shadow-kept", version=rollout.version.name, items=rollout.items, at_item=item.item_id)
        if item.decision.label is None or item.embeddings is None:
            return  # the head did not run (late, shed, no views): nothing to compare
        self._baseline.append(rate_flags(item))
        with self._lock:
            candidate = self.candidate
        if candidate is None or candidate.decides(item):
            return
        try:
            decision = candidate.decide(item)
        except Exception:  # a candidate that fails on an item is counted, never the line's problem
            self.errors += 1
            if self.errors == 1 or self.errors % 1000 == 0:
                log.exception("%s failed on item %s (#%d)", candidate.name, item.item_id, self.errors)
            return
        record = ShadowRecord(item.item_id, item.lane, f"{item.pipeline.version}/head {item.decision.head_version}",
                              candidate.name, Verdict.of(item.decision), Verdict.of(decision))
        with self._lock:
            if self.candidate is not candidate:
                return  # promoted or stopped meanwhile
            self.log.add(record)
            self.shadowed += 1
        if self.shadowed % JUDGE_EVERY == 0:
            self.verdict = self._judge(candidate, self.stats())
            if self.policy.auto and self.verdict[0]:
                try:
                    self.promote("policy", self.verdict[1])
                except ShadowError:
                    pass  # promoted or stopped by the operator meanwhile

    # --- helpers ----------------------------------------------------------------------------------

    def _host(self) -> Host:
        if self.host is None:
            raise ShadowError("the shadow is not attached to a running station")
        return self.host

    def _live(self) -> dict | None:
        if self.host is None:
            return None
        return {"bundle": self.host.live_bundle().version, "head": self.host.live_head().version}

    def _record(self, event: str, **fields: object) -> dict:
        entry = {"event": event, **fields}
        with self._lock:
            self.history.append(entry)
            del self.history[:-100]
            if event in ("shadow-promote", "shadow-rollback"):
                key = (event.removeprefix("shadow-"), str(fields["by"]))
                self.changes[key] = self.changes.get(key, 0) + 1
        self._emit(event, **fields)
        return entry

    def _emit(self, event: str, **fields: object) -> None:
        if self.events is not None:
            self.events({"event": event, **fields})
