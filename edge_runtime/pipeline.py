"""One item from capture to exit: embed its views, fuse with its sensor readings, classify, pick the exit."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sortline.hardware.camera import ItemCapture

from .bundle import Bundle, load_bundle
from .embedder import OnnxEmbedder, pick_threads
from .fusion import Reading, fuse

log = logging.getLogger(__name__)

# Why an item got its exit. Anything but CONFIDENT goes to the safe exit.
CONFIDENT = "confident"
UNSURE = "unsure"
NO_VIEWS = "no-views"
LATE = "late"
ERROR = "error"
UNANNOUNCED = "unannounced"
OVERLOAD = "overload"  # the station could not embed it before its decision time


@dataclass(frozen=True)
class Decision:
    item_id: int
    exit: int
    reason: str
    label: str | None = None  # the head's class, when the head ran
    confidence: float = 0.0
    probabilities: tuple[float, ...] = ()

    def to_dict(self) -> dict:
        return {
            "item_id": self.item_id,
            "exit": self.exit,
            "reason": self.reason,
            "label": self.label,
            "confidence": round(self.confidence, 4),
            "probabilities": [round(p, 4) for p in self.probabilities],
        }


class ItemPipeline:
    """The runtime half of a bundle: everything needed to turn one item into a decision."""

    def __init__(self, bundle: Bundle, threads: int = 0, spin: bool = True) -> None:
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.embedder = OnnxEmbedder(bundle.backbone_path, self.manifest.input, threads=threads, spin=spin)
        self.head = bundle.load_head()
        self.policy = self.manifest.decision

    @classmethod
    def from_path(cls, path: str | Path, threads: int = 0, spin: bool = True) -> ItemPipeline:
        return cls(load_bundle(path), threads=threads, spin=spin)

    @classmethod
    def for_station(cls, path: str | Path | Bundle, threads: int | None = None) -> ItemPipeline:
        """The station's thread policy: no spinning, and one intra-op thread unless a second one
        measurably pays for this model on this machine (:func:`pick_threads`), so that the model
        shares the cores with capture, the serial readers and the loop."""
        bundle = path if isinstance(path, Bundle) else load_bundle(path)
        if threads is None:
            threads, seconds = pick_threads(bundle.backbone_path, bundle.manifest.input)
            log.info("embedding on %d thread(s); a batch of 8 items took %s", threads,
                     ", ".join(f"{s * 1000:.1f} ms on {n}" for n, s in seconds.items()))
        return cls(bundle, threads=threads, spin=False)

    def embed(self, capture: ItemCapture) -> np.ndarray | None:
        """The present views' embeddings (``V×D``), or None when no view was captured."""
        views = capture.present
        return self.embedder.embed_views(views) if views else None

    def decide(self, item_id: int, embeddings: np.ndarray | None, readings: Sequence[Reading]) -> Decision:
        if embeddings is None:
            return self.safe(item_id, NO_VIEWS)
        features = fuse(embeddings, readings, self.manifest.fusion)
        probabilities = self.head.predict_proba(features)[0]
        best = int(probabilities.argmax())
        label = self.head.labels[best]
        confidence = float(probabilities[best])
        confident = confidence >= self.policy.min_confidence
        return Decision(
            item_id=item_id,
            exit=self.policy.exits[label] if confident else self.policy.safe_exit,
            reason=CONFIDENT if confident else UNSURE,
            label=label,
            confidence=confidence,
            probabilities=tuple(float(p) for p in probabilities),
        )

    def classify(self, capture: ItemCapture, readings: Sequence[Reading]) -> Decision:
        return self.decide(capture.item_id, self.embed(capture), readings)

    def safe(self, item_id: int, reason: str) -> Decision:
        return Decision(item_id=item_id, exit=self.policy.safe_exit, reason=reason)
