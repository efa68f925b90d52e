"""The desktop's retrain (train/retrain.py): `sortline fit` in a process of its own, from a given
backbone, on the bundle's labelled items and a queue's exported labels, their taps included."""

from __future__ import annotations

import threading
import time

import pytest

from sortline.edge_runtime.labelling.book import folder_items
from sortline.edge_runtime.model.bundle import DecisionPolicy, load_bundle
from sortline.edge_runtime.model.fusion import LabeledItem
from sortline.edge_runtime.model.preprocess import InputSpec
from sortline.hardware.sim.avocado import CLASSES, AvocadoScenario
from sortline.train.backbones import build_backbone
from sortline.train.checkpoint import save_checkpoint
from sortline.train.retrain import RetrainError, desktop_retrain, write_item_tree

EXITS = {"A": 1, "external": 2, "internal": 3, "both": 3}


def _items(world: AvocadoScenario, ids) -> list[LabeledItem]:
    return [LabeledItem(world.label(i), world.render(i, world.frame_px, world.views), list(world.readings(i, 0)))
            for i in ids]


@pytest.fixture(scope="module")
def desktop(tmp_path_factory):
    """A backbone checkpoint (untrained: the retrain's plumbing is what is tested) and the items."""
    work = tmp_path_factory.mktemp("desktop")
    world = AvocadoScenario(4)
    spec = InputSpec.for_channels(world.channels, 32, views=world.views)
    checkpoint = save_checkpoint(work / "backbone.ckpt", build_backbone("resnet10", len(world.channels)), spec,
                                 method="simclr")
    old = _items(world, [i for i in range(80) if world.label(i) != 2][:12] + [i for i in range(80)
                                                                          if world.label(i) == 2][:4])
    labels = work / "labels"
    write_item_tree(labels, _items(AvocadoScenario(4, cultivar="fuerte"), range(100, 106)), CLASSES)
    return work, old, checkpoint, labels


def test_a_retrain_fits_a_signed_bundle_on_both_sets_with_their_taps(desktop):
    work, old, checkpoint, labels = desktop
    assert folder_items(labels).sensor == "taps"
    retrain = desktop_retrain(work / "r", old, CLASSES, checkpoint, DecisionPolicy(EXITS, 0, 0.5), item_epochs=1)
    started = time.perf_counter()
    path = retrain(labels, threading.Event())
    print(f"retrain: {time.perf_counter() - started:.1f} s")
    bundle = load_bundle(path)  # verified: the default key signed it (conftest sets it)
    m = bundle.manifest
    assert m.labels == tuple(CLASSES) and m.decision.exits == EXITS and m.fusion.sensor == "taps"
    assert m.metrics["item_stage"]["ran"] and m.metrics["item_stage"]["items"] == len(old) + 6
    assert m.metrics["pretrain"]["checkpoint"] == str(checkpoint) and m.input.size == 32  # no pretraining
    second = retrain(labels, threading.Event())  # each retrain its own bundle, the items written once
    assert second != path and load_bundle(second).version != bundle.version


def test_a_retrain_is_stopped_at_once_and_a_failed_one_says_why(desktop):
    work, old, checkpoint, labels = desktop
    stop = threading.Event()
    stop.set()
    retrain = desktop_retrain(work / "s", old, CLASSES, checkpoint, DecisionPolicy(EXITS, 0, 0.5), item_epochs=1)
    started = time.perf_counter()
    with pytest.raises(RetrainError, match="stopped"):
        retrain(labels, stop)
    assert time.perf_counter() - started < 5
    broken = desktop_retrain(work / "b", old, CLASSES, work / "nowhere.ckpt", DecisionPolicy(EXITS, 0, 0.5))
    with pytest.raises(RetrainError, match="exited 2") as refused:
        broken(labels, threading.Event())
    assert "nowhere.ckpt" in str(refused.value)
