"""Evaluation protocols, Grad-CAM and the `sortline evaluate` report, on data the tests draw."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from sortline.edge_runtime.cli import main
from sortline.edge_runtime.datasets import load_image_set, reference_images
from sortline.edge_runtime.model.head import LogisticHead
from sortline.edge_runtime.model.preprocess import InputSpec, normalize
from sortline.train.backbones import build_backbone
from sortline.train.data import load_training_set
from sortline.train.eval_report import align_classes
from sortline.train.evaluate import (
    Scores,
    knn,
    kshot,
    linear_probe,
    oneshot,
    parse_protocol,
    retrieval,
    sample_per_class,
)
from sortline.train.explain import class_similarity, grad_cam, pick_stage
from sortline.train.finetune import FineTuneConfig, fine_tune

PRODUCTS = {  # name: (BGR colour, shape)
    "red-disc": ((40, 40, 220), "disc"),
    "green-square": ((60, 200, 40), "square"),
    "blue-bar": ((230, 60, 50), "bar"),
    "yellow-disc": ((40, 220, 230), "disc"),
}


def _draw(colour, shape, rng, noise=True) -> np.ndarray:
    img = rng.integers(90, 140, (48, 48, 3), dtype=np.uint8) if noise else np.full((48, 48, 3), 245, np.uint8)
    x, y = (int(v) for v in rng.integers(6, 18, 2)) if noise else (14, 14)
    if shape == "disc":
        cv2.circle(img, (x + 10, y + 10), 10, colour, -1)
    elif shape == "square":
        cv2.rectangle(img, (x, y), (x + 18, y + 18), colour, -1)
    else:
        cv2.rectangle(img, (x, 4), (x + 8, 44), colour, -1)
    return img


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A data set in the grocery-store form: train/val split files, classes.csv with an iconic
    image per class (clean studio-like drawings), photos with noisy backgrounds."""
    root = tmp_path_factory.mktemp("store")
    rng = np.random.default_rng(0)
    rows = ["Class Name (str),Class ID (int),Coarse Class Name (str),Coarse Class ID (int),Iconic Image Path (str)"]
    splits = {"train": [], "val": []}
    for cid, (name, (colour, shape)) in enumerate(PRODUCTS.items()):
        for split, count in (("train", 8), ("val", 4)):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                rel = f"{split}/{name}/{i}.png"
                cv2.imwrite(str(root / rel), _draw(colour, shape, rng))
                splits[split].append(f"{rel}, {cid}, {cid}")
        icon = f"/iconic/{name}_Iconic.png"
        (root / "iconic").mkdir(exist_ok=True)
        cv2.imwrite(str(root / icon.lstrip("/")), _draw(colour, shape, rng, noise=False))
        rows.append(f"{name},{cid},{name},{cid},{icon}")
    (root / "classes.csv").write_text("\n".join(rows) + "\n")
    for split, lines in splits.items():
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def checkpoint(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    assert main(["pretrain", "--method", "simclr", "--data", str(store / "train.txt"), "--epochs", "2",
                 "--batch-size", "16", "--image-size", "32", "--out", str(out), "--quiet"]) == 0
    return out


# ---------------------------------------------------------------- protocols


def test_retrieval_map_matches_a_hand_computed_ranking():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6]])
    gallery_y = np.array([0, 0, 1])
    queries = np.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])  # length must not matter: cosine
    query_y = np.array([0, 1, 2])  # class 2 has nothing in the gallery
    scores, predicted, extra = retrieval(gallery, gallery_y, queries, query_y)
    # query 0 ranks g0 (hit), g2, g1 (hit): AP = (1/1 + 2/3) / 2; query 1 ranks g1, g2 (hit), g0: AP = 1/2
    assert extra["map"] == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2, abs=1e-4)
    assert extra["queries"] == 2 and extra["queries_without_gallery_class"] == 1
    assert extra["recall_at_1"] == 0.5 and extra["recall_at_5"] == 1.0
    assert list(predicted[:2]) == [0, 0]
    assert scores.accuracy == pytest.approx(1 / 3)


@pytest.mark.filterwarnings("ignore:A single label was found")
def test_knn_votes_with_similarity_weights():
    # two neighbours of class 0 at 60°, one of class 1 at 10°: a plain vote says 0, exp(sim/T) says 1
    angle = np.radians([60, -60, 10])
    train_x = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    train_y = np.array([0, 0, 1])
    _, predicted = knn(train_x, train_y, np.array([[1.0, 0.0]]), np.array([1]), k=3)
    assert predicted[0] == 1
    _, predicted = knn(train_x, train_y, np.array([[1.0, 0.0]]), np.array([0]), k=3, temperature=100.0)
    assert predicted[0] == 0  # a flat weighting is the majority vote


def _blobs(classes=5, per_class=30, dim=16, spread=1.5, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim))
    y = np.repeat(np.arange(classes), per_class)
    return centres[y] + rng.normal(0, spread, (len(y), dim)), y


def test_kshot_draws_k_per_class_and_reports_the_spread():
    x, y = _blobs()
    tx, ty, qx, qy = x[::2], y[::2], x[1::2], y[1::2]
    idx = sample_per_class(ty, 2, np.random.default_rng(0))
    assert np.bincount(ty[idx]).tolist() == [2] * 5
    names = [f"c{i}" for i in range(5)]
    one, five = kshot(tx, ty, qx, qy, names, k=1, seeds=6), kshot(tx, ty, qx, qy, names, k=5, seeds=6)
    assert one.spread.accuracy > 0  # different draws, different heads
    assert five.scores.accuracy > one.scores.accuracy
    everything = kshot(tx, ty, qx, qy, names, k=1000, seeds=3)  # k above the class size: all of them
    assert everything.spread.accuracy == 0
    assert everything.scores.accuracy == pytest.approx(linear_probe(tx, ty, qx, qy, names)[0].accuracy)
    assert one.to_dict()["accuracy_std"] == round(one.spread.accuracy, 4)


def test_oneshot_uses_the_references_and_reports_the_prototype_classifier():
    x, y = _blobs(spread=0.3)
    refs = np.stack([x[y == c][0] for c in range(5)])
    result = oneshot(refs, np.arange(5), x, y, [f"c{i}" for i in range(5)])
    assert result.scores.accuracy > 0.9 and result.extra["prototype_accuracy"] > 0.9
    assert result.extra["references"] == 5


def test_scores_average_over_the_test_classes():
    truth = np.array([0, 0, 1, 1])
    predicted = np.array([0, 2, 1, 1])  # class 2 is not in the test set
    s = Scores.of(truth, predicted)
    assert s.accuracy == 0.75 and s.balanced_accuracy == 0.75
    assert s.macro_f1 == pytest.approx(np.mean([2 * 1 * 0.5 / 1.5, 2 * 1 * 1 / 2]))


@pytest.mark.parametrize("text, parsed", [("linear", ("linear", None)), ("kshot:5", ("kshot", 5)),
                                          ("kshot:all", ("linear", None)), ("finetune", ("finetune", None)),
                                          ("scratch:10", ("scratch", 10)), ("oneshot", ("oneshot", None))])
def test_protocol_names(text, parsed):
    assert parse_protocol(text) == parsed


@pytest.mark.parametrize("text", ["kshot", "kshot:0", "linear:3", "svm", "finetune:x"])
def test_bad_protocol_names_are_refused(text):
    with pytest.raises(ValueError, match="unknown protocol"):
        parse_protocol(text)


# ---------------------------------------------------------------- data


def test_iconic_references_and_class_alignment(store, tmp_path):
    refs = reference_images(store / "train.txt")
    assert refs is not None and len(refs) == len(PRODUCTS)
    train = load_image_set(store / "train.txt")
    assert [train.class_names[i] for i in refs.labels] == list(PRODUCTS)
    assert all(p.is_file() for p in refs.paths)
    # a test folder with a subset of the classes in another order, and one unknown class
    folder = tmp_path / "test"
    for name in ("yellow-disc", "blue-bar", "mystery"):
        (folder / name).mkdir(parents=True)
        cv2.imwrite(str(folder / name / "0.png"), np.zeros((20, 20, 3), np.uint8))
    test = load_training_set(folder, 32)
    aligned = align_classes(tuple(train.class_names), test)
    assert [aligned.class_names[i] for i in aligned.labels] == ["blue-bar", "mystery", "yellow-disc"]
    assert aligned.class_names[:4] == tuple(PRODUCTS) and len(aligned.class_names) == 5


# ---------------------------------------------------------------- looking inside


def test_grad_cam_at_the_last_stage_is_the_class_activation_map():
    """With a linear head on pooled features, Grad-CAM on the last map is relu(Σ w_k A_k)
    (Selvaraju et al., section 3.1), whatever the pooling's weights sum to."""
    torch.manual_seed(0)
    backbone = build_backbone("resnet10", in_channels=3, pool="avg").eval()
    spec = InputSpec.for_channels(("r", "g", "b"), 128)
    images = np.random.default_rng(0).integers(0, 255, (3, 3, 128, 128), dtype=np.uint8)
    with torch.no_grad():
        fmap = backbone.feature_map(torch.from_numpy(normalize(images / np.float32(255), spec))).numpy()
    d = fmap.shape[1]
    rng = np.random.default_rng(1)
    head = LogisticHead(("a", "b"), rng.normal(0, 1, d).astype(np.float32), rng.uniform(0.5, 2, d).astype(np.float32),
                        rng.normal(0, 1, (2, d)).astype(np.float32), np.zeros(2, np.float32))
    cam = grad_cam(backbone, head, images, spec, stage=4)
    assert cam.cells == (4, 4) and cam.heatmaps.shape == (3, 128, 128)
    for i in range(3):
        w = head.coef[cam.predicted[i]] / head.scale
        expected = np.maximum(np.tensordot(w, fmap[i], axes=1), 0)
        expected = cv2.resize(expected, (128, 128), interpolation=cv2.INTER_LINEAR)
        expected /= expected.max()
        np.testing.assert_allclose(cam.heatmaps[i], expected, atol=2e-4)


def test_grad_cam_stage_is_the_deepest_map_of_at_least_four_cells():
    backbone = build_backbone("resnet10", in_channels=3)
    assert pick_stage(backbone, 64) == (3, (4, 4))
    assert pick_stage(backbone, 224) == (4, (7, 7))


def test_grad_cam_points_at_the_object_the_class_is_about():
    """A head whose class is 'the red square' (its embedding minus the background's) lights the
    quadrant where the square is."""
    torch.manual_seed(0)
    backbone = build_backbone("resnet10", in_channels=3)
    spec = InputSpec.for_channels(("r", "g", "b"), 64)
    blank = np.full((1, 3, 64, 64), 120, np.uint8)
    square = blank.copy()
    square[0, 0, 36:60, 36:60], square[0, 1:, 36:60, 36:60] = 230, 20  # bottom-right quadrant
    from sortline.train.evaluate import embed

    e_square, e_blank = embed(backbone, square, spec)[0], embed(backbone, blank, spec)[0]
    d = len(e_square)
    direction = e_square - e_blank
    head = LogisticHead(("square", "background"), np.zeros(d, np.float32), np.ones(d, np.float32),
                        np.stack([direction, -direction]).astype(np.float32), np.zeros(2, np.float32))
    cam = grad_cam(backbone, head, square, spec)
    assert cam.predicted[0] == 0
    heat = cam.heatmaps[0]
    assert heat[32:, 32:].mean() > 2 * max(heat[:32, :32].mean(), heat[:32, 32:].mean(), heat[32:, :32].mean())


def test_item_grad_cam_lights_the_view_and_place_that_carry_the_class():
    """An item of four views decided by a head on the station's pooled features (mean and max of
    the views): only view 2 has the red square, and its map lights the square's quadrant."""
    from sortline.edge_runtime.model.fusion import FusionSpec
    from sortline.train.evaluate import embed

    torch.manual_seed(0)
    backbone = build_backbone("resnet10", in_channels=3)
    spec = InputSpec.for_channels(("r", "g", "b"), 64, views=4)
    views = np.full((4, 3, 64, 64), 120, np.uint8)
    views[2, 0, 36:60, 36:60], views[2, 1:, 36:60, 36:60] = 230, 20
    e = embed(backbone, views, spec)
    direction = np.concatenate([e.mean(0) - e[0], e.max(0) - e[0]])  # the item's pooled features, less a plain one's
    d = len(direction)
    head = LogisticHead(("square", "plain"), np.concatenate([e[0], e[0]]).astype(np.float32), np.ones(d, np.float32),
                        np.stack([direction, -direction]).astype(np.float32), np.zeros(2, np.float32))
    cam = grad_cam(backbone, head, views, spec, fusion=FusionSpec.for_sensor("none", 0))
    assert list(cam.predicted) == [0, 0, 0, 0] and cam.heatmaps.shape == (4, 64, 64)
    heat = cam.heatmaps[2]
    assert heat[32:, 32:].mean() > 2 * max(heat[:32, :32].mean(), heat[:32, 32:].mean(), heat[32:, :32].mean())


def test_class_similarity_finds_the_close_pair_and_orders_it_together():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, (3, 8))
    base[1] = base[0] + 0.1 * rng.normal(0, 1, 8)  # classes 0 and 1 almost alike
    y = np.repeat([0, 1, 2, 3], 5)
    centres = np.vstack([base, rng.normal(0, 1, 8)])
    x = centres[y] + 0.05 * rng.normal(0, 1, (len(y), 8))
    sim = class_similarity(x, y)
    assert sim.pairs[0][:2] == (0, 1) and sim.pairs[0][2] > 0.95
    order = list(sim.classes)
    assert abs(order.index(0) - order.index(1)) == 1
    assert np.allclose(np.diag(sim.matrix), 1.0, atol=1e-5)


def test_fine_tuning_learns_the_classes_and_scores_a_curve(store):
    train = load_training_set(store / "train.txt", 32)
    test = load_training_set(store / "val.txt", 32)
    backbone = build_backbone("resnet10", in_channels=3)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    result = fine_tune(backbone, train, test, FineTuneConfig(epochs=8, batch_size=16, lr=2e-3), from_scratch=True)
    assert result.name == "scratch" and result.images == 32
    assert result.scores.accuracy >= 0.75  # four colours; chance is 0.25
    assert [p["epoch"] for p in result.curve] == [float(e) for e in range(1, 9)]
    few = fine_tune(backbone, train, test, FineTuneConfig(epochs=1, batch_size=16, labels_per_class=2))
    assert few.name == "finetune:2" and few.images == 8
    # fine-tuning trains a copy: the evaluated backbone is left as it was
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())


# ---------------------------------------------------------------- the command


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_evaluate_writes_every_metric_and_plot(checkpoint, store, tmp_path, capsys):
    report = tmp_path / "report"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--train", str(store / "train.txt"),
                 "--test", str(store / "val.txt"), "--protocol", "linear,knn,retrieval,kshot:1,kshot:5,oneshot",
                 "--protocol", "finetune:4", "--baselines", "--finetune-epochs", "2", "--seeds", "3",
                 "--report", str(report), "--quiet", "--json"]) == 0
    summary = _last_json(capsys)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "mcc", "map"):
        assert 0 <= summary[key] <= 1, key
    protocols = {r["protocol"]: r for r in summary["protocols"]}
    assert set(protocols) == {"linear", "knn", "retrieval", "kshot:1", "kshot:5", "oneshot", "finetune:4",
                              "scratch:4", *(f"{p} (random init)" for p in
                                             ("linear", "knn", "retrieval", "kshot:1", "kshot:5", "oneshot"))}
    assert protocols["kshot:5"]["seeds"] == 3 and "accuracy_std" in protocols["kshot:5"]
    assert protocols["oneshot"]["references"] == 4
    assert summary["references"].startswith("iconic images")
    assert len(summary["per_class"]["confusion"]) == 4 and set(summary["per_class"]["classes"]) == set(PRODUCTS)
    for png in ("confusion", "tsne", "class_similarity", "gradcam", "learning_curves"):
        path = report / f"{png}.png"
        assert path.stat().st_size > 10_000, png
        assert cv2.imread(str(path)) is not None
        assert f"({png}.png)" in (report / "report.md").read_text()
    saved = json.loads((report / "report.json").read_text())
    assert saved["accuracy"] == summary["accuracy"] and saved["figures"]["gradcam"] == "gradcam.png"
    text = (report / "report.md").read_text()
    assert "| retrieval |" in text and "Per class" in text and "Most similar classes" in text


def test_evaluate_a_bundle_runs_the_frozen_protocols(tiny_checkout_bundle, store, tmp_path, capsys):
    assert main(["evaluate", "--bundle", str(tiny_checkout_bundle.root), "--train", str(store / "train"),
                 "--test", str(store / "val"), "--protocol", "retrieval", "--json", "--quiet"]) == 0
    summary = _last_json(capsys)
    assert summary["primary_protocol"] == "retrieval" and 0 <= summary["map"] <= 1
    assert main(["evaluate", "--bundle", str(tiny_checkout_bundle.root), "--train", str(store / "train"),
                 "--test", str(store / "val"), "--protocol", "finetune", "--quiet"]) == 2
    assert "need the PyTorch weights" in capsys.readouterr().err


def test_evaluate_errors_are_clear(checkpoint, store, tmp_path, capsys):
    unlabeled = tmp_path / "flat"
    unlabeled.mkdir()
    cv2.imwrite(str(unlabeled / "a.png"), np.zeros((20, 20, 3), np.uint8))
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--train", str(unlabeled),
                 "--test", str(store / "val.txt"), "--quiet"]) == 2
    assert "has no labels" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--train", str(store / "train"),
                 "--test", str(store / "val"), "--protocol", "oneshot", "--quiet"]) == 2
    assert "needs reference images" in capsys.readouterr().err
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--train", str(store / "train"),
                 "--test", str(store / "val"), "--protocol", "kshot", "--quiet"]) == 2
    assert "unknown protocol" in capsys.readouterr().err
