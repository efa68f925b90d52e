"""pretrain → export → verify from the command line, on images the test draws."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest

from sortline.edge_runtime.cli import main
from sortline.edge_runtime.learning.enroll import bundle_examples
from sortline.edge_runtime.model.bundle import load_bundle
from sortline.train.checkpoint import learned_from_labels, load_checkpoint, save_checkpoint

CLASSES = {"red-disc": (220, 40, 40), "green-square": (40, 200, 60), "blue-bar": (50, 60, 230)}


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Three drawn 'products' on noisy backgrounds, 8 images each."""
    root = tmp_path_factory.mktemp("products")
    rng = np.random.default_rng(0)
    for name, colour in CLASSES.items():
        (root / name).mkdir()
        for i in range(8):
            img = rng.integers(90, 140, (48, 48, 3), dtype=np.uint8)
            c = tuple(int(v) for v in colour[::-1])
            x, y = rng.integers(8, 20, 2)
            if name == "red-disc":
                cv2.circle(img, (int(x) + 10, int(y) + 10), 10, c, -1)
            elif name == "green-square":
                cv2.rectangle(img, (int(x), int(y)), (int(x) + 18, int(y) + 18), c, -1)
            else:
                cv2.rectangle(img, (int(x), 4), (int(x) + 8, 44), c, -1)
            cv2.imwrite(str(root / name / f"{i}.png"), img)
    return root


@pytest.fixture(scope="module")
def checkpoint(image_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ckpt") / "tiny.ckpt"
    assert main(["pretrain", "--method", "simclr", "--data", str(image_folder), "--epochs", "2", "--batch-size", "8",
                 "--image-size", "32", "--out", str(out), "--quiet"]) == 0
    return out


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_int8_export_writes_a_verified_bundle_with_a_probe_head(checkpoint, image_folder, tmp_path, capsys):
    out = tmp_path / "bundle"
    assert main(["export", "--checkpoint", str(checkpoint), "--calibration", str(image_folder), "--int8",
                 "--max-drop", "100", "--out", str(out), "--json"]) == 0
    report = _last_json(capsys)
    assert report["onnx_parity_fp32"]["min_cosine"] >= 0.999
    assert report["model_bytes"]["int8"] < report["model_bytes"]["fp32"] / 2
    assert report["probe"]["images"] == 24 and report["probe"]["classes"] == 3
    bundle = load_bundle(out, public_key=report["signed_with"])  # export signs with the default key
    assert bundle.manifest.labels == tuple(sorted(CLASSES))
    assert bundle.manifest.metrics["export"]["probe"]["drop_points"] == report["probe"]["drop_points"]
    assert bundle.load_head().n_features == bundle.manifest.embedding_dim
    assert bundle_examples(bundle).trained_on is False  # SimCLR never read the labels


def test_a_backbone_that_learned_the_labels_says_so_in_its_bundles_examples(checkpoint, image_folder, tmp_path):
    """A recipe's label stage trained the backbone on the same labelled images the head's
    examples come from: the bundle marks them, so a station does not calibrate its open set on
    them (docs/enrollment.md)."""
    backbone, spec, meta = load_checkpoint(checkpoint)
    labelled = save_checkpoint(tmp_path / "labelled.ckpt", backbone, spec,
                               **{**meta, "label_stage": {"given": 24, "pseudo": 0, "unsure": 0}})
    assert main(["export", "--checkpoint", str(labelled), "--calibration", str(image_folder), "--int8",
                 "--max-drop", "100", "--out", str(tmp_path / "bundle")]) == 0
    assert bundle_examples(load_bundle(tmp_path / "bundle")).trained_on is True
    assert not learned_from_labels({**meta, "label_stage": {"skipped": "budget spent"}})
    assert learned_from_labels({"method": "supervised"}) and learned_from_labels({"item_stage": {"ran": True}})


def test_export_refuses_an_accuracy_drop_over_the_limit_unless_forced(checkpoint, image_folder, tmp_path, capsys):
    out = tmp_path / "bundle"
    # A limit below zero is exceeded by any result, so the refusal path is exercised for sure.
    assert main(["export", "--checkpoint", str(checkpoint), "--calibration", str(image_folder), "--int8",
                 "--max-drop", "-1", "--out", str(out), "--json"]) == 2
    assert "over the limit" in capsys.readouterr().err
    assert not out.exists()
    assert main(["export", "--checkpoint", str(checkpoint), "--calibration", str(image_folder), "--int8",
                 "--max-drop", "-1", "--force", "--out", str(out)]) == 0
    assert load_bundle(out).manifest.metrics["export"]["probe"]["forced"] is True


def test_fp16_and_unlabeled_calibration_give_an_embedding_only_bundle(checkpoint, image_folder, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in sorted(image_folder.glob("*/*.png"))[::3]:
        (flat / f"{path.parent.name}-{path.name}").write_bytes(path.read_bytes())
    out = tmp_path / "bundle"
    assert main(["export", "--checkpoint", str(checkpoint), "--calibration", str(flat), "--fp16",
                 "--out", str(out)]) == 0
    bundle = load_bundle(out)
    assert bundle.manifest.head is None and bundle.manifest.labels == ()
    assert bundle.manifest.metrics["export"]["vs_fp32"]["min_cosine"] > 0.999


def test_broken_checkpoint_and_data_are_clear_errors(tmp_path, image_folder, capsys):
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["export", "--checkpoint", str(bad), "--calibration", str(image_folder),
                 "--out", str(tmp_path / "b")]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    assert main(["pretrain", "--method", "simclr", "--data", str(tmp_path / "nowhere"),
                 "--out", str(tmp_path / "x.ckpt")]) == 2
    assert "no such file or folder" in capsys.readouterr().err


def test_unreadable_calibration_image_is_named_or_skipped(checkpoint, image_folder, tmp_path, capsys):
    broken = tmp_path / "cal"
    broken.mkdir()
    for path in sorted(image_folder.glob("red-disc/*.png"))[:4]:
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / "zz-corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    args = ["export", "--checkpoint", str(checkpoint), "--calibration", str(broken), "--out", str(tmp_path / "b")]
    assert main(args) == 2
    assert "zz-corrupt.png" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
    assert main([*args, "--skip-unreadable"]) == 0


def test_a_class_with_one_image_exports_without_the_probe_and_says_so(checkpoint, image_folder, tmp_path, capsys):
    labeled = tmp_path / "labeled"
    shutil.copytree(image_folder, labeled)
    for path in sorted((labeled / "red-disc").glob("*.png"))[1:]:
        path.unlink()  # red-disc keeps one image
    out = tmp_path / "b"
    assert main(["export", "--checkpoint", str(checkpoint), "--calibration", str(labeled), "--int8",
                 "--out", str(out), "--json"]) == 0
    report = _last_json(capsys)
    assert "single labelled image (red-disc)" in report["probe"]["skipped"]
    assert load_bundle(out, public_key=report["signed_with"]).manifest.labels == tuple(sorted(CLASSES))


def test_a_split_file_that_is_not_utf8_names_its_line(checkpoint, image_folder, tmp_path, capsys):
    split = tmp_path / "train.txt"
    lines = [f"{p.relative_to(image_folder.parent)}, {p.parent.name}" for p in sorted(image_folder.glob("*/*.png"))]
    split.write_bytes("\n".join(lines[:2]).encode() + "\nstr\xe4wberry.png, 1\n".encode("latin-1"))
    for command in (["export", "--checkpoint", str(checkpoint), "--calibration", str(split), "--out",
                     str(tmp_path / "b")],
                    ["pretrain", "--method", "simclr", "--data", str(split), "--epochs", "1", "--out",
                     str(tmp_path / "c.ckpt")]):
        assert main(command) == 2
        assert f"{split}:3: byte 0xe4 at column 4 is not UTF-8 text" in capsys.readouterr().err
