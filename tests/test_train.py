"""Backbones, augmentation and the training loop."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import RandomResizedCrop

from sortline.edge_runtime.model.preprocess import InputSpec
from sortline.train import augment
from sortline.train.augment import AugmentConfig, MultiChannelAugment
from sortline.train.backbones import build_backbone
from sortline.train.data import ViewsDataset, model_input, views_to_uint8
from sortline.train.loop import Replan, TrainConfig, embedding_std, train
from sortline.train.methods import build_method


def test_backbone_embeds_any_channel_count_and_extends_rgb_weights(tmp_path):
    for c in (1, 3, 4):
        model = build_backbone("resnet10", in_channels=c).eval()
        assert model(torch.zeros(2, c, 32, 32)).shape == (2, model.embedding_dim)
    rgb = build_backbone("resnet10", in_channels=3)
    torch.save(rgb.net.state_dict(), tmp_path / "rgb.pt")
    rgbn = build_backbone("resnet10", in_channels=4, weights=tmp_path / "rgb.pt")
    stem = rgbn.net.conv1.weight
    assert torch.equal(stem[:, :3], rgb.net.conv1.weight)
    assert torch.allclose(stem[:, 3], rgb.net.conv1.weight.mean(1))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg", 4)


def test_bf16_training_gets_true_gradients_where_a_strided_convolution_sees_a_one_pixel_map():
    """16-pixel views reach layer4's stride-2 convolution at 1×1, where oneDNN's bf16 weight
    gradients are garbage on AMX CPUs (train/backbones.py); the backbone computes it in fp32."""
    torch.manual_seed(0)
    model = build_backbone("resnet10", 3).train()
    x = torch.randn(96, 3, 16, 16)
    model(x).float().square().sum().backward()
    exact = model.net.layer4[0].conv1.weight.grad.clone()
    grads = []
    for _ in range(10):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().square().sum()
        loss.backward()
        grads.append(model.net.layer4[0].conv1.weight.grad.clone())
        assert torch.isfinite(grads[-1]).all()
        assert float((grads[-1] - exact).norm() / exact.norm()) < 0.5  # bf16's own error here: about 0.1
    assert all(torch.equal(g, grads[0]) for g in grads)  # the garbage changed from call to call


# im2col: (3, 2, 4), (1, 2, 4); a dense matrix (no more cells than taps): (3, 1, 2), (3, 2, 1), (3, 1, 1), (7, 2, 3)
@pytest.mark.parametrize("kernel, stride, side", [(3, 1, 2), (3, 2, 4), (1, 2, 4), (3, 2, 1), (3, 1, 1), (7, 2, 3)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_a_small_map_convolution_as_a_matrix_product_is_the_convolution(kernel, stride, side, memory_format):
    torch.manual_seed(0)
    conv_class = type(build_backbone("resnet10", 3).net.layer2[0].conv1)  # the backbone's own convolutions
    conv = conv_class(64, 96, kernel, stride, kernel // 2, bias=True)
    x = torch.randn(8, 64, side, side).to(memory_format=memory_format).requires_grad_(True)
    exact = F.conv2d(x, conv.weight, conv.bias, stride, kernel // 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert y.shape == exact.shape
    assert float((y.float() - exact).detach().norm() / exact.detach().norm()) < 0.02
    y.float().square().sum().backward()
    expected = torch.autograd.grad(exact.square().sum(), (conv.weight, conv.bias, x))
    for got, want in zip((conv.weight.grad, conv.bias.grad, x.grad), expected):
        assert float((got - want).norm() / want.norm()) < 0.02


def test_augmentation_moves_channels_together_and_spares_nir_from_colour():
    spec = InputSpec(size=32)
    x = torch.rand(4, 40, 40)
    x[3] = x[0]  # NIR identical to red
    geometric_only = MultiChannelAugment(spec, strength=0.0)
    for _ in range(5):
        y = geometric_only(x.clone()) * 0.25 + 0.5  # undo normalisation
        assert y.shape == (4, 32, 32)
        assert torch.allclose(y[3], y[0], atol=1e-5)
    coloured = MultiChannelAugment(spec, strength=1.0)
    x = torch.rand(4, 32, 32)
    x[3] = 0.5
    outs = torch.stack([coloured(x.clone()) for _ in range(20)])
    assert outs[:, :3].std() > 0  # colour changes
    # NIR is only touched by geometry, blur and its own brightness/contrast: stays uniform.
    per_image_nir_std = outs[:, 3].flatten(1).std(dim=1)
    assert float(per_image_nir_std.max()) < 1e-4


def test_batched_augmentation_does_what_torchvisions_transforms_do():
    """Each operation, given the same parameters, gives torchvision v2's result; the crop boxes
    are drawn as RandomResizedCrop draws them."""
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 16, 16, generator=rng)
    for factor in (0.3, 1.7):
        f = torch.full((6, 1, 1, 1), factor)
        assert torch.allclose(augment._contrast(x.clone(), f), TF.adjust_contrast(x, factor), atol=1e-5)
        assert torch.allclose(augment._saturation(x.clone(), f), TF.adjust_saturation(x, factor), atol=1e-5)
        assert torch.allclose(augment._brightness(x.clone(), f), TF.adjust_brightness(x, factor), atol=1e-5)
    for shift in (-0.2, 0.07, 0.45):
        assert torch.allclose(augment._hue(x, torch.full((6,), shift)), TF.adjust_hue(x, shift), atol=1e-4)
    u = torch.zeros(6, 2)
    u[:, 1] = torch.linspace(0, 1, 6)  # sigma 0.1 .. 1.2, every image blurred
    blurred = augment._blur(x.clone(), u, p=1.0)
    for i, sigma in enumerate((0.1 + 1.1 * u[:, 1]).tolist()):
        assert torch.allclose(blurred[i], TF.gaussian_blur(x[i], [5, 5], [sigma, sigma]), atol=1e-5)

    draws = torch.from_numpy(augment.uniforms(np.arange(4000), 22)).float()
    boxes = augment._crop_boxes(draws, 48, 64, 0.3)
    ours = boxes[:, 2] * boxes[:, 3] / (48 * 64)
    boxes_tv = [RandomResizedCrop.get_params(torch.zeros(3, 48, 64), [0.3, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)]
    theirs = torch.tensor([h * w / (48 * 64) for _, _, h, w in boxes_tv])
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 0] + boxes[:, 2] <= 64 + 1e-4).all()
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 1] + boxes[:, 3] <= 48 + 1e-4).all()
    assert abs(float(ours.mean() - theirs.mean())) < 0.02 and abs(float(ours.std() - theirs.std())) < 0.02


def test_an_images_view_depends_on_its_seed_alone_not_on_its_batch():
    images = np.random.default_rng(1).integers(0, 255, (10, 4, 24, 24), dtype=np.uint8)
    dataset = ViewsDataset(images, MultiChannelAugment(InputSpec(size=16)), views=3, seed=5)
    together, labels = dataset.__getitems__([2, 7, 9])
    alone = dataset[7][0]
    assert together.shape == (3, 3, 4, 16, 16) and labels.tolist() == [-1, -1, -1]
    assert torch.equal(together[1], alone)
    assert not torch.equal(alone[0], alone[1])  # the views differ
    assert not torch.equal(dataset[7 + len(images)][0], alone)  # and so do the epochs
    with pytest.raises(ValueError, match="one epoch"):
        dataset.__getitems__([1, 1 + len(images)])


def test_tile_shuffle_keeps_every_pixel_and_moves_the_tiles():
    spec = InputSpec.for_channels(("r", "g", "b"), 16)
    cfg = AugmentConfig(strength=0.0, blur=0.0, min_scale=1.0, tile_shuffle=1.0, vertical_flip=False)
    image = torch.arange(3 * 16 * 16, dtype=torch.float).view(3, 16, 16) / (3 * 16 * 16)
    aug = MultiChannelAugment(spec, cfg)
    moved = 0
    for seed in range(8):
        view = aug(image.unsqueeze(0), seeds=[seed])[0] * aug.std[0] + aug.mean[0]
        assert torch.allclose(view.flatten().sort().values, image.flatten().sort().values, atol=1e-5)
        moved += not torch.allclose(view[:, :8, :8], image[:, :8, :8], atol=1e-5)
    assert moved >= 4


def test_simclr_lowers_its_loss_on_a_small_set():
    rng = np.random.default_rng(0)
    # Eight distinct blobs: easy to tell apart, hard to tell apart under augmentation by chance.
    base = rng.integers(0, 255, (8, 4, 8, 8), dtype=np.uint8)
    images = np.repeat(np.repeat(base, 4, axis=2), 4, axis=3)
    images = np.concatenate([images] * 8)
    spec = InputSpec(size=32)
    model = build_method("simclr", build_backbone("resnet10", 4), hidden_dim=64, proj_dim=32)
    result = train(model, ViewsDataset(images, MultiChannelAugment(spec, strength=0.3)),
                   TrainConfig(epochs=15, batch_size=32, lr=3e-3, warmup_steps=2, amp="off"), progress=False)
    first, last = np.mean(result.losses[:3]), np.mean(result.losses[-3:])
    assert last < 0.8 * first, (first, last)
    assert len(result.embedding_std) == result.steps and result.embedding_std[-1] > 0.01


def test_a_run_replans_its_length_once_and_its_cosine_ends_there(tmp_path):
    images = np.random.default_rng(0).integers(0, 255, (16, 4, 16, 16), dtype=np.uint8)
    seen = []

    def total(result):
        seen.append((result.steps, result.total_steps))
        return 9

    model = build_method("simclr", build_backbone("resnet10", 4), hidden_dim=16, proj_dim=8)
    log = tmp_path / "log.csv"
    result = train(model, ViewsDataset(images, MultiChannelAugment(InputSpec(size=16), strength=0.3)),
                   TrainConfig(epochs=1, batch_size=4, warmup_steps=1, amp="off", log_path=log), progress=False,
                   replan=Replan(2, total))
    assert seen == [(2, 4)]  # once, after step 2, with the plan's 4 steps (one epoch of 4 batches)
    assert result.steps == result.total_steps == 9
    lrs = [float(line.split(",")[2]) for line in log.read_text().splitlines()[1:]]
    assert len(lrs) == 9 and lrs[-1] == pytest.approx(0.0, abs=1e-9) and lrs[2] > lrs[1] * 0.9  # no cliff


def test_embedding_std_detects_collapse():
    assert embedding_std(torch.ones(16, 32)) == pytest.approx(0.0, abs=1e-6)
    assert embedding_std(torch.randn(256, 32)) == pytest.approx(1 / math.sqrt(32), rel=0.15)


def _moved(view: torch.Tensor, turns: int, mirror: int, dy: int, dx: int) -> torch.Tensor:
    view = torch.rot90(view, turns, dims=(-2, -1))
    return torch.roll(view.flip(-1) if mirror else view, (dy, dx), dims=(-2, -1))


def _items(n: int = 24, views: int = 4, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Items whose class is a dark square in one view's NIR only (class 1) or in none (class 0):
    evidence that a global average over one view barely moves, and pooling over views must keep."""
    rng = np.random.default_rng(seed)
    items = rng.integers(90, 110, (n, views, 4, size, size), dtype=np.uint8)
    labels = np.arange(n) % 2
    for i in np.flatnonzero(labels):
        view, y, x = rng.integers(views), *rng.integers(0, size - 8, 2)
        items[i, view, 3, y:y + 8, x:x + 8] = 20
    return items, labels


def test_items_dataset_turns_mirrors_and_shifts_each_view_and_nothing_else():
    """Each of an item's views is one of its own 8 quarter-turns and mirrors, shifted by at most
    a sixteenth of the size: the same pixels, normalised as the edge does (no crop, no colour
    change), and the views do not all move alike."""
    from sortline.train.data import ItemsDataset

    spec = InputSpec.for_channels(("r", "g", "b", "nir"), 32, views=4)
    items, labels = _items(4)
    data = ItemsDataset(items, labels, spec, seed=3)
    plain = torch.from_numpy(model_input(items[1], spec))  # the edge's normalisation
    moves = set()
    for epoch in range(8):
        views, label = data[epoch * len(data) + 1]
        assert views.shape == (4, 4, 32, 32) and label == labels[1]
        shifts = range(-2, 3)  # 32 px // 16
        for v in range(4):
            candidates = [(k, m, dy, dx) for k in range(4) for m in (0, 1) for dy in shifts for dx in shifts]
            match = [c for c in candidates if torch.equal(views[v], _moved(plain[v], *c))]
            assert match, f"view {v} of epoch {epoch} is not a turn, mirror and shift of the original"
            moves.add(match[0])
        assert torch.equal(data[epoch * len(data) + 1][0], views)  # the same index, the same sample
    assert len(moves) > 8  # views and epochs differ
    with pytest.raises(ValueError):
        ItemsDataset(items, np.array([0, 1, -1, 0]), spec)  # an unlabelled item


def test_items_dataset_gives_each_item_its_sensor_features_or_drops_them():
    """With sensor features a sample is (views, label, sensors); an item's sensors are dropped
    (zeros: the station's fill, standardised) about as often as asked, the same way for the same
    index; the views do not change with them."""
    from sortline.train.data import ItemsDataset

    spec = InputSpec.for_channels(("r", "g", "b", "nir"), 32, views=4)
    items, labels = _items(4)
    sensors = np.arange(1, 13, dtype=np.float32).reshape(4, 3)
    data = ItemsDataset(items, labels, spec, seed=3, sensors=sensors, sensor_dropout=0.3)
    plain = ItemsDataset(items, labels, spec, seed=3)
    dropped = 0
    for index in range(400):
        views, label, given = data[index]
        assert label == labels[index % 4] and given.shape == (3,)
        assert torch.equal(given, torch.zeros(3)) or torch.equal(given, torch.from_numpy(sensors[index % 4]))
        dropped += int(not given.any())
        assert torch.equal(data[index][2], given)
    assert torch.equal(data[5][0], plain[5][0])
    assert 80 <= dropped <= 160  # 0.3 of 400
    with pytest.raises(ValueError):
        ItemsDataset(items, labels, spec, sensors=sensors[:3])
    with pytest.raises(ValueError):
        ItemsDataset(items, labels, spec, sensors=np.full((4, 3), np.nan, np.float32))


def test_the_stage_head_gives_the_stage_layers_logits_on_the_station_features():
    """The item stage's linear layer as the station's head: on the station's fused features
    (views pooled by ``fuse``, then the raw readings) it gives exactly the logits the layer gives
    on the pooled embeddings and the standardised readings, for each of the station's poolings."""
    from sortline.edge_runtime.model.fusion import FusionSpec, fuse, sensor_features
    from sortline.train.methods.supervised import ItemClassifier
    from sortline.train.station_fit import stage_head

    rng = np.random.default_rng(4)
    torch.manual_seed(4)
    backbone = build_backbone("resnet10", in_channels=4).eval()
    views = torch.from_numpy(rng.normal(size=(3, 4, 4, 32, 32)).astype(np.float32))
    readings = [_taps(i, i == 1, rng) for i in range(3)]
    for pools in (("mean", "max"), ("mean",)):
        fusion = FusionSpec.for_sensor("taps", 5, view_pools=pools)
        rows = np.stack([sensor_features(r, fusion) for r in readings])
        mean, scale = rows.mean(axis=0) + 0.5, rows.std(axis=0) + 2.0  # any standardisation
        model = ItemClassifier(backbone, 3, pools, len(fusion.sensor_features)).eval()
        torch.nn.init.normal_(model.head.weight)
        with torch.no_grad():
            h = backbone(views.flatten(0, 1)).view(3, 4, -1)
            pooled = [h.mean(dim=1) if name == "mean" else h.amax(dim=1) for name in pools]
            z = torch.from_numpy(((rows - mean) / scale).astype(np.float32))
            logits = model.head(torch.cat([*pooled, z], dim=1)).numpy()
        head = stage_head(model, ("a", "b", "c"), mean.astype(np.float32), scale.astype(np.float32))
        fused = np.stack([fuse(h[i].numpy(), readings[i], fusion) for i in range(3)])
        assert np.allclose(head.decision_function(fused), logits, atol=1e-3), pools


def _taps(item_id: int, soft: bool, rng: np.random.Generator) -> list:
    """A tap series: a soft fruit gives a lower peak, less rebound and a slower decay."""
    from sortline.hardware.protocol import TapReading

    peak = (12.0 if soft else 20.0) + rng.normal(0, 0.5)
    return [TapReading(item_id, k, 5, peak, 0.3 if soft else 0.6, 50.0 if soft else 25.0, 10 * k) for k in range(5)]


def test_with_a_sensor_the_item_stage_head_takes_the_views_and_the_readings(tmp_path):
    """Three classes: a dark spot in one view's NIR (the views tell it), a soft tap (only the
    sensor tells it), neither. The stage's linear layer, as the station's head on the fused
    features (``fuse``: pooled views, then the readings), finds the spot on new items from their
    views, and on every new item a soft tap series makes the soft class more likely than a firm
    one (a few dozen steps on noise views are too few to say more: Adam moves the layer's
    weights by about the learning rate a step)."""
    from sortline.edge_runtime.model.fusion import FusionSpec, LabeledItem, fuse, sensor_features
    from sortline.hardware.camera import ViewFrame
    from sortline.train.station_fit import FitConfig, train_on_items

    spec = InputSpec.for_channels(("r", "g", "b", "nir"), 32, views=4)
    rng = np.random.default_rng(1)

    def made(n: int, seed: int) -> list[LabeledItem]:
        items, spots = _items(n, seed=seed)
        out = []
        for i, (item, spot) in enumerate(zip(items, spots)):
            soft = not spot and i % 4 == 0
            label = 1 if spot else 2 if soft else 0
            taps = _taps(i, soft, rng)
            out.append(LabeledItem(label, [ViewFrame(rgb=np.ascontiguousarray(v[:3].transpose(1, 2, 0)), nir=v[3])
                                           for v in item], taps))
        return out

    train_items, new_items = made(64, 0), made(32, 5)
    fusion = FusionSpec.for_sensor("taps", 5)
    fusion = fusion.with_fill(np.stack([sensor_features(item.readings, fusion) for item in train_items]))
    torch.manual_seed(0)
    backbone = build_backbone("resnet10", in_channels=4)
    classes = ("plain", "spot", "soft")
    stage = train_on_items(backbone, train_items, classes, spec,
                           FitConfig(item_epochs=40, seed=0, progress=False), tmp_path, fusion)
    assert stage.report["ran"] and stage.report["sensor"] == "taps" and stage.report["sensor_dropout"] > 0
    head = stage.head
    assert head.labels == classes and head.n_features == 2 * backbone.embedding_dim + len(fusion.sensor_features)

    def features(items):
        with torch.no_grad():
            out = []
            for item in items:
                views = torch.from_numpy(model_input(views_to_uint8(item.views, spec), spec))
                out.append(fuse(backbone(views).numpy(), item.readings, fusion))
            return np.stack(out)

    truth = np.array([item.label for item in new_items])
    predicted = head.predict(features(new_items))
    assert (predicted[truth == 1] == 1).all(), (predicted, truth)  # the spot, which the views show
    # the same items with a soft tap are more likely soft than with a firm one, every one of them
    soft = [LabeledItem(item.label, item.views, _taps(0, True, rng)) for item in new_items]
    firm = [LabeledItem(item.label, item.views, _taps(0, False, rng)) for item in new_items]
    assert (head.predict_proba(features(soft))[:, 2] > head.predict_proba(features(firm))[:, 2]).all()
    views = 2 * backbone.embedding_dim  # the pooled views are taken as they are; the readings standardised
    assert (head.mean[:views] == 0).all() and (head.scale[:views] == 1).all() and (head.scale[views:] > 0).all()


def test_the_item_stage_teaches_the_backbone_a_defect_one_view_shows(tmp_path):
    """train_on_items: the backbone learns, from all of an item's views together, evidence that
    one view's NIR holds (what it does on the avocado line: benchmarks/results/fusion_ablation.md)."""
    from sortline.edge_runtime.model.fusion import LabeledItem
    from sortline.hardware.camera import ViewFrame
    from sortline.train.station_fit import FitConfig, train_on_items

    spec = InputSpec.for_channels(("r", "g", "b", "nir"), 32, views=4)
    items, labels = _items(48)
    labeled = [LabeledItem(int(y), [ViewFrame(rgb=np.ascontiguousarray(v[:3].transpose(1, 2, 0)), nir=v[3])
                                    for v in item], []) for item, y in zip(items, labels)]
    torch.manual_seed(0)
    backbone = build_backbone("resnet10", in_channels=4)
    before = [p.detach().clone() for p in backbone.parameters()]
    report = train_on_items(backbone, labeled, ("plain", "spot"), spec,
                            FitConfig(item_epochs=6, seed=0, progress=False), tmp_path).report
    assert report["ran"] and report["items"] == 48 and (tmp_path / "items.csv").is_file()
    assert report["final_loss"] < 0.5 * report["first_loss"]  # it learns the spot (ln 2 = 0.69 at chance)
    assert any(not torch.equal(a, b) for a, b in zip(before, backbone.parameters())) and not backbone.training
    off = train_on_items(backbone, labeled, ("plain", "spot"), spec, FitConfig(item_epochs=0), tmp_path)
    assert not off.report["ran"] and "off" in off.report["why"] and off.head is None
