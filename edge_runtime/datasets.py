"""Image data sets in the two forms DESIGN.md allows.

- a folder: one subfolder per class (labeled), or image files directly in it (unlabeled);
- a split file: lines ``path, label[, coarse_label]`` with paths relative to the file's folder
  (the grocery-store format). Class names come from a ``classes.csv`` beside the file when it
  has ``Class Name`` and ``Class ID`` columns, else the label text is the name.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sortline.hardware.camera import FrameError, ViewFrame
from sortline.hardware.images import IMAGE_SUFFIXES, read_image

from .errors import SortlineError


class DatasetError(SortlineError, ValueError):
    """A data set that cannot be read as given; the message names the file and the line."""


@dataclass(frozen=True)
class ImageSet:
    paths: tuple[Path, ...]
    labels: np.ndarray | None  # class index per image, or None for an unlabeled set
    class_names: tuple[str, ...] = ()

    @property
    def labeled(self) -> bool:
        return self.labels is not None

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> ImageSet:
        idx = np.asarray(indices, dtype=int)
        return ImageSet(
            tuple(self.paths[i] for i in idx),
            None if self.labels is None else self.labels[idx],
            self.class_names,
        )

    def read(self, skip_unreadable: bool = False) -> Iterator[tuple[int, ViewFrame]]:
        """``(index, frame)`` per image. An unreadable image raises :class:`DatasetError`
        naming it, unless ``skip_unreadable``, when it is left out."""
        for i, path in enumerate(self.paths):
            try:
                yield i, read_image(path)
            except FrameError as exc:
                if not skip_unreadable:
                    raise DatasetError(f"{exc} (pass skip_unreadable to leave such images out)") from exc


def images_in(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, in name order."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


MAX_LIST_BYTES = 64 << 20  # a split file or class table: millions of lines, not a disk image


def read_text_lines(path: Path) -> list[str]:
    """A UTF-8 text file's lines; :class:`DatasetError` naming the line of a byte that is not
    UTF-8 (a file saved in Latin-1 or UTF-16, a binary file given by mistake)."""
    try:
        if path.stat().st_size > MAX_LIST_BYTES:
            raise DatasetError(f"{path}: {path.stat().st_size >> 20} MiB; a list of images is under "
                               f"{MAX_LIST_BYTES >> 20} MiB")
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{path}: unreadable ({exc.strerror or exc})") from None
    try:
        return data.decode("utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise DatasetError(f"{path}:{line}: byte 0x{data[exc.start]:02x} at column {column} is not UTF-8 text; "
                           "save the file as UTF-8") from None


def _class_table(split_file: Path) -> tuple[Path, list[str], list[list[str]]]:
    """The ``classes.csv`` beside a split file: its path, lower-cased header and rows (empty
    when there is no such file)."""
    table = split_file.parent / "classes.csv"
    if not table.is_file():
        return table, [], []
    rows = list(csv.reader(read_text_lines(table)))
    return table, [h.strip().lower() for h in rows[0]] if rows else [], rows[1:]


def _column(header: list[str], prefix: str) -> int | None:
    return next((i for i, h in enumerate(header) if h.startswith(prefix)), None)


def _class_names_beside(split_file: Path) -> dict[str, str]:
    _, header, rows = _class_table(split_file)
    name_col, id_col = _column(header, "class name"), _column(header, "class id")
    if name_col is None or id_col is None:
        return {}
    return {row[id_col].strip(): row[name_col].strip() for row in rows if len(row) > max(name_col, id_col)}


def reference_images(split_file: str | Path) -> ImageSet | None:
    """One reference image per class from the ``classes.csv`` beside a split file, when it has
    an ``Iconic Image Path`` column (grocery-store's studio product photos); paths are relative
    to that folder. Labels index the classes as :func:`load_image_set` does for the split."""
    split_file = Path(split_file)
    if not split_file.is_file():
        return None
    table, header, rows = _class_table(split_file)
    name_col, path_col = _column(header, "class name"), _column(header, "iconic image path")
    if name_col is None or path_col is None:
        return None
    names = load_image_set(split_file).class_names
    index = {name: i for i, name in enumerate(names)}
    paths, labels = [], []
    for n, row in enumerate(rows, start=2):
        if len(row) <= max(name_col, path_col) or not row[path_col].strip():
            continue
        name = row[name_col].strip()
        if name not in index:
            raise DatasetError(f"{table}:{n}: class {name!r} is not among {split_file}'s classes")
        paths.append(table.parent / row[path_col].strip().lstrip("/"))
        labels.append(index[name])
    return ImageSet(tuple(paths), np.array(labels), names) if paths else None


def _load_split_file(path: Path) -> ImageSet:
    paths, label_texts = [], []
    for n, line in enumerate(read_text_lines(path), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 2 or not fields[0] or not fields[1]:
            raise DatasetError(f"{path}:{n}: expected 'path, label[, coarse_label]', got {line!r}")
        paths.append(path.parent / fields[0])
        label_texts.append(fields[1])
    if not paths:
        raise DatasetError(f"{path}: no images listed")
    names_by_id = _class_names_beside(path)
    keys = set(label_texts)
    if names_by_id and keys <= set(names_by_id):
        # Every split of a data set indexes its classes the same way: by the full class table,
        # not by the labels this file happens to contain.
        keys |= set(names_by_id)
    keys = sorted(keys, key=lambda t: (not t.isdigit(), int(t) if t.isdigit() else 0, t))
    index = {k: i for i, k in enumerate(keys)}
    return ImageSet(
        tuple(paths),
        np.array([index[t] for t in label_texts]),
        tuple(names_by_id.get(k, k) for k in keys),
    )


def load_image_set(source: str | Path) -> ImageSet:
    """Read a data set description (not the images): a folder or a split file."""
    source = Path(source)
    if source.is_file():
        return _load_split_file(source)
    if not source.is_dir():
        raise DatasetError(f"{source}: no such folder or split file")
    classes = sorted(d for d in source.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes:
        paths, labels = [], []
        for i, folder in enumerate(classes):
            images = images_in(folder)
            paths += images
            labels += [i] * len(images)
        if not paths:
            raise DatasetError(f"{source}: class folders hold no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        return ImageSet(tuple(paths), np.array(labels), tuple(d.name for d in classes))
    images = images_in(source)
    if not images:
        raise DatasetError(f"{source}: no images in this folder")
    return ImageSet(tuple(images), None)
