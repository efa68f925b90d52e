"""The named recipes and their settings (``recipes.py`` runs them). No torch here: the command
line lists the names from :data:`RECIPES` without importing it."""

from __future__ import annotations

from dataclasses import dataclass

# A whole run trains up to a tenth slower than its short probe, and more with another job on the
# machine (AMD EPYC, 2 cores, ResNet-10 at 64 px, views/s run/probe: 320/320, 314/341, 284/322
# with a job beside it; the demo's RGB+NIR pool 272/297). Plans assume this fraction of the
# probe's speed: a schedule that ends a little early loses less than one that the hard stop cuts
# before its learning rate has come down.
RATE_MARGIN = 0.8


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
    rate_margin: float = RATE_MARGIN  # the plan assumes this fraction of the probe's speed

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
    # The baseline the recipe must beat where labels exist (benchmarks/quality.py --baseline
    # supervised): the same backbone, augmentation, resolution and budget, trained from scratch
    # with cross-entropy on the labelled images; no self-supervision.
    "supervised": Recipe(
        name="supervised",
        method="supervised",
        backbone="resnet10",
        pool="avg",
        augment="colour-safe",
        phases=((1.0, 64),),
        colour_weight=0.0,
        label_stage=0.0,
        batch_size=128,
        lr=2e-3,
        seconds=1800.0,
        # a classifier's runs against their 8-step probes, views/s as logged (AMD EPYC, 2 cores):
        # 5-minute runs 395/378, 398/393, 386/468, 362/450; 30 minutes 386/415. At 0.8 the first
        # ended after 73 % of its budget; at 1.0 the third and fourth were cut by the hard stop
        rate_margin=0.9,
    ),
}


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    return RECIPES[name]
