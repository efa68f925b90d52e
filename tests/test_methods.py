"""The ten methods behind one loop: each lowers its loss on a small synthetic set, the
collapse monitor is logged, training resumes exactly, and every method runs from the command
line on image folders and on simulator data (multi-view item folders with NIR)."""

from __future__ import annotations

import csv
import itertools
import json

import cv2
import numpy as np
import pytest
import torch

from sortline.edge_runtime.cli import main
from sortline.edge_runtime.model.preprocess import InputSpec
from sortline.hardware.sim.avocado import make_fruit, render_views
from sortline.train.augment import AugmentConfig, MultiChannelAugment
from sortline.train.backbones import BACKBONES, LCAPool, build_backbone, lca_weights
from sortline.train.checkpoint import load_checkpoint
from sortline.train.data import EpochSampler, ViewsDataset
from sortline.train.loop import TrainConfig, train
from sortline.train.methods import METHODS, build_method
from sortline.train.methods.pretext import RotNet, cut_tiles, permutation_set


def blobs(classes: int = 8, copies: int = 8, channels: int = 4, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """``classes`` distinct coarse random patterns, each repeated ``copies`` times."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (classes, channels, 8, 8), dtype=np.uint8)
    images = np.repeat(np.repeat(base, size // 8, axis=2), size // 8, axis=3)
    return np.concatenate([images] * copies), np.tile(np.arange(classes), copies)


def small(name: str, backbone, **extra):
    if name == "supervised":
        return build_method(name, backbone, classes=16, **extra)
    sizes = dict(hidden_dim=64)
    if name in ("simclr", "moco", "byol", "supcon", "distill"):
        sizes["proj_dim"] = 32
    if name == "moco":
        sizes["queue_size"] = 32
    if name == "jigsaw":
        sizes["permutations"] = 8
    return build_method(name, backbone, **sizes, **extra)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_lowers_its_loss_and_logs_the_collapse_monitor(name, tmp_path):
    torch.manual_seed(0)
    # Supervised methods get classes of four; the others distinct images, since identical
    # copies would be negatives of each other.
    images, labels = blobs(16, 4) if METHODS[name].needs_labels else blobs(64, 1)
    extra = {"teacher": build_backbone("resnet10", 4)} if name == "distill" else {}
    if name == "distill":  # half the rows unlabeled: they learn from the teacher
        labels = np.where(np.arange(len(labels)) % 2 == 0, labels, -1)
    model = small(name, build_backbone("resnet10", 4), **extra)
    augment = MultiChannelAugment(InputSpec(size=32), AugmentConfig(strength=0.3, vertical_flip=model.vertical_flip))
    dataset = ViewsDataset(images, augment, views=model.views, labels=labels)
    log_path = tmp_path / "log.csv"
    # MoCo's loss falls slowly here: over 12 epochs by 1.4-5.8 % (3 seeds; bf16 and fp32 alike), over
    # 24 by 5.7-8.3 %
    epochs = 24 if name == "moco" else 12
    result = train(model, dataset, TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, warmup_steps=2,
                                               log_path=log_path), progress=False)
    skip = 1 if name == "moco" else 0  # MoCo's loss rises once real keys replace the random queue
    first, last = np.mean(result.losses[skip:skip + 3]), np.mean(result.losses[-3:])
    assert last < first - 0.05 * abs(first), (name, first, last)
    assert np.isfinite(result.losses).all()
    rows = list(csv.DictReader(open(log_path)))
    assert len(rows) == result.steps and float(rows[-1]["embedding_std"]) > 0
    assert json.loads(log_path.with_suffix(".json").read_text())["steps"] == result.steps


def test_distill_leaves_the_teacher_frozen():
    teacher = build_backbone("resnet10", 4)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    model = small("distill", build_backbone("resnet10", 4), teacher=teacher)
    images, labels = blobs(copies=2)
    labels[::2] = -1
    train(model, ViewsDataset(images, MultiChannelAugment(InputSpec(size=32)), labels=labels),
          TrainConfig(epochs=2, batch_size=8, warmup_steps=1), progress=False)
    for k, v in model.teacher.state_dict().items():
        assert torch.equal(v, before[k]), k


@pytest.mark.parametrize("name", ["moco", "jigsaw", "byol"])
def test_training_resumes_exactly(name, tmp_path):
    """Stopped after one step (mid-epoch) and resumed from the state file, a run ends with the
    same weights, momentum encoder, queue and losses as one that never stopped. (In fp32: bf16
    kernels on this CPU are not bit-reproducible even between two uninterrupted runs.)"""
    images, labels = blobs(copies=4)  # 32 images, batch 8: 4 steps per epoch

    def run(config: TrainConfig, resume=None):
        torch.manual_seed(0)
        model = small(name, build_backbone("resnet10", 4))
        dataset = ViewsDataset(images, MultiChannelAugment(InputSpec(size=32)), views=model.views, seed=3)
        return model, train(model, dataset, config, progress=False, resume=resume)

    base = TrainConfig(epochs=1.5, batch_size=8, warmup_steps=1, seed=3, amp="off")
    whole, whole_result = run(base)
    state = tmp_path / "state.pt"
    _, first = run(TrainConfig(**{**base.__dict__, "max_seconds": 0.0, "state_path": state}))
    assert first.steps == 1
    resumed, resumed_result = run(base, resume=state)
    assert resumed_result.steps == whole_result.steps == 6 and resumed_result.resumed_from == 1
    assert resumed_result.losses == whole_result.losses
    for (k, a), (_, b) in zip(whole.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k


def test_epoch_sampler_is_keyed_by_epoch_balances_and_shards():
    labels = np.array([0] * 90 + [1] * 10)
    sampler = EpochSampler(labels, seed=1)
    sampler.set_epoch(2)
    order = list(sampler)
    assert sorted(i - 200 for i in order) == list(range(100))
    sampler.set_epoch(2, skip=30)
    assert list(sampler) == order[30:]
    balanced = EpochSampler(labels, seed=1, balanced=True)
    drawn = []
    for epoch in range(20):
        balanced.set_epoch(epoch)
        drawn.extend(labels[i % 100] for i in balanced)
    assert 0.4 < np.mean(drawn) < 0.6  # the 10% class drawn about half the time
    shards = [list(EpochSampler(labels, seed=1, rank=r, world=2)) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 50 and not set(shards[0]) & set(shards[1])


def test_lca_pooling_is_the_mean_of_all_region_means():
    torch.manual_seed(0)
    fmap = torch.randn(2, 3, 3, 4)
    regions = []
    for t, b in itertools.combinations_with_replacement(range(3), 2):
        for left, r in itertools.combinations_with_replacement(range(4), 2):
            if (b - t + 1) * (r - left + 1) > 1:
                regions.append(fmap[:, :, t:b + 1, left:r + 1].mean(dim=(-2, -1)))
    expected = torch.stack(regions).mean(0)
    assert torch.allclose(LCAPool()(fmap), expected, atol=1e-5)
    assert torch.allclose(LCAPool()(fmap[:, :, :1, :1]), fmap[:, :, 0, 0])  # 1×1: the cell itself
    assert float(lca_weights(5, 5).sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", BACKBONES)
def test_every_backbone_embeds_rgb_nir_and_4_channels_with_either_pooling(name):
    for channels, pool in [(1, "avg"), (4, "lca")]:
        model = build_backbone(name, in_channels=channels, pool=pool).eval()
        with torch.no_grad():
            out = model(torch.rand(2, channels, 64, 64))
        assert out.shape == (2, model.embedding_dim) and torch.isfinite(out).all()


def test_mobilenet_loads_a_torchvision_state_dict_into_a_4_channel_stem(tmp_path):
    from torchvision.models import mobilenet_v3_small

    torch.save(mobilenet_v3_small().state_dict(), tmp_path / "mnv3s.pth")  # as torchvision ships it
    model = build_backbone("mobilenet_v3_small", in_channels=4, weights=tmp_path / "mnv3s.pth")
    assert model.net.features[0][0].weight.shape[1] == 4


def test_pretext_constructions():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float).view(2, 1, 4, 4)
    rotated, target = RotNet.rotations(x)
    assert rotated.shape == (8, 1, 4, 4) and target.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert torch.equal(rotated[6], torch.rot90(x[0], 3, dims=(-2, -1)))
    perms = permutation_set(16)
    assert len({tuple(p.tolist()) for p in perms}) == 16 and perms[0].tolist() == list(range(9))
    assert int(min((a != b).sum() for a, b in itertools.combinations(perms, 2))) >= 6  # far apart
    tiles = cut_tiles(torch.rand(3, 4, 30, 30))
    assert tiles.shape == (3, 9, 4, 8, 8)


def test_colour_operations_spare_nir():
    spec = InputSpec(size=16)
    cfg = AugmentConfig.recipe("simclr", solarize=1.0, channel_shuffle=1.0)
    x = torch.rand(4, 16, 16)
    x[3] = 0.5
    aug = MultiChannelAugment(spec, cfg)
    for _ in range(10):
        y = aug(x.clone()) * 0.25 + 0.5
        assert float(y[3].std()) < 1e-4  # NIR uniform: colour ops never reached it
    with pytest.raises(ValueError):
        AugmentConfig.recipe("sepia")


def _image_folder(root, classes=3, per_class=6):
    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        colour = rng.integers(0, 255, 3)
        for i in range(per_class):
            img = np.clip(colour + rng.normal(0, 20, (40, 40, 3)), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / f"class{c}" / f"{i}.png"), img)
    return root


def _item_folder(root, items=6):
    for item in range(items):
        folder = root / f"{item:06d}"
        folder.mkdir(parents=True)
        for k, view in enumerate(render_views(make_fruit(item, 5))):
            cv2.imwrite(str(folder / f"v{k}.rgb.png"), cv2.cvtColor(view.rgb, cv2.COLOR_RGB2BGR))
            cv2.imwrite(str(folder / f"v{k}.nir.png"), view.nir)
    return root


def test_every_method_runs_from_the_command_line(tmp_path, capsys):
    """On images (RGB) and on simulator data: a recording of a simulated line (4 views per
    item, RGB + NIR, labeled by its ground truth)."""
    images = _image_folder(tmp_path / "images")
    recording = tmp_path / "rec"
    assert main(["simulate", "--scenario", "avocado", "--items", "10", "--rate", "33.3", "--record", str(recording),
                 "--quiet"]) == 0
    common = ["--epochs", "1", "--batch-size", "8", "--image-size", "32", "--quiet", "--json"]
    for data, channels in ((images, ("r", "g", "b")), (recording, ("r", "g", "b", "nir"))):
        teacher = tmp_path / f"supcon-{data.name}.ckpt"
        for name in ["supcon"] + sorted(set(METHODS) - {"supcon"}):
            extra = ["--teacher", str(teacher), "--unlabeled", str(data)] if name == "distill" else []
            out = teacher if name == "supcon" else tmp_path / f"{name}-{data.name}.ckpt"
            pool = ["--pool", "lca"] if name == "simclr" else []
            assert main(["pretrain", "--method", name, "--data", str(data), "--out", str(out), *common, *pool,
                         *extra]) == 0, name
            report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
            assert report["steps"] >= 1 and report["method"] == name
            backbone, spec, meta = load_checkpoint(out)
            assert spec.channels == channels and meta["method"] == name
            assert backbone.pool == ("lca" if name == "simclr" else "avg")


def test_supcon_fine_tunes_on_exemplars_with_negatives(tmp_path, capsys):
    """Detection's fine-tuning: a few exemplar crops per class, any turn (the exemplar recipe),
    and images of none of the classes as negatives, each its own class."""
    images = _image_folder(tmp_path / "images")
    negatives = tmp_path / "negatives"
    negatives.mkdir()
    for p in list((images / "class0").iterdir())[:5]:
        p.rename(negatives / p.name)
    start = tmp_path / "start.ckpt"
    common = ["--epochs", "2", "--batch-size", "8", "--image-size", "32", "--quiet", "--json"]
    assert main(["pretrain", "--method", "simclr", "--data", str(images), "--out", str(start), *common]) == 0
    capsys.readouterr()
    out = tmp_path / "tuned.ckpt"
    assert main(["pretrain", "--method", "supcon", "--data", str(images), "--weights", str(start), "--augment",
                 "exemplar", "--negatives", str(negatives), "--out", str(out), *common]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    kept = sum(1 for _ in images.rglob("*.png"))
    assert report["images"] == kept + 5
    _, _, meta = load_checkpoint(out)
    assert meta["augment"]["rotation"] == 180.0
    assert main(["pretrain", "--method", "simclr", "--data", str(images), "--negatives", str(negatives),
                 *common]) == 2
    assert "--negatives is for supcon" in capsys.readouterr().err


def test_multi_view_item_folders_are_training_data(tmp_path):
    from sortline.train.data import load_training_set

    data = load_training_set(_item_folder(tmp_path / "items"), size=32)
    assert data.images.shape == (24, 4, 32, 32) and data.spec.views == 4 and data.labeled_count == 0


def test_pretrain_errors_are_clear(tmp_path, capsys):
    images = _image_folder(tmp_path / "images")
    flat = tmp_path / "flat"
    flat.mkdir()
    for p in list((images / "class0").iterdir())[:4]:
        p.rename(flat / p.name)
    for method in ("supcon", "supervised"):
        assert main(["pretrain", "--method", method, "--data", str(flat), "--quiet"]) == 2
        assert "needs labels" in capsys.readouterr().err
    assert main(["pretrain", "--method", "distill", "--data", str(images), "--quiet"]) == 2
    assert "--teacher" in capsys.readouterr().err
    assert main(["pretrain", "--method", "simclr", "--data", str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_ddp_through_torchrun_with_two_processes(tmp_path):
    """Two CPU processes (gloo) as ``torchrun`` starts them on a multi-GPU machine: each trains on
    its half of every epoch, gradients are averaged, rank 0 writes the checkpoint."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    images = _image_folder(tmp_path / "images", per_class=12)
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp.ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "sortline.edge_runtime.cli",
                           "pretrain", "--method", "moco", "--data", str(images), "--epochs", "2", "--batch-size", "8",
                           "--image-size", "32", "--out", str(out), "--quiet"],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 4  # 36 images: 18 per process, batch 8
    load_checkpoint(out)
