"""What can run in the shadow of the live version, and how a version is put live.

- :class:`HeadCandidate`: a head version from the station's store (a refit not yet made current,
  or any earlier one). It decides on the live item's own fused features: the embeddings the live
  bundle computed are reused, so a head costs microseconds.
- :class:`BundleCandidate`: another bundle, verified (and its signature checked) like any the
  station loads. It embeds the item's captured views itself, on the shadow's thread.

A :class:`Host` is what puts a version live: the head in the running pipeline (and the store's
current version, so that the head watcher keeps it), or the station's bundle (items announced
from then on). Putting a candidate live returns the candidate that undoes it (the version that
was live), which is how a rollback restores it.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from sortline.edge_runtime.errors import SortlineError
from sortline.edge_runtime.learning.enroll import Enroller
from sortline.edge_runtime.model.bundle import Manifest
from sortline.edge_runtime.model.pipeline import Classifier, Decision, ItemPipeline
from sortline.edge_runtime.station.loop import Station
from sortline.edge_runtime.station.observers import ObservedItem


class ShadowError(SortlineError, ValueError):
    """A candidate that cannot be shadowed or promoted (the message says why)."""


class Host(Protocol):
    def live_head(self) -> Classifier: ...

    def live_bundle(self) -> ItemPipeline: ...

    def swap_head(self, classifier: Classifier) -> Classifier:
        """Put ``classifier`` live (between two items); returns the one it replaced."""
        ...

    def swap_bundle(self, pipeline: ItemPipeline) -> ItemPipeline:
        """Decide items announced from now on with ``pipeline``; returns the one it replaced."""
        ...


class HeadCandidate:
    kind = "head"

    def __init__(self, classifier: Classifier) -> None:
        self.classifier = classifier
        self.name = f"head {classifier.version}"

    def decides(self, item: ObservedItem) -> bool:
        return item.decision.head_version == self.classifier.version

    def decide(self, item: ObservedItem) -> Decision:
        features = item.pipeline.features(item.item_id, item.embeddings, item.readings)
        return ItemPipeline.classify_features(item.item_id, features, self.classifier)

    def go_live(self, host: Host) -> HeadCandidate:
        return HeadCandidate(host.swap_head(self.classifier))


class BundleCandidate:
    kind = "bundle"

    def __init__(self, pipeline: ItemPipeline) -> None:
        self.pipeline = pipeline
        self.name = f"bundle {pipeline.version}"

    @property
    def classifier(self) -> Classifier:
        return self.pipeline.classifier

    def decides(self, item: ObservedItem) -> bool:
        return item.pipeline is self.pipeline

    def decide(self, item: ObservedItem) -> Decision:
        views = [view for view in item.views if view is not None]
        embeddings = self.pipeline.embedder.embed_views(views)
        return self.pipeline.decide(item.item_id, embeddings, item.readings)

    def go_live(self, host: Host) -> BundleCandidate:
        return BundleCandidate(host.swap_bundle(self.pipeline))


Candidate = HeadCandidate | BundleCandidate


def put_head_live(pipeline: ItemPipeline, enroller: Enroller | None, classifier: Classifier) -> Classifier:
    """``classifier`` live in ``pipeline`` and, with ``enroller``, the store's current version (the
    head watcher would otherwise swap the old one back); returns the one it replaced. A head the
    pipeline refuses leaves the store as it was."""
    if enroller is not None:
        enroller.rollback(classifier.version)
    try:
        return pipeline.swap(classifier)
    except BaseException:
        if enroller is not None:
            enroller.rollback(pipeline.classifier.version)
        raise


def check_newer(candidate: Manifest, live: Manifest, force: bool = False) -> None:
    """A bundle older than the live one (by its manifest's creation time) is refused unless
    ``force``: an old bundle, even one signed with the station's key, cannot roll it back."""
    if force:
        return
    new, old = _created(candidate), _created(live)
    if new is None or old is None:
        raise ShadowError(f"bundle {candidate.name}: its creation time ({candidate.created!r}) or the live one's "
                          f"({live.created!r}) cannot be read, so it cannot be shown newer; force it to run it")
    if new < old:
        raise ShadowError(f"bundle {candidate.name} was made {candidate.created}, before the live bundle "
                          f"({live.created}): refused, so an old bundle cannot roll the station back; force it "
                          "if that is what you mean")


def _created(manifest: Manifest) -> dt.datetime | None:
    try:
        when = dt.datetime.fromisoformat(manifest.created)
    except (TypeError, ValueError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=dt.UTC)


class StationHost:
    """A running station as the shadow's host; with ``enroller``, a head put live is also made
    the store's current version (the head watcher would otherwise swap the old one back)."""

    def __init__(self, station: Station, enroller: Enroller | None = None) -> None:
        self.station, self.enroller = station, enroller

    def live_head(self) -> Classifier:
        return self.station.pipeline.classifier

    def live_bundle(self) -> ItemPipeline:
        return self.station.pipeline

    def swap_head(self, classifier: Classifier) -> Classifier:
        return put_head_live(self.station.pipeline, self.enroller, classifier)

    def swap_bundle(self, pipeline: ItemPipeline) -> ItemPipeline:
        return self.station.reload(pipeline)
