"""The training methods by name: each a small module over a backbone and shared heads/losses.

==========  ====================================================  ======  ======
name        what it learns from                                    views   labels
==========  ====================================================  ======  ======
simclr      two views of an image vs. the rest of the batch        2       –
moco        two views vs. a queue of momentum-encoded keys         2       –
byol        predict a momentum target's view                       2       –
simsiam     predict the other view, stop-gradient                  2       –
barlow      decorrelated, view-invariant dimensions                2       –
rotnet      which of four rotations                                1       –
jigsaw      which permutation of 3×3 tiles                         1       –
supcon      views of same-label images together                    2       yes
distill     supcon on pairs + a frozen teacher on unlabeled        2       some
supervised  an image's class, cross-entropy (the baseline)         1       yes
==========  ====================================================  ======  ======
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..backbones import Backbone
    from .base import Method

# name → (module, class): the modules (and torch) are imported when a method is built, so the
# command line lists the names without importing torch.
_PLACES = {
    "simclr": ("contrastive", "SimCLR"),
    "moco": ("contrastive", "MoCo"),
    "byol": ("noncontrastive", "BYOL"),
    "simsiam": ("noncontrastive", "SimSiam"),
    "barlow": ("noncontrastive", "BarlowTwins"),
    "rotnet": ("pretext", "RotNet"),
    "jigsaw": ("pretext", "Jigsaw"),
    "supcon": ("supervised", "SupCon"),
    "distill": ("supervised", "Distill"),
    "supervised": ("supervised", "Classifier"),
}


class _Registry(Mapping[str, "Callable[..., Method]"]):
    def __getitem__(self, name: str) -> Callable[..., Method]:
        module, cls = _PLACES[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), cls)

    def __iter__(self) -> Iterator[str]:
        return iter(_PLACES)

    def __len__(self) -> int:
        return len(_PLACES)


METHODS: Mapping[str, Callable[..., Method]] = _Registry()

__all__ = ["METHODS", "build_method"]


def build_method(name: str, backbone: Backbone, **options: object) -> Method:
    """``name`` over ``backbone``; ``options`` go to its constructor (``teacher=`` for distill)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    if name == "distill" and options.get("teacher") is None:
        raise ValueError("distill needs a teacher backbone (--teacher CKPT, e.g. a supcon checkpoint)")
    return METHODS[name](backbone, **options)
