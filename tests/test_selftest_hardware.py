"""The hardware matrix rows of `edge selftest` on fake Pi 4 and Pi 5 file systems.

The boot-partition fixes come from provisioning/boot.py itself, so provisioning and the
selftest agree on what a ready terminal looks like.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from edge.config import Config
from edge.ops.hardware import FAIL, PASS, SKIP, Paths, check_camera_stack, hardware_checks

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "provisioning"))
import boot  # noqa: E402

STOCK_CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=1-02 rootfstype=ext4 rootwait\n"
MODELS = {"pi4": "Raspberry Pi 4 Model B Rev 1.5", "pi5": "Raspberry Pi 5 Model B Rev 1.0"}


def fake_pi(root: Path, model: str, provisioned: bool) -> Paths:
    (root / "proc/device-tree").mkdir(parents=True)
    (root / "proc/device-tree/model").write_text(MODELS[model] + "\x00")
    fw = root / "boot/firmware"
    fw.mkdir(parents=True)
    config, cmdline = "dtparam=audio=on\n[all]\n", STOCK_CMDLINE
    if provisioned:
        config, cmdline = boot.edit_config_txt(config, model), boot.edit_cmdline(cmdline, model)
    (fw / "config.txt").write_text(config)
    (fw / "cmdline.txt").write_text(cmdline)
    (root / "dev").mkdir()
    for name in ("serial0", "ttyAMA0", "ttyAMA10", "ttyS0"):
        (root / "dev" / name).touch()
    return Paths(root)


def rows(cfg, paths) -> dict[str, tuple[str, str]]:
    return {name: (status, detail) for name, status, detail in hardware_checks(cfg, paths)}


def serial_cfg(port: str) -> Config:
    cfg = Config()
    cfg.printer.kind, cfg.printer.port = "serial", port
    cfg.signals.kind = "mock"
    cfg.camera.kind = "folder"
    return cfg


@pytest.mark.parametrize(
    ("model", "provisioned", "port", "status", "words"),
    [
        ("pi5", True, "/dev/serial0", FAIL, "debug header"),
        ("pi5", False, "/dev/ttyAMA0", FAIL, "dtparam=uart0=on"),
        ("pi5", True, "/dev/ttyAMA0", PASS, "free for the printer"),
        ("pi4", False, "/dev/serial0", FAIL, "enable_uart=1"),
        ("pi4", True, "/dev/serial0", PASS, "free for the printer"),
    ],
)
def test_printer_uart_per_model(tmp_path, model, provisioned, port, status, words):
    paths = fake_pi(tmp_path, model, provisioned)
    got = rows(serial_cfg(port), paths)
    assert got["board"][0] == PASS and MODELS[model] in got["board"][1]
    assert got["uart"][0] == status and words in got["uart"][1]


def test_pi4_serial_console_on_the_receipt_roll_is_named(tmp_path):
    paths = fake_pi(tmp_path, "pi4", provisioned=False)
    fw = tmp_path / "boot/firmware"
    (fw / "config.txt").write_text(boot.edit_config_txt("", "pi4"))  # UART on, console still there
    status, detail = rows(serial_cfg("/dev/serial0"), paths)["uart"]
    assert status == FAIL and "console=serial0,115200" in detail


def test_usb_printer_row(tmp_path):
    paths = fake_pi(tmp_path, "pi4", provisioned=True)
    cfg = serial_cfg("/dev/serial0")
    cfg.printer.kind = "usb"
    status, detail = rows(cfg, paths)["usbprn"]
    assert status == FAIL and "--printer-usb" in detail
    rules = tmp_path / "etc/udev/rules.d"
    rules.mkdir(parents=True)
    (rules / "70-bansos-printer.rules").write_text(boot.udev_rule(0x0416, 0x5011))
    status, detail = rows(cfg, paths)["usbprn"]
    assert status == FAIL and "lsusb" in detail
    (tmp_path / "dev/bansos-printer").touch()
    assert rows(cfg, paths)["usbprn"][0] == PASS


def test_gpio_row_needs_a_writable_lg_wd(tmp_path, monkeypatch):
    cfg = serial_cfg("/dev/serial0")
    assert rows(cfg, Paths(tmp_path))["gpio"][0] == SKIP  # mock pins
    cfg.signals.kind = "gpiozero"
    monkeypatch.setenv("LG_WD", str(tmp_path / "missing"))
    status, detail = rows(cfg, Paths(tmp_path))["gpio"]
    assert status == FAIL and "LG_WD" in detail
    monkeypatch.setenv("LG_WD", str(tmp_path))
    status, detail = rows(cfg, Paths(tmp_path))["gpio"]
    assert status == PASS and "red_pin 17" in detail


def test_off_a_pi_the_board_rows_skip(tmp_path):
    got = rows(serial_cfg("/dev/serial0"), Paths(tmp_path))
    assert got["board"][0] == SKIP and got["uart"][0] == SKIP


def test_camera_stack_names_the_numpy_abi_fault(tmp_path, monkeypatch):
    cfg = Config()
    cfg.camera.kind = "picamera2"
    monkeypatch.setitem(sys.modules, "picamera2", None)  # not installed here
    monkeypatch.delitem(sys.modules, "picamera2")
    status, detail = check_camera_stack(cfg)
    assert status == FAIL and "python3-picamera2" in detail
    # apt's picamera2 and simplejpeg built against numpy 1.24, under a venv numpy 2.x:
    fake = tmp_path / "site" / "picamera2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        "raise ValueError('numpy.dtype size changed, may indicate binary incompatibility. "
        "Expected 96 from C header, got 88 from PyObject')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    status, detail = check_camera_stack(cfg)
    assert status == FAIL and "dtype size changed" in detail and "numpy<2" in detail
    cfg.camera.kind = "folder"
    assert check_camera_stack(cfg)[0] == SKIP


def test_selftest_lists_the_rows_with_fixes(tmp_path):
    from edge.ops.selftest import run_selftest

    paths = fake_pi(tmp_path / "pi", "pi5", provisioned=False)
    cfg = serial_cfg("/dev/serial0")
    cfg.device.state_dir = tmp_path / "state"
    cfg.printer.kind = "serial"
    report = run_selftest(cfg, print_receipt=False, camera_timeout=1.0, dwell=0.0, hw_paths=paths)
    uart = report.get("uart")
    assert uart is not None and uart.status == FAIL and "/dev/ttyAMA0" in uart.detail
    assert "FAIL" in report.render().splitlines()[0] and "uart" in report.verdict()
