"""Sensor readings matched to items.

A tap sensor names the item in every reading. A checkout scale does not: a reading belongs to
the item on the plate when it was taken, which is the last item announced before it, unless the
scale reported the plate empty in between. Times are compared on this station's clock,
converted from each device's own (:class:`DeviceClock`), so a serial reader that runs late
cannot move a reading onto the next item. A reading that comes before its item's announcement
was read waits (``orphan_ttl_s``) for it; one that finds no item is counted and left out, and
that item is decided on its views alone.
"""

from __future__ import annotations

import bisect
import itertools
import logging
from collections import deque
from dataclasses import dataclass, field

from sortline.edge_runtime.model.fusion import ReadingLimits
from sortline.hardware.protocol import ScaleReading, TapReading

log = logging.getLogger(__name__)
CLOCK_WINDOW_S = 2.0
EXPIRE_EVERY_S = 0.1


class DeviceClock:
    """A device's clock on this station's: the smallest (arrival - sent) of the last two
    seconds is the offset plus the least transfer time, so a frame that arrives late is known
    to be late, while drift (or a replay running behind its recording) is followed.

    Only offsets that another frame of the window agrees with (within ``agree_s``) count: one
    frame claiming a time far ahead would otherwise make every later item look late, and one
    far behind, sent first, would stretch their deadlines past their gates. Such a frame is
    counted in ``refused``; a clock that really jumped is followed from its second frame. With
    no two frames agreeing yet (the first frames), the latest frame's offset is the clock."""

    def __init__(self, window_s: float = CLOCK_WINDOW_S, agree_s: float = 0.02, name: str = "device") -> None:
        self.window_s = window_s
        self.agree_s = agree_s
        self.name = name
        self.offset: float | None = None  # station clock - device clock, seconds
        self.refused = 0
        self._window: deque[tuple[float, float]] = deque()  # (received at, offset), oldest first
        self._sorted: list[float] = []  # the window's offsets, in order (kept so, not sorted per frame)
        self._max_window = 4096  # frames kept, at most (a babbling device cannot grow it)

    def update(self, t_ms: int, at: float) -> bool:
        """Take a frame's time ``t_ms`` (device clock) received ``at`` (station clock); False
        when no other frame agrees with it and it would have moved the clock ahead."""
        offset = at - t_ms / 1000
        self._window.append((at, offset))
        bisect.insort(self._sorted, offset)
        while len(self._window) > self._max_window or at - self._window[0][0] > self.window_s:
            del self._sorted[bisect.bisect_left(self._sorted, self._window.popleft()[1])]
        offsets = self._sorted  # the lowest pair that agrees is usually the first one looked at
        agreed = next((o for o, nxt in zip(offsets, itertools.islice(offsets, 1, None)) if nxt - o <= self.agree_s),
                      None)
        self.offset = offset if agreed is None else agreed
        if offset >= self.offset - self.agree_s:
            return True
        self.refused += 1
        if self.refused == 1 or self.refused % 1000 == 0:
            log.warning("%s clock: frame #%d refused, %.3f s ahead of the clock and no other frame agrees "
                        "(t_ms %d)", self.name, self.refused, self.offset - offset, t_ms)
        return False

    def station_time(self, t_ms: int) -> float:
        return (self.offset or 0.0) + t_ms / 1000


@dataclass
class _Open:
    """The readings of an item announced and not yet decided."""

    taps: dict[int, TapReading] = field(default_factory=dict)  # by tap index: a repeat counts once
    weights: list[ScaleReading] = field(default_factory=list)
    rejected: bool = False  # a reading for it was garbage: its sensor part is left out

    @property
    def readings(self) -> list[TapReading | ScaleReading]:
        return [] if self.rejected else [*self.taps.values(), *self.weights]


@dataclass
class MatchStats:
    orphan_taps_expired: int = 0
    unmatched_weights: int = 0
    implausible_readings: int = 0
    unused_readings: int = 0  # from a sensor the bundle does not fuse (it decides on the views alone)


class ReadingMatcher:
    """Holds the readings of every open item. ``open`` an item at its announcement, feed it
    readings, ask whether it is ``complete``, and ``close`` it when it is decided."""

    def __init__(self, sensor: str, readings_expected: int, orphan_ttl_s: float = 2.0,
                 empty_plate_g: float = 5.0, clock_tolerance_s: float = 0.01,
                 limits: ReadingLimits = ReadingLimits()) -> None:
        self.limits = limits
        self.sensor = sensor
        self.readings_expected = readings_expected
        self.orphan_ttl_s = orphan_ttl_s
        self.empty_plate_g = empty_plate_g
        self.clock_tolerance_s = clock_tolerance_s  # a weight this much "before" an announcement may be its item's
        self.clock = DeviceClock(name="sensor")
        self.stats = MatchStats()
        self._open: dict[int, _Open] = {}
        self._orphan_taps: dict[int, list[tuple[float, TapReading]]] = {}
        self._rejected_orphans: dict[int, float] = {}
        self._next_expiry = 0.0  # item not announced yet, with a garbage reading
        self._announcements: deque[tuple[float, int]] = deque(maxlen=256)  # (announced_at, item), in order
        self._plate_emptied: deque[float] = deque(maxlen=256)
        self._orphan_weights: list[tuple[float, float, ScaleReading]] = []  # (received, taken, reading)

    def open(self, item_id: int, announced_at: float) -> set[int]:
        """An item was announced; returns the items whose readings changed (orphans placed)."""
        self._open[item_id] = entry = _Open(rejected=self._rejected_orphans.pop(item_id, None) is not None)
        self._announcements.append((announced_at, item_id))
        changed = {item_id} if entry.rejected else set()
        for _, tap in self._orphan_taps.pop(item_id, []):
            entry.taps[tap.index] = tap
            changed.add(item_id)
        if self._orphan_weights:  # weighed before its announcement was read
            waiting, self._orphan_weights = self._orphan_weights, []
            for received_at, taken_at, reading in waiting:
                changed |= self._place_weight(reading, taken_at, received_at)
        return changed

    def close(self, item_id: int) -> list[TapReading | ScaleReading]:
        entry = self._open.pop(item_id, None)
        return entry.readings if entry is not None else []

    def rejected(self, item_id: int) -> bool:
        """Whether a garbage reading left this open item's sensor part out."""
        entry = self._open.get(item_id)
        return entry is not None and entry.rejected

    def readings(self, item_id: int) -> list[TapReading | ScaleReading]:
        entry = self._open.get(item_id)
        return entry.readings if entry is not None else []

    def complete(self, item_id: int) -> bool:
        entry = self._open.get(item_id)
        if self.sensor == "none":
            return True
        if entry is None:
            return False
        if entry.rejected:
            return True  # nothing more to wait for: it is decided on its views
        if self.sensor == "taps":
            return len(entry.taps) >= self.readings_expected
        return sum(w.stable for w in entry.weights) >= self.readings_expected

    def heartbeat(self, t_ms: int, at: float) -> None:
        self.clock.update(t_ms, at)

    def _implausible(self, reading: TapReading | ScaleReading) -> bool:
        problem = self.limits.check(reading, self.readings_expected)
        if problem is None:
            return False
        self.stats.implausible_readings += 1
        if self.stats.implausible_readings == 1 or self.stats.implausible_readings % 1000 == 0:
            log.warning("implausible %s reading (%s): its item is decided without its sensor; %d so far",
                        self.sensor, problem, self.stats.implausible_readings)
        return True

    def tap(self, tap: TapReading, at: float, decided: bool) -> set[int]:
        if self.sensor == "none":
            self.stats.unused_readings += 1
            return set()
        if self._implausible(tap):
            entry = self._open.get(tap.item_id)
            if entry is not None:
                entry.rejected = True
                return {tap.item_id}
            if not decided:
                self._rejected_orphans[tap.item_id] = at
            return set()
        entry = self._open.get(tap.item_id)
        if entry is not None:
            entry.taps[tap.index] = tap
            return {tap.item_id}
        if not decided:  # its announcement may still come
            self._orphan_taps.setdefault(tap.item_id, []).append((at, tap))
        return set()

    def weight(self, reading: ScaleReading, at: float) -> set[int]:
        if self.sensor == "none":
            self.stats.unused_readings += 1
            return set()
        if self._implausible(reading):
            return set()  # dropped: the item on the plate waits for its real weight, or goes without
        self.clock.update(reading.t_ms, at)
        taken_at = self.clock.station_time(reading.t_ms)
        if reading.stable and reading.grams < self.empty_plate_g:
            self._plate_emptied.append(taken_at)
            return set()
        return self._place_weight(reading, taken_at, at)

    def _place_weight(self, reading: ScaleReading, taken_at: float, received_at: float) -> set[int]:
        """Give a weight to the last item announced before it was taken, unless the plate was
        emptied in between: then its item's announcement has not been read yet, and it waits."""
        latest = taken_at + self.clock_tolerance_s
        on_plate = next(((t, item) for t, item in reversed(self._announcements) if t <= latest), None)
        if on_plate is None or any(on_plate[0] < e < taken_at for e in self._plate_emptied):
            self._orphan_weights.append((received_at, taken_at, reading))
            return set()
        entry = self._open.get(on_plate[1])
        if entry is None:  # decided already: the reading came too late to count
            self.stats.unmatched_weights += 1
            return set()
        entry.weights.append(reading)
        return {on_plate[1]}

    def expire(self, now: float) -> None:
        """Drop orphans older than the TTL; the scan runs at most every EXPIRE_EVERY_S, not on
        every step of the loop."""
        if now < self._next_expiry:
            return
        self._next_expiry = now + EXPIRE_EVERY_S
        ttl = self.orphan_ttl_s
        if self._orphan_weights and now - self._orphan_weights[0][0] > ttl:
            kept = [w for w in self._orphan_weights if now - w[0] <= ttl]
            self.stats.unmatched_weights += len(self._orphan_weights) - len(kept)
            self._orphan_weights = kept
        for item_id in [i for i, taps in self._orphan_taps.items() if now - taps[0][0] > ttl]:
            self.stats.orphan_taps_expired += len(self._orphan_taps.pop(item_id))
        for item_id in [i for i, t in self._rejected_orphans.items() if now - t > ttl]:
            del self._rejected_orphans[item_id]
