"""Training data: images held in memory as uint8 (after the edge preprocessing), served as
augmented views by a seeded, resumable sampler.

Sources (:func:`load_training_set`):
- an image data set as DESIGN.md defines it (a folder, or a split file), RGB;
- a multi-view item folder: one subfolder per item with ``v<k>.rgb.<ext>`` and, for every view,
  ``v<k>.nir.<ext>`` when the rig has NIR (the layout of a recording's ``frames/``);
- a recording (``sortline simulate --record``, ``sortline record``): its frames, labeled by its
  ground truth where known.

Randomness is keyed by position, not by history: view ``v`` of sample ``i`` of epoch ``e`` is
augmented with draws keyed by ``(seed, e, i, v)`` (whole batches are augmented at once, each image
with its own draws), and epoch ``e``'s order comes from ``(seed, e)``. Training
resumed at any step therefore sees exactly the batches an uninterrupted run would, with or
without data-loading workers.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from tqdm import tqdm

from sortline.edge_runtime.datasets import DatasetError, ImageSet, load_image_set
from sortline.edge_runtime.model.preprocess import InputSpec, normalize, to_unit_chw
from sortline.hardware.camera import FrameError, ViewFrame
from sortline.hardware.images import IMAGE_SUFFIXES, decode_image, read_image
from sortline.hardware.recording import Recording

from .augment import MultiChannelAugment

UNLABELED = -1
MAX_VIEWS = 64  # views of one image a sample may ask for (each has its own seed)


def views_to_uint8(views: list[ViewFrame], spec: InputSpec) -> np.ndarray:
    """Views through the edge preprocessing (resize, channel order), kept as ``N×C×S×S`` uint8.

    The resized frames are uint8 already, so ×255 and rounding loses nothing.
    """
    return np.stack([np.rint(to_unit_chw(v, spec) * 255).astype(np.uint8) for v in views])


def model_input(images: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Kept ``N×C×S×S`` uint8 images → the normalised float32 input a backbone takes."""
    return normalize(images / np.float32(255), spec)


@dataclass(frozen=True)
class TrainingSet:
    images: np.ndarray  # N×C×S×S uint8, through the edge preprocessing
    labels: np.ndarray  # N int64, UNLABELED where unknown
    class_names: tuple[str, ...]
    spec: InputSpec

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labeled_count(self) -> int:
        return int((self.labels != UNLABELED).sum())


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


@dataclass(frozen=True)
class ResolutionSchedule:
    """Views of ``size`` pixels from epoch ``start`` on, for each ``(start, size)`` in ``steps``:
    low resolution early (cheap epochs, coarse features), higher late (detail), as in
    progressive resizing (FixRes, Touvron et al. 2019; EfficientNetV2, Tan & Le 2021)."""

    steps: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if not self.steps or self.steps[0][0] != 0:
            raise ValueError(f"a resolution schedule starts at epoch 0, got {self.steps}")
        starts = [s for s, _ in self.steps]
        if starts != sorted(set(starts)) or any(not 8 <= size <= 1024 for _, size in self.steps):
            raise ValueError(f"resolution steps need increasing epochs and sizes in 8..1024 px, got {self.steps}")

    @classmethod
    def constant(cls, size: int) -> ResolutionSchedule:
        return cls(((0, size),))

    def size_at(self, epoch: int) -> int:
        return [size for start, size in self.steps if start <= epoch][-1]

    @property
    def largest(self) -> int:
        return max(size for _, size in self.steps)


class ViewsDataset(Dataset):
    """``views`` independent augmentations of image ``i``, and its label.

    Indices are ``epoch·N + i`` (see :class:`EpochSampler`): the epoch is part of the seed, and
    of the view size when a :class:`ResolutionSchedule` is given (every batch holds one epoch's
    samples, so its views share one size).
    """

    def __init__(self, images: np.ndarray, augment: MultiChannelAugment, views: int = 2,
                 labels: np.ndarray | None = None, seed: int = 0,
                 resolution: ResolutionSchedule | None = None) -> None:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected N×C×S×S uint8 images, got {images.shape} {images.dtype}")
        if labels is not None and len(labels) != len(images):
            raise ValueError(f"{len(labels)} labels for {len(images)} images")
        if not 1 <= views <= MAX_VIEWS:
            raise ValueError(f"{views} views an image; 1 to {MAX_VIEWS}")
        self.images = images
        self.labels = np.full(len(images), UNLABELED) if labels is None else np.asarray(labels, dtype=np.int64)
        self.augment = augment
        self.views = views
        self.seed = seed
        self.resolution = resolution

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        views, labels = self.__getitems__([index])
        return views[0], int(labels[0])

    def __getitems__(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch (``N×V×C×S×S`` views, ``N`` labels), augmented together; the loader
        takes it as it is (:meth:`collate`). View ``v`` of sample ``i`` of epoch ``e`` is keyed
        by ``(seed, e, i, v)`` alone."""
        epochs, rows = np.divmod(np.asarray(indices, dtype=np.int64), len(self.images))
        if len(set(epochs.tolist())) != 1:
            raise ValueError(f"a batch holds one epoch's samples, got epochs {sorted(set(epochs.tolist()))}")
        epoch = int(epochs[0])
        seeds = np.array([(_sample_seed(self.seed, epoch, int(i)) * MAX_VIEWS + v) % 2**64
                          for i in rows for v in range(self.views)], dtype=np.uint64)
        size = self.resolution.size_at(epoch) if self.resolution else None
        views = self.augment(torch.from_numpy(self.images[np.repeat(rows, self.views)]), size, seeds)
        return views.unflatten(0, (len(rows), self.views)), torch.from_numpy(self.labels[rows])

    @staticmethod
    def collate(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return batch


class ItemsDataset(Dataset):
    """Whole items for a supervised stage: item ``i``'s ``V`` camera views (``N×V×C×S×S`` uint8,
    through the edge preprocessing) normalised as the station normalises them, and its label.

    Each view is turned by its own quarter turns, mirrored half of the time and shifted by up to
    a sixteenth of its size (wrapping round: the belt's edge, not the item): an item lies any way
    up under each camera, and the stage then learns the defect, not the 600 items it was shown
    (on the simulated avocado line, views-only MCC 0.872 with mirroring alone, 0.937 with this
    and 30 epochs in the same two minutes; docs/defects.md). Nothing else is augmented: a crop
    could cut away the very patch that makes an item a defect, and colour jitter would wash out
    the darker NIR of a bruise. Indices are ``epoch·N + i``, as in :class:`ViewsDataset`.

    With ``sensors`` (``N×F`` float32, the items' sensor features standardised, 0 where a reading
    is missing) a sample is ``(views, label, sensors)``; each item's readings are then dropped
    (all zero, as the station fills a missing reading) with probability ``sensor_dropout``, so
    that what is learned still decides an item whose sensor failed."""

    def __init__(self, items: np.ndarray, labels: np.ndarray, spec: InputSpec, seed: int = 0,
                 sensors: np.ndarray | None = None, sensor_dropout: float = 0.0) -> None:
        if items.dtype != np.uint8 or items.ndim != 5:
            raise ValueError(f"expected N×V×C×S×S uint8 items, got {items.shape} {items.dtype}")
        if len(labels) != len(items) or (np.asarray(labels) < 0).any():
            raise ValueError(f"{len(labels)} labels for {len(items)} items; every item needs one")
        if sensors is not None and (sensors.ndim != 2 or len(sensors) != len(items) or not np.isfinite(sensors).all()):
            raise ValueError(f"sensors must be N×F finite numbers for {len(items)} items, got {sensors.shape}")
        if not 0.0 <= sensor_dropout < 1.0:
            raise ValueError(f"sensor_dropout {sensor_dropout} is outside [0, 1)")
        self.items = items
        self.labels = np.asarray(labels, dtype=np.int64)
        self.seed = seed
        self.spec = spec
        self.sensors = None if sensors is None else np.asarray(sensors, np.float32)
        self.sensor_dropout = float(sensor_dropout)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int] | tuple[torch.Tensor, int, torch.Tensor]:
        epoch, i = divmod(int(index), len(self.items))
        rng = np.random.default_rng(_sample_seed(self.seed, epoch, i))
        shift = self.spec.size // 16
        views = []
        for view in torch.from_numpy(model_input(self.items[i], self.spec)):
            view = torch.rot90(view, int(rng.integers(4)), dims=(-2, -1))
            if rng.random() < 0.5:
                view = view.flip(-1)
            views.append(torch.roll(view, tuple(int(d) for d in rng.integers(-shift, shift + 1, 2)), dims=(-2, -1)))
        if self.sensors is None:
            return torch.stack(views), int(self.labels[i])
        keep = rng.random() >= self.sensor_dropout
        return torch.stack(views), int(self.labels[i]), torch.from_numpy(self.sensors[i] * np.float32(keep))


class EpochSampler(Sampler[int]):
    """Epoch-keyed order of a data set, optionally class-balanced, sharded over processes.

    ``set_epoch(e, skip)`` chooses the epoch and how many of this process's samples to skip
    (a resumed run skips the batches already trained on). With ``balanced`` each epoch draws N
    samples with probability 1/count(label), so rare quality classes are seen as often as
    common ones; unlabeled images count as one class.
    """

    def __init__(self, labels: np.ndarray, seed: int = 0, balanced: bool = False, rank: int = 0, world: int = 1):
        self.n = len(labels)
        self.seed = seed
        self.rank, self.world = rank, world
        self.weights = None
        if balanced:
            _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
            self.weights = torch.as_tensor(1.0 / counts[inverse], dtype=torch.double)
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
        if self.weights is not None:
            idx = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            idx = torch.randperm(self.n, generator=g)
        per_rank = self.n // self.world  # every process the same count, so DDP steps stay in step
        return idx[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __len__(self) -> int:
        return self.n // self.world - self.skip

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * self.n
        for i in self.order(self.epoch)[self.skip:].tolist():
            yield base + i


# ---------------------------------------------------------------- sources


_VIEW_FILE = re.compile(r"^v(\d+)\.(rgb|nir)$")


def _item_views(folder: Path) -> dict[int, dict[str, Path]]:
    views: dict[int, dict[str, Path]] = {}
    for path in folder.iterdir():
        if path.suffix.lower() in IMAGE_SUFFIXES and (m := _VIEW_FILE.match(path.stem)):
            views.setdefault(int(m.group(1)), {})[m.group(2)] = path
    return views


def is_item_folder(path: Path) -> bool:
    """A folder of items, each a subfolder with ``v<k>.rgb.*`` view images."""
    return path.is_dir() and any(p.is_dir() and any(v.get("rgb") for v in _item_views(p).values())
                                 for p in sorted(path.iterdir())[:20])


def is_recording(path: Path) -> bool:
    return path.is_dir() and (path / "recording.json").is_file() and (path / "frames").is_dir()


def _load_items(folder: Path, size: int, labels: dict[str, int], class_names: tuple[str, ...],
                skip_unreadable: bool, progress: bool) -> TrainingSet:
    items = sorted(p for p in folder.iterdir() if p.is_dir())
    found = [(item, _item_views(item)) for item in items]
    found = [(item, views) for item, views in found if views]
    if not found:
        raise DatasetError(f"{folder}: no item subfolders with v<k>.rgb.* images")
    nir = all("nir" in v for _, views in found for v in views.values() if "rgb" in v)
    spec = InputSpec.for_channels(("r", "g", "b", "nir") if nir else ("r", "g", "b"), size,
                                  views=max(len(v) for _, v in found))
    arrays, label_list, skipped = [], [], 0
    for item, views in tqdm(found, desc="read items", unit="item", disable=not progress, dynamic_ncols=True):
        for k in sorted(views):
            files = views[k]
            if "rgb" not in files:
                continue
            try:
                frame = ViewFrame(rgb=read_image(files["rgb"]).rgb,
                                  nir=decode_image(np.fromfile(files["nir"], np.uint8), what=str(files["nir"]),
                                                   gray=True) if nir else None)
            except (FrameError, OSError) as exc:
                if not skip_unreadable:
                    raise DatasetError(f"{exc} (pass skip_unreadable to leave such images out)") from exc
                skipped += 1
                continue
            arrays.append(views_to_uint8([frame], spec)[0])
            label_list.append(labels.get(item.name, UNLABELED))
    if not arrays:
        raise DatasetError(f"{folder}: no readable views ({skipped} unreadable)")
    return TrainingSet(np.stack(arrays), np.asarray(label_list, dtype=np.int64), class_names, spec)


def load_training_set(path: Path, size: int = 64, skip_unreadable: bool = False,
                      progress: bool = False) -> TrainingSet:
    """Any of the sources above, through the edge preprocessing at ``size`` pixels."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if is_recording(path):
        recording = Recording.open(path)
        labels = {f"{row['item_id']:06d}": int(row["label"]) for row in recording.truth
                  if row.get("label") is not None}
        return _load_items(path / "frames", size, labels, tuple(recording.meta.get("labels", ())),
                           skip_unreadable, progress)
    if is_item_folder(path):
        return _load_items(path, size, {}, (), skip_unreadable, progress)
    return image_set_arrays(load_image_set(path), size, skip_unreadable, progress, what=str(path))


def image_set_arrays(images: ImageSet, size: int = 64, skip_unreadable: bool = False, progress: bool = False,
                     what: str = "image set") -> TrainingSet:
    """The images of an :class:`ImageSet` through the edge preprocessing, RGB at ``size`` px."""
    spec = InputSpec.for_channels(("r", "g", "b"), size)
    kept, arrays = [], []
    for i, frame in tqdm(images.read(skip_unreadable=skip_unreadable), total=len(images), desc="read images",
                         unit="image", disable=not progress, dynamic_ncols=True):
        kept.append(i)
        arrays.append(views_to_uint8([frame], spec)[0])
    if not arrays:
        raise DatasetError(f"{what}: no readable images")
    labels = (images.labels[kept].astype(np.int64) if images.labeled
              else np.full(len(kept), UNLABELED, dtype=np.int64))
    return TrainingSet(np.stack(arrays), labels, images.class_names, spec)


def read_pairs(path: Path, images: Path) -> list[tuple[int, int]]:
    """A pairs file (``a, b`` per line: two images of one item, paths as in the data set's
    split file) as index pairs into the data set at ``images``."""
    image_set = load_image_set(images)
    root = Path(images).parent if Path(images).is_file() else Path(images)
    index = {p.resolve(): i for i, p in enumerate(image_set.paths)}
    pairs = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 2:
            raise DatasetError(f"{path}:{n}: expected 'image_a, image_b', got {line!r}")
        try:
            pairs.append(tuple(index[(root / p).resolve()] for p in parts))
        except KeyError as exc:
            raise DatasetError(f"{path}:{n}: {exc.args[0]} is not in {images}") from None
    return pairs


def batches_per_epoch(n: int, batch_size: int, world: int = 1) -> int:
    """Full batches only, except that a share smaller than one batch is one batch."""
    per_rank = n // world
    return max(per_rank // batch_size, min(per_rank, 1))
