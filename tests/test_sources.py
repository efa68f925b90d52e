"""Frame sources and the multi-view rig, on files the tests write and on fake cameras."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from sortline.hardware.camera import FrameError
from sortline.hardware.sources import ImageFolderSource, MultiViewRig, OpenCVCamera, TimedFrame, ViewSources


def test_opencv_camera_reads_a_video_file_as_rgb(tmp_path):
    path = str(tmp_path / "clip.avi")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    assert writer.isOpened()
    for _ in range(3):
        writer.write(np.full((24, 32, 3), (255, 0, 0), np.uint8))  # blue, in OpenCV's BGR
    writer.release()
    camera = OpenCVCamera(path)
    frames = [camera.read() for _ in range(3)]
    assert frames[0].image.shape == (24, 32, 3)
    r, g, b = frames[0].image[12, 16].astype(int)
    assert b > 200 and r < 50  # came out as RGB
    with pytest.raises(FrameError, match="no frame"):
        camera.read()
    camera.close()
    nir = OpenCVCamera(path, nir=True)
    assert nir.read().image.shape == (24, 32)
    with pytest.raises(FrameError, match="cannot open"):
        OpenCVCamera(str(tmp_path / "missing.avi"))


def test_image_folder_source_in_name_order(tmp_path):
    for i, value in enumerate((10, 20, 30)):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), np.full((8, 8, 3), value, np.uint8))
    source = ImageFolderSource(tmp_path, nir=True)
    assert [int(source.read().image[0, 0]) for _ in range(3)] == [10, 20, 30]
    with pytest.raises(FrameError, match="no more images"):
        source.read()
    looping = ImageFolderSource(tmp_path, loop=True)
    assert [int(looping.read().image[0, 0, 0]) for _ in range(4)] == [10, 20, 30, 10]


class FakeCamera:
    """Streams frames at a fixed rate; the pixel value is the frame number. Can break."""

    def __init__(self, fps: float = 200, channels: int = 3, broken: bool = False) -> None:
        self.period = 1 / fps
        self.channels = channels
        self.broken = broken
        self.count = 0
        self.lock = threading.Lock()

    def read(self) -> TimedFrame:
        time.sleep(self.period)
        if self.broken:
            raise FrameError("cable unplugged")
        with self.lock:
            self.count += 1
        shape = (16, 16, 3) if self.channels == 3 else (8, 8)
        return TimedFrame(time.monotonic(), np.full(shape, self.count % 256, np.uint8))

    def close(self) -> None:
        pass


def test_rig_groups_views_and_nir_by_trigger_time():
    rig = MultiViewRig([ViewSources(FakeCamera(), FakeCamera(channels=1)) for _ in range(3)])
    try:
        time.sleep(0.05)
        capture = rig.capture(item_id=7)
        assert capture.item_id == 7 and not capture.errors
        assert len(capture.present) == 3
        view = capture.present[0]
        assert view.rgb.shape == (16, 16, 3) and view.nir.shape == (16, 16)  # NIR registered to RGB
    finally:
        rig.close()


def test_rig_reports_a_broken_camera_and_keeps_the_other_views():
    rig = MultiViewRig([ViewSources(FakeCamera()), ViewSources(FakeCamera(broken=True)), ViewSources(FakeCamera())],
                       wait_ms=30)
    try:
        time.sleep(0.05)
        capture = rig.capture(item_id=1)
        assert capture.views[1] is None and capture.views[0] is not None and capture.views[2] is not None
        assert [str(e) for e in capture.errors] == ["view 1 lost: no rgb frame within 40 ms of the trigger"]
        stale = rig.capture(item_id=2, trigger_at=time.monotonic() - 5.0)  # long before any buffered frame
        assert stale.present == [] and len(stale.errors) == 3
    finally:
        rig.close()
