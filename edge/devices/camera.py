"""Camera sources: picamera2 on a Pi, OpenCV (webcam or video file), or a folder of images.

Every source gives ``Frame``s with an RGB uint8 HxWx3 image, a timestamp in seconds on the
monotonic clock, and a running index. ``open_camera`` picks the source from config without
opening it; ``edge.devices.camera_stream.CameraStream`` opens it, retries it and queues frames
(the stream depends on this module, never the other way round).

Contract of a source: ``open()`` raises ``DeviceError`` when the camera is not there; ``read()``
returns a ``Frame``, or ``None`` when no frame is ready (then ``finished`` tells whether a file
or folder reached its end), and raises ``DeviceError`` when the camera has gone.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import DeviceError

log = logging.getLogger(__name__)

__all__ = ["Camera", "FolderCamera", "Frame", "OpenCVCamera", "open_camera"]

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


@dataclass
class Frame:
    """One camera frame: ``rgb`` uint8 HxWx3, ``ts`` monotonic seconds, ``index`` from 0."""

    rgb: np.ndarray
    ts: float
    index: int


class Camera:
    """Base of the sources: a name for logs, a frame counter and a ``finished`` flag."""

    name = "camera"

    def __init__(self) -> None:
        self.finished = False
        self._index = 0

    def open(self) -> None:
        """Acquire the device or file; raise ``DeviceError`` if it is not there."""

    def read(self) -> Frame | None:
        """The next frame, or ``None`` when none is ready or the source has finished."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the device; safe to call twice."""

    def _frame(self, rgb: np.ndarray, ts: float | None = None) -> Frame:
        f = Frame(rgb, time.monotonic() if ts is None else ts, self._index)
        self._index += 1
        return f

    def __enter__(self) -> Camera:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def fit_within(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Shrink (never enlarge) to fit width x height, keeping the aspect ratio."""
    h, w = rgb.shape[:2]
    scale = min(width / w, height / h)
    if scale >= 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


class _Pacer:
    """Holds a recorded source to a frame rate, so a file plays like a live camera.

    ``clock`` and ``sleep`` are ``time.monotonic`` and ``time.sleep`` unless a test gives a
    fake clock's pair.
    """

    def __init__(
        self,
        fps: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        self.period = 1.0 / fps if fps else 0.0
        self.due = 0.0
        self._clock = clock
        self._sleep = sleep

    def wait(self) -> None:
        if not self.period:
            return
        now = self._clock()
        if self.due > now:
            self._sleep(self.due - now)
            now = self.due
        # a reader that fell behind starts again from now rather than bursting to catch up
        self.due = max(self.due, now) + self.period


class OpenCVCamera(Camera):
    """A webcam (device index) or a video file/URL through ``cv2.VideoCapture``.

    Files are paced at ``fps`` (None: as fast as they decode) on ``clock`` with ``sleep``, loop
    when ``loop`` is set and otherwise finish; frames of a file are shrunk to fit width x height.
    """

    def __init__(
        self,
        source: int | str = 0,
        width: int = 640,
        height: int = 480,
        fps: float | None = 15.0,
        loop: bool = False,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        super().__init__()
        self.source = source
        self.width, self.height, self.fps, self.loop = width, height, fps, loop
        self.is_file = isinstance(source, str) and Path(source).is_file()
        self.name = f"opencv:{source}"
        self._cap: cv2.VideoCapture | None = None
        self._pacer = _Pacer(fps if self.is_file else None, clock, sleep)

    def open(self) -> None:
        self.close()
        if isinstance(self.source, str) and not self.is_file and "://" not in self.source:
            raise DeviceError(f"camera: video file not found: {self.source}")
        cap = cv2.VideoCapture(self.source)
        if not cap.isOpened():
            cap.release()
            raise DeviceError(f"camera: cannot open {self.name}")
        if not self.is_file:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            if self.fps:
                cap.set(cv2.CAP_PROP_FPS, self.fps)
        self._cap = cap
        self.finished = False

    def read(self) -> Frame | None:
        if self._cap is None:
            raise DeviceError(f"camera: {self.name} is not open")
        if self.finished:
            return None
        self._pacer.wait()
        ok, bgr = self._cap.read()
        if not ok and self.is_file and self.loop:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, bgr = self._cap.read()
        if not ok or bgr is None:
            if self.is_file:
                self.finished = True
            return None
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        if self.is_file:
            rgb = fit_within(rgb, self.width, self.height)
        return self._frame(rgb)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class FolderCamera(Camera):
    """Images of a folder in sorted name order, each given ``repeat`` times (to stand for a
    person in front of a camera for a while); finishes at the end unless ``loop``. Paced at
    ``fps`` (None: at once) on ``clock`` with ``sleep``, as :class:`OpenCVCamera` paces a file."""

    def __init__(
        self,
        folder: str | Path,
        repeat: int = 1,
        loop: bool = False,
        fps: float | None = None,
        width: int = 640,
        height: int = 480,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.repeat, self.loop = max(1, repeat), loop
        self.width, self.height = width, height
        self.name = f"folder:{self.folder}"
        self.files: list[Path] = []
        self._pos = 0
        self._given = 0
        self._current: np.ndarray | None = None
        self._pacer = _Pacer(fps, clock, sleep)

    def open(self) -> None:
        if not self.folder.is_dir():
            raise DeviceError(f"camera: image folder not found: {self.folder}")
        self.files = sorted(
            p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
        )
        if not self.files:
            raise DeviceError(f"camera: no images in {self.folder}")
        self._pos, self._given, self._current = 0, 0, None
        self.finished = False

    def _load_next(self) -> np.ndarray | None:
        while self._pos < len(self.files):
            path = self.files[self._pos]
            self._pos += 1
            bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if bgr is None:
                log.warning("camera: skipping unreadable image %s", path.name)
                continue
            return fit_within(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), self.width, self.height)
        return None

    def read(self) -> Frame | None:
        if not self.files:
            raise DeviceError(f"camera: {self.name} is not open")
        if self.finished:
            return None
        if self._current is None or self._given >= self.repeat:
            self._current, self._given = self._load_next(), 0
            if self._current is None and self.loop:
                self._pos = 0
                self._current = self._load_next()
            if self._current is None:
                self.finished = True
                return None
        self._pacer.wait()
        self._given += 1
        # a copy, so a consumer that draws on a frame cannot change the next repeat
        return self._frame(self._current.copy())


AF_MODE_CONTINUOUS, AF_SPEED_FAST, AF_RANGE_NORMAL = 2, 1, 0


class Picamera2Camera(Camera):
    """The Raspberry Pi camera through picamera2 (imported here only: it needs libcamera).

    A small "RGB888" main stream is used for inference: on a Pi 4 the lores stream can only
    be YUV. "RGB888" is BGR in memory, so channels are swapped. Auto exposure stays on.

    A camera with autofocus (Camera Module 3) starts in manual focus at about 1 m, where an
    invitation letter held at 20-30 cm is a blur: when the camera lists ``AfMode`` among its
    controls, continuous autofocus at fast speed is switched on (``autofocus`` says so).
    ``factory`` makes the Picamera2 object (tests pass a fake; the default imports picamera2).
    """

    name = "picamera2"

    def __init__(
        self,
        width: int = 640,
        height: int = 480,
        fps: float = 15.0,
        timeout_s: float = 2.0,
        factory=None,
    ) -> None:
        super().__init__()
        self.width, self.height, self.fps, self.timeout_s = width, height, fps, timeout_s
        self._cam = None
        self._factory = factory
        self.autofocus = False

    def _make(self):
        if self._factory is not None:
            return self._factory()
        try:
            from picamera2 import Picamera2
        except ImportError as exc:
            raise DeviceError(f"camera: picamera2 is not installed: {exc}") from exc
        return Picamera2()

    def _controls(self, available) -> dict:
        controls: dict = {"FrameRate": self.fps, "AeEnable": True}
        self.autofocus = "AfMode" in available
        if self.autofocus:
            # libcamera's enum values, so libcamera need not be imported: AfModeContinuous = 2,
            # AfSpeedFast = 1, AfRangeNormal = 0 (down to close distances, not macro only).
            controls["AfMode"] = AF_MODE_CONTINUOUS
            if "AfSpeed" in available:
                controls["AfSpeed"] = AF_SPEED_FAST
            if "AfRange" in available:
                controls["AfRange"] = AF_RANGE_NORMAL
        return controls

    def open(self) -> None:
        self.close()
        try:
            cam = self._make()
        except DeviceError:
            raise
        except Exception as exc:  # picamera2 raises RuntimeError/IndexError for no camera
            raise DeviceError(f"camera: picamera2 cannot start: {exc}") from exc
        try:
            controls = self._controls(getattr(cam, "camera_controls", {}) or {})
            config = cam.create_preview_configuration(
                main={"size": (self.width, self.height), "format": "RGB888"},
                controls=controls,
                buffer_count=4,
            )
            cam.configure(config)
            cam.start()
        except Exception as exc:  # picamera2 raises RuntimeError/IndexError for no camera
            raise DeviceError(f"camera: picamera2 cannot start: {exc}") from exc
        self._cam = cam
        log.info("camera: picamera2 open, autofocus %s", "continuous" if self.autofocus else "none")

    def read(self) -> Frame | None:
        if self._cam is None:
            raise DeviceError("camera: picamera2 is not open")
        try:
            job = self._cam.capture_request(wait=False)
            try:
                request = self._cam.wait(job, timeout=self.timeout_s)
            except TypeError:  # picamera2 before 0.3.13 has no timeout
                request = self._cam.wait(job)
        except TimeoutError:
            return None  # stalled: CameraStream decides when to reopen
        except Exception as exc:
            raise DeviceError(f"camera: picamera2 capture failed: {exc}") from exc
        try:
            arr = request.make_array("main")
            meta = request.get_metadata()
        finally:
            request.release()  # buffers go back to libcamera whatever happens
        rgb = np.ascontiguousarray(arr[..., 2::-1])  # BGR(X) in memory -> RGB
        ts = time.monotonic()
        sensor_ns = meta.get("SensorTimestamp")
        # libcamera stamps frames on CLOCK_MONOTONIC (as time.monotonic); a value far from now
        # means another clock, and then the capture time is the better stamp
        if sensor_ns and abs(ts - sensor_ns / 1e9) < 5.0:
            ts = sensor_ns / 1e9
        return self._frame(rgb, ts)

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            try:
                cam.stop()
                cam.close()
            except Exception as exc:
                log.warning("camera: picamera2 close failed: %s", exc)


def picamera2_available() -> bool:
    """True when picamera2 can be imported (on a Pi with libcamera)."""
    if importlib.util.find_spec("picamera2") is None:
        return False
    try:
        import picamera2  # noqa: F401  (installed but without libcamera it fails here)
    except Exception as exc:
        log.warning("camera: picamera2 present but not importable: %s", exc)
        return False
    return True


def open_camera(cfg) -> Camera:
    """The source chosen by ``cfg.camera`` (a CameraConfig), not yet opened.

    kind "auto": picamera2 when importable, else OpenCV device 0 (or ``source``).
    """
    kind = cfg.kind
    if kind == "auto":
        kind = "picamera2" if picamera2_available() else "opencv"
    if kind == "picamera2":
        return Picamera2Camera(cfg.width, cfg.height, cfg.fps)
    if kind == "opencv":
        src = cfg.source.strip()
        source: int | str = int(src) if src.isdigit() else (src or 0)
        return OpenCVCamera(source, cfg.width, cfg.height, cfg.fps, cfg.loop)
    if kind == "folder":
        if not cfg.source:
            raise DeviceError("camera.source: set the folder of images for camera.kind = folder")
        return FolderCamera(cfg.source, cfg.repeat, cfg.loop, cfg.fps, cfg.width, cfg.height)
    raise DeviceError(f"camera.kind: unknown {kind!r}")
