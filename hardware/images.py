"""Still images from disk as frames: data sets, enrollment shots, recorded views."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import cv2
import numpy as np

from .camera import FrameError, ViewFrame

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
# A small file can claim a huge image (a 389 kB PNG of 20000×20000 decodes into 1.2 GB): the
# pixel count in the header is checked before anything is decoded. 40 MP is a 7300×5500 photo.
MAX_IMAGE_PIXELS = int(os.environ.get("SORTLINE_MAX_IMAGE_PIXELS", 40_000_000))
# OpenCV's own limit backs this up for formats whose header is not read here (TIFF).
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_IMAGE_PIXELS))
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG, JPEG, BMP or WebP header, without decoding; None for other
    formats or a header too short to say."""
    try:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            return struct.unpack(">II", data[16:24])
        if data[:2] == b"BM":
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            chunk = data[12:16]
            if chunk == b"VP8X":
                return 1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little")
            if chunk == b"VP8 ":
                width, height = struct.unpack("<HH", data[26:30])
                return width & 0x3FFF, height & 0x3FFF
            if chunk == b"VP8L":
                bits = int.from_bytes(data[21:25], "little")
                return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        if data[:2] == b"\xff\xd8":
            i = 2
            while i + 9 <= len(data):
                if data[i] != 0xFF:
                    return None
                marker = data[i + 1]
                if marker == 0xFF:  # fill byte
                    i += 1
                    continue
                if marker in _SOF:
                    height, width = struct.unpack(">HH", data[i + 5:i + 9])
                    return width, height
                i += 2 + struct.unpack(">H", data[i + 2:i + 4])[0]
    except struct.error:
        return None
    return None

# A corrupt frame is reported once, as a counted FrameError; OpenCV's own warning on stderr
# for the same frame would only be noise on a line that sees thousands of frames.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


def decode_image(data: bytes | np.ndarray, what: str, gray: bool = False,
                 max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, …) as RGB (H×W×3) or gray (H×W); FrameError if they do
    not decode, or if the header claims more than ``max_pixels`` pixels."""
    buffer = np.frombuffer(data, np.uint8) if isinstance(data, bytes | bytearray) else data
    size = header_size(buffer[:65536].tobytes())
    if size is not None and size[0] * size[1] > max_pixels:
        raise FrameError(f"{what}: {size[0]}×{size[1]} pixels, over the limit of {max_pixels:,} "
                         "(SORTLINE_MAX_IMAGE_PIXELS); not decoded")
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
