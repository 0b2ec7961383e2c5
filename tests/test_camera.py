"""Camera sources and CameraStream: drop-oldest queue, fault and recovery, OpenCV and folders."""

from __future__ import annotations

import threading
import time

import cv2
import numpy as np
import pytest

from edge.config import CameraConfig
from edge.devices.camera import (
    Camera,
    FolderCamera,
    OpenCVCamera,
    fit_within,
    open_camera,
)
from edge.devices.camera_stream import CameraStream
from edge.errors import DeviceError


class FakeCamera(Camera):
    """A camera that can vanish (open/read raise), stall (read gives nothing) and come back.

    Keeps a history of (monotonic time, call, result) so tests can see retries and back-off.
    """

    name = "fake"

    def __init__(self, period: float = 0.002) -> None:
        super().__init__()
        self.period = period
        self.mode = "ok"  # ok | gone | stalled
        self.history: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()

    def _log(self, call: str, result: str) -> None:
        with self._lock:
            self.history.append((time.monotonic(), call, result))

    def calls(self, call: str, result: str | None = None) -> list[float]:
        with self._lock:
            return [t for t, c, r in self.history if c == call and (result is None or r == result)]

    def open(self) -> None:
        if self.mode == "gone":
            self._log("open", "error")
            raise DeviceError("fake: no camera")
        self._log("open", "ok")

    def read(self):
        time.sleep(self.period)
        if self.mode == "gone":
            self._log("read", "error")
            raise DeviceError("fake: camera vanished")
        if self.mode == "stalled":
            self._log("read", "none")
            return None
        self._log("read", "frame")
        rgb = np.full((4, 4, 3), self._index % 256, np.uint8)
        return self._frame(rgb)

    def close(self) -> None:
        self._log("close", "ok")


def _wait(pred, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.01)
    return pred()


def test_queue_is_bounded_and_drops_the_oldest():
    cam = FakeCamera(period=0.001)
    stream = CameraStream(cam, queue_size=2).start()
    try:
        assert _wait(lambda: stream.frames >= 50)
        a = stream.get(1.0)
        b = stream.get(1.0)
        assert a is not None and b is not None
        assert b.index > a.index
        # the queue held only the newest frames: what we got is far past the first frames
        assert a.index >= 40
        assert a.rgb.dtype == np.uint8 and a.rgb.shape == (4, 4, 3)
    finally:
        stream.stop()
    left = []
    while (f := stream.get(0)) is not None:
        left.append(f)
    assert len(left) <= 2
    # every frame read was either taken, still queued, or counted as dropped
    assert stream.dropped + 2 + len(left) == stream.frames
    assert stream.dropped >= 48
    assert cam.history[-1][1] == "close"


def test_vanished_camera_is_retried_with_backoff_and_recovers():
    cam = FakeCamera()
    faults: list[bool] = []
    stream = CameraStream(cam, 2, faults.append, stall_s=0.3, backoff_s=(0.05, 0.2)).start()
    try:
        assert stream.get(2.0) is not None
        cam.mode = "gone"
        assert _wait(lambda: len(cam.calls("open", "error")) >= 4)
        assert stream.faulted and faults == [True]
        assert "vanished" in stream.last_error or "no camera" in stream.last_error
        opens = cam.calls("open", "error")
        gaps = np.diff(opens)
        # back-off grows (0.1, 0.2, 0.2 ...) and is capped
        assert gaps[0] >= 0.08 and gaps[-1] >= 0.17 and gaps.max() < 0.45

        cam.mode = "ok"
        assert _wait(lambda: not stream.faulted)
        assert faults == [True, False]
        # frames from before the fault; get(0) only empties the queue, whereas a wait would
        # keep taking new frames as fast as the fake makes them and might never stop
        while stream.get(0) is not None:
            pass
        f = stream.get(2.0)
        assert f is not None and f.ts > opens[-1]
        assert stream.faults == 1
    finally:
        stream.stop()


def test_stalled_camera_is_reopened_and_reported():
    cam = FakeCamera()
    faults: list[bool] = []
    stream = CameraStream(cam, 2, faults.append, stall_s=0.2, backoff_s=(0.05, 0.1)).start()
    try:
        assert stream.get(2.0) is not None
        cam.mode = "stalled"
        t_stall = time.monotonic()
        assert _wait(lambda: stream.faulted, 2.0)
        assert time.monotonic() - t_stall >= 0.18  # not before stall_s
        assert "no frame" in stream.last_error
        assert _wait(lambda: len([t for t in cam.calls("open") if t > t_stall]) >= 2)
        cam.mode = "ok"
        assert _wait(lambda: not stream.faulted)
        assert faults == [True, False]
    finally:
        stream.stop()


def test_camera_absent_at_start_faults_then_comes_up():
    cam = FakeCamera()
    cam.mode = "gone"
    faults: list[bool] = []
    stream = CameraStream(cam, 2, faults.append, backoff_s=(0.05, 0.1)).start()
    try:
        assert _wait(lambda: faults == [True])
        assert stream.get(0.1) is None
        cam.mode = "ok"
        assert stream.get(2.0) is not None
        assert faults == [True, False]
    finally:
        stream.stop()


def _write_video(path, n: int, size=(160, 120), fps=10.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    for i in range(n):
        bgr = np.zeros((size[1], size[0], 3), np.uint8)
        bgr[..., 0] = 230  # pure blue in OpenCV's BGR
        bgr[: 10 + 5 * i, :, 1] = 120  # a growing green band marks the frame number
        writer.write(bgr)
    writer.release()


def test_opencv_video_file_gives_rgb_and_finishes(tmp_path):
    video = tmp_path / "clip.avi"
    _write_video(video, 12)
    cam = OpenCVCamera(str(video), 640, 480, fps=None)
    frames = []
    with cam:
        while (f := cam.read()) is not None:
            frames.append(f)
    assert cam.finished and len(frames) == 12
    first = frames[0].rgb
    assert first.shape == (120, 160, 3) and first.dtype == np.uint8
    assert first[..., 2].mean() > 200 and first[..., 0].mean() < 30  # blue is channel 2 in RGB
    bands = [int((f.rgb[:, 0, 1] > 60).sum()) for f in frames]
    assert bands == sorted(bands) and bands[-1] > bands[0]  # frames come in order
    assert [f.index for f in frames] == list(range(12))


def test_opencv_file_loops_and_is_paced(tmp_path):
    video = tmp_path / "clip.avi"
    _write_video(video, 5)
    cam = OpenCVCamera(str(video), 640, 480, fps=50.0, loop=True)
    with cam:
        t0 = time.monotonic()
        frames = [cam.read() for _ in range(12)]
        took = time.monotonic() - t0
    assert all(f is not None for f in frames) and not cam.finished
    assert took >= 11 / 50.0 - 0.02  # 50 fps pacing
    ts = [f.ts for f in frames]
    assert ts == sorted(ts)


def test_stream_over_a_file_finishes(tmp_path):
    video = tmp_path / "clip.avi"
    _write_video(video, 8)
    stream = CameraStream(OpenCVCamera(str(video), fps=200.0), queue_size=16).start()
    got = []
    while (f := stream.get(2.0)) is not None:
        got.append(f.index)
    assert stream.finished and got == list(range(8)) and stream.dropped == 0
    stream.stop()


def test_shared_face_video_through_opencv(face_video):
    cam = OpenCVCamera(str(face_video), width=320, height=240, fps=None)
    with cam:
        frames = [cam.read() for _ in range(10)]
    assert all(f is not None for f in frames)
    h, w, c = frames[0].rgb.shape
    assert c == 3 and w <= 320 and h <= 240 and max(w / 320, h / 240) > 0.95


def test_missing_sources_are_device_errors(tmp_path):
    with pytest.raises(DeviceError, match="not found"):
        OpenCVCamera(str(tmp_path / "nope.mp4")).open()
    with pytest.raises(DeviceError, match="not found"):
        FolderCamera(tmp_path / "nope").open()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DeviceError, match="no images"):
        FolderCamera(tmp_path / "empty").open()


def test_folder_in_order_with_repeats_then_finished(tmp_path):
    for i, name in enumerate(["b.png", "a.jpg", "c.png"]):
        bgr = np.zeros((60, 80, 3), np.uint8)
        bgr[..., 2] = 50 + 60 * i  # red level tells the image apart
        cv2.imwrite(str(tmp_path / name), bgr)
    (tmp_path / "notes.txt").write_text("not an image")
    cam = FolderCamera(tmp_path, repeat=2, fps=None)
    with cam:
        frames = []
        while (f := cam.read()) is not None:
            frames.append(f)
    assert cam.finished
    reds = [int(round(f.rgb[..., 0].mean() / 10) * 10) for f in frames]
    # sorted names: a.jpg (110), b.png (50), c.png (170), each twice
    assert reds == [110, 110, 50, 50, 170, 170]
    assert frames[0].rgb is not frames[1].rgb

    looping = FolderCamera(tmp_path, repeat=1, loop=True)
    with looping:
        reds = [int(round(looping.read().rgb[..., 0].mean() / 10) * 10) for _ in range(5)]
    assert reds == [110, 50, 170, 110, 50]


def test_fit_within_only_shrinks():
    big = np.zeros((1000, 2000, 3), np.uint8)
    assert fit_within(big, 640, 480).shape == (320, 640, 3)
    small = np.zeros((100, 100, 3), np.uint8)
    assert fit_within(small, 640, 480) is small


def test_open_camera_by_kind(tmp_path):
    cam = open_camera(CameraConfig(kind="auto"))
    assert isinstance(cam, OpenCVCamera) and cam.source == 0  # no picamera2 here
    cam = open_camera(CameraConfig(kind="opencv", source="2"))
    assert cam.source == 2
    cam = open_camera(CameraConfig(kind="folder", source=str(tmp_path), repeat=3))
    assert isinstance(cam, FolderCamera) and cam.repeat == 3
    with pytest.raises(DeviceError, match="camera.source"):
        open_camera(CameraConfig(kind="folder", source=""))
    with pytest.raises(DeviceError, match="picamera2"):
        open_camera(CameraConfig(kind="picamera2")).open()


def test_cli_camera_test_on_a_folder(tmp_path, capsys):
    from edge.__main__ import main

    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.png"), np.full((48, 64, 3), 40 * i, np.uint8))
    cfg = tmp_path / "edge.toml"
    cfg.write_text(f'[camera]\nkind = "folder"\nsource = "{tmp_path}"\nrepeat = 3\nfps = 100\n')
    assert main(["-c", str(cfg), "camera-test", "--frames", "6"]) == 0
    out = capsys.readouterr().out
    assert "frames: 6  size: 64x48" in out and "dropped: 0" in out
