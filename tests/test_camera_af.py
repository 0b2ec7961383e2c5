"""Camera Module 3 autofocus through a fake picamera2 that keeps every control it was given."""

from __future__ import annotations

import numpy as np
import pytest

from edge.devices.camera import AF_MODE_CONTINUOUS, AF_SPEED_FAST, Picamera2Camera
from edge.errors import DeviceError

# What Picamera2.camera_controls lists (min, max, default) for each sensor, abridged.
CM2_IMX219 = {"FrameRate": (1, 100, 30), "AeEnable": (False, True, True), "ExposureTime": (1, 9, 5)}
CM3_IMX708 = {
    **CM2_IMX219,
    "AfMode": (0, 2, 0),
    "AfSpeed": (0, 1, 0),
    "AfRange": (0, 2, 0),
    "LensPosition": (0.0, 32.0, 1.0),
}


class FakeRequest:
    def __init__(self, h: int, w: int) -> None:
        self.array = np.zeros((h, w, 3), np.uint8)
        self.released = False

    def make_array(self, name: str):
        return self.array

    def get_metadata(self) -> dict:
        return {}

    def release(self) -> None:
        self.released = True


class FakePicamera2:
    """Just enough of Picamera2 for the adapter; ``history`` keeps what was done, in order."""

    def __init__(self, controls: dict) -> None:
        self.camera_controls = controls
        self.history: list[tuple] = []

    def create_preview_configuration(self, main, controls, buffer_count):
        return {"main": main, "controls": dict(controls), "buffer_count": buffer_count}

    def configure(self, config) -> None:
        self.history.append(("configure", config))

    def start(self) -> None:
        self.history.append(("start",))

    def capture_request(self, wait=True):
        return "job"

    def wait(self, job, timeout=None):
        w, h = self.history[0][1]["main"]["size"]
        return FakeRequest(h, w)

    def stop(self) -> None:
        self.history.append(("stop",))

    def close(self) -> None:
        self.history.append(("close",))

    @property
    def controls_set(self) -> dict:
        return self.history[0][1]["controls"]


def _open(controls: dict) -> tuple[Picamera2Camera, FakePicamera2]:
    fake = FakePicamera2(controls)
    cam = Picamera2Camera(640, 480, 15.0, factory=lambda: fake)
    cam.open()
    return cam, fake


def test_camera_module_3_gets_continuous_fast_autofocus():
    cam, fake = _open(CM3_IMX708)
    assert cam.autofocus
    assert fake.controls_set["AfMode"] == AF_MODE_CONTINUOUS == 2
    assert fake.controls_set["AfSpeed"] == AF_SPEED_FAST == 1
    assert fake.controls_set["AfRange"] == 0  # normal range reaches a letter at 20-30 cm
    assert [h[0] for h in fake.history] == ["configure", "start"]
    frame = cam.read()
    assert frame is not None and frame.rgb.shape == (480, 640, 3)
    cam.close()
    assert fake.history[-2:] == [("stop",), ("close",)]


def test_camera_module_2_has_no_focus_controls_to_set():
    cam, fake = _open(CM2_IMX219)
    assert not cam.autofocus
    assert not any(k.startswith("Af") for k in fake.controls_set)
    assert fake.controls_set["FrameRate"] == 15.0
    cam.close()


def test_no_camera_is_a_device_error():
    def missing():
        raise IndexError("list index out of range")  # what Picamera2() raises with no camera

    with pytest.raises(DeviceError, match="cannot start"):
        Picamera2Camera(factory=missing).open()
