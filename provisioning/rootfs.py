"""What ``provision --root`` puts on a card's partitions for first boot, beyond the terminal's
own files: the first-boot unit and its arguments, the printer's udev rule, the wheelhouse, and
the boot-partition edits of provisioning/boot.py.

Split from provision.py along the seam "files for the first boot" vs "the terminal itself".
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import artefact
from boot import (
    PRINTER_PORT,
    edit_cmdline,
    edit_config_txt,
    has_cloud_init,
    merge_user_data,
    our_cloud_config,
    udev_rule,
)
from target import TOOLS, UNIT_DIR, Target, first_boot_argv, write_out

FIRSTBOOT_UNITS = ("edge-firstboot.service", "edge-firstboot-led.service")
FIRSTBOOT_WANTS = UNIT_DIR / "multi-user.target.wants" / "edge-firstboot.service"
UDEV_RULE = Path("etc/udev/rules.d/70-bansos-printer.rules")
WHEELHOUSE = Path("opt/edge/wheelhouse")
USB_FOLDER = "bansos-wheelhouse"  # on the stick labelled BANSOS (provisioning/firstboot.py)


def enable(target: Target, unit: str, wants: Path) -> None:
    """What ``systemctl enable`` does, by hand, so it works on a mounted card."""
    link, want = target.path(wants), f"/{UNIT_DIR / unit}"
    if link.is_symlink() and os.readlink(link) == want:
        target.report.add("unchanged", f"/{wants}", "enabled")
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(want)
    target.report.add("created", f"/{wants}", "enabled")


def install_firstboot(target: Target, args: argparse.Namespace, find_asset) -> None:
    """The one-shot first-boot unit, its script and this run's choices for it."""
    for unit in FIRSTBOOT_UNITS:
        target.copy(find_asset(unit), UNIT_DIR / unit)
    enable(target, "edge-firstboot.service", FIRSTBOOT_WANTS)
    here = Path(__file__).resolve().parent
    # provision.py's other modules are shipped by units.stage_tools, on a live root too.
    target.copy(here / "firstboot.py", TOOLS / "firstboot.py", 0o755)
    argv = [*first_boot_argv(args), *artefact.first_boot_argv(args)]
    choices = {"argv": argv, "pins": args.pins, "model": args.model}
    data = (json.dumps(choices, indent=2, sort_keys=True) + "\n").encode()
    target.write(TOOLS / "firstboot.json", data)


def install_udev(target: Target, args: argparse.Namespace) -> None:
    if args.printer_usb:
        target.write(UDEV_RULE, udev_rule(*args.printer_usb).encode())


def stage_wheelhouse(target: Target, args: argparse.Namespace) -> None:
    """Copy (or build, given a target name) the wheelhouse onto the card or a USB stick."""
    if not args.wheelhouse:
        return
    on_stick = Path(args.wheelhouse_to) / USB_FOLDER if args.wheelhouse_to else None
    source = Path(args.wheelhouse)
    if not source.is_dir():
        from wheelhouse import build_wheelhouse

        dest = on_stick or target.path(WHEELHOUSE)
        wheels = build_wheelhouse(dest, args.wheelhouse)
        target.report.add("ran", f"wheelhouse {args.wheelhouse}", f"{len(wheels)} wheels")
        return
    if not (source / "requirements.txt").is_file():
        raise SystemExit(f"provision: {source} is not a wheelhouse (no requirements.txt)")
    if on_stick is None:
        target.copy_tree(source, WHEELHOUSE)
        return
    changed = 0
    for src in sorted(source.iterdir()):
        if src.is_file():
            changed += write_out(on_stick / src.name, src.read_bytes()) != "unchanged"
    target.report.add("updated" if changed else "unchanged", f"{on_stick}/", "USB stick")


def edit_boot(target: Target, args: argparse.Namespace) -> None:
    """UART for the printer per model; user-data merged where the image has cloud-init."""
    if not args.boot:
        return
    boot = Path(args.boot)
    for name, edit in (("config.txt", edit_config_txt), ("cmdline.txt", edit_cmdline)):
        path = boot / name
        if not path.is_file():
            target.report.add("skipped", str(path), "not on this boot partition")
            continue
        status = write_out(path, edit(path.read_text(), args.model).encode())
        target.report.add(status, str(path), f"printer UART, {args.model}")
    root = None if target.real else target.root
    if has_cloud_init(boot, root):
        path = boot / "user-data"
        old = path.read_bytes() if path.is_file() else None
        merged = merge_user_data(old, our_cloud_config(args.device_id))
        target.report.add(write_out(path, merged), str(path), "merged with Imager's")


def default_printer_port(args: argparse.Namespace) -> str:
    """The serial printer's port; "uart" is GPIO14/15, whose device depends on the model."""
    return PRINTER_PORT[args.model] if args.printer_port == "uart" else args.printer_port
