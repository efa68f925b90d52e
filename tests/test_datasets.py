"""Both data-set forms, and clear errors for broken ones."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from sortline.edge_runtime.datasets import DatasetError, load_image_set
from sortline.hardware.camera import FrameError
from sortline.hardware.images import read_image


def _png(path, colour=(200, 30, 30), px=24):
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.full((px, px, 3), colour[::-1], np.uint8))
    return path


def test_folder_of_class_folders_is_labeled(tmp_path):
    for cls in ("b-apple", "a-kiwi"):
        for i in range(3):
            _png(tmp_path / cls / f"{i}.png")
    (tmp_path / "a-kiwi" / "notes.txt").write_text("not an image")
    images = load_image_set(tmp_path)
    assert images.class_names == ("a-kiwi", "b-apple")
    assert len(images) == 6 and list(images.labels) == [0, 0, 0, 1, 1, 1]


def test_flat_folder_is_unlabeled(tmp_path):
    for i in range(4):
        _png(tmp_path / f"{i}.jpg")
    images = load_image_set(tmp_path)
    assert not images.labeled and len(images) == 4


def test_split_file_with_class_table(tmp_path):
    _png(tmp_path / "img" / "a.png", (255, 0, 0))
    _png(tmp_path / "img" / "b.png", (0, 255, 0))
    (tmp_path / "train.txt").write_text("img/a.png, 10, 0\nimg/b.png, 2, 1\n\n")
    (tmp_path / "classes.csv").write_text("Class Name (str),Class ID (int)\nKiwi,2\nMango,10\n")
    images = load_image_set(tmp_path / "train.txt")
    assert images.class_names == ("Kiwi", "Mango")  # numeric labels sort as numbers
    assert list(images.labels) == [1, 0]
    (_, frame), = list(images.subset([0]).read())
    assert frame.rgb[0, 0].tolist() == [255, 0, 0] and frame.nir is None


def test_splits_with_different_classes_share_one_index(tmp_path):
    """A val split that lacks some classes (grocery-store's has 60 of 81) must index the ones it
    has as train does, or every score computed across the two is garbage."""
    _png(tmp_path / "img" / "a.png", (255, 0, 0))
    (tmp_path / "classes.csv").write_text("Class Name (str),Class ID (int)\nApple,0\nKiwi,1\nMango,2\n")
    (tmp_path / "train.txt").write_text("img/a.png, 0\nimg/a.png, 1\nimg/a.png, 2\n")
    (tmp_path / "val.txt").write_text("img/a.png, 2\n")
    train, val = load_image_set(tmp_path / "train.txt"), load_image_set(tmp_path / "val.txt")
    assert val.class_names == train.class_names == ("Apple", "Kiwi", "Mango")
    assert list(val.labels) == [2]


def test_broken_sets_name_the_problem(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        load_image_set(tmp_path / "missing")
    (tmp_path / "bad.txt").write_text("only-a-path.png\n")
    with pytest.raises(DatasetError, match="bad.txt:1"):
        load_image_set(tmp_path / "bad.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        load_image_set(tmp_path / "empty")


def test_unreadable_images_stop_the_read_or_are_skipped(tmp_path):
    _png(tmp_path / "set" / "good.png")
    (tmp_path / "set" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    images = load_image_set(tmp_path / "set")
    with pytest.raises(DatasetError, match="corrupt.png"):
        list(images.read())
    assert [i for i, _ in images.read(skip_unreadable=True)] == [1]
    with pytest.raises(FrameError, match="no such image"):
        read_image(tmp_path / "nope.png")
