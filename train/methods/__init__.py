"""The training methods by name: each a small module over a backbone and shared heads/losses.

=========  ====================================================  ======  ======
name       what it learns from                                    views   labels
=========  ====================================================  ======  ======
simclr     two views of an image vs. the rest of the batch        2       –
moco       two views vs. a queue of momentum-encoded keys         2       –
byol       predict a momentum target's view                       2       –
simsiam    predict the other view, stop-gradient                  2       –
barlow     decorrelated, view-invariant dimensions                2       –
rotnet     which of four rotations                                1       –
jigsaw     which permutation of 3×3 tiles                         1       –
supcon     views of same-label images together                    2       yes
distill    supcon on pairs + a frozen teacher on unlabeled        2       some
=========  ====================================================  ======  ======
"""

from __future__ import annotations

from collections.abc import Callable

from ..backbones import Backbone
from .base import Method, StepOutput
from .contrastive import MoCo, SimCLR
from .noncontrastive import BYOL, BarlowTwins, SimSiam
from .pretext import Jigsaw, RotNet
from .supervised import Distill, SupCon

METHODS: dict[str, Callable[..., Method]] = {
    "simclr": SimCLR,
    "moco": MoCo,
    "byol": BYOL,
    "simsiam": SimSiam,
    "barlow": BarlowTwins,
    "rotnet": RotNet,
    "jigsaw": Jigsaw,
    "supcon": SupCon,
    "distill": Distill,
}

__all__ = ["METHODS", "Method", "StepOutput", "build_method"]


def build_method(name: str, backbone: Backbone, **options: object) -> Method:
    """``name`` over ``backbone``; ``options`` go to its constructor (``teacher=`` for distill)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {sorted(METHODS)}")
    if name == "distill" and options.get("teacher") is None:
        raise ValueError("distill needs a teacher backbone (--teacher CKPT, e.g. a supcon checkpoint)")
    return METHODS[name](backbone, **options)
