"""A procedural avocado: four views in RGB and NIR, and its tap-pressure response.

The fruit is a spheroid seen from 4 sides as it rolls through the station. Everything that
distinguishes the quality classes lives on the fruit's surface or inside it, and is projected
into each view, so the physics of the real task carries over:

- an *external* defect (a scab) is a patch on the skin: it shows only in the views that face
  it, darker in RGB and somewhat in NIR;
- an *internal* defect (a bruise under the skin) leaves the RGB skin untouched: it shows as a
  diffuse drop in NIR reflectance, and the fruit is softer under the tap sensor;
- ripeness moves the skin from green to purple-black and softens the fruit, so softness alone
  does not tell a bruise from a ripe fruit;
- lighting gain, tint, position and size vary per item; the sensor adds noise.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from ..camera import ViewFrame
from ..protocol import TapReading

CLASSES = ("A", "external", "internal", "both")
CLASS_PRIORS = (0.80, 0.10, 0.07, 0.03)
VIEWS = 4
FRAME_PX = 80
TAPS_PER_ITEM = 5


@dataclass(frozen=True)
class Cultivar:
    """What a variety changes: skin colour green→ripe (RGB), fruit size and shape (half-axes in
    pixels at FRAME_PX: a base and a random extra), and the skin's NIR reflectance."""

    skin_green: tuple[float, float, float]
    skin_ripe: tuple[float, float, float]
    half_width: tuple[float, float]
    half_height: tuple[float, float]
    nir_skin: float = 185.0


# Hass (the line's usual fruit) darkens to purple-black; Fuerte stays green when ripe, is paler,
# smaller and more pear-shaped (longer for its width).
CULTIVARS = {
    "hass": Cultivar((70.0, 122.0, 48.0), (52.0, 36.0, 42.0), (23.0, 5.0), (29.0, 5.0)),
    "fuerte": Cultivar((104.0, 150.0, 62.0), (82.0, 112.0, 44.0), (19.0, 4.0), (30.0, 5.0), nir_skin=200.0),
}


@dataclass(frozen=True)
class Spot:
    """A disc on the unit sphere: centre direction and angular radius (radians)."""

    centre: tuple[float, float, float]
    radius: float


@dataclass(frozen=True)
class FruitSpec:
    item_id: int
    label: int  # index into CLASSES
    ripeness: float  # 0 green .. 1 ripe
    scabs: tuple[Spot, ...]
    bruises: tuple[Spot, ...]
    spin: float  # rotation of the fruit about its long axis, radians
    half_width: float  # pixels
    half_height: float
    offset: tuple[float, float]  # centre shift, pixels
    gain: float  # lighting
    tint: tuple[float, float, float]
    nir_gain: float
    texture_seed: int
    firmness: float  # tap-sensor stiffness, 1 = hard green fruit
    cultivar: str = "hass"

    @property
    def class_name(self) -> str:
        return CLASSES[self.label]


def _random_direction(rng: np.random.Generator, max_lat: float) -> tuple[float, float, float]:
    lon = rng.uniform(0, 2 * math.pi)
    lat = rng.uniform(-max_lat, max_lat)
    return (math.cos(lat) * math.sin(lon), math.sin(lat), math.cos(lat) * math.cos(lon))


def make_fruit(item_id: int, seed: int, label: int | None = None, cultivar: str = "hass") -> FruitSpec:
    """The fruit for ``item_id`` in the world ``seed`` (deterministic); ``label`` forces a class;
    ``cultivar`` (a key of CULTIVARS) gives its skin and size."""
    variety = CULTIVARS[cultivar]
    rng = np.random.default_rng([seed, item_id])
    drawn_label = int(rng.choice(len(CLASSES), p=CLASS_PRIORS))
    label = drawn_label if label is None else label
    # Everything but the defects is drawn first, so forcing a label changes only the defects.
    ripeness = float(rng.uniform(0, 1))
    firmness_noise = rng.normal(0, 0.04)
    look = rng.uniform(size=9)
    texture_seed = int(rng.integers(2**31))
    external = label in (1, 3)
    internal = label in (2, 3)
    scabs = tuple(
        Spot(_random_direction(rng, 0.7), rng.uniform(0.28, 0.5))
        for _ in range(rng.integers(1, 3) if external else 0)
    )
    bruises = tuple(Spot(_random_direction(rng, 0.6), rng.uniform(0.5, 0.8)) for _ in range(1 if internal else 0))
    firmness = 1.0 - 0.55 * ripeness - (0.2 if internal else 0.0) + firmness_noise
    return FruitSpec(
        item_id=item_id,
        label=label,
        ripeness=ripeness,
        scabs=scabs,
        bruises=bruises,
        spin=float(2 * math.pi * look[0]),
        half_width=float(variety.half_width[0] + variety.half_width[1] * look[1]),
        half_height=float(variety.half_height[0] + variety.half_height[1] * look[2]),
        offset=(float(5 * (look[3] - 0.5)), float(5 * (look[4] - 0.5))),
        gain=float(0.8 + 0.4 * look[5]),
        tint=(float(0.93 + 0.14 * look[6]), 1.0, float(0.93 + 0.14 * look[7])),
        nir_gain=float(0.85 + 0.3 * look[8]),
        texture_seed=texture_seed,
        firmness=float(max(firmness, 0.1)),
        cultivar=cultivar,
    )


def _angle_to(points: np.ndarray, spot: Spot) -> np.ndarray:
    """Angle between each surface point (…×3 unit vectors) and the spot's centre."""
    return np.arccos(np.clip(points @ np.asarray(spot.centre), -1.0, 1.0))


@dataclass(frozen=True)
class _Surface:
    """One view of the fruit: what lies under each pixel."""

    inside: np.ndarray  # the fruit's silhouette (bool)
    texture: np.ndarray  # the pebbly skin, -1..1
    shade: np.ndarray  # Lambert shading
    highlight: np.ndarray  # the waxy highlight
    scab: np.ndarray  # 0..1: how much of a scab lies under the pixel (a soft disc)
    bruise: np.ndarray  # 0..1: how much of a bruise (a diffuse blob)


def _surfaces(spec: FruitSpec, size: int, views: int, rng: np.random.Generator) -> Iterator[_Surface]:
    """The fruit seen from ``views`` directions evenly spaced around its long axis."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    scale = size / FRAME_PX
    cx = size / 2 + spec.offset[0] * scale
    cy = size / 2 + spec.offset[1] * scale
    u = (xs - cx) / (spec.half_width * scale)
    v = (ys - cy) / (spec.half_height * scale)
    r2 = u * u + v * v
    inside = r2 < 1.0
    z = np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))
    # Lambert shading from a light slightly above the camera, plus a waxy highlight.
    light = np.array([0.25, -0.35, 0.9])
    light /= np.linalg.norm(light)
    lambert = np.clip(u * light[0] + v * light[1] + z * light[2], 0, 1)
    shade = 0.35 + 0.65 * lambert
    highlight = np.clip(lambert, 0, 1) ** 40
    # Per-fruit texture on the sphere, so every view sees the same pebbly skin.
    freq = rng.normal(0, 9.0, (6, 3))
    phase = rng.uniform(0, 2 * math.pi, 6)
    for k in range(views):
        theta = spec.spin + 2 * math.pi * k / views
        # The surface point under each pixel, in the fruit's own frame (rotation about y).
        px = u * math.cos(theta) + z * math.sin(theta)
        pz = -u * math.sin(theta) + z * math.cos(theta)
        points = np.stack([px, v, pz], axis=-1)
        texture = sum(np.sin(points @ f + p) for f, p in zip(freq, phase)) / 6.0
        scab = np.zeros_like(u)
        for spot in spec.scabs:
            # A soft disc whose rim the texture wobbles, so it is not a perfect circle.
            rim = spot.radius * (1 + 0.18 * texture)
            scab = np.maximum(scab, 1.0 / (1.0 + np.exp((_angle_to(points, spot) - rim) / 0.04)))
        bruise = np.zeros_like(u)
        for spot in spec.bruises:
            angle = _angle_to(points, spot)
            bruise = np.maximum(bruise, np.exp(-0.5 * (angle / (0.55 * spot.radius)) ** 2))
        yield _Surface(inside, texture, shade, highlight, scab * inside, bruise * inside)


@dataclass(frozen=True)
class DefectMasks:
    """Where the renderer put things, per view (``views×size×size``): the truth Grad-CAM is
    scored against (benchmarks/defect_gradcam.py)."""

    fruit: np.ndarray  # bool: the fruit's silhouette
    scab: np.ndarray  # 0..1 on the visible skin
    bruise: np.ndarray  # 0..1 on the visible skin


def defect_masks(spec: FruitSpec, size: int = FRAME_PX, views: int = VIEWS) -> DefectMasks:
    """The fruit, its scabs and its bruises in each view, as :func:`render_views` draws them."""
    surfaces = list(_surfaces(spec, size, views, np.random.default_rng([spec.texture_seed, 1])))
    return DefectMasks(*(np.stack([getattr(s, name) for s in surfaces]) for name in ("inside", "scab", "bruise")))


def render_views(spec: FruitSpec, size: int = FRAME_PX, views: int = VIEWS) -> list[ViewFrame]:
    """Render the fruit from ``views`` directions evenly spaced around its long axis."""
    rng = np.random.default_rng([spec.texture_seed, 1])
    ys = np.mgrid[0:size, 0:size][0].astype(np.float32) + 0.5
    variety = CULTIVARS[spec.cultivar]
    skin = (1 - spec.ripeness) * np.array(variety.skin_green) + spec.ripeness * np.array(variety.skin_ripe)
    scab_colour = np.array([112.0, 84.0, 50.0])
    nir_skin = variety.nir_skin - 30.0 * spec.ripeness

    belt_rgb = np.array([58.0, 60.0, 64.0])
    stripes = 6.0 * np.sin(ys * 0.9)
    frames = []
    for f in _surfaces(spec, size, views, rng):
        scab, bruise, texture, shade = f.scab, f.bruise, f.texture, f.shade
        colour = skin[None, None, :] * (1 + 0.12 * texture[..., None])
        colour = colour * (1 - scab[..., None]) + scab_colour * (1 + 0.25 * texture[..., None]) * scab[..., None]
        fruit_rgb = colour * shade[..., None] + 120.0 * f.highlight[..., None] * (1 - scab[..., None])
        fruit_nir = (nir_skin * (1 + 0.05 * texture) * (1 - 0.38 * scab) * (1 - 0.42 * bruise)) * shade

        rgb = np.where(f.inside[..., None], fruit_rgb, belt_rgb + stripes[..., None])
        nir = np.where(f.inside, fruit_nir, 48.0 + stripes)
        rgb = rgb * spec.gain * np.asarray(spec.tint) + rng.normal(0, 2.5, rgb.shape)
        nir = nir * spec.nir_gain + rng.normal(0, 2.5, nir.shape)
        frames.append(
            ViewFrame(
                rgb=np.clip(rgb, 0, 255).astype(np.uint8),
                nir=np.clip(nir, 0, 255).astype(np.uint8),
            )
        )
    return frames


def tap_series(spec: FruitSpec, t0_ms: int = 0, count: int = TAPS_PER_ITEM) -> list[TapReading]:
    """The tap sensor's readings: softer fruit → lower peak, less rebound, slower decay."""
    rng = np.random.default_rng([spec.texture_seed, 2])
    f = spec.firmness
    return [
        TapReading(
            item_id=spec.item_id,
            index=i,
            count=count,
            peak_n=float(12.0 * f * (1 + rng.normal(0, 0.05))),
            rebound=float(np.clip(0.25 + 0.5 * f + rng.normal(0, 0.03), 0, 1)),
            decay_ms=float(6.0 + 10.0 * (1 - f) + rng.normal(0, 0.6)),
            t_ms=t0_ms + 8 * i,
        )
        for i in range(count)
    ]


class AvocadoScenario:
    """Items, views and tap series of a simulated avocado line (deterministic per seed)."""

    name = "avocado"
    sensor = "taps"
    sensor_buffers = True  # an unplugged tap sensor keeps its readings and sends them on return
    classes = CLASSES
    views = VIEWS
    channels = ("r", "g", "b", "nir")
    frame_px = FRAME_PX
    readings_expected = TAPS_PER_ITEM
    tap_delay_ms = 10  # first tap after the announcement

    def __init__(self, seed: int = 0, cultivar: str = "hass") -> None:
        if cultivar not in CULTIVARS:
            raise ValueError(f"unknown cultivar {cultivar!r}: {', '.join(CULTIVARS)}")
        self.seed = seed
        self.cultivar = cultivar

    def fruit(self, item_id: int) -> FruitSpec:
        return make_fruit(item_id, self.seed, cultivar=self.cultivar)

    def label(self, item_id: int) -> int:
        return self.fruit(item_id).label

    def render(self, item_id: int, size: int = FRAME_PX, views: int = VIEWS) -> list[ViewFrame]:
        return render_views(self.fruit(item_id), size=size, views=views)

    def readings(self, item_id: int, t0_ms: int) -> list[TapReading]:
        return tap_series(self.fruit(item_id), t0_ms=t0_ms + self.tap_delay_ms)
