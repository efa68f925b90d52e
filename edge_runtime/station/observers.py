"""What a station shows of each decided item to those who watch it from beside the line (the
drift watch, the queue of unsure items, a shadow head): the item as it was decided, handed over
after its gate command has gone. An observer's ``offer`` must return at once: it keeps the item
for its own thread, or drops it; the loop never waits for it."""

from __future__ import annotations

from collections.abc import Sequence
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
