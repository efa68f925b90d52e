"""What the daemon's HTTP API acts on, kept apart from the HTTP code so that the daemon can hold
it whether or not it serves HTTP."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sortline.edge_runtime.learning.enroll import Enroller, EnrollSession, HeadWatcher, enroll_label
from sortline.edge_runtime.model.pipeline import ItemPipeline
from sortline.edge_runtime.plant import Plant
from sortline.edge_runtime.station.wiring import RunningStation
from sortline.edge_runtime.watch import BundleCandidate, StationWatch

log = logging.getLogger(__name__)


@dataclass
class StationControl:
    """What the API acts on: the running station, its pipeline and (with a store) the
    enrollment engine and the watcher that swaps its heads in."""

    running: RunningStation
    pipeline: ItemPipeline
    enroller: Enroller | None = None
    watcher: HeadWatcher | None = None
    ready: threading.Event | None = None
    started: float = 0.0
    session: EnrollSession | None = None
    reload: Callable[..., None] | None = None  # (path, force): load, check and swap in a bundle (serve only)
    bundle_candidate: Callable[[str | None, bool], BundleCandidate] | None = None  # (path, force), serve only
    unsigned_allowed: bool = False  # the station file lets unsigned bundles run (shown on /metrics)
    watch: StationWatch | None = None  # the drift watch and the queue of unsure items
    plant: Plant | None = None  # MQTT and OPC UA (plant/)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_example(self, label: str, features: np.ndarray, source: str, backbone: str = "") -> None:
        """A labelled item (from the queue of unsure items) as an example in the live bundle's
        store (``enroll_label``: not when another backbone made its features); without a store the
        label stays in the queue only (for ``sortline queue export``)."""
        if self.enroller is None:
            log.info("%s labelled %s; no [station] store, so it is not an enrolled example", source, label)
            return
        enroll_label(self.enroller, label, features, source, backbone)

    @property
    def is_ready(self) -> bool:
        return (self.ready is None or self.ready.is_set()) and not self.running.stopped.is_set()


