"""What a camera rig hands the runtime for one item, and the interface of anything that can."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class FrameError(RuntimeError):
    """A frame could not be captured or decoded (lost, late, corrupt)."""


@dataclass(frozen=True)
class ViewFrame:
    """One view of an item: an RGB image (H×W×3 uint8) and, on rigs that have one, the
    near-infrared image (H×W uint8, registered to the RGB one)."""

    rgb: np.ndarray
    nir: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.rgb.dtype != np.uint8 or self.rgb.ndim != 3 or self.rgb.shape[2] != 3:
            raise FrameError(f"RGB frame must be H×W×3 uint8, got {self.rgb.shape} {self.rgb.dtype}")
        if self.nir is not None and (self.nir.dtype != np.uint8 or self.nir.shape != self.rgb.shape[:2]):
            raise FrameError(f"NIR frame must be H×W uint8 like the RGB one, got {self.nir.shape}")


LOST = "lost"  # no frame from that camera in time
CORRUPT = "corrupt"  # a frame came but could not be decoded


@dataclass(frozen=True)
class ViewError:
    view: int
    kind: str  # LOST or CORRUPT
    detail: str
    data: bytes = b""  # for CORRUPT: the bytes that did not decode (kept for recordings)

    def __str__(self) -> str:
        return f"view {self.view} {self.kind}: {self.detail}"


@dataclass(frozen=True)
class ItemCapture:
    """All views of one item. A view that could not be captured is ``None`` and has an error;
    ``late`` lists views whose frame came after the trigger tolerance but within the wait."""

    item_id: int
    views: tuple[ViewFrame | None, ...]
    errors: tuple[ViewError, ...] = field(default=())
    late: tuple[int, ...] = field(default=())

    @property
    def present(self) -> list[ViewFrame]:
        return [v for v in self.views if v is not None]


class FrameSource(Protocol):
    """A multi-view rig: capture every view of the item the controller just announced."""

    view_count: int

    def capture(self, item_id: int) -> ItemCapture: ...
