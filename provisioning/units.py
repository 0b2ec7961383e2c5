"""The terminal's systemd units and the tools first boot needs, as provision.py installs them.

The units come from the release being installed (``--release``: the same files the OTA
installer later switches with each release) or else from this checkout's systemd/ folder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from artefact import OTA_UNITS, OTA_WANTS
from rootfs import FIRSTBOOT_UNITS, enable
from target import SYSUSERS, TIMER_WANTS, TOOLS, UNIT, UNIT_DIR, WANTS, Target

PRUNE_UNITS = ("edge-prune.service", "edge-prune.timer")
# provision.py and every module it imports, shipped so first boot can run it on the Pi.
MODULES = ("target.py", "args.py", "boot.py", "rootfs.py", "artefact.py", "units.py")
MODULES += ("wheelhouse.py",)

FindAsset = Callable[[str], Path]


def unit_source(name: str, find_asset: FindAsset, release_dir: Path | None) -> Path:
    """A unit file from the release when there is one, else from the checkout."""
    if release_dir is not None and (release_dir / "systemd" / name).is_file():
        return release_dir / "systemd" / name
    return find_asset(name)


def install_units(
    target: Target, find_asset: FindAsset, release_dir: Path | None, ota: bool
) -> None:
    """edge.service, the daily prune and, with a release key (``ota``), the update units;
    each enabled as ``systemctl enable`` would, by its link, so it works on a card too."""
    target.copy(unit_source("edge.service", find_asset, release_dir), UNIT)
    target.copy(find_asset("edge.sysusers.conf"), SYSUSERS)
    for name in (*PRUNE_UNITS, *(OTA_UNITS if ota else ())):
        target.copy(unit_source(name, find_asset, release_dir), UNIT_DIR / name)
    enable(target, UNIT.name, WANTS)
    enable(target, "edge-prune.timer", TIMER_WANTS)
    if ota:
        for name, wants in OTA_WANTS.items():
            enable(target, name, wants)


def stage_tools(target: Target, find_asset: FindAsset, script: Path) -> None:
    """Ship provision.py, its modules and the units so first boot can finish on the Pi."""
    units = ("edge.service", *PRUNE_UNITS, *OTA_UNITS, *FIRSTBOOT_UNITS, "edge.sysusers.conf")
    for name in (*units, "operations.md"):
        target.copy(find_asset(name), TOOLS / name)
    target.copy(script, TOOLS / "provision.py", 0o755)
    for name in MODULES:
        target.copy(script.parent / name, TOOLS / name)
