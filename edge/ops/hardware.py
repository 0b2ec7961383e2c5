"""The hardware matrix of docs/hardware.md, checked on the terminal: board, printer port, USB
printer, GPIO backend, camera stack. Each check says what to fix, in the technician's words.

Every file it reads is a seam (``Paths``), so tests lay out a fake Pi 4 or Pi 5 in a folder.
Used by `edge selftest` (edge/ops/selftest.py); nothing here opens a device.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

PASS, WARN, FAIL, SKIP = "PASS", "WARN", "FAIL", "SKIP"


@dataclass(frozen=True)
class Paths:
    """Where the readings come from (``/`` on a Pi; a fake root in tests)."""

    root: Path = Path("/")

    @property
    def model(self) -> Path:
        return self.root / "proc/device-tree/model"

    @property
    def boot(self) -> Path:
        # Bookworm and Trixie mount the boot partition here; older images at /boot.
        fw = self.root / "boot/firmware"
        return fw if fw.is_dir() else self.root / "boot"

    def dev(self, path: str) -> Path:
        return self.root / path.lstrip("/")


def board(paths: Paths) -> str | None:
    """ "pi4", "pi5" (or another "piN"), None off a Raspberry Pi."""
    try:
        text = paths.model.read_text(errors="replace").strip("\x00\n ")
    except OSError:
        return None
    m = re.search(r"Raspberry Pi (\d+)", text)
    if m:
        return f"pi{m.group(1)}"
    return "cm" if "Compute Module" in text else None


def _config_lines(paths: Paths) -> list[str]:
    try:
        text = (paths.boot / "config.txt").read_text()
    except OSError:
        return []
    return [ln.split("#", 1)[0].strip() for ln in text.splitlines()]


def check_board(paths: Paths) -> tuple[str, str]:
    model = board(paths)
    if model is None:
        return SKIP, "not a Raspberry Pi (lab machine): GPIO, UART and camera checks are off"
    return PASS, (paths.model.read_text(errors="replace").strip("\x00\n "))


def check_serial_printer(cfg, paths: Paths) -> tuple[str, str]:
    """The printer UART on GPIO14/15 is the right device and free of the serial console."""
    model = board(paths)
    port = cfg.printer.port
    if model is None:
        return SKIP, f"serial printer on {port}: no Pi to check the UART on"
    lines = _config_lines(paths)
    uses_gpio_uart = port in ("/dev/serial0", "/dev/ttyAMA0", "/dev/ttyS0")
    if model == "pi5" and port == "/dev/serial0":
        return FAIL, (
            "on a Pi 5 /dev/serial0 is the 3-pin debug header: set printer.port = /dev/ttyAMA0 "
            "and dtparam=uart0=on in config.txt (provision --model pi5 --printer-port uart)"
        )
    if model == "pi5" and uses_gpio_uart and "dtparam=uart0=on" not in lines:
        return FAIL, "GPIO14/15 UART is off: add dtparam=uart0=on to config.txt and reboot"
    if model != "pi5" and uses_gpio_uart:
        if "enable_uart=1" not in lines:
            return FAIL, "UART off: add enable_uart=1 to config.txt (provision --model pi4)"
        try:
            cmdline = (paths.boot / "cmdline.txt").read_text()
        except OSError:
            cmdline = ""
        if re.search(r"console=(serial0|ttyS0|ttyAMA0)\b", cmdline):
            return FAIL, (
                "cmdline.txt has a serial console: boot messages would print on the receipt "
                "roll; remove console=serial0,115200 and reboot"
            )
    if not paths.dev(port).exists():
        return FAIL, f"{port} does not exist: check the wiring and config.txt, then reboot"
    return PASS, f"{model}: {port} free for the printer"


def check_usb_printer(cfg, paths: Paths) -> tuple[str, str]:
    path = str(cfg.printer.path or "/dev/bansos-printer")
    if paths.dev(path).exists():
        return PASS, f"USB printer at {path}"
    rules = paths.root / "etc/udev/rules.d/70-bansos-printer.rules"
    if not rules.is_file():
        return FAIL, f"no {path} and no udev rule: run provision with --printer-usb VID:PID (lsusb)"
    return FAIL, (
        f"no {path}: plug the printer in and switch it on; if it is, its idVendor:idProduct "
        f"(lsusb) differs from {rules}"
    )


def check_gpio(cfg) -> tuple[str, str]:
    """lgpio needs a writable LG_WD (its FIFO): the unit sets /run/edge."""
    if cfg.signals.kind != "gpiozero":
        return SKIP, f"signals kind {cfg.signals.kind}: no GPIO"
    wd = os.environ.get("LG_WD") or os.environ.get("RUNTIME_DIRECTORY") or ""
    if wd and not os.access(wd, os.W_OK):
        return FAIL, f"LG_WD={wd} is not writable: lgpio cannot make its FIFO there"
    pins = ", ".join(f"{k} {v}" for k, v in cfg.signals.pins().items())
    return PASS, f"pins {pins}" + (f", LG_WD {wd}" if wd else "")


def check_camera_stack(cfg) -> tuple[str, str]:
    """apt's picamera2 imports with the venv's numpy (the ABI rule of docs/hardware.md)."""
    if cfg.camera.kind not in ("picamera2", "auto"):
        return SKIP, f"camera kind {cfg.camera.kind}"
    if importlib.util.find_spec("picamera2") is None:
        if cfg.camera.kind == "auto":
            return PASS, "no picamera2: a USB webcam through OpenCV"
        return FAIL, "picamera2 missing: apt install python3-picamera2 (the venv sees it)"
    try:
        import picamera2  # noqa: F401
    except Exception as exc:  # ValueError "numpy.dtype size changed" is the classic
        import numpy

        why = str(exc).splitlines()[0]
        if "dtype size changed" in why or "numpy" in why.lower():
            return FAIL, (
                f"picamera2 fails with the venv's numpy {numpy.__version__} ({why}): reinstall "
                "from this image's lock (requirements/bookworm-aarch64.txt keeps numpy<2)"
            )
        return FAIL, f"picamera2 does not import: {why}"
    return PASS, "picamera2 imports with the venv's numpy"


def hardware_checks(cfg, paths: Paths | None = None) -> list[tuple[str, str, str]]:
    """(name, status, detail) for every row of the matrix that applies to ``cfg``."""
    paths = paths or Paths()
    out = [("board", *check_board(paths))]
    if cfg.printer.kind == "serial":
        out.append(("uart", *check_serial_printer(cfg, paths)))
    elif cfg.printer.kind == "usb":
        out.append(("usbprn", *check_usb_printer(cfg, paths)))
    out.append(("gpio", *check_gpio(cfg)))
    out.append(("camstack", *check_camera_stack(cfg)))
    return out
