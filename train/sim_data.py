"""Training data from a simulated scenario: the same renderer and sensor the simulated line uses."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from tqdm import tqdm

from sortline.edge_runtime.model.fusion import LabeledItem
from sortline.edge_runtime.model.preprocess import InputSpec
from sortline.hardware.sim.line import Scenario

from .data import views_to_uint8

SimItem = LabeledItem  # what the simulator renders is what a station sees


def sim_items(scenario: Scenario, count: int, desc: str | None = None) -> Iterator[SimItem]:
    """Items ``0..count-1`` of ``scenario`` with their views and readings (a progress bar if ``desc``)."""
    for item_id in tqdm(range(count), desc=desc, unit="item", disable=desc is None, dynamic_ncols=True):
        yield SimItem(scenario.label(item_id), scenario.render(item_id, scenario.frame_px, scenario.views),
                      list(scenario.readings(item_id, 0)))


def unlabeled_views(scenario: Scenario, count: int, spec: InputSpec, desc: str | None = None) -> np.ndarray:
    """Every view of ``count`` items as ``(count·V)×C×S×S`` uint8, labels thrown away."""
    return np.concatenate([views_to_uint8(item.views, spec) for item in sim_items(scenario, count, desc)])
