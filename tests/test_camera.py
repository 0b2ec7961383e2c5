"""Camera sources and CameraStream: drop-oldest queue, fault and recovery, OpenCV and folders."""

from __future__ import annotations

import math
import threading
import time

import cv2
import numpy as np
import pytest
from support import FakeClock, wait_for

from edge.config.devices import CameraConfig
from edge.devices.camera import (
    Camera,
    FolderCamera,
    OpenCVCamera,
    fit_within,
    open_camera,
)
from edge.devices.camera_stream import POLL_S, CameraStream
from edge.errors import DeviceError


@pytest.fixture
def monotonic() -> FakeClock:
    """``time.monotonic`` for the camera and stream under test: seconds from 0, moved only by
    the reads and pauses of the code under test."""
    return FakeClock(0.0)


class FakeCamera(Camera):
    """A camera that can vanish (open/read raise), stall (read gives nothing) and come back.

    On the real clock a test switches ``mode`` while a stream reads. Given a fake ``clock`` the
    camera lives on it instead: ``script`` gives the mode from each time on, a read takes
    ``period`` of fake time, and at ``end`` the camera finishes, so a stream runs the whole
    schedule at once and stops by itself. ``history`` keeps (time, call, result).
    """

    name = "fake"

    def __init__(
        self,
        period: float = 0.002,
        clock: FakeClock | None = None,
        script: tuple[tuple[float, str], ...] = (),
        end: float = math.inf,
    ) -> None:
        super().__init__()
        self.period = period
        self.clock = clock
        self.script = sorted(script)
        self.end = end
        self._mode = "ok"  # ok | gone | stalled
        self.history: list[tuple[float, str, str]] = []
        self._lock = threading.Lock()

    @property
    def mode(self) -> str:
        if self.clock is None:
            return self._mode
        return ([m for t, m in self.script if t <= self.clock.t] or ["ok"])[-1]

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode = value

    def _now(self) -> float:
        return time.monotonic() if self.clock is None else self.clock.t

    def _log(self, call: str, result: str) -> None:
        with self._lock:
            self.history.append((self._now(), call, result))

    def calls(self, call: str, result: str | None = None) -> list[float]:
        with self._lock:
            return [t for t, c, r in self.history if c == call and (result is None or r == result)]

    def open(self) -> None:
        if self.mode == "gone":
            self._log("open", "error")
            raise DeviceError("fake: no camera")
        self._log("open", "ok")

    def read(self):
        if self.clock is None:
            time.sleep(self.period)
        else:
            self.clock.advance(self.period)
            if self.clock.t >= self.end:
                self.finished = True
                self._log("read", "end")
                return None
        if self.mode == "gone":
            self._log("read", "error")
            raise DeviceError("fake: camera vanished")
        if self.mode == "stalled":
            self._log("read", "none")
            return None
        self._log("read", "frame")
        rgb = np.full((4, 4, 3), self._index % 256, np.uint8)
        return self._frame(rgb, self._now())

    def close(self) -> None:
        self._log("close", "ok")


def run_to_end(stream: CameraStream) -> list:
    """Start a stream over a scripted camera and take every frame until the camera finishes."""
    got = []
    with stream:
        while (f := stream.get(10.0)) is not None:  # the timeout only stops a hung test
            got.append(f)
    assert stream.finished and stream.dropped == 0
    return got


def test_queue_is_bounded_and_drops_the_oldest():
    cam = FakeCamera(period=0.001)
    stream = CameraStream(cam, queue_size=2).start()
    try:
        assert wait_for(lambda: stream.frames >= 50)
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


def test_vanished_camera_is_retried_with_backoff_and_recovers(monotonic):
    # A frame every 0.25 s; the camera is gone from 1 s to 5 s and again from 7 s to 8 s.
    script = ((0.0, "ok"), (1.0, "gone"), (5.0, "ok"), (7.0, "gone"), (8.0, "ok"))
    cam = FakeCamera(0.25, monotonic, script, end=10.0)
    faults: list[bool] = []
    stream = CameraStream(
        cam,
        16,
        faults.append,
        stall_s=3.0,
        backoff_s=(0.5, 2.0),
        clock=monotonic,
        sleep=monotonic.sleep,
    )
    got = run_to_end(stream)
    assert cam.calls("read", "error") == [1.0, 7.0]
    # Back-off doubles from 0.5 s and is capped at 2 s; a frame resets it for the next fault.
    assert monotonic.sleeps == [0.5, 1.0, 2.0, 2.0, 0.5, 1.0]
    assert cam.calls("open", "error") == [1.5, 2.5, 4.5, 7.5]
    assert cam.calls("open", "ok") == [0.0, 6.5, 8.5]
    assert faults == [True, False, True, False] and stream.faults == 2
    assert stream.last_error == "cannot open: fake: no camera"
    # Frames before each fault, none while it lasted, then again from each reopen.
    assert [f.ts for f in got] == [0.25, 0.5, 0.75, 6.75, 8.75, 9.0, 9.25, 9.5, 9.75]
    assert [f.index for f in got] == list(range(9))


def test_stalled_camera_is_reopened_and_reported(monotonic):
    # The camera stays open but gives nothing from 1 s to 3 s; a read takes 1/8 s.
    script = ((0.0, "ok"), (1.0, "stalled"), (3.0, "ok"))
    cam = FakeCamera(0.125, monotonic, script, end=5.0)
    faults: list[tuple[bool, float]] = []
    stream = CameraStream(
        cam,
        32,
        lambda f: faults.append((f, monotonic.t)),
        stall_s=0.5,
        backoff_s=(0.25, 0.5),
        clock=monotonic,
        sleep=monotonic.sleep,
    )
    got = run_to_end(stream)
    last_frame = max(f.ts for f in got if f.ts < 1.0)
    assert last_frame == 0.875
    assert [flag for flag, _ in faults] == [True, False]
    t_fault = faults[0][1]
    # The fault comes at the first empty read more than stall_s after the last frame, not before.
    empty = cam.calls("read", "none")
    assert t_fault == next(t for t in empty if t - last_frame > 0.5)
    assert all(t - last_frame <= 0.5 for t in empty if t < t_fault)
    assert stream.last_error == "no frame for 0.5 s"
    # Closed at once, then reopened after each back-off (0.25 s, then the 0.5 s cap) until frames
    # came again; between those, the stream only polled the open camera.
    assert cam.calls("close")[0] == t_fault
    assert [s for s in monotonic.sleeps if s != POLL_S] == [0.25, 0.5]
    reopened = [t for t in cam.calls("open") if t > t_fault]
    assert len(reopened) == 2 and reopened[0] == pytest.approx(t_fault + 0.25)
    # A reopened camera gets stall_s of its own before it is given up again.
    assert cam.calls("close")[1] - reopened[0] > 0.5
    assert faults[1][1] > 3.0 and all(f.ts > 3.0 for f in got if f.ts > 1.0)


def test_camera_absent_at_start_faults_then_comes_up(monotonic):
    cam = FakeCamera(0.25, monotonic, ((0.0, "gone"), (1.0, "ok")), end=2.0)
    faults: list[bool] = []
    stream = CameraStream(
        cam, 16, faults.append, backoff_s=(0.25, 0.5), clock=monotonic, sleep=monotonic.sleep
    )
    got = run_to_end(stream)
    assert cam.calls("open", "error") == [0.0, 0.25, 0.75]
    assert monotonic.sleeps == [0.25, 0.5, 0.5]
    assert cam.calls("open", "ok") == [1.25]
    assert faults == [True, False]
    assert [f.ts for f in got] == [1.5, 1.75]  # nothing until the camera came up


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


def test_opencv_file_loops_and_is_paced(tmp_path, monotonic):
    video = tmp_path / "clip.avi"
    _write_video(video, 5)
    cam = OpenCVCamera(
        str(video), 640, 480, fps=50.0, loop=True, clock=monotonic, sleep=monotonic.sleep
    )
    with cam:
        frames = [cam.read() for _ in range(12)]
    assert all(f is not None for f in frames) and not cam.finished
    # 50 fps: the first frame at once, each later one 1/50 s after the one before
    assert monotonic.sleeps == pytest.approx([1 / 50.0] * 11)
    assert monotonic.t == pytest.approx(11 / 50.0)
    ts = [f.ts for f in frames]
    assert ts == sorted(ts)


def test_pacing_does_not_burst_after_a_slow_reader(tmp_path, monotonic):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((8, 8, 3), np.uint8))
    cam = FolderCamera(tmp_path, loop=True, fps=4.0, clock=monotonic, sleep=monotonic.sleep)
    with cam:
        cam.read()
        cam.read()  # one period after the first
        monotonic.advance(1.0)  # the reader was busy for four periods
        cam.read()  # late: at once
        cam.read()  # then a full period again, not the missed frames in a burst
    assert monotonic.sleeps == [0.25, 0.25]
    assert monotonic.t == 1.5


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


def test_stop_cuts_a_back_off_short():
    # On the real clock the reader backs off on its stop event: a minute's back-off must not
    # hold up stop(), whose join would otherwise give up after its timeout.
    cam = FakeCamera()
    cam.mode = "gone"
    faults: list[bool] = []
    stream = CameraStream(cam, 2, faults.append, backoff_s=(60.0, 60.0)).start()
    reader = stream._thread
    assert wait_for(lambda: faults == [True])
    stream.stop(timeout=30.0)
    assert reader is not None and not reader.is_alive()
    assert cam.calls("open", "error") and cam.history[-1][1] == "close"
