"""What a station shows of each decided item to those who watch it from beside the line (the
drift watch, the queue of unsure items, a shadow head; the plant network's publishers): the
item as it was decided, handed over after its gate command has gone. An observer's ``offer``
must return at once: it keeps the item for its own thread, or drops it; the loop never waits
for it."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sortline.edge_runtime.model.fusion import Reading
from sortline.edge_runtime.model.pipeline import Decision, ItemPipeline
from sortline.hardware.camera import ViewFrame


@dataclass(frozen=True)
class ObservedItem:
    item_id: int
    lane: int
    decision: Decision
    pipeline: ItemPipeline  # the bundle and head version that decided it
    embeddings: np.ndarray | None  # V×D of the views present (None: not embedded)
    views: tuple[ViewFrame | None, ...]  # every camera's frame, None where it gave none
    readings: Sequence[Reading]

    @property
    def cameras(self) -> tuple[int, ...]:
        """The camera of each row of ``embeddings``."""
        return tuple(k for k, view in enumerate(self.views) if view is not None)


class Observer(Protocol):
    def offer(self, item: ObservedItem) -> None:
        """Take the item for later, or drop it; never block."""
        ...


class ResultSink(Protocol):
    """Who hears of every gate command as it goes (the plant network's publishers): each item's
    record as the event log has it (``event_record``; for an item never announced, its decision),
    announced or not, decided or shed."""

    def result(self, record: dict) -> None:
        """Take the record for later, or count it dropped; never block (it runs on the loop)."""
        ...


BUSY_AFTER_SHED_S = 1.0  # a station counts as busy this long after it shed an item


class Busy:
    """Whether a station is behind its line: a full batch waiting in its flow, or an item shed in
    the last second. Watchers beside the line stand aside while it is."""

    def __init__(self, shed: Callable[[], int], waiting: Callable[[], int], batch: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.shed, self.waiting, self.batch, self.clock = shed, waiting, batch, clock
        self._seen = (0, -1e9)  # the shed count, and when it last rose

    @classmethod
    def of(cls, station) -> Busy:
        """For a :class:`~sortline.edge_runtime.station.loop.Station`."""
        counts = station.outcomes.stats  # the live counters (station.stats gathers a copy: too dear per item)
        return cls(lambda: counts.overload, lambda: station.flow.depth, station.flow.max_batch)

    def __call__(self) -> bool:
        shed, now = self.shed(), self.clock()
        if shed != self._seen[0]:
            self._seen = (shed, now)
        return self.waiting() >= self.batch or now - self._seen[1] < BUSY_AFTER_SHED_S
