"""The simulator must render the physics the classes depend on."""

from __future__ import annotations

import dataclasses

import numpy as np

from sortline.hardware.sim.avocado import CLASS_PRIORS, CLASSES, defect_masks, make_fruit, render_views, tap_series


def _diff_per_view(a, b, channel):
    """Largest pixel difference between two renderings, per view."""
    return [float(np.abs(getattr(x, channel).astype(int) - getattr(y, channel).astype(int)).max())
            for x, y in zip(a, b)]


def test_class_frequencies_follow_the_priors():
    labels = np.array([make_fruit(i, seed=5).label for i in range(4000)])
    freq = np.bincount(labels, minlength=4) / len(labels)
    assert np.allclose(freq, CLASS_PRIORS, atol=0.02), freq


def test_rendering_is_deterministic():
    a, b = render_views(make_fruit(3, 1)), render_views(make_fruit(3, 1))
    assert all(np.array_equal(x.rgb, y.rgb) and np.array_equal(x.nir, y.nir) for x, y in zip(a, b))


def test_external_defect_shows_only_in_views_facing_it():
    fruit = make_fruit(1, seed=0, label=CLASSES.index("external"))
    scab = dataclasses.replace(fruit.scabs[0], radius=0.3)
    # Put one small scab straight in front of view 0 (the fruit spins by `spin`).
    facing = (np.sin(fruit.spin), 0.0, np.cos(fruit.spin))
    with_scab = dataclasses.replace(fruit, scabs=(dataclasses.replace(scab, centre=facing),))
    clean = dataclasses.replace(fruit, scabs=())
    diff = _diff_per_view(render_views(with_scab), render_views(clean), "rgb")
    assert diff[0] > 40  # seen head-on
    assert diff[2] == 0  # the opposite side cannot see it


def test_internal_defect_shows_in_nir_only():
    fruit = make_fruit(2, seed=0, label=CLASSES.index("internal"))
    clean = dataclasses.replace(fruit, bruises=())
    bruised, healthy = render_views(fruit), render_views(clean)
    assert max(_diff_per_view(bruised, healthy, "rgb")) == 0
    assert max(_diff_per_view(bruised, healthy, "nir")) > 25


def test_internal_defect_softens_the_fruit_beyond_ripeness():
    a = [make_fruit(i, seed=9, label=0) for i in range(300)]
    b = [make_fruit(i, seed=9, label=2) for i in range(300)]
    # Same ripeness draws (same item ids and seed): the bruise alone makes the difference.
    soft = np.mean([x.firmness - y.firmness for x, y in zip(a, b)])
    assert 0.15 < soft < 0.25
    peaks_a = np.mean([np.mean([t.peak_n for t in tap_series(f)]) for f in a])
    peaks_b = np.mean([np.mean([t.peak_n for t in tap_series(f)]) for f in b])
    assert peaks_b < peaks_a


def test_taps_describe_one_item_in_order():
    fruit = make_fruit(11, seed=0)
    taps = tap_series(fruit, t0_ms=1000)
    assert [t.index for t in taps] == list(range(len(taps)))
    assert all(t.item_id == 11 and t.count == len(taps) for t in taps)
    assert [t.t_ms for t in taps] == sorted(t.t_ms for t in taps)


def test_defect_masks_lie_where_the_render_changes():
    """The masks Grad-CAM is scored against (benchmarks/defect_gradcam.py) are where the
    renderer drew: a scab changes RGB under its mask and not elsewhere on the fruit, a bruise
    changes NIR under its mask."""
    both = make_fruit(3, seed=9, label=3)
    clean = dataclasses.replace(both, scabs=(), bruises=())
    masks = defect_masks(both)
    for v, (a, b) in enumerate(zip(render_views(both), render_views(clean))):
        scab, bruise, fruit = masks.scab[v] > 0.5, masks.bruise[v] > 0.5, masks.fruit[v]
        rgb_change = np.abs(a.rgb.astype(float) - b.rgb.astype(float)).sum(axis=-1)
        nir_change = np.abs(a.nir.astype(float) - b.nir.astype(float))
        if scab.sum() >= 12:
            assert rgb_change[scab].mean() > 30 and rgb_change[fruit & ~(masks.scab[v] > 0.02)].max() <= 3
        if bruise.sum() >= 12:
            assert nir_change[bruise].mean() > 10
    assert (masks.scab > 0.5).any() and (masks.bruise > 0.5).any()
    assert not masks.scab[~masks.fruit].any() and masks.fruit.shape == (4, 80, 80)
