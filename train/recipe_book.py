"""The named recipes and their settings (``recipes.py`` runs them). No torch here: the command
line lists the names from :data:`RECIPES` without importing it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    name: str
    method: str
    backbone: str
    pool: str
    augment: str  # an AugmentConfig recipe
    phases: tuple[tuple[float, int], ...]  # (share of the training time, view size in px), in order
    colour_weight: float  # the colour-aware objective beside the method's loss (0: none)
    label_stage: float  # the share of the budget for the label stage where the data has labels (0: none)
    batch_size: int
    lr: float
    seconds: float  # the budget when none is given

    @property
    def image_size(self) -> int:
        """The size the checkpoint is used at: the last phase's."""
        return self.phases[-1][1]


RECIPES: dict[str, Recipe] = {
    "small-data": Recipe(
        name="small-data",
        method="simclr",
        backbone="resnet10",
        pool="avg",
        augment="colour-safe",
        phases=((1.0, 64),),
        colour_weight=1.0,
        label_stage=0.75,  # 30 min x 3 seeds on grocery-store: 46.3% against 45.3% at 0.5 (docs/quality.md)
        batch_size=128,
        lr=2e-3,
        seconds=1800.0,
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    return RECIPES[name]
