"""What a camera's own frames say about the camera, apart from the items: cheap statistics of a
reference region that items do not cover (by default the belt at the frame's left and right
edges), so that a dimmer lamp or a soft lens is told from a change in the items.

Per view: the mean level of each channel (R, G, B, and NIR where the rig has it), the contrast
(standard deviation of the grey image) and the sharpness (log of the variance of the Laplacian of
the grey image smoothed at σ = 1 px over the grey image's own variance: a lens out of focus lowers
it, sensor noise barely moves it, and dimmer light leaves it alone). About 30 µs a view at 80 px.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from sortline.hardware.camera import ViewFrame

STATISTICS = ("level_r", "level_g", "level_b", "level_nir", "contrast", "sharpness")
RGB_ONLY = STATISTICS[:3] + STATISTICS[4:]


@dataclass(frozen=True)
class ReferenceRegion:
    """Vertical strips at the frame's left and right edges, each ``border`` of its width: where
    a camera sees the belt beside the item."""

    border: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.border <= 0.5:
            raise ValueError(f"reference border {self.border}: a fraction of the width in (0, 0.5]")

    def cut(self, image: np.ndarray) -> np.ndarray:
        k = max(1, int(round(image.shape[1] * self.border)))
        return np.concatenate([image[:, :k], image[:, -k:]], axis=1)


def view_statistics(view: ViewFrame, region: ReferenceRegion = ReferenceRegion()) -> np.ndarray:
    """STATISTICS of one view (``level_nir`` NaN without NIR)."""
    rgb = np.ascontiguousarray(region.cut(view.rgb))
    levels = cv2.mean(rgb)[:3]
    nir = cv2.mean(np.ascontiguousarray(region.cut(view.nir)))[0] if view.nir is not None else np.nan
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    contrast = float(cv2.meanStdDev(grey)[1][0, 0])
    laplacian = cv2.Laplacian(cv2.GaussianBlur(grey, (0, 0), 1.0), cv2.CV_32F)
    spread = float(cv2.meanStdDev(laplacian)[1][0, 0])
    sharpness = float(np.log((spread ** 2 + 1e-6) / (contrast ** 2 + 1e-6)))
    return np.array([*levels, nir, contrast, sharpness], np.float64)
