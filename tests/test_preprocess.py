from __future__ import annotations

import numpy as np
import pytest

from sortline.edge_runtime.model.preprocess import InputSpec, normalize, preprocess_views, to_unit_chw
from sortline.hardware.camera import FrameError, ViewFrame


def _view(r=10, g=20, b=30, nir=40, px=80):
    rgb = np.empty((px, px, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = r, g, b
    return ViewFrame(rgb=rgb, nir=np.full((px, px), nir, np.uint8))


def test_channels_resized_stacked_and_scaled_in_spec_order():
    spec = InputSpec(size=32, channels=("nir", "r", "g", "b"))
    x = to_unit_chw(_view(), spec)
    assert x.shape == (4, 32, 32) and x.dtype == np.float32
    assert np.allclose(x[:, 0, 0], np.array([40, 10, 20, 30]) / 255)


def test_normalisation_uses_the_spec():
    spec = InputSpec(size=16, mean=(0.1, 0.2, 0.3, 0.4), std=(0.5, 0.5, 0.5, 0.5))
    batch = preprocess_views([_view(), _view(nir=255)], spec)
    assert batch.shape == (2, 4, 16, 16)
    assert np.allclose(batch[1, 3], (1.0 - 0.4) / 0.5)
    assert np.allclose(normalize(np.zeros((4, 2, 2), np.float32), spec)[:, 0, 0], [-0.2, -0.4, -0.6, -0.8])


def test_rgb_only_spec_ignores_nir():
    spec = InputSpec(size=16, channels=("r", "g", "b"), mean=(0.5,) * 3, std=(0.25,) * 3)
    assert to_unit_chw(_view(), spec).shape == (3, 16, 16)


def test_bad_frames_and_specs_are_refused():
    with pytest.raises(FrameError):
        ViewFrame(rgb=np.zeros((8, 8), np.uint8), nir=np.zeros((8, 8), np.uint8))
    with pytest.raises(FrameError):
        ViewFrame(rgb=np.zeros((8, 8, 3), np.uint8), nir=np.zeros((4, 4), np.uint8))
    with pytest.raises(FrameError):
        preprocess_views([], InputSpec())
    with pytest.raises(ValueError, match="unknown input channels"):
        InputSpec(channels=("r", "g", "uv"), mean=(0,) * 3, std=(1,) * 3)


def test_spec_round_trips_through_a_dict():
    spec = InputSpec(size=48, views=3)
    assert InputSpec.from_dict(spec.to_dict()) == spec


def test_colour_histogram_tells_colours_apart_and_checks_its_input():
    from sortline.edge_runtime.model.descriptors import ColourHistogram

    spec = InputSpec(size=16, channels=("nir", "r", "g", "b"))
    arrays = np.stack([np.rint(to_unit_chw(_view(r, g, b), spec) * 255).astype(np.uint8)
                       for r, g, b in ((200, 30, 30), (210, 40, 35), (30, 200, 30))])
    h = ColourHistogram().of_arrays(arrays, spec)  # the NIR channel is left out, wherever it sits
    assert h.shape == (3, 256) and h.dtype == np.float32
    assert np.allclose((h ** 2).sum(axis=1), 1.0)  # square roots of fractions of the pixels
    assert np.linalg.norm(h[0] - h[1]) < np.linalg.norm(h[0] - h[2])  # two reds closer than red and green
    with pytest.raises(ValueError, match="r, g and b"):
        ColourHistogram().of_arrays(arrays[:, :1], InputSpec.for_channels(("nir",), 16))
    with pytest.raises(ValueError, match="uint8"):
        ColourHistogram().of_arrays(arrays.astype(np.float32), spec)
    with pytest.raises(ValueError, match="bins"):
        ColourHistogram(hue_bins=0)
