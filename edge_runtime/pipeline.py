"""One item from capture to exit: embed its views, fuse with its sensor readings, classify, pick the exit."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sortline.hardware.camera import ItemCapture

from .bundle import Bundle, BundleError, Manifest, load_bundle
from .embedder import EMBEDDING_OUTPUT, FEATURE_MAP_OUTPUT, OnnxEmbedder
from .fusion import Reading, fuse
from .head import LogisticHead
from .runtimes import AUTO, Embedder, RuntimeChoice, choose_runtime, load_check_set

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

    def __init__(self, bundle: Bundle, threads: int = 0, spin: bool = True, embedder: Embedder | None = None,
                 runtime_choice: RuntimeChoice | None = None, head: LogisticHead | None = None) -> None:
        """Loads the bundle's model (ONNX Runtime at ``threads``, unless an ``embedder`` of any
        runtime is given) and head and runs them once (:func:`check_runs`): a bundle whose model
        cannot run, or does not produce what its manifest says, is refused here, before any item
        depends on it."""
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.embedder: Embedder = embedder or load_embedder(bundle, threads=threads, spin=spin)
        self.runtime_choice = runtime_choice
        self.head = head or bundle.load_head()
        self.policy = self.manifest.decision
        check_runs(bundle, self.embedder, self.head)

    @classmethod
    def from_path(cls, path: str | Path, threads: int = 0, spin: bool = True,
                  public_key: Path | None = None) -> ItemPipeline:
        return cls(load_bundle(path, public_key=public_key), threads=threads, spin=spin)

    @classmethod
    def for_station(cls, path: str | Path | Bundle, threads: int | None = None, public_key: Path | None = None,
                    runtime: str = AUTO, budget_s: float = 2.0) -> ItemPipeline:
        """The station's runtime and thread policy (:func:`choose_runtime`): every installed
        runtime (or ``runtime``) at one and two threads (or ``threads``), measured on this
        bundle on this machine, idle threads never spinning; a runtime whose embeddings or head
        decisions on the bundle's check items (``check.npz``, else smooth noise) differ from ONNX
        Runtime's is refused."""
        bundle = path if isinstance(path, Bundle) else load_bundle(path, public_key=public_key)
        m = bundle.manifest
        head = bundle.load_head()
        try:
            choice = choose_runtime(bundle.backbone_path, m.input, runtime, threads, budget_s,
                                    check=load_check_set(bundle), score=lambda e: item_probabilities(e, head, m))
        except ValueError as exc:  # a model that does not load or run: refused like any other fault
            raise BundleError(f"{bundle.backbone_path}: {exc}") from exc
        log.info("%s: embedding with %s", bundle.version, choice.summary())
        return cls(bundle, embedder=choice.embedder, runtime_choice=choice, head=head)

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


def item_probabilities(embeddings: np.ndarray, head: LogisticHead, manifest: Manifest) -> np.ndarray:
    """The head's class probabilities for whole items given as their views' embeddings
    (``items·views × D``), one row per item, without sensor readings (as for check items)."""
    views = manifest.input.views
    return np.vstack([head.predict_proba(fuse(embeddings[i:i + views], [], manifest.fusion))
                      for i in range(0, len(embeddings), views)])


def load_embedder(bundle: Bundle, threads: int = 0, spin: bool = True) -> OnnxEmbedder:
    try:
        return OnnxEmbedder(bundle.backbone_path, bundle.manifest.input, threads=threads, spin=spin)
    except ValueError as exc:
        raise BundleError(str(exc)) from exc


def check_runs(bundle: Bundle, embedder: Embedder | None = None, head: LogisticHead | None = None) -> dict:
    """Run the bundle once on one item of blank views, and check every output against the
    manifest: one finite embedding of ``embedding_dim`` per view, and (with a head) one finite
    probability per label. Returns what was checked; :class:`BundleError` on any mismatch."""
    m = bundle.manifest
    embedder = embedder or load_embedder(bundle, threads=1)
    spec = m.input
    blank = np.full((spec.views, len(spec.channels), spec.size, spec.size), 0.5, np.float32)
    try:
        outputs = embedder.run_all(blank)
    except Exception as exc:  # ONNX Runtime raises its own types for a model that cannot run this input
        raise BundleError(f"{bundle.backbone_path}: the model does not run on the manifest's input "
                          f"{tuple(blank.shape)} ({exc})") from exc
    embeddings = np.asarray(outputs[EMBEDDING_OUTPUT])
    if embeddings.shape != (spec.views, m.embedding_dim):
        raise BundleError(f"{bundle.backbone_path}: embeddings of shape {embeddings.shape} for {spec.views} views; "
                          f"the manifest says {m.embedding_dim} per view")
    if not np.isfinite(embeddings).all():
        raise BundleError(f"{bundle.backbone_path}: the model's embeddings are not finite")
    checked = {"input": list(blank.shape), "embedding": list(embeddings.shape)}
    if FEATURE_MAP_OUTPUT in outputs:  # for Grad-CAM and detection: one C×h×w map per view
        fmap = np.asarray(outputs[FEATURE_MAP_OUTPUT])
        if fmap.ndim != 4 or fmap.shape[0] != spec.views or not np.isfinite(fmap).all():
            raise BundleError(f"{bundle.backbone_path}: feature_map of shape {fmap.shape} for {spec.views} views "
                              "(expected views×C×h×w, finite)")
        checked["feature_map"] = list(fmap.shape)
    if m.head is not None:
        head = head or bundle.load_head()
        try:
            probabilities = item_probabilities(embeddings, head, m)
        except ValueError as exc:
            raise BundleError(f"{bundle.root}: the head cannot take the fused features ({exc})") from exc
        if probabilities.shape != (1, len(m.labels)) or not np.isfinite(probabilities).all():
            raise BundleError(f"{bundle.root}: the head gives {probabilities.shape} probabilities for "
                              f"{len(m.labels)} labels, or non-finite ones")
        checked["probabilities"] = list(probabilities.shape)
    return checked
