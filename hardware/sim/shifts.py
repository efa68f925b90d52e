"""Shifts of a simulated line: from one item on, a camera, the lighting or the items change.

``sortline simulate`` and ``sortline demo`` take ``--shift KIND@ITEM`` (the station's drift watch
must notice each; docs/drift.md):

- ``blur:CAMERA``: that camera's lens is out of focus (a Gaussian blur of σ = 1.5 px at 80 px,
  before the sensor's noise, which stays), RGB and NIR alike;
- ``nir-gain``: the NIR lamp gives 30 % less light (every camera's NIR image × 0.7);
- ``light``: the scene's visible lighting drops by 30 % (every camera's RGB × 0.7; the NIR lamp
  is its own light);
- ``cultivar`` (avocado): another variety arrives (Fuerte after Hass: paler green skin that stays
  green when ripe, smaller, more pear-shaped; ``hardware/sim/avocado.py``); the quality classes
  are the same;
- ``product`` (checkout): 20 % of the items are products the catalog does not have (drawn
  packages of another range); their truth is "unknown", and the right exit the safe one.

Camera shifts change the frames after rendering; item shifts render another world. Items before
``ITEM`` are untouched, and :meth:`ShiftedScenario.shifted` says which items are after it (a
recording notes it in its truth).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ..camera import ViewFrame
from ..protocol import Message
from .avocado import AvocadoScenario
from .checkout import Catalog, CheckoutScenario
from .line import Scenario
from .process import CachedScenario

CAMERA_KINDS = ("blur", "nir-gain", "light")
ITEM_KINDS = ("cultivar", "product")
KINDS = CAMERA_KINDS + ITEM_KINDS
BLUR_SIGMA_PX = 1.5  # at an 80 px frame; scaled with the frame
GAIN = 0.7  # nir-gain and light: 30 % less
STRANGER_SHARE = 0.2  # product: the share of items after the shift that the catalog lacks
NEW_CULTIVAR = "fuerte"
SENSOR_NOISE = 2.5  # std of the noise a camera adds after its lens (the renderers' own level)


class ShiftError(ValueError):
    """A --shift the scenario cannot take (the message says which and why)."""


@dataclass(frozen=True)
class Shift:
    kind: str  # one of KINDS
    at_item: int  # the first item that is shifted
    camera: int | None = None  # blur: which camera (view index)

    @classmethod
    def parse(cls, text: str) -> Shift:
        """``KIND@ITEM`` or ``blur:CAMERA@ITEM`` (e.g. ``blur:2@2000``)."""
        what, sep, at = str(text).partition("@")
        kind, _, camera = what.partition(":")
        if not sep or kind not in KINDS:
            raise ShiftError(f"--shift {text!r}: KIND@ITEM with KIND one of {', '.join(KINDS)} (blur:CAMERA)")
        try:
            at_item = int(at)
            cam = int(camera) if camera else None
        except ValueError:
            raise ShiftError(f"--shift {text!r}: ITEM and CAMERA are whole numbers") from None
        if at_item < 0 or (cam is not None and cam < 0):
            raise ShiftError(f"--shift {text!r}: ITEM and CAMERA are at least 0")
        if (kind == "blur") != (cam is not None):
            raise ShiftError(f"--shift {text!r}: blur names its camera (blur:CAMERA@ITEM); other kinds do not")
        return cls(kind, at_item, cam)

    def __str__(self) -> str:
        return f"{self.kind}{'' if self.camera is None else f':{self.camera}'}@{self.at_item}"

    @property
    def on_camera(self) -> bool:
        return self.kind in CAMERA_KINDS


def _stranger(item_id: int, seed: int) -> bool:
    digest = hashlib.sha256(f"{seed}/{item_id}/stranger".encode()).digest()
    return int.from_bytes(digest[:4], "little") / 2**32 < STRANGER_SHARE


def shift_views(views: Sequence[ViewFrame], shift: Shift, item_id: int) -> list[ViewFrame]:
    """The frames a shifted camera (or lighting) gives of an item rendered unshifted."""
    out = []
    rng = np.random.default_rng([item_id, 404])
    for index, view in enumerate(views):
        rgb, nir = view.rgb, view.nir
        if shift.kind == "blur" and index == shift.camera:
            sigma = BLUR_SIGMA_PX * rgb.shape[1] / 80
            rgb = _noisy(cv2.GaussianBlur(rgb, (0, 0), sigma), rng)
            nir = None if nir is None else _noisy(cv2.GaussianBlur(nir, (0, 0), sigma), rng)
        elif shift.kind == "nir-gain" and nir is not None:
            nir = (nir * GAIN).astype(np.uint8)
        elif shift.kind == "light":
            rgb = (rgb * GAIN).astype(np.uint8)
        out.append(ViewFrame(rgb=rgb, nir=nir))
    return out


def _noisy(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.clip(image + rng.normal(0, SENSOR_NOISE, image.shape), 0, 255).astype(np.uint8)


class ShiftedScenario:
    """A scenario whose items from ``shift.at_item`` on are shifted. ``before`` and ``after`` are
    cached (each distinct item rendered once); ``after`` is the world of the shifted items (the
    same as ``before`` for a camera shift)."""

    def __init__(self, before: CachedScenario, after: CachedScenario, shift: Shift,
                 strangers: CachedScenario | None = None) -> None:
        self.before, self.after, self.shift, self.strangers = before, after, shift, strangers
        for name in ("name", "sensor", "sensor_buffers", "classes", "views", "channels", "frame_px",
                     "readings_expected"):
            setattr(self, name, getattr(before, name))

    def shifted(self, item_id: int) -> bool:
        return item_id >= self.shift.at_item

    def _source(self, item_id: int) -> tuple[CachedScenario, bool]:
        """The world the item comes from, and whether it is a product the catalog lacks."""
        if not self.shifted(item_id):
            return self.before, False
        if self.strangers is not None and _stranger(item_id, self.before.inner.seed):
            return self.strangers, True
        return self.after, False

    def label(self, item_id: int) -> int:
        source, stranger = self._source(item_id)
        return len(self.classes) if stranger else source.label(item_id)

    def prerender(self, item_ids: Sequence[int], progress: bool = False) -> None:
        for world in (self.before, self.after, self.strangers):
            if world is not None:
                ids = [i for i in item_ids if self._source(i)[0] is world]
                world.prerender(ids, progress=progress)

    def render(self, item_id: int, size: int, views: int) -> list[ViewFrame]:
        frames = self._source(item_id)[0].render(item_id, size, views)
        if self.shifted(item_id) and self.shift.on_camera:
            return shift_views(frames, self.shift, item_id)
        return frames

    def readings(self, item_id: int, t0_ms: int) -> list[Message]:
        return self._source(item_id)[0].readings(item_id, t0_ms)


def shifted_scenario(scenario: Scenario, shift: Shift, distinct: int) -> ShiftedScenario:
    """``scenario`` (avocado or checkout, unwrapped) with ``shift`` from its item on; items repeat
    every ``distinct`` ids in each world (see :class:`CachedScenario`)."""
    inner = scenario.inner if isinstance(scenario, CachedScenario) else scenario
    before = scenario if isinstance(scenario, CachedScenario) else CachedScenario(scenario, distinct)
    if shift.kind == "blur" and shift.camera >= inner.views:
        raise ShiftError(f"--shift {shift}: the {inner.name} rig has cameras 0..{inner.views - 1}")
    if shift.kind == "nir-gain" and "nir" not in inner.channels:
        raise ShiftError(f"--shift {shift}: the {inner.name} rig has no NIR camera")
    if shift.kind == "cultivar":
        if not isinstance(inner, AvocadoScenario):
            raise ShiftError(f"--shift {shift}: a cultivar is a shift of the avocado line")
        return ShiftedScenario(before, CachedScenario(AvocadoScenario(inner.seed, NEW_CULTIVAR), distinct), shift)
    if shift.kind == "product":
        if not isinstance(inner, CheckoutScenario):
            raise ShiftError(f"--shift {shift}: unknown products are a shift of the checkout")
        others = Catalog.procedural(len(inner.catalog.products), seed=inner.seed + 7919)
        strangers = CachedScenario(CheckoutScenario(others, inner.seed), distinct)
        return ShiftedScenario(before, before, shift, strangers)
    return ShiftedScenario(before, before, shift)


def truth_note(scenario: Scenario, item_id: int) -> dict:
    """What a recording's truth says of a shifted item (nothing for an unshifted one)."""
    if not isinstance(scenario, ShiftedScenario) or not scenario.shifted(item_id):
        return {}
    return {"shift": scenario.shift.kind, **({"unknown_product": True}
                                             if scenario.label(item_id) == len(scenario.classes) else {})}


