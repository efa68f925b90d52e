"""Data sets for training: views held in memory as uint8, served as augmented pairs."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from sortline.edge_runtime.preprocess import InputSpec, to_unit_chw
from sortline.hardware.camera import ViewFrame

from .augment import MultiChannelAugment


def views_to_uint8(views: list[ViewFrame], spec: InputSpec) -> np.ndarray:
    """Views through the edge preprocessing (resize, channel order), kept as ``N×C×S×S`` uint8.

    The resized frames are uint8 already, so ×255 and rounding loses nothing.
    """
    return np.stack([np.rint(to_unit_chw(v, spec) * 255).astype(np.uint8) for v in views])


class PairDataset(Dataset):
    """Two independent augmentations of the same view, for contrastive methods."""

    def __init__(self, images: np.ndarray, augment: MultiChannelAugment) -> None:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected N×C×S×S uint8 images, got {images.shape} {images.dtype}")
        self.images = images
        self.augment = augment

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.from_numpy(self.images[i]).float().div_(255)
        return self.augment(image.clone()), self.augment(image)
