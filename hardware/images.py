"""Still images from disk as frames: data sets, enrollment shots, recorded views."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .camera import FrameError, ViewFrame

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def read_image(path: str | Path) -> ViewFrame:
    """An image file as an RGB :class:`ViewFrame` (no NIR); :class:`FrameError` if unreadable."""
    path = Path(path)
    data = np.fromfile(path, np.uint8) if path.is_file() else None
    if data is None:
        raise FrameError(f"{path}: no such image file")
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if bgr is None:
        raise FrameError(f"{path}: not a readable image (corrupt, truncated or not an image format)")
    return ViewFrame(rgb=cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), nir=None)
