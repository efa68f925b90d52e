"""Training data from the avocado simulator: the same renderer the simulated line uses."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from sortline.edge_runtime.preprocess import InputSpec
from sortline.hardware.avocado import FruitSpec, make_fruit, render_views, tap_series
from sortline.hardware.camera import ViewFrame
from sortline.hardware.protocol import TapReading

from .data import views_to_uint8


@dataclass(frozen=True)
class SimItem:
    fruit: FruitSpec
    views: list[ViewFrame]
    taps: list[TapReading]


def sim_items(seed: int, count: int, desc: str | None = None) -> Iterator[SimItem]:
    """``count`` fruit of world ``seed``, with their views and taps (a progress bar if ``desc``)."""
    for item_id in tqdm(range(count), desc=desc, unit="fruit", disable=desc is None, dynamic_ncols=True):
        fruit = make_fruit(item_id, seed)
        yield SimItem(fruit, render_views(fruit), tap_series(fruit))


def unlabeled_views(seed: int, count: int, spec: InputSpec, desc: str | None = None) -> np.ndarray:
    """Every view of ``count`` fruit as ``(count·V)×C×S×S`` uint8, labels thrown away."""
    return np.concatenate([views_to_uint8(item.views, spec) for item in sim_items(seed, count, desc)])
