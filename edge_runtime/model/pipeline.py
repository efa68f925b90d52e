"""One item from capture to exit: embed its views, fuse with its sensor readings, classify, pick the exit."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sortline.hardware.camera import ItemCapture
from sortline.hardware.protocol import ScaleReading, TapReading

from .bundle import Bundle, BundleError, DecisionPolicy, Manifest, load_bundle
from .choice import RuntimeChoice, choose_runtime, load_check_set
from .embedder import EMBEDDING_OUTPUT, FEATURE_MAP_OUTPUT, OnnxEmbedder
from .fusion import Reading, ReadingLimits, fuse
from .head import LogisticHead, OpenSet
from .runtimes import AUTO, Embedder

log = logging.getLogger(__name__)

# Why an item got its exit. Anything but CONFIDENT goes to the safe exit.
CONFIDENT = "confident"
UNSURE = "unsure"
NO_VIEWS = "no-views"
LATE = "late"
ERROR = "error"
UNANNOUNCED = "unannounced"
OVERLOAD = "overload"  # the station could not embed it before its decision time
UNKNOWN = "unknown"  # far from every class the head knows (open-set rejection)
PAUSED = "paused"  # its lane was paused by an operator: not looked at
DEFAULT_LIMITS = ReadingLimits()


class PipelineInputError(ValueError):
    """Embeddings that no camera of this bundle's could have given (wrong shape, not finite)."""


@dataclass(frozen=True)
class Decision:
    item_id: int
    exit: int
    reason: str
    label: str | None = None  # the head's class, when the head ran
    confidence: float = 0.0
    probabilities: tuple[float, ...] = ()
    head_version: int = 0

    def to_dict(self) -> dict:
        return {
            "item_id": self.item_id,
            "exit": self.exit,
            "reason": self.reason,
            "label": self.label,
            "confidence": round(self.confidence, 4),
            "probabilities": [round(p, 4) for p in self.probabilities],
            "head_version": self.head_version,
        }


@dataclass(frozen=True)
class Classifier:
    """What turns an item's features into a decision: a head, its exits, and (for heads fitted
    on the device) the prototypes that tell an unknown item. The pipeline holds one and swaps it
    whole, so every item is decided by one version from start to end."""

    head: LogisticHead
    policy: DecisionPolicy
    openset: OpenSet | None = None
    version: int = 0  # 0: the bundle's own head; otherwise a version in the station's store

    def __post_init__(self) -> None:
        if missing := set(self.head.labels) - set(self.policy.exits):
            raise BundleError(f"head version {self.version}: labels without an exit: {sorted(missing)}")
        if self.openset is not None and self.openset.means.shape != self.head.coef.shape:
            raise BundleError(f"head version {self.version}: open-set means {self.openset.means.shape} "
                              f"do not match the head {self.head.coef.shape}")

    @property
    def labels(self) -> tuple[str, ...]:
        return self.head.labels


class ItemPipeline:
    """The runtime half of a bundle: everything needed to turn one item into a decision."""

    def __init__(self, bundle: Bundle, threads: int = 0, spin: bool = True, embedder: Embedder | None = None,
                 runtime_choice: RuntimeChoice | None = None, head: LogisticHead | None = None,
                 classifier: Classifier | None = None) -> None:
        """Loads the bundle's model (ONNX Runtime at ``threads``, unless an ``embedder`` of any
        runtime is given) and head (or takes ``classifier``, a head fitted on the device) and
        runs them once (:func:`check_runs`): a bundle whose model cannot run, or does not produce
        what its manifest says, is refused here, before any item depends on it."""
        self.bundle = bundle
        self.manifest = bundle.manifest
        self.version = bundle.version  # name@manifest hash, computed once
        self.embedder: Embedder = embedder or load_embedder(bundle, threads=threads, spin=spin)
        self.runtime_choice = runtime_choice
        self.listener: Callable[[int, np.ndarray, Decision], None] | None = None
        self.rejected_readings = 0  # items whose readings were left out as implausible
        classifier = classifier or Classifier(head or bundle.load_head(), self.manifest.decision)
        check_runs(bundle, self.embedder, classifier.head)
        self.classifier = classifier

    @property
    def head(self) -> LogisticHead:
        return self.classifier.head

    @property
    def policy(self) -> DecisionPolicy:
        return self.classifier.policy

    @property
    def labels(self) -> tuple[str, ...]:
        return self.classifier.labels

    def swap(self, classifier: Classifier) -> Classifier:
        """Put ``classifier`` in place of the current one, while items are being decided: it is
        run once first (a head that cannot take this bundle's features is refused, and the old
        one keeps serving); the swap itself is one assignment. Returns the previous one."""
        probabilities = item_probabilities(np.full((self.manifest.input.views, self.manifest.embedding_dim), 0.5,
                                                   np.float32), classifier.head, self.manifest)
        if probabilities.shape != (1, len(classifier.labels)) or not np.isfinite(probabilities).all():
            raise BundleError(f"head version {classifier.version} gives {probabilities.shape} probabilities")
        previous, self.classifier = self.classifier, classifier
        log.info("head version %d in place of %d (%d classes)", classifier.version, previous.version,
                 len(classifier.labels))
        return previous

    @classmethod
    def from_path(cls, path: str | Path, threads: int = 0, spin: bool = True,
                  public_key: Path | None = None) -> ItemPipeline:
        return cls(load_bundle(path, public_key=public_key), threads=threads, spin=spin)

    @classmethod
    def for_station(cls, path: str | Path | Bundle, threads: int | None = None, public_key: Path | None = None,
                    runtime: str = AUTO, budget_s: float = 2.0,
                    classifier: Callable[[Bundle], Classifier | None] | None = None) -> ItemPipeline:
        """The station's runtime and thread policy (:func:`choose_runtime`): every installed
        runtime (or ``runtime``) at one and two threads (or ``threads``), measured on this
        bundle on this machine, idle threads never spinning; a runtime whose embeddings or head
        decisions on the bundle's check items (``check.npz``, else smooth noise) differ from ONNX
        Runtime's is refused. ``classifier`` gives the head to start with (the station store's
        current version) for the bundle once it is loaded; None from it means the bundle's own."""
        bundle = path if isinstance(path, Bundle) else load_bundle(path, public_key=public_key)
        m = bundle.manifest
        start = (classifier(bundle) if classifier else None) or Classifier(bundle.load_head(), m.decision)
        try:
            choice = choose_runtime(bundle.backbone_path, m.input, runtime, threads, budget_s,
                                    check=load_check_set(bundle),
                                    score=lambda e: item_probabilities(e, start.head, m))
        except ValueError as exc:  # a model that does not load or run: refused like any other fault
            raise BundleError(f"{bundle.backbone_path}: {exc}") from exc
        log.info("%s: embedding with %s", bundle.version, choice.summary())
        return cls(bundle, embedder=choice.embedder, runtime_choice=choice, classifier=start)

    def embed(self, capture: ItemCapture) -> np.ndarray | None:
        """The present views' embeddings (``V×D``), or None when no view was captured."""
        views = capture.present
        return self.embedder.embed_views(views) if views else None

    def decide(self, item_id: int, embeddings: np.ndarray | None, readings: Sequence[Reading],
               limits: ReadingLimits = DEFAULT_LIMITS) -> Decision:
        """The item's decision from its views' embeddings (``V×D``, 1 ≤ V ≤ the bundle's views)
        and its sensor readings. Embeddings of the wrong shape, or not finite, raise
        :class:`PipelineInputError`; readings outside ``limits`` (or of a sensor this bundle
        does not fuse) are left out, all of them, and the item is decided on its views alone, as
        the station does (``rejected_readings`` counts such items)."""
        if embeddings is None:
            return self.safe(item_id, NO_VIEWS)
        features = self.features(item_id, embeddings, readings, limits)
        decision = self.classify_features(item_id, features, self.classifier)
        if self.listener is not None:  # enroll mode: the next items' features are examples
            self.listener(item_id, features, decision)
        return decision

    @staticmethod
    def classify_features(item_id: int, features: np.ndarray, c: Classifier) -> Decision:
        """The decision ``c`` makes on an item's fused features: the one rule for the live head
        and for a candidate run beside it (watch/shadow.py). One version decides the whole item,
        whatever is swapped meanwhile."""
        probabilities = c.head.predict_proba(features)[0]
        best = int(probabilities.argmax())
        label = c.head.labels[best]
        confidence = float(probabilities[best])
        if c.openset is not None and c.openset.unknown(features)[0]:
            reason = UNKNOWN
        else:
            reason = CONFIDENT if confidence >= c.policy.threshold(label) else UNSURE
        return Decision(
            item_id=item_id,
            exit=c.policy.exits[label] if reason == CONFIDENT else c.policy.safe_exit,
            reason=reason,
            label=label,
            confidence=confidence,
            probabilities=tuple(float(p) for p in probabilities),
            head_version=c.version,
        )

    def features(self, item_id: int, embeddings: np.ndarray, readings: Sequence[Reading],
                 limits: ReadingLimits = DEFAULT_LIMITS) -> np.ndarray:
        """The item's feature vector, as the head sees it (checked embeddings, plausible readings)."""
        self._check_embeddings(embeddings)
        return fuse(embeddings, self._plausible(item_id, readings, limits), self.manifest.fusion)

    def _check_embeddings(self, embeddings: np.ndarray) -> None:
        m = self.manifest
        if not isinstance(embeddings, np.ndarray) or embeddings.ndim != 2 or \
                not 1 <= embeddings.shape[0] <= m.input.views or embeddings.shape[1] != m.embedding_dim:
            shape = getattr(embeddings, "shape", type(embeddings).__name__)
            raise PipelineInputError(f"embeddings of shape {shape}; this bundle takes 1..{m.input.views} views × "
                                     f"{m.embedding_dim}")
        if not np.isfinite(embeddings).all():
            raise PipelineInputError("embeddings hold NaN or infinity")

    def _plausible(self, item_id: int, readings: Sequence[Reading], limits: ReadingLimits) -> Sequence[Reading]:
        fusion = self.manifest.fusion
        if fusion.sensor == "none":
            return []  # a views-only bundle: a line's sensor readings are not its business
        kind = {"taps": TapReading, "scale": ScaleReading}[fusion.sensor]
        for reading in readings:
            problem = (f"a {type(reading).__name__} for a bundle that fuses {fusion.sensor}"
                       if not isinstance(reading, kind)
                       else limits.check(reading, fusion.readings_expected))
            if problem is not None:
                self.rejected_readings += 1
                if self.rejected_readings == 1 or self.rejected_readings % 1000 == 0:
                    log.warning("item %s: readings left out (#%d): %s", item_id, self.rejected_readings, problem)
                return []
        return readings

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
    if head is not None or m.head is not None:
        head = head or bundle.load_head()
        try:
            probabilities = item_probabilities(embeddings, head, m)
        except ValueError as exc:
            raise BundleError(f"{bundle.root}: the head cannot take the fused features ({exc})") from exc
        if probabilities.shape != (1, len(head.labels)) or not np.isfinite(probabilities).all():
            raise BundleError(f"{bundle.root}: the head gives {probabilities.shape} probabilities for "
                              f"{len(head.labels)} labels, or non-finite ones")
        checked["probabilities"] = list(probabilities.shape)
    return checked
