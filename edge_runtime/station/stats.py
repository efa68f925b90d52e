"""What the station counts: plain counters and streaming histograms, so its memory stays flat
however many items pass (a per-item list grew by about 440 bytes an item)."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from sortline.hardware.serial_link import SerialLink


class StreamingHistogram:
    """Values on log-spaced buckets: fixed memory, percentiles within one bucket's width
    (``per_decade=100`` gives about 2.3% relative error), exact count, sum, min and max.

    >>> h = StreamingHistogram(); [h.add(v) for v in (1.0, 2.0, 3.0)]; round(h.percentile(50), 1)
    [None, None, None]
    2.0
    """

    def __init__(self, lo: float = 0.01, hi: float = 1e6, per_decade: int = 100) -> None:
        if not 0 < lo < hi or per_decade < 1:
            raise ValueError("a histogram needs 0 < lo < hi and at least one bucket per decade")
        self.lo, self.hi, self.per_decade = lo, hi, per_decade
        n = math.ceil(math.log10(hi / lo) * per_decade)
        # edges[k] is the upper edge of bucket k; bucket 0 holds everything below lo.
        self.edges = lo * 10.0 ** (np.arange(n + 1) / per_decade)
        self.counts = np.zeros(n + 2, np.int64)  # + one bucket above hi
        self.count = 0
        self.sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def add(self, value: float) -> None:
        if not math.isfinite(value):
            return
        if value < self.lo:
            k = 0
        elif value >= self.hi:
            k = len(self.counts) - 1
        else:
            k = 1 + int(math.log10(value / self.lo) * self.per_decade)
        self.counts[k] += 1
        self.count += 1
        self.sum += value
        self.min = min(self.min, value)
        self.max = max(self.max, value)

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100), or 0.0 when empty: the geometric centre of the bucket
        that holds it, clipped to the values seen."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q / 100 * self.count))
        k = int(np.searchsorted(np.cumsum(self.counts), rank))
        if k == 0:
            value = self.min
        elif k >= len(self.counts) - 1:
            value = self.max
        else:
            low = self.lo * 10.0 ** ((k - 1) / self.per_decade)
            value = low * 10.0 ** (0.5 / self.per_decade)
        return float(min(max(value, self.min), self.max))

    @property
    def mean(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def cumulative(self, bounds: list[float]) -> list[int]:
        """How many values were ≤ each bound (to bucket precision), for Prometheus-style buckets."""
        cum = np.cumsum(self.counts)
        out = []
        for b in bounds:
            k = 0 if b < self.lo else min(len(self.counts) - 2, 1 + int(math.log10(b / self.lo) * self.per_decade))
            out.append(int(cum[k]))
        return out

    def nonzero(self) -> tuple[np.ndarray, np.ndarray]:
        """(bucket lower edges, counts) of the buckets inside [lo, hi) that hold anything, for plots."""
        inner = self.counts[1:-1]
        keep = inner > 0
        return self.edges[:-1][keep], inner[keep]


@dataclass
class StationStats:
    items: int = 0
    gate_commands: int = 0
    acks: int = 0
    reasons: Counter = field(default_factory=Counter)
    exits: Counter = field(default_factory=Counter)  # items sent to each exit
    lanes: Counter = field(default_factory=Counter)  # items announced on each lane
    latency_ms: StreamingHistogram = field(default_factory=StreamingHistogram)  # announcement → gate command
    compute_ms: StreamingHistogram = field(default_factory=StreamingHistogram)  # of which spent computing
    deadline_misses: int = 0
    overload: int = 0  # items sent to the safe exit because they could not be decided in time
    repeated_announcements: int = 0
    counter_resets: int = 0
    claims_refused: int = 0  # heartbeat claims of ids never announced that no second frame confirmed
    clock_refused: int = 0  # device times far ahead of the device's clock so far (one frame cannot move it)
    unannounced: int = 0  # items whose announcement never arrived (seen by their ids)
    orphan_taps_expired: int = 0
    unmatched_weights: int = 0  # scale readings with no item on the plate
    implausible_readings: int = 0  # sensor readings outside what the sensor can report (left out)
    capture_errors: int = 0  # items with at least one view missing
    views_lost: int = 0
    views_late: int = 0
    views_corrupt: int = 0
    retransmissions: int = 0
    unacked: int = 0  # commands with a transmission the controller never acknowledged
    log_errors: int = 0
    flow_queue_max: int = 0  # deepest the item flow's queues got
    link_over_capacity: int = 0  # warnings that the offered rate exceeded a serial link's capacity

    def add_views(self, lost: int, corrupt: int, late: int, failed: bool) -> None:
        """An item's views as its capture went: lost, corrupt and late ones, and whether it failed."""
        self.views_lost += lost
        self.views_corrupt += corrupt
        self.views_late += late
        self.capture_errors += int(failed)


# Faults the station reports that the simulator does not inject (hostile or broken devices).
REPORTED_ONLY = ("out_of_range", "implausible_readings", "inbox_overflow", "claims_refused", "clock_refused")


def gather(stats: StationStats, gate, readings, ids, clock_refused: int, flow_queue_max: int, link_over: int,
           log_errors: int) -> StationStats:
    """``stats`` with the counters the station's parts keep themselves (the gate's, the reading
    matcher's, the ids', the flow's, the links', the event log's) copied in: one record."""
    stats.gate_commands, stats.acks = gate.gate_commands, gate.acks
    stats.retransmissions, stats.unacked = gate.retransmissions, gate.unacked
    stats.orphan_taps_expired = readings.orphan_taps_expired
    stats.unmatched_weights = readings.unmatched_weights
    stats.implausible_readings = readings.implausible_readings
    stats.counter_resets, stats.claims_refused = ids.resets, ids.claims_refused
    stats.clock_refused, stats.flow_queue_max = clock_refused, flow_queue_max
    stats.link_over_capacity, stats.log_errors = link_over, log_errors
    return stats


def observed_faults(stats: StationStats, links: list[SerialLink]) -> dict[str, int]:
    """What a station saw go wrong, by kind (the names hardware/sim/faults.py injects)."""
    parsed = [link.stats for link in links]
    return {
        "garbled": sum(x.bad_crc for x in parsed),
        "truncated": sum(x.malformed for x in parsed),
        # a rejected frame leaves its number missing, unless it was the last: no gap after it
        "dropped": sum(max(0, x.seq_missing - x.rejected) for x in parsed),
        "duplicated": sum(x.seq_duplicates for x in parsed),
        "reordered": sum(x.seq_reordered for x in parsed),
        "views_lost": stats.views_lost,
        "views_late": stats.views_late,
        "views_corrupt": stats.views_corrupt,
        "sensor_disconnects": sum(link.reconnects for link in links),
        "unacked": stats.unacked,
        "out_of_range": sum(x.out_of_range for x in parsed),
        "implausible_readings": stats.implausible_readings,
        "inbox_overflow": sum(link.dropped for link in links),
        "claims_refused": stats.claims_refused,
        "clock_refused": stats.clock_refused,
    }
