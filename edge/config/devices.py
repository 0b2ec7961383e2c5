"""The hardware sections: camera, LED and buzzer pins, receipt printer."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from edge.config.base import OptionalPath, Problem, Section

# The Pi's primary UART (what a serial receipt printer is wired to) sits on GPIO 14 and 15.
UART_PORTS = frozenset({"/dev/serial0", "/dev/ttyAMA0", "/dev/ttyS0"})
UART_PINS = {14: "TXD", 15: "RXD"}


class CameraConfig(Section):
    """Where frames come from."""

    kind: Literal["auto", "picamera2", "opencv", "folder"] = Field(
        default="folder",
        description="auto: picamera2 when importable, else opencv; folder: images from disk",
    )
    # Not a Path: for opencv it is a device index or a URL as well, and a Path would mangle
    # "rtsp://"; relative folders and files are read from the working directory.
    source: str = Field(
        default="",
        description="opencv: device index, video file or URL; folder: directory of images",
    )
    width: int = Field(default=640, ge=64, description="Frame width in pixels")
    height: int = Field(default=480, ge=64, description="Frame height in pixels")
    fps: float = Field(default=15.0, gt=0, description="Frames per second asked of the camera")
    loop: bool = Field(default=False, description="folder/video: start again at the end")
    queue_size: int = Field(default=2, ge=1, le=16, description="Frames buffered before dropping")
    repeat: int = Field(
        default=1, ge=1, le=1000, description="folder: each image given this many times in a row"
    )
    stall_s: float = Field(
        default=3.0, gt=0, description="No frame for this long: the camera is reopened"
    )


class SignalsConfig(Section):
    """The LED and buzzer that tell staff and recipient the outcome."""

    kind: Literal["gpiozero", "mock", "log"] = Field(
        default="mock",
        description="gpiozero: real pins; mock: gpiozero's simulated pins; log: log lines only",
    )
    led_kind: Literal["rgb", "separate"] = Field(
        default="rgb", description="One RGB LED, or three separate LEDs on the same three pins"
    )
    red_pin: int = Field(default=17, ge=0, le=27, description="BCM GPIO number of the red LED")
    green_pin: int = Field(default=27, ge=0, le=27, description="BCM GPIO number of the green LED")
    blue_pin: int = Field(default=22, ge=0, le=27, description="BCM GPIO number of the blue LED")
    buzzer_pin: int = Field(
        default=18, ge=0, le=27, description="BCM GPIO number of the active buzzer"
    )
    active_high: bool = Field(
        default=True, description="LED lights on a high pin (false for a common-anode RGB LED)"
    )

    def pins(self) -> dict[str, int]:
        """Every pin this section drives, by key."""
        return {
            "red_pin": self.red_pin,
            "green_pin": self.green_pin,
            "blue_pin": self.blue_pin,
            "buzzer_pin": self.buzzer_pin,
        }

    def problems(self) -> list[Problem]:
        """A pin given to more than one part."""
        users: dict[int, list[str]] = {}
        for key, pin in self.pins().items():
            users.setdefault(pin, []).append(key)
        return [
            Problem(
                tuple(keys),
                f"GPIO {pin} is given to {' and '.join(keys)}; each LED and the buzzer needs "
                "its own pin",
            )
            for pin, keys in users.items()
            if len(keys) > 1
        ]


class PrinterConfig(Section):
    """The receipt printer."""

    kind: Literal["serial", "usb", "file", "dummy", "none"] = Field(
        default="file",
        description="usb: usblp device (path, default /dev/bansos-printer); dummy: bytes kept "
        "in memory (tests); none: no printer",
    )
    port: str = Field(default="/dev/serial0", description="serial: the printer's serial device")
    baudrate: int = Field(default=9600, ge=1200, description="serial: line speed, bits/s")
    path: OptionalPath = Field(
        default=None,
        description="file: output file (unset: state_dir/receipts.bin); usb: the device "
        "(unset: /dev/bansos-printer)",
    )
    refusal_slip: bool = Field(default=False, description="Print a slip for refusals as well")
    timeout_s: float = Field(
        default=0.5, gt=0, le=5, description="serial: wait this long for a status answer"
    )
    status_queries: bool = Field(
        default=True,
        description="serial, usb: ask online/paper (DLE EOT); false when the printer never "
        "answers (TX not wired, or a model without DLE EOT)",
    )
    qr: Literal["native", "image"] = Field(
        default="native",
        description="native: the printer draws the QR (GS ( k); image: sent as a raster image, "
        "for printers without native QR",
    )
    profile: str = Field(
        default="", description="python-escpos profile name; empty: generic 58 mm, 32 columns"
    )

    def problems(self) -> list[Problem]:
        """A serial printer with nowhere to send its bytes."""
        if self.kind == "serial" and not self.port.strip():
            return [Problem(("port",), "kind is serial: set the printer's serial device")]
        return []
