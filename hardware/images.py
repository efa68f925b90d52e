"""Still images from disk as frames: data sets, enrollment shots, recorded views."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .camera import FrameError, ViewFrame

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

# A corrupt frame is reported once, as a counted FrameError; OpenCV's own warning on stderr
# for the same frame would only be noise on a line that sees thousands of frames.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def decode_image(data: bytes | np.ndarray, what: str, gray: bool = False) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, …) as RGB (H×W×3) or gray (H×W); FrameError if they do
    not decode."""
    buffer = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray) else data
    image = cv2.imdecode(buffer, cv2.IMREAD_GRAYSCALE if gray else cv2.IMREAD_COLOR) if buffer.size else None
    if image is None:
        raise FrameError(f"{what}: not a readable image (corrupt, truncated or not an image format)")
    return image if gray else cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path) -> ViewFrame:
    """An image file as an RGB :class:`ViewFrame` (no NIR); :class:`FrameError` if unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FrameError(f"{path}: no such image file")
    return ViewFrame(rgb=decode_image(np.fromfile(path, np.uint8), what=str(path)), nir=None)
