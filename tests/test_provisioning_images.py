"""`provision --root --boot` on fake SD cards laid out like Raspberry Pi OS Bookworm and Trixie.

Bookworm has no cloud-init: first boot is edge-firstboot.service, and no user-data is written.
Trixie has cloud-init and Raspberry Pi Imager's user-data: ours is merged, Imager's kept byte
for byte. The printer UART is freed per model (Pi 4: enable_uart=1 and no serial console;
Pi 5: ttyAMA0 with dtparam=uart0=on).
"""

from __future__ import annotations

import os
import sys
import tomllib
from pathlib import Path

import pytest
from test_provisioning import kit, provision, snapshot  # noqa: F401  (kit is a fixture)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "provisioning"))
import boot  # noqa: E402

STOCK_CONFIG = """# For more options and information see
# http://rptl.io/configtxt
dtparam=audio=on
camera_auto_detect=1
display_auto_detect=1
auto_initramfs=1
dtoverlay=vc4-kms-v3d
max_framebuffers=2
disable_fw_kms_setup=1
arm_64bit=1
disable_overscan=1
arm_boost=1

[cm4]
otg_mode=1

[cm5]
dtoverlay=dwc2,dr_mode=host

[all]
"""
STOCK_CMDLINE = (
    "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 rootfstype=ext4 "
    "fsck.repair=yes rootwait quiet splash plymouth.ignore-serial-consoles cfg80211.ieee80211_regdom=ID\n"
)
IMAGER_USER_DATA = b"""#cloud-config
# written by Raspberry Pi Imager
hostname: posko-cilincing
manage_etc_hosts: true
users:
- name: teknisi
  groups: users,adm,dialout,audio,netdev,video,plugdev,cdrom,games,input,gpio,spi,i2c,render,sudo
  shell: /bin/bash
  lock_passwd: false
  passwd: $5$abc$notarealhash
  ssh_authorized_keys:
    - ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample teknisi@laptop
timezone: Asia/Jakarta
"""


def image(tmp_path: Path, release: str) -> tuple[Path, Path]:
    """Boot and root partitions as a freshly flashed card of ``release`` presents them."""
    bootfs, rootfs = tmp_path / "boot", tmp_path / "root"
    bootfs.mkdir()
    (rootfs / "etc").mkdir(parents=True)
    (bootfs / "config.txt").write_text(STOCK_CONFIG)
    (bootfs / "cmdline.txt").write_text(STOCK_CMDLINE)
    (rootfs / "etc/os-release").write_text(f"ID=debian\nVERSION_CODENAME={release}\n")
    if release == "trixie":
        (bootfs / "user-data").write_bytes(IMAGER_USER_DATA)
        (bootfs / "meta-data").write_text("instance-id: rpi-imager-1\n")
        (rootfs / "usr/bin").mkdir(parents=True)
        (rootfs / "usr/bin/cloud-init").write_text("#!/bin/sh\n")
        (rootfs / "etc/cloud").mkdir()
        (rootfs / "etc/cloud/cloud.cfg").write_text("datasource_list: [NoCloud]\n")
    return bootfs, rootfs


def fake_wheelhouse(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "requirements.txt").write_text(
        "numpy==1.26.4 \\\n    --hash=sha256:" + "0" * 64 + "\n"
    )
    (folder / "numpy-1.26.4-cp311-cp311-manylinux_2_17_aarch64.whl").write_bytes(b"PK fake")
    (folder / "bansos_edge-0.1.0-py3-none-any.whl").write_bytes(b"PK fake")
    return folder


def firstboot_enabled(rootfs: Path) -> bool:
    wants = rootfs / "etc/systemd/system/multi-user.target.wants/edge-firstboot.service"
    return wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/edge-firstboot.service"


def test_bookworm_pi4_serial_printer(tmp_path, kit):  # noqa: F811
    bootfs, rootfs = image(tmp_path, "bookworm")
    wh = fake_wheelhouse(tmp_path / "wh")
    res = provision(
        tmp_path, kit, "--model", "pi4", "--printer-port", "uart", "--wheelhouse", str(wh)
    )
    assert res.returncode == 0, res.stderr
    # No cloud-init on Bookworm: nothing for it, and the first-boot unit does the work.
    assert not (bootfs / "user-data").exists()
    assert firstboot_enabled(rootfs)
    assert (rootfs / "etc/systemd/system/edge-firstboot.service").read_bytes() == (
        ROOT / "systemd/edge-firstboot.service"
    ).read_bytes()
    # Pi 4: the mini UART is steady with enable_uart=1, and no console on the receipt roll.
    config = (bootfs / "config.txt").read_text()
    assert config.startswith(STOCK_CONFIG.rstrip("\n"))
    assert config.rstrip().endswith("[all]\n# bansos edge: receipt printer UART\nenable_uart=1")
    cmdline = (bootfs / "cmdline.txt").read_text()
    assert "console=serial0" not in cmdline and "console=tty1" in cmdline
    assert cmdline.count("\n") == 1 and "rootwait" in cmdline
    cfg = tomllib.loads((rootfs / "etc/edge/config.toml").read_text())
    assert cfg["printer"] == {"kind": "serial", "port": "/dev/serial0"}
    # The wheelhouse is on the card for an offline first boot.
    staged = rootfs / "opt/edge/wheelhouse"
    assert sorted(p.name for p in staged.iterdir()) == sorted(p.name for p in wh.iterdir())
    again = snapshot(bootfs, rootfs)
    res = provision(
        tmp_path, kit, "--model", "pi4", "--printer-port", "uart", "--wheelhouse", str(wh)
    )
    assert res.returncode == 0 and snapshot(bootfs, rootfs) == again


def test_trixie_pi5_merges_imager_user_data(tmp_path, kit):  # noqa: F811
    bootfs, rootfs = image(tmp_path, "trixie")
    res = provision(tmp_path, kit, "--model", "pi5", "--printer-port", "uart")
    assert res.returncode == 0, res.stderr
    parts = boot.user_data_parts((bootfs / "user-data").read_bytes())
    # Imager's part untouched (users, SSH keys, password); ours added beside it.
    assert parts["imager.cfg"] == IMAGER_USER_DATA
    ours = parts[boot.OUR_PART].decode()
    assert ours.startswith("#cloud-config\n") and "hostname: edge-3171-0007" in ours
    assert "packages" not in ours and "package_update" not in ours  # nothing from the internet
    raw = (bootfs / "user-data").read_text()
    assert raw.startswith("Content-Type: multipart/mixed")
    assert f"Merge-Type: {boot.MERGE_HOW}" in raw
    yaml = pytest.importorskip("yaml")
    assert yaml.safe_load(parts["imager.cfg"])["users"][0]["name"] == "teknisi"
    assert yaml.safe_load(ours)["ntp"] == {"enabled": True}
    assert firstboot_enabled(rootfs)
    # Pi 5: GPIO14/15 is ttyAMA0 with uart0 on; serial0 is the debug header, left as it was.
    assert "dtparam=uart0=on" in (bootfs / "config.txt").read_text()
    assert (bootfs / "cmdline.txt").read_text() == STOCK_CMDLINE
    cfg = tomllib.loads((rootfs / "etc/edge/config.toml").read_text())
    assert cfg["printer"] == {"kind": "serial", "port": "/dev/ttyAMA0"}
    # A second run replaces only our part: Imager's stays, ours is not stacked.
    before = snapshot(bootfs)
    assert provision(tmp_path, kit, "--model", "pi5", "--printer-port", "uart").returncode == 0
    assert snapshot(bootfs) == before


def test_changing_model_replaces_the_uart_block(tmp_path, kit):  # noqa: F811
    bootfs, _ = image(tmp_path, "bookworm")
    assert provision(tmp_path, kit, "--model", "pi5").returncode == 0
    assert provision(tmp_path, kit, "--model", "pi4").returncode == 0
    config = (bootfs / "config.txt").read_text()
    assert "enable_uart=1" in config and "dtparam=uart0=on" not in config
    assert config.count("# bansos edge: receipt printer UART") == 1


def test_usb_printer_gets_udev_name_and_config(tmp_path, kit):  # noqa: F811
    _, rootfs = image(tmp_path, "bookworm")
    stick = tmp_path / "usb"
    stick.mkdir()
    wh = fake_wheelhouse(tmp_path / "wh")
    res = provision(
        tmp_path, kit, "--printer-usb", "0416:5011", "--wheelhouse", str(wh),
        "--wheelhouse-to", str(stick),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    rule = (rootfs / "etc/udev/rules.d/70-bansos-printer.rules").read_text()
    match = [ln for ln in rule.splitlines() if not ln.startswith("#")]
    assert match == [
        'SUBSYSTEM=="usbmisc", KERNEL=="lp[0-9]*", ATTRS{idVendor}=="0416", '
        'ATTRS{idProduct}=="5011", SYMLINK+="bansos-printer", GROUP="lp", MODE="0660"'
    ]
    cfg = tomllib.loads((rootfs / "etc/edge/config.toml").read_text())
    assert cfg["printer"] == {"kind": "usb", "path": "/dev/bansos-printer"}
    # The wheelhouse went to the stick, not the card.
    assert (stick / "bansos-wheelhouse/requirements.txt").is_file()
    assert not (rootfs / "opt/edge/wheelhouse").exists()
    choices = (rootfs / "opt/edge/provisioning/firstboot.json").read_text()
    assert '"0416:5011"' in choices


@pytest.mark.parametrize("bad", ["416:5011", "04165011", "zzzz:0001"])
def test_bad_usb_id_is_refused(tmp_path, kit, bad):  # noqa: F811
    image(tmp_path, "bookworm")
    res = provision(tmp_path, kit, "--printer-usb", bad)
    assert res.returncode == 2 and "USB id" in res.stderr
    assert not (tmp_path / "root/etc/edge").exists()
