"""Learning new items on the device: k-shot enrollment, refit, open-set reject, versioned heads.

The backbone stays frozen. An example is an item's fused features (its views' embeddings pooled,
joined with its sensor readings: exactly what the head sees at the station), kept in the
station's store (:mod:`memory`). A refit is a class-balanced logistic regression on every example
in the store, regularised for few shots, plus class prototypes for open-set rejection. It is
first fitted without a held-back part of the examples and checked on it: a head that would
lose the classes the station already knows is refused. Then the head is fitted on all examples,
stored as a new version and made current in one transaction; a running station picks it up and
swaps it in between two items (:meth:`ItemPipeline.swap`).

The bundle's own examples (``examples.npz``, written by export and demo beside its head) seed a
new store, so that its classes stay known when others are added. No torch anywhere here.
"""

from __future__ import annotations

import functools
import io
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.stats import binomtest

from sortline.edge_runtime.errors import SortlineError
from sortline.edge_runtime.model.arrays import read_npz
from sortline.edge_runtime.model.bundle import Bundle, BundleError, DecisionPolicy
from sortline.edge_runtime.model.fusion import Reading, fuse
from sortline.edge_runtime.model.head import HeadError, LogisticHead, OpenSet
from sortline.edge_runtime.model.pipeline import Classifier, Decision, ItemPipeline, load_embedder
from sortline.edge_runtime.model.runtimes import Embedder, one_blas_thread
from sortline.hardware.camera import FrameError, ViewFrame
from sortline.hardware.images import IMAGE_SUFFIXES, read_image

from .store import BUNDLE_VERSION, EmbeddingStore, Examples, HeadRecord, StoreError, check_label

log = logging.getLogger(__name__)

EXAMPLES_FILE = "examples.npz"  # in a bundle: the features its head was fitted on
# At most this many of each class in a bundle (a random draw). 64 cost the avocado demo's refits
# their old classes: refitted on its 64 of each class (of 600 fruit) plus 30-240 labels of a new
# variety, MCC on the old variety was 0.65-0.72 against the bundle head's 0.83 (recorded line
# features, offline); 256 keeps a demo's whole labelled set.
EXAMPLES_PER_CLASS = 256
# Regularisation of refits, measured on the grocery-store split (benchmarks/enrollment.py: 71
# classes fitted, 10 enrolled with 1 or 5 shots, paired val accuracy over 5 draws): C=3 lost the
# old classes the least (+0.4 and -0.4 points, against -1.1 to -2.8 at C=0.1..1) and recognised
# the new ones as well as any. The differences are a few val images: see the results table.
FEW_SHOT_C = 3.0
TARGET_FRR = 0.05  # open set: the share of known items rejected as unknown
MAX_OLD_DROP = 0.05  # a refit may lose at most this much held-back accuracy on known classes
HELD_BACK = 0.2  # of each class with at least three examples (at least one)
# The solver's tolerance for refits: on the grocery-store memory (2,300 examples, 72 classes) 1e-3
# takes 48 L-BFGS iterations against 367 at scikit-learn's 1e-4, for the same val accuracy.
REFIT_TOL = 1e-3
MIN_NEW_CHECK, MIN_NEW_ACCURACY = 5, 0.5  # held-back new examples: with this many, at least this share right
DUPLICATE_COSINE = 0.995  # a new example this close to a stored one adds nothing


class EnrollError(SortlineError, ValueError):
    """Examples that cannot be enrolled (an unreadable image, a missing channel)."""


class RefitRefused(StoreError):
    """The candidate head failed its check on held-back examples; the current head stays."""


# --- the bundle's examples --------------------------------------------------------------------


def write_examples(path: Path, features: np.ndarray, targets: Sequence[int], labels: Sequence[str],
                   per_class: int = EXAMPLES_PER_CLASS, seed: int = 0, trained_on: bool = False) -> Path:
    """The examples a head was fitted on (at most ``per_class`` of each class), for a bundle;
    ``trained_on``: the bundle's backbone learned from them with their labels (a recipe's label
    stage, an item stage), so they cannot calibrate the open set."""
    y = np.asarray(targets)
    rng = np.random.default_rng(seed)
    keep = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]))
    with open(path, "wb") as f:
        np.savez(f, features=np.asarray(features, np.float32)[keep], targets=y[keep].astype(np.int64),
                 labels=np.array(list(labels), dtype=str), trained_on=np.bool_(trained_on))
    return path


@dataclass(frozen=True)
class BundleExamples:
    features: np.ndarray  # (N, F) float32
    labels: list[str]  # one per row
    trained_on: bool  # the backbone learned from them with their labels (examples.npz's ``trained_on``)


def bundle_examples(bundle: Bundle) -> BundleExamples | None:
    """The bundle's examples, or None when it has none. A bundle written before ``trained_on``
    was recorded reads as not trained on (its open set calibrates as it always did)."""
    if EXAMPLES_FILE not in bundle.manifest.files:
        return None
    path = bundle.root / EXAMPLES_FILE
    width = bundle.manifest.fusion.feature_count(bundle.manifest.embedding_dim)
    rows = EXAMPLES_PER_CLASS * len(bundle.manifest.labels)  # what write_examples keeps, at most
    try:
        data = read_npz(path, {"features": rows * width, "targets": rows, "labels": len(bundle.manifest.labels),
                               "trained_on": 1}, what=str(path))
        features, targets, labels = data["features"], data["targets"], [str(s) for s in data["labels"]]
        trained_on = data.get("trained_on", np.bool_(False))
    except (ValueError, KeyError) as exc:
        raise BundleError(f"{path}: unreadable examples ({exc})") from exc
    targets_ok = not len(targets) or 0 <= targets.min() <= targets.max() < len(labels)
    if (features.ndim != 2 or features.shape[1] != width or targets.shape != (len(features),)
            or not np.isfinite(features).all() or not targets_ok):
        raise BundleError(f"{path}: examples of shape {features.shape} for {len(labels)} labels; "
                          f"expected N×{width} with targets indexing the labels")
    if trained_on.shape != () or trained_on.dtype != np.bool_:
        raise BundleError(f"{path}: 'trained_on' must be one boolean, got {trained_on.dtype} {trained_on.shape}")
    return BundleExamples(features.astype(np.float32), [labels[t] for t in targets], bool(trained_on))


# --- what an enrollment reports ----------------------------------------------------------------


@dataclass(frozen=True)
class AddReport:
    label: str
    ids: list[int]
    duplicates: list[dict] = field(default_factory=list)  # {"example", "of", "label", "similarity"}
    lookalikes: list[dict] = field(default_factory=list)  # {"example", "looks_like", "confidence"}

    def warnings(self) -> list[str]:
        return ([f"example {d['example']} duplicates stored example {d['of']} ({d['label']}, cosine "
                 f"{d['similarity']:.3f})" for d in self.duplicates]
                + [f"example {d['example']} looks like {d['looks_like']!r} ({d['confidence']:.2f})"
                   for d in self.lookalikes])


@dataclass(frozen=True)
class RefitReport:
    version: int
    labels: tuple[str, ...]
    examples: int
    seconds: float
    metrics: dict


# --- the engine -------------------------------------------------------------------------------


class Enroller:
    """Enrollment against one bundle and one store. Thread-safe: the daemon's API and the
    station's loop may call it at once."""

    def __init__(self, bundle: Bundle, store: str | Path, embedder: Embedder | None = None) -> None:
        one_blas_thread()
        self.bundle = bundle
        m = bundle.manifest
        self.feature_count = m.fusion.feature_count(m.embedding_dim)
        self.store = EmbeddingStore(store, m.backbone_sha256, self.feature_count, m.name)  # checked as it loaded
        self._embedder = embedder
        self._lock = threading.Lock()
        self._controls: dict[tuple[int, int], LogisticHead] = {}
        self._seed_from_bundle()

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Enroller:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = load_embedder(self.bundle, threads=1)
        return self._embedder

    def _seed_from_bundle(self) -> None:
        if self.store.meta("seeded") is not None:
            return
        examples = bundle_examples(self.bundle)
        groups = {}
        if examples is not None:
            for label in dict.fromkeys(examples.labels):
                groups[label] = examples.features[[i for i, lbl in enumerate(examples.labels) if lbl == label]]
        with self._lock:
            ids = self.store.add_groups(groups, source=f"bundle {self.bundle.manifest.name}",
                                        calibrates=examples is None or not examples.trained_on)
            # the examples the bundle's head was fitted on: those up to this id
            self.store.set_meta("seeded", str(max((i for group in ids.values() for i in group), default=0)))

    def _fitted_on(self, version: int) -> int:
        """The last example id the head ``version`` was fitted on."""
        if version == BUNDLE_VERSION:
            return int(self.store.meta("seeded") or 0)
        return int(self.store.head(version).metrics.get("last_example", 0))

    # --- examples -------------------------------------------------------------------------------

    def features(self, items: Sequence[tuple[Sequence[ViewFrame], Sequence[Reading]]]) -> np.ndarray:
        """Fused features of whole items (their views and sensor readings), one row each."""
        fusion = self.bundle.manifest.fusion
        rows = []
        for views, readings in items:
            if not views:
                raise FrameError("an item without views cannot be enrolled")
            rows.append(fuse(self.embedder.embed_views(list(views)), list(readings), fusion))
        return np.stack(rows)

    def add(self, label: str, features: np.ndarray, source: str) -> AddReport:
        """Store examples of ``label`` (new or known); report those that duplicate stored
        examples or that the current head takes for another class."""
        label = check_label(label)
        x = np.atleast_2d(np.asarray(features, np.float32))
        with self._lock:
            stored = self.store.examples()
            current = self.classifier()
            ids = self.store.add(label, x, source)
        return AddReport(label, ids, _duplicates(x, stored), _lookalikes(x, label, current))

    # --- heads ----------------------------------------------------------------------------------

    def classifier(self, version: int | None = None) -> Classifier | None:
        """The head of ``version`` (default: the current one) with its exits and open set; the
        bundle's own for version 0 (None if the bundle has no head)."""
        version = self.store.current if version is None else version
        m = self.bundle.manifest
        if version == BUNDLE_VERSION:
            return Classifier(self.bundle.load_head(), m.decision) if m.head is not None else None
        record = self.store.head(version)
        try:
            head = LogisticHead.load(io.BytesIO(record.head))
            openset = OpenSet.from_bytes(record.openset) if record.openset else None
        except HeadError as exc:
            raise StoreError(f"{self.store.path}: head version {version}: {exc}") from exc
        if head.n_features != self.feature_count or head.labels != record.labels:
            raise StoreError(f"{self.store.path}: head version {version} takes {head.n_features} features; "
                             f"this bundle gives {self.feature_count}")
        policy = DecisionPolicy(record.exits, m.decision.safe_exit, m.decision.min_confidence,
                                {k: v for k, v in m.decision.class_min_confidence.items() if k in record.exits})
        return Classifier(head, policy, openset, version)

    def refit(self, exits: dict[str, int] | None = None, C: float = FEW_SHOT_C, target_frr: float = TARGET_FRR,
              max_drop: float = MAX_OLD_DROP, force: bool = False, seed: int = 0,
              activate: bool = True) -> RefitReport:
        """A new head version from every stored example, checked on held-back examples and made
        current (unless not ``activate``: a candidate for the shadow); :class:`RefitRefused` (and
        nothing changes) when it would lose the known classes. ``exits`` gives exits to new
        classes (others keep theirs; a class without one goes to the safe exit).

        Three heads take part: the *control* (fitted, without the held-back examples, on what
        the current head was fitted on: the previous refit's check head, kept in the store), the
        *check* head (the same, with the new examples) and the final head on everything, which
        is only committed when the check passes. The solver starts from the current head's
        weights, so a refit costs a fraction of a cold fit."""
        started = time.perf_counter()
        with self._lock:
            stored = self.store.examples()
            current = self.classifier()
            labels = self._refit_labels(stored, current)
            index = {label: i for i, label in enumerate(labels)}
            x, y = stored.features, np.array([index[label] for label in stored.labels])
            fit = functools.partial(LogisticHead.fit, C=C, seed=seed, tol=REFIT_TOL)
            held = held_back(stored.ids, y)
            # Grocery-store memory (2,300 × 512, 81 classes): a fit takes 0.69 s on one BLAS thread
            # (one_blas_thread, set when the enroller was made), 1.17 s on two; two side by side 0.63 s.
            with ThreadPoolExecutor(2, thread_name_prefix="refit") as pool:
                control = self._control(current, stored, x, y, labels, held, fit) if current else None
                start = control or (current.head if current else None)
                checking = (pool.submit(fit, x[~held], y[~held], labels, init=start)
                            if held.any() and len(np.unique(y[~held])) >= 2 else None)
                final = pool.submit(fit, x, y, labels, init=current.head if current else None)
                check, head = checking.result() if checking else None, final.result()
            metrics = _judge(check, control, current.labels if current else (), x, y, held,
                             stored.ids <= self._fitted_on(current.version) if current else None, max_drop, force)
            metrics["last_example"] = int(stored.ids.max())
            metrics["check_examples"] = int((~held).sum())
            openset = OpenSet.fit(len(labels), x, y, target_frr, calibrates=stored.calibrates)
            metrics["open_set"] = _open_set_metrics(openset)
            metrics["C"] = C
            decision = self.bundle.manifest.decision
            known = {**decision.exits, **(current.policy.exits if current else {}), **(exits or {})}
            policy_exits = {label: int(known.get(label, decision.safe_exit)) for label in labels}
            DecisionPolicy.from_dict({**decision.to_dict(), "exits": policy_exits})  # the manifest's range checks
            seconds = time.perf_counter() - started
            metrics["fit_seconds"] = round(seconds, 3)
            record = HeadRecord(0, "", self.store.current, labels, policy_exits, len(stored), metrics,
                                head.to_bytes(), openset.to_bytes() if openset else b"",
                                check.to_bytes() if check else b"")
            version = self.store.commit_head(record, activate=activate)
        log.info("head version %d: %d classes from %d examples in %.2f s", version, len(labels), len(stored), seconds)
        return RefitReport(version, labels, len(stored), round(time.perf_counter() - started, 3), metrics)

    def _control(self, current: Classifier, stored: Examples, x: np.ndarray, y: np.ndarray,
                 labels: tuple[str, ...], held: np.ndarray, fit: Callable[..., LogisticHead]) -> LogisticHead | None:
        """The current head as it would be without the held-back examples: its refit's check
        head when that was fitted on exactly these examples, else fitted now (and remembered)."""
        fitted_before = stored.ids <= self._fitted_on(current.version)
        train = ~held & fitted_before & np.isin(y, [labels.index(label) for label in current.labels])
        if len(np.unique(y[train])) < 2:
            return None
        if current.version != BUNDLE_VERSION:
            record = self.store.head(current.version)
            if record.check_head and record.metrics.get("check_examples") == int(train.sum()):
                try:
                    return LogisticHead.load(io.BytesIO(record.check_head))
                except HeadError:
                    log.warning("head version %d: unreadable check head; fitting it again", current.version)
        key = (current.version, int(train.sum()))
        if key not in self._controls:
            self._controls[key] = fit(x[train], y[train], labels, init=current.head)
        return self._controls[key]

    def _refit_labels(self, stored: Examples, current: Classifier | None) -> tuple[str, ...]:
        """Classes in a stable order: the bundle's, then the current head's, then new ones."""
        present = dict.fromkeys(stored.labels)
        if len(present) < 2:
            raise StoreError(f"{self.store.path}: a head needs examples of at least two classes; the store has "
                             f"{list(present) or 'none'}")
        known = [*self.bundle.manifest.labels, *(current.labels if current else ())]
        if missing := [label for label in dict.fromkeys(known) if label not in present]:
            raise StoreError(f"{self.store.path}: no examples of {missing[:5]}{' …' if len(missing) > 5 else ''}, "
                             "which the current head knows; a refit would forget them. Enroll examples of them, "
                             "or use a bundle that carries its examples (written by sortline export/demo)")
        return tuple([*dict.fromkeys(known), *(label for label in present if label not in known)])

    def rollback(self, version: int | None = None) -> int:
        """Make ``version`` current (default: the current one's parent); returns it."""
        with self._lock:
            if version is None:
                current = self.store.current
                version = self.store.head(current).parent if current != BUNDLE_VERSION else None
            if version == BUNDLE_VERSION and self.bundle.manifest.head is None:
                raise StoreError(f"{self.store.path}: the bundle has no head of its own to roll back to")
            if version is not None:
                self.classifier(version)  # loadable with this bundle before it is made current
            return self.store.rollback(version)

    def collect(self, pipeline: ItemPipeline, label: str, count: int) -> EnrollSession:
        """Enroll mode: the next ``count`` items the station decides become examples of
        ``label`` (call :meth:`EnrollSession.wait`, then :meth:`EnrollSession.commit`)."""
        session = EnrollSession(self, pipeline, check_label(label), count)
        pipeline.listener = session
        return session


def enroll_label(enroller: Enroller, label: str, features: np.ndarray, source: str, backbone: str = "") -> bool:
    """A label given to a queued item, as an example in ``enroller``'s store, unless another
    backbone made its features (an item decided before a bundle with another backbone went live):
    they would mean nothing to this store's heads, and the label stays in the queue only (its
    export retrains from the views). ``backbone``: that backbone's sha256 ("": not recorded, as in
    queues written before it was, taken as this store's). True when it was enrolled."""
    if backbone and backbone != enroller.store.backbone_sha256:
        log.info("%s labelled %s: its features are another backbone's (%s…); kept in the queue only", source,
                 label, backbone[:12])
        return False
    enroller.add(label, features, source)
    return True


class HeadWatcher:
    """Keeps a running station on the store's current head: when another process (``sortline
    enroll``, ``heads rollback``) or the daemon's API makes another version current, it is
    loaded, checked (``check``: e.g. the controller's exits) and swapped in between two items.
    A version that fails is logged and counted once, and the running head stays."""

    def __init__(self, enroller: Enroller, pipeline: ItemPipeline,
                 check: Callable[[Classifier], None] | None = None) -> None:
        self.enroller, self.pipeline, self.check = enroller, pipeline, check
        self.swaps = 0
        self.refused: dict[int, str] = {}

    def poll(self) -> bool:
        """Swap if the current version changed; True when it did."""
        version = self.enroller.store.current
        if version == self.pipeline.classifier.version or version in self.refused:
            return False
        try:
            classifier = self.enroller.classifier(version)
            if classifier is None:
                raise StoreError("the bundle has no head of its own")
            if self.check is not None:
                self.check(classifier)
            self.pipeline.swap(classifier)
        except (SortlineError, ValueError) as exc:
            self.refused[version] = str(exc)
            log.error("head version %d not swapped in, version %d keeps serving: %s", version,
                      self.pipeline.classifier.version, exc)
            return False
        self.swaps += 1
        return True


class EnrollSession:
    """Collects the features of the next items a running station decides."""

    def __init__(self, enroller: Enroller, pipeline: ItemPipeline, label: str, count: int) -> None:
        if not 1 <= count <= 1000:
            raise StoreError(f"enroll {count} items? 1..1000 at a time")
        self.enroller, self.pipeline, self.label, self.count = enroller, pipeline, label, count
        self.item_ids: list[int] = []
        self._rows: list[np.ndarray] = []
        self.done = threading.Event()

    def __call__(self, item_id: int, features: np.ndarray, decision: Decision) -> None:  # the station's loop
        if len(self._rows) < self.count:
            self.item_ids.append(item_id)
            self._rows.append(features.copy())
        if len(self._rows) >= self.count:
            self.done.set()
            if self.pipeline.listener is self:
                self.pipeline.listener = None

    def cancel(self) -> None:
        if self.pipeline.listener is self:
            self.pipeline.listener = None
        self.done.set()

    def wait(self, timeout: float | None = None) -> bool:
        return self.done.wait(timeout)

    def commit(self) -> AddReport:
        self.cancel()
        if not self._rows:
            raise StoreError(f"enroll {self.label!r}: no item came")
        ids = ", ".join(str(i) for i in self.item_ids)
        return self.enroller.add(self.label, np.stack(self._rows), f"station items {ids}")


# --- checks -----------------------------------------------------------------------------------


def held_back(ids: np.ndarray, y: np.ndarray) -> np.ndarray:
    """About a fifth of each class with three or more examples (at least one), chosen by each
    example's id alone, so an example stays held back (or not) in every later refit, and a
    refit's check head is the next refit's control."""
    rank = (ids.astype(np.uint64) * np.uint64(2654435761)) % np.uint64(1 << 32)  # Knuth's hash
    held = (rank % np.uint64(round(1 / HELD_BACK))) == 0
    for c in np.unique(y):
        members = np.flatnonzero(y == c)
        if len(members) < 3:
            held[members] = False
        elif not held[members].any():
            held[members[rank[members].argmin()]] = True
        elif held[members].all():
            held[members[rank[members].argmax()]] = False
    return held


def _judge(check: LogisticHead | None, control: LogisticHead | None, known_labels: Sequence[str],
           x: np.ndarray, y: np.ndarray, held: np.ndarray, fitted_before: np.ndarray | None, max_drop: float,
           force: bool) -> dict:
    """The check head against the control on the held-back examples neither saw: the known
    classes must not be lost, and new examples must be told apart."""
    if check is None:
        return {"held_back": 0}
    right = check.predict(x[held]) == y[held]
    metrics: dict = {"held_back": int(held.sum()), "held_back_accuracy": round(float(right.mean()), 4)}
    if control is None or fitted_before is None:
        return metrics
    # Judged on examples the current head was fitted from: new examples of a known class might
    # be mislabelled, and would then vouch for themselves.
    known = np.isin(y[held], [check.labels.index(label) for label in known_labels]) & fitted_before[held]
    if not known.any():
        return metrics
    was_right = control.predict(x[held][known]) == y[held][known]
    before, after = float(was_right.mean()), float(right[known].mean())
    # A paired sign test on the examples only one head gets right: a few held-back examples
    # cannot tell a lost class from noise, so the drop must also be significant (p < 0.05).
    lost, gained = int(np.sum(was_right & ~right[known])), int(np.sum(~was_right & right[known]))
    p_value = float(binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue) if lost else 1.0
    new = ~fitted_before[held]
    new_accuracy = float(right[new].mean()) if new.any() else None
    metrics.update(known_before=round(before, 4), known_after=round(after, 4), known_lost=lost,
                   known_gained=gained, drop_p_value=round(p_value, 4), new_held_back=int(new.sum()),
                   new_accuracy=None if new_accuracy is None else round(new_accuracy, 4))
    if force:
        return metrics
    if after < before - max_drop and p_value < 0.05:
        raise RefitRefused(f"the new head would classify {after:.1%} of the held-back examples of known classes "
                           f"right, against {before:.1%} now (more than {max_drop:.0%} lost); the current head "
                           "stays. Check the new examples' labels, or force the refit")
    if new_accuracy is not None and new.sum() >= MIN_NEW_CHECK and new_accuracy < MIN_NEW_ACCURACY:
        raise RefitRefused(f"the new head classifies only {new_accuracy:.1%} of {int(new.sum())} held-back new "
                           "examples as their label: they are not told apart from other classes (wrong labels, or "
                           "items of several kinds under one name?); the current head stays. Check them, or force "
                           "the refit")
    return metrics


def _open_set_metrics(openset: OpenSet | None) -> dict | str:
    if openset is None:
        return "off: fewer than 10 examples the backbone did not train on, in classes of two or more"
    return {"median_threshold": round(float(np.median(openset.thresholds)), 4), "target_frr": openset.target_frr,
            "calibration_examples": openset.calibration_examples}


def _duplicates(x: np.ndarray, stored: Examples) -> list[dict]:
    """New examples whose standardised features (each feature scaled by its spread over the
    store, so a large sensor value cannot make everything look alike) nearly equal a stored one."""
    if not len(stored):
        return []
    everything = np.vstack([stored.features, x])
    mean, spread = everything.mean(axis=0), everything.std(axis=0)
    scale = np.where(spread > 1e-3 * max(float(spread.max()), 1e-12), spread, 1.0)  # a constant feature

    def unit(v: np.ndarray) -> np.ndarray:
        v = (v - mean) / scale
        return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)

    sims = unit(x) @ unit(stored.features).T
    out = []
    for i, j in enumerate(sims.argmax(axis=1)):
        if sims[i, j] >= DUPLICATE_COSINE:
            out.append({"example": i, "of": int(stored.ids[j]), "label": stored.labels[j],
                        "similarity": round(float(sims[i, j]), 4)})
    return out


def _lookalikes(x: np.ndarray, label: str, current: Classifier | None) -> list[dict]:
    if current is None:
        return []
    p = current.head.predict_proba(x)
    unknown = current.openset.unknown(x) if current.openset else np.zeros(len(x), bool)
    out = []
    for i, (row, far) in enumerate(zip(p, unknown)):
        best = int(row.argmax())
        other = current.labels[best]
        if other != label and not far and row[best] >= current.policy.threshold(other):
            out.append({"example": i, "looks_like": other, "confidence": round(float(row[best]), 4)})
    return out


# --- sources: image files and item folders ----------------------------------------------------


def read_item(path: str | Path) -> list[ViewFrame]:
    """An item's views from an image file (one view) or an item folder: its images, one view
    each, where ``NAME.nir.EXT`` is the near-infrared image of ``NAME.rgb.EXT`` (the layout of
    a recording's ``frames/<item>/``)."""
    path = Path(path)
    if path.is_file():
        return [read_image(path)]
    if not path.is_dir():
        raise FrameError(f"{path}: no such image or item folder")
    images = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    views = []
    for image in images:
        stem = image.name[: -len(image.suffix)]
        if stem.endswith(".nir"):
            continue
        rgb = read_image(image)
        nir_path = image.with_name(stem.removesuffix(".rgb") + ".nir" + image.suffix)
        nir = read_image(nir_path).rgb[..., 0] if stem.endswith(".rgb") and nir_path.is_file() else None
        views.append(ViewFrame(rgb.rgb, nir))
    if not views:
        raise FrameError(f"{path}: an item folder without images")
    return views


def enroll_paths(enroller: Enroller, label: str, paths: Sequence[str | Path],
                 on_item: Callable[[int], None] | None = None) -> AddReport:
    """``sortline enroll``'s examples: each path an image file or an item folder."""
    rows = []
    for i, path in enumerate(paths):
        try:
            rows.append(enroller.features([(read_item(path), [])]))
        except FrameError as exc:  # unreadable, missing, or without the channels the model needs
            raise EnrollError(str(exc) if str(path) in str(exc) else f"{path}: {exc}") from exc
        if on_item:
            on_item(i)
    return enroller.add(label, np.vstack(rows), ", ".join(str(p) for p in paths)[:1000])
