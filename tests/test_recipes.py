"""The small-data recipe: its time-fitted schedule, the resolution phases, the colour-aware
objective, and the colour-histogram rows of `sortline evaluate`."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_evaluate import store  # noqa: F401  (the drawn grocery-store-like data set)

from sortline.edge_runtime.cli import main
from sortline.edge_runtime.model.preprocess import InputSpec
from sortline.train.augment import MultiChannelAugment
from sortline.train.checkpoint import load_checkpoint
from sortline.train.data import ResolutionSchedule, ViewsDataset
from sortline.train.losses import ColourPredictionLoss, colour_histogram
from sortline.train.pretraining import PretrainConfig, PretrainError, run_pretrain
from sortline.train.recipe_book import RECIPES
from sortline.train.recipes import plan_schedule


def test_resolution_schedule_picks_the_size_of_each_epoch():
    schedule = ResolutionSchedule(((0, 24), (3, 32)))
    assert [schedule.size_at(e) for e in range(5)] == [24, 24, 24, 32, 32] and schedule.largest == 32
    for bad in ((), ((1, 32),), ((0, 24), (0, 32)), ((0, 4),)):
        with pytest.raises(ValueError):
            ResolutionSchedule(bad)
    images = np.random.default_rng(0).integers(0, 255, (6, 3, 40, 40), dtype=np.uint8)
    data = ViewsDataset(images, MultiChannelAugment(InputSpec.for_channels(("r", "g", "b"), 32)),
                        resolution=schedule)
    assert data[0][0].shape == (2, 3, 24, 24)  # epoch 0
    assert data[3 * 6 + 1][0].shape == (2, 3, 32, 32)  # epoch 3, image 1


def test_plan_gives_each_phase_its_share_of_the_time_at_its_measured_speed():
    rates = {48: 400.0, 64: 200.0}  # views/s
    plan = plan_schedule(((0.5, 48), (0.5, 64)), images=1000, views=2, seconds=100, rate=rates.__getitem__)
    # 50 s at 400 views/s is 10 epochs of 2000 views; 50 s at 200 views/s is 5
    assert plan.resolution.steps == ((0, 48), (10, 64)) and plan.epochs == 15
    assert plan.seconds == pytest.approx(100)
    tiny = plan_schedule(((1, 32), (3, 48)), images=1000, views=2, seconds=1, rate=lambda s: 10.0)
    assert tiny.epochs == 2  # never less than an epoch per phase; the hard stop guards the budget
    with pytest.raises(ValueError):
        plan_schedule(((1, 32),), images=10, views=2, seconds=0, rate=lambda s: 1.0)


def test_logged_rate_reads_a_runs_speed_after_a_given_step(tmp_path):
    from sortline.train.recipes import logged_rate

    log, t = tmp_path / "run.csv", 0.0
    rows = ["step,loss,lr,embedding_std,images_per_s"]
    for step in range(1, 11):  # 100 views a step: the first 3 steps take 1 s each, the others 0.5 s
        t += 1.0 if step <= 3 else 0.5
        rows.append(f"{step},1.0,0.1,0.1,{100 * step / t:.4f}")
    log.write_text("\n".join(rows) + "\n")
    assert logged_rate(log, 100, from_step=3) == pytest.approx(200, rel=1e-3)
    assert logged_rate(log, 100) == pytest.approx(1000 / 6.5, rel=1e-3)
    assert logged_rate(log, 100, from_step=10) == logged_rate(log, 100)  # nothing after it: the whole run
    log.write_text(rows[0] + "\n")
    with pytest.raises(ValueError, match="no steps"):
        logged_rate(log, 100)


def test_a_recipe_whose_probe_under_read_the_speed_replans_to_spend_its_budget(store, tmp_path, monkeypatch):  # noqa: F811
    from sortline.train import recipes

    real = recipes.measure_rate
    monkeypatch.setattr(recipes, "measure_rate", lambda *a, **k: real(*a, **k) / 4)  # a probe 4× too slow
    monkeypatch.setattr(recipes, "REPLAN_MIN_STEPS", 2)  # this data set's epoch is 4 steps
    monkeypatch.setattr(recipes, "REPLAN_WARM_STEPS", 1)
    report = run_pretrain(PretrainConfig.from_recipe("small-data", store / "train.txt", backbone="resnet10",
                                                     image_size=32, batch_size=8, max_seconds=20, label_stage=0,
                                                     out=tmp_path / "r.ckpt", progress=False))
    replanned = report["plan"]["replanned"]
    assert report["total_steps"] > replanned["epochs_before"] * 4  # longer than planned (4 steps an epoch)
    assert report["seconds"] <= 20 + 1  # the hard stop still guards
    assert json.loads((tmp_path / "r.plan.json").read_text())["replanned"] == replanned  # a resumed run follows it
    assert load_checkpoint(tmp_path / "r.ckpt")[2]["plan"]["replanned"]["at_step"] == replanned["at_step"]


def test_colour_objective_is_zero_only_for_the_right_histogram_and_trains_the_embedding():
    rgb = torch.zeros(2, 3, 8, 8)
    rgb[1, 0] = 1.0  # pure red
    hist = colour_histogram(rgb, bins=2)
    assert hist[0, 0] == 1 and hist[1, 4] == 1 and torch.allclose(hist.sum(1), torch.ones(2))
    loss = ColourPredictionLoss(4, [0, 1, 2], [0.5] * 3, [0.25] * 3, bins=2)
    views = (rgb - 0.5) / 0.25  # as the backbone takes them
    embeddings = torch.zeros(2, 4, requires_grad=True)
    with torch.no_grad():
        loss.predict.weight.fill_(0.1)  # (a zero embedding meets only the bias, but gets a gradient)
        loss.predict.bias.copy_(torch.log(hist[1] + 1e-9))  # predicts pure red for everything
    both = loss(embeddings, views)
    assert both > 1.0  # the black view is badly predicted
    assert loss(embeddings[1:], views[1:]) < 1e-6  # the red one exactly
    both.backward()
    assert embeddings.grad.abs().sum() > 0


def test_recipe_settings_and_overrides():
    r = RECIPES["small-data"]
    cfg = PretrainConfig.from_recipe("small-data", "photos", image_size=32, backbone=None)
    assert (cfg.method, cfg.backbone, cfg.colour_weight, cfg.max_seconds) == (r.method, r.backbone,
                                                                             r.colour_weight, r.seconds)
    assert cfg.image_size == 32 and cfg.recipe == "small-data"
    with pytest.raises(PretrainError, match="--max-seconds, not --epochs"):
        PretrainConfig.from_recipe("small-data", "photos", epochs=3)
    with pytest.raises(PretrainError, match="unknown recipe"):
        PretrainConfig.from_recipe("huge-data", "photos")


def test_pretrain_recipe_fits_the_budget_and_evaluate_scores_the_histogram(store, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "recipe.ckpt"
    assert main(["pretrain", "--recipe", "small-data", "--data", str(store / "train.txt"), "--backbone",
                 "resnet10", "--image-size", "32", "--batch-size", "8", "--max-seconds", "12",
                 "--out", str(out), "--quiet", "--json"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["plan"]["resolution"] == [[0, 32]]  # the recipe's 64 px, scaled to --image-size
    assert report["steps"] == report["total_steps"] > 0  # the whole schedule ran inside the budget
    assert report["seconds"] <= 12
    backbone, spec, meta = load_checkpoint(out)
    assert spec.size == 32 and meta["recipe"] == "small-data" and meta["colour_weight"] > 0
    saved = json.loads((tmp_path / "recipe.plan.json").read_text())
    assert saved["epochs"] == report["plan"]["epochs"] and 0 < saved["margin"] <= 1
    (tmp_path / "recipe.plan.json").write_text('{"epochs": "many"}')  # a resumed run must follow its plan
    assert main(["pretrain", "--recipe", "small-data", "--data", str(store / "train.txt"), "--backbone", "resnet10",
                 "--image-size", "32", "--batch-size", "8", "--out", str(out), "--resume",
                 str(tmp_path / "recipe.state.pt"), "--quiet"]) == 2
    assert "not a readable plan" in capsys.readouterr().err

    assert main(["evaluate", "--checkpoint", str(out), "--train", str(store / "train.txt"), "--test",
                 str(store / "val.txt"), "--protocol", "linear,oneshot", "--colour-histogram", "--quiet",
                 "--json"]) == 0
    rows = {r["protocol"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["protocols"]}
    assert set(rows) == {"linear", "oneshot", "linear (colour histogram)", "oneshot (colour histogram)",
                         "linear (fused with colour histogram)", "oneshot (fused with colour histogram)"}
    # the drawn products differ by colour: the histogram alone gets them
    assert rows["linear (colour histogram)"]["accuracy"] == 1.0

    phased = run_pretrain(PretrainConfig.from_recipe("small-data", store / "train.txt", backbone="resnet10",
                                                     image_size=32, batch_size=8, max_seconds=4, label_stage=0,
                                                     phases=((0.5, 24), (0.5, 32)), out=tmp_path / "phased.ckpt",
                                                     progress=False))
    (start, low), (switch, high) = phased["plan"]["resolution"]
    assert (start, low, high) == (0, 24, 32) and 1 <= switch < phased["plan"]["epochs"]
    assert phased["steps"] == phased["total_steps"]

    with pytest.raises(SystemExit):
        main(["pretrain", "--recipe", "small-data", "--method", "simclr", "--data", str(store / "train.txt")])
    assert "not allowed with" in capsys.readouterr().err


def test_a_station_pool_of_rgb_and_nir_views_pretrains_with_the_recipe(tmp_path):
    """`sortline demo/fit --recipe`: the pool is RGB+NIR views in memory; the colour objective
    reads the RGB channels, and the bundle records the recipe's plan."""
    from sortline.edge_runtime.model.bundle import load_bundle
    from sortline.train.demo import DemoConfig, train_station_bundle

    trained = train_station_bundle(DemoConfig(seed=1, pool_fruit=16, labeled_fruit=40, image_size=32,
                                              recipe="small-data", max_pretrain_s=10, progress=False),
                                   tmp_path / "demo", {})
    pretrain = load_bundle(trained.bundle.root).manifest.metrics["pretrain"]
    assert pretrain["method"].startswith("recipe small-data (simclr")
    assert pretrain["pool_views"] == 64 and pretrain["plan"]["resolution"] == [[0, 32]]
    assert 0 < pretrain["steps"] <= pretrain["total_steps"]
    _, spec, meta = load_checkpoint(tmp_path / "demo" / "pretrained.ckpt")  # the recipe's, before the item stage
    assert spec.channels == ("r", "g", "b", "nir") and meta["colour_weight"] > 0
    assert load_checkpoint(tmp_path / "demo" / "backbone.ckpt")[2]["method"].endswith("+ item stage")  # the bundle's


def test_simclr_label_stage_learns_from_labeled_rows_only():
    from sortline.train.backbones import build_backbone
    from sortline.train.methods import build_method

    torch.manual_seed(0)
    model = build_method("simclr", build_backbone("resnet10", in_channels=3))
    views = torch.randn(6, 2, 3, 32, 32)
    unlabeled = torch.full((6,), -1)
    before = model(views, unlabeled).loss
    model.attach_labels(3)
    assert torch.allclose(model(views, unlabeled).loss, before)  # no labels: NT-Xent alone
    labeled = torch.tensor([0, 1, 2, -1, -1, -1])
    loss = model(views, labeled).loss
    assert loss > before
    loss.backward()
    assert model.classifier.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        model.attach_labels(1)
    model.attach_labels(3, weight=0, contrast=True)
    assert model.classifier is None
    # the supervised contrast with every image its own class is NT-Xent
    assert torch.allclose(model(views, unlabeled).loss, before, atol=1e-5)
    # same-label images become positives: a batch of one class has more of them, and another loss
    assert not torch.allclose(model(views, torch.zeros(6, dtype=torch.long)).loss, before)


def test_teacher_pseudo_labels_the_unlabeled_images(store):  # noqa: F811
    """The drawn products differ by colour, so the teacher (LR on the embedding fused with the
    colour histogram) labels them right even over an untrained backbone."""
    from sortline.train.backbones import build_backbone
    from sortline.train.data import UNLABELED, TrainingSet, load_training_set
    from sortline.train.pseudolabels import can_label, pseudo_label

    data = load_training_set(store / "train.txt", 32)
    hidden = np.arange(len(data)) % 2 == 1
    masked = TrainingSet(data.images, np.where(hidden, UNLABELED, data.labels), data.class_names, data.spec)
    torch.manual_seed(0)
    result = pseudo_label(build_backbone("resnet10", in_channels=3), masked, threshold=0.0)
    assert result.fused and result.given == (~hidden).sum() and result.pseudo == hidden.sum() and result.unsure == 0
    assert (result.labels[~hidden] == data.labels[~hidden]).all()  # given labels are kept
    assert (result.labels[hidden] == data.labels[hidden]).mean() >= 0.75  # chance: 0.25
    strict = pseudo_label(build_backbone("resnet10", in_channels=3), masked, threshold=1.01)
    assert strict.pseudo == 0 and (strict.labels[hidden] == UNLABELED).all()
    one_class = TrainingSet(data.images, np.where(data.labels == 0, 0, UNLABELED), data.class_names, data.spec)
    assert not can_label(one_class)
    with pytest.raises(ValueError):
        pseudo_label(build_backbone("resnet10", in_channels=3), one_class)


def test_a_label_stage_planned_too_slow_replans_from_its_own_speed(store, tmp_path, monkeypatch):  # noqa: F811
    """The label stage is planned at the first stage's speed; one that runs faster sets its length
    again from its own log, as the first stage does, and ends where the budget does."""
    from sortline.train import pretraining, recipes

    real = pretraining._last_phase_rate
    monkeypatch.setattr(pretraining, "_last_phase_rate", lambda *a: real(*a) / 4)  # planned 4× too slow
    monkeypatch.setattr(recipes, "REPLAN_MIN_STEPS", 2)  # this data set's epoch is 4 steps
    monkeypatch.setattr(recipes, "REPLAN_WARM_STEPS", 1)
    report = run_pretrain(PretrainConfig.from_recipe("small-data", store / "train.txt", backbone="resnet10",
                                                     image_size=32, batch_size=8, max_seconds=16,
                                                     out=tmp_path / "l.ckpt", progress=False))
    stage = report["label_stage"]
    assert stage["planned_steps"] == stage["epochs"] * 4
    assert stage["total_steps"] > stage["planned_steps"] and stage["steps"] > stage["planned_steps"], stage
    assert report["seconds"] + stage["teacher_seconds"] + stage["seconds"] <= 16 + 3  # the hard stop still guards


def test_recipe_label_stage_runs_inside_the_budget_where_labels_exist(store, tmp_path, capsys):  # noqa: F811
    from sortline.train.data import UNLABELED, TrainingSet, load_training_set
    from sortline.train.recipes import RUN_RATE_MARGIN, logged_rate

    data = load_training_set(store / "train.txt", 32)
    masked = TrainingSet(data.images, np.where(np.arange(len(data)) % 2 == 1, UNLABELED, data.labels),
                         data.class_names, data.spec)
    cfg = PretrainConfig.from_recipe("small-data", store / "train.txt", image_size=32, batch_size=8, max_seconds=12,
                                     out=tmp_path / "labels.ckpt", progress=False)
    report = run_pretrain(cfg, masked)
    stage = report["label_stage"]
    assert stage["given"] == (masked.labels != UNLABELED).sum() and stage["pseudo"] + stage["unsure"] == len(data) // 2
    assert stage["steps"] > 0 and stage["epochs"] >= 1
    # planned at the speed the first stage kept (its last phase, from its log), not the probe's
    kept = logged_rate(tmp_path / "labels.csv", 2 * 8, from_step=report["plan"]["resolution"][-1][0] * (len(data) // 8))
    assert stage["planned_views_per_s"] == pytest.approx(RUN_RATE_MARGIN * kept, abs=0.1)
    assert report["seconds"] + stage["teacher_seconds"] + stage["seconds"] <= 12 + 3  # a step past the hard stop
    assert (tmp_path / "labels.labels.csv").is_file()
    _, _, meta = load_checkpoint(tmp_path / "labels.ckpt")
    assert meta["label_stage"]["given"] == stage["given"]

    unlabeled = TrainingSet(data.images, np.full(len(data), UNLABELED), data.class_names, data.spec)
    assert "label_stage" not in run_pretrain(cfg, unlabeled)  # nothing to learn from: self-supervised only
    off = PretrainConfig.from_recipe("small-data", store / "train.txt", image_size=32, batch_size=8, max_seconds=4,
                                     label_stage=0, out=tmp_path / "off.ckpt", progress=False)
    assert "label_stage" not in run_pretrain(off, masked)

    # the CLI: labeled --data and a folder of unlabeled images beside it for the teacher
    assert main(["pretrain", "--recipe", "small-data", "--data", str(store / "train.txt"), "--unlabeled",
                 str(store / "val"), "--image-size", "32", "--batch-size", "8", "--max-seconds", "8",
                 "--out", str(tmp_path / "cli.ckpt"), "--quiet", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    stage = json.loads(out[-1])["label_stage"]
    assert stage["given"] == len(data) and stage["pseudo"] + stage["unsure"] == len(load_training_set(store / "val"))
    assert any(line.startswith("label stage: ") for line in out)

    assert main(["pretrain", "--method", "simclr", "--data", str(store / "train.txt"), "--label-stage", "0.2",
                 "--epochs", "1", "--out", str(tmp_path / "x.ckpt"), "--quiet"]) == 2
    assert "belongs to a recipe" in capsys.readouterr().err
    assert main(["pretrain", "--recipe", "small-data", "--data", str(store / "train.txt"), "--label-stage", "1",
                 "--out", str(tmp_path / "x.ckpt"), "--quiet"]) == 2
    assert "[0, 1)" in capsys.readouterr().err
    assert main(["pretrain", "--recipe", "small-data", "--data", str(store / "train.txt"), "--resume",
                 str(tmp_path / "labels.labels.state.pt"), "--out", str(tmp_path / "labels.ckpt"), "--quiet"]) == 2
    assert "resume from the self-supervised stage" in capsys.readouterr().err


def test_the_supervised_baseline_trains_from_scratch_on_the_labelled_images_within_the_budget(store, tmp_path):  # noqa: F811
    """``benchmarks/quality.py --baseline supervised``: the same backbone and augmentation,
    cross-entropy on the labelled images only, the whole budget planned at its recipe's margin."""
    from sortline.edge_runtime.datasets import DatasetError
    from sortline.train.data import UNLABELED, TrainingSet, load_training_set

    data = load_training_set(store / "train.txt", 32)
    masked = TrainingSet(data.images, np.where(np.arange(len(data)) % 2 == 1, UNLABELED, data.labels),
                         data.class_names, data.spec)
    recipe = RECIPES["supervised"]
    assert (recipe.backbone, recipe.augment, recipe.phases, recipe.seconds) == (
        RECIPES["small-data"].backbone, RECIPES["small-data"].augment, RECIPES["small-data"].phases,
        RECIPES["small-data"].seconds)
    cfg = PretrainConfig.from_recipe("supervised", store / "train.txt", image_size=32, batch_size=8, max_seconds=8,
                                     out=tmp_path / "baseline.ckpt", progress=False)
    report = run_pretrain(cfg, masked)
    assert report["method"] == "supervised" and "label_stage" not in report
    assert report["images"] == (masked.labels != UNLABELED).sum()  # the unlabelled half is left out
    assert report["plan"]["margin"] == recipe.rate_margin and report["steps"] == report["total_steps"] > 0
    assert report["seconds"] <= 8
    backbone, spec, meta = load_checkpoint(tmp_path / "baseline.ckpt")
    assert meta["method"] == "supervised" and spec.size == 32
    with torch.no_grad():
        assert backbone(torch.zeros(2, 3, 32, 32)).shape == (2, backbone.embedding_dim)
    unlabelled = TrainingSet(data.images, np.full(len(data), UNLABELED), data.class_names, data.spec)
    with pytest.raises(DatasetError, match="needs labels"):
        run_pretrain(cfg, unlabelled)
