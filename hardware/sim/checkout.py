"""A simulated retail checkout: products seen by two cameras, weighed by a scale.

Products come from an image folder or split file (for example the grocery-store photos: every
class a product, every item one of its photos) or are drawn procedurally (tests, and a checkout
with nothing on disk). Each item passes under two RGB cameras, a top view and an angled one,
and every view changes what a real checkout changes:

- *perspective*: the item lies at a random angle and position; the angled camera sees it
  foreshortened (a random homography per view);
- *lighting*: overall gain, colour temperature, gamma and a light fall-off across the belt;
- *occlusion*: sometimes a hand (a skin-coloured ellipse) covers part of the product;
- *sensor*: noise.

The scale reports the weight on its plate as it settles and then the empty plate. Its readings
(``WT``) carry no item id: the station ties them to the item on the plate.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..camera import ViewFrame
from ..images import read_image
from ..protocol import ScaleReading

VIEWS = 2
FRAME_PX = 96
SETTLED_READINGS = 2  # settled readings per item (after the moving ones)
READING_STEP_MS = 6
EMPTY_AFTER_MS = 45  # the item leaves the plate this long after it arrived: items come at most every 50 ms


@dataclass(frozen=True)
class Product:
    name: str
    grams: float  # nominal weight
    images: tuple[Path, ...] = ()  # photos of it; empty for a drawn product
    drawing_seed: int = 0


def _name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")


def _nominal_grams(name: str) -> float:
    """A stable weight per product name: 30 g to 2 kg, log-uniform."""
    u = _name_seed(name) / 2**32
    return round(30 * (2000 / 30) ** u, 1)


@dataclass(frozen=True)
class Catalog:
    products: tuple[Product, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.products)

    @classmethod
    def procedural(cls, count: int = 12, seed: int = 0) -> Catalog:
        return cls(tuple(Product(f"product-{k:02d}", _nominal_grams(f"{seed}/{k}"), drawing_seed=seed * 1000 + k)
                         for k in range(count)))

    @classmethod
    def from_images(cls, paths: Sequence[Path], labels: Sequence[int] | None, class_names: Sequence[str] = (),
                    max_products: int | None = None) -> Catalog:
        """Products from a labeled image set (one class a product, its images its photos), or,
        without labels, every image a product. (``sortline.edge_runtime.datasets`` reads the
        folder or split file: the hardware layer does not import the runtime.)"""
        if labels is not None:
            by_class: dict[int, list[Path]] = {}
            for path, label in zip(paths, labels):
                by_class.setdefault(int(label), []).append(Path(path))
            names = list(class_names) or [str(c) for c in range(max(by_class) + 1)]
            products = [Product(names[c], _nominal_grams(names[c]), tuple(ps)) for c, ps in sorted(by_class.items())]
        else:
            products = [Product(Path(p).stem, _nominal_grams(Path(p).stem), (Path(p),)) for p in paths]
        return cls(tuple(products[:max_products]))


def draw_product(product: Product, px: int = 96) -> np.ndarray:
    """A procedurally drawn package (box, can or bottle) in the product's own colours, with a
    label band and a pattern of bars: distinct per product, identical every time."""
    rng = np.random.default_rng(product.drawing_seed)
    image = np.full((px, px, 3), 0, np.uint8)
    body = tuple(int(v) for v in rng.integers(30, 230, 3))
    band = tuple(int(v) for v in rng.integers(0, 255, 3))
    ink = tuple(int(v) for v in rng.integers(0, 255, 3))
    shape = int(rng.integers(3))
    m = px // 8
    if shape == 0:  # box
        cv2.rectangle(image, (m, m), (px - m, px - m), body, -1)
    elif shape == 1:  # can: a rounded rectangle
        cv2.rectangle(image, (2 * m, m), (px - 2 * m, px - m), body, -1)
        cv2.ellipse(image, (px // 2, m), (px // 2 - 2 * m, m // 2 + 1), 0, 0, 360, body, -1)
    else:  # bottle: body and neck
        cv2.rectangle(image, (2 * m, 3 * m), (px - 2 * m, px - m), body, -1)
        cv2.rectangle(image, (px // 2 - m, m), (px // 2 + m, 3 * m), body, -1)
    top = int(rng.integers(3 * m, 5 * m))
    cv2.rectangle(image, (2 * m, top), (px - 2 * m, top + 2 * m), band, -1)
    for _ in range(int(rng.integers(2, 6))):
        x = int(rng.integers(2 * m, px - 3 * m))
        cv2.rectangle(image, (x, top + m // 2), (x + int(rng.integers(2, m)), top + 3 * m // 2), ink, -1)
    if rng.random() < 0.5:
        cv2.circle(image, (px // 2, px - 3 * m), int(rng.integers(m // 2, m)), ink, -1)
    return image


@dataclass(frozen=True)
class CheckoutItem:
    item_id: int
    label: int
    photo: int  # which of the product's photos (ignored for drawn products)
    grams: float  # this item's true weight


class CheckoutScenario:
    """Items, views and scale readings of a simulated checkout (deterministic per seed)."""

    name = "checkout"
    sensor = "scale"
    sensor_buffers = False  # a scale that is unplugged loses its readings; it keeps no backlog
    views = VIEWS
    channels = ("r", "g", "b")  # checkout cameras are colour only
    frame_px = FRAME_PX
    readings_expected = SETTLED_READINGS

    def __init__(self, catalog: Catalog, seed: int = 0) -> None:
        if not catalog.products:
            raise ValueError("a checkout needs at least one product")
        self.catalog = catalog
        self.seed = seed
        self.classes = catalog.names
        self._photos: dict[Path, np.ndarray] = {}

    def item(self, item_id: int, label: int | None = None) -> CheckoutItem:
        rng = np.random.default_rng([self.seed, item_id, 7])
        drawn = int(rng.integers(len(self.catalog.products)))
        label = drawn if label is None else label
        product = self.catalog.products[label]
        photo = int(rng.integers(max(1, len(product.images))))
        return CheckoutItem(item_id, label, photo, float(product.grams * rng.normal(1.0, 0.03)))

    def label(self, item_id: int) -> int:
        return self.item(item_id).label

    def _appearance(self, item: CheckoutItem) -> np.ndarray:
        """The item as RGB; a drawn product is RGBA (transparent around the package)."""
        product = self.catalog.products[item.label]
        if not product.images:
            drawn = draw_product(product)
            return np.dstack([drawn, (drawn.max(axis=2) > 0).astype(np.uint8) * 255])
        path = product.images[item.photo]
        if path not in self._photos:
            rgb = read_image(path).rgb
            scale = 160 / max(rgb.shape[:2])  # keep the photos small: they are only ever shrunk
            self._photos[path] = cv2.resize(rgb, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        return self._photos[path]

    def render(self, item_id: int, size: int = FRAME_PX, views: int = VIEWS) -> list[ViewFrame]:
        return render_views(self._appearance(self.item(item_id)), np.random.default_rng([self.seed, item_id, 11]),
                            size, views)

    def readings(self, item_id: int, t0_ms: int) -> list[ScaleReading]:
        return scale_series(self.item(item_id).grams, t0_ms, np.random.default_rng([self.seed, item_id, 13]))


def render_views(appearance: np.ndarray, rng: np.random.Generator, size: int = FRAME_PX,
                 views: int = VIEWS) -> list[ViewFrame]:
    """``views`` RGB frames of one item lying on the belt (see the module's list of changes).
    ``appearance`` is RGB, or RGBA where the item does not fill its rectangle."""
    h, w = appearance.shape[:2]
    alpha = appearance[..., 3].astype(np.float32) / 255 if appearance.shape[2] == 4 else np.ones((h, w), np.float32)
    appearance = np.ascontiguousarray(appearance[..., :3])
    fit = 0.62 * size / max(h, w)
    angle = rng.uniform(0, 360)
    shift = rng.uniform(-0.08, 0.08, 2) * size
    occluded = rng.random() < 0.3
    hand = (rng.uniform(0.25, 0.75, 2) * size, rng.uniform(0.12, 0.22, 2) * size, rng.uniform(0, 180),
            rng.uniform(150, 230), rng.uniform(0.55, 0.7), rng.uniform(0.4, 0.55))
    belt = np.clip(rng.normal(70, 6, (size, size, 1)) + np.zeros(3), 0, 255).astype(np.float32)
    frames = []
    for v in range(views):
        # The item's pose on the belt, then this camera's view of the belt.
        place = cv2.getRotationMatrix2D((w / 2, h / 2), angle, fit)
        place[:, 2] += np.array([size / 2, size / 2]) + shift - np.array([w / 2, h / 2])
        src = np.float32([[0, 0], [size, 0], [size, size], [0, size]])
        tilt = 0.04 if v == 0 else 0.14  # the angled camera foreshortens more
        dst = src + rng.uniform(-tilt, tilt, (4, 2)).astype(np.float32) * size
        camera = cv2.getPerspectiveTransform(src, dst)
        warp = camera @ np.vstack([place, [0, 0, 1]])
        item = cv2.warpPerspective(appearance * alpha[..., None], warp, (size, size), flags=cv2.INTER_LINEAR)
        mask = cv2.warpPerspective(alpha, warp, (size, size), flags=cv2.INTER_LINEAR)
        frame = belt * (1 - mask[..., None]) + item
        if occluded:
            (cx, cy), (ax, ay), rot, r, g, b = hand[0], hand[1], hand[2], hand[3], hand[4], hand[5]
            cv2.ellipse(frame, (int(cx), int(cy)), (int(ax), int(ay)), rot, 0, 360, (r, r * g, r * b), -1)
        # Lighting: gain, colour temperature, fall-off across the frame, gamma; then noise.
        gain = rng.uniform(0.75, 1.25)
        temperature = rng.uniform(-0.08, 0.08)
        channel = np.array([1 + temperature, 1.0, 1 - temperature], np.float32)
        ramp = np.linspace(1 - rng.uniform(0, 0.25), 1, size, dtype=np.float32)
        falloff = ramp[None, :, None] if rng.random() < 0.5 else ramp[:, None, None]
        frame = frame * gain * channel * falloff
        gamma = rng.uniform(0.8, 1.25)
        frame = 255 * (np.clip(frame, 0, 255) / 255) ** gamma + rng.normal(0, 3, frame.shape)
        frames.append(ViewFrame(rgb=np.clip(frame, 0, 255).astype(np.uint8), nir=None))
    return frames


def scale_series(grams: float, t0_ms: int, rng: np.random.Generator,
                 settled: int = SETTLED_READINGS) -> list[ScaleReading]:
    """What the scale says about one item: moving readings as it lands, settled ones, and the
    empty plate once it has left."""
    readings = []
    t = t0_ms + READING_STEP_MS
    for fraction in (0.35, 0.8, 1.06):  # lands, overshoots, settles
        readings.append(ScaleReading(t_ms=t, grams=round(grams * fraction + rng.normal(0, 2), 1), stable=0))
        t += READING_STEP_MS
    for _ in range(settled):
        readings.append(ScaleReading(t_ms=t, grams=round(grams + rng.normal(0, 0.5), 1), stable=1))
        t += READING_STEP_MS
    readings.append(ScaleReading(t_ms=t0_ms + EMPTY_AFTER_MS, grams=round(abs(rng.normal(0, 0.3)), 1), stable=1))
    return readings
