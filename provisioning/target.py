"""Helpers of provision.py: the device layout, writing only what differs, argument parsing.

A plain module next to provision.py (not part of the ``edge`` package) so that the pair can be
copied onto a Pi and run with the system Python before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

# Paths on the device (relative to --root).
OPT = Path("opt/edge")
VENV = OPT / "venv"
DIST = OPT / "dist"
SRC = OPT / "src"
MODELS = OPT / "models"
TOOLS = OPT / "provisioning"
ETC = Path("etc/edge")
CONFIG = ETC / "config.toml"
CENTRAL_PUB = ETC / "central_public.pem"
CA_FILE = ETC / "ca.pem"
CERT_FILE = ETC / "device.crt"
STATE = Path("var/lib/edge")
KEYS = STATE / "keys"
UNIT_DIR = Path("etc/systemd/system")
UNIT = UNIT_DIR / "edge.service"
WANTS = UNIT_DIR / "multi-user.target.wants" / "edge.service"
TIMER_WANTS = UNIT_DIR / "timers.target.wants" / "edge-prune.timer"
SYSUSERS = Path("etc/sysusers.d/edge.conf")
REEXEC_FLAG = "EDGE_PROVISION_REEXEC"
CHANGED_FLAG = "EDGE_PROVISION_CHANGED"
GROUPS = ("gpio", "video", "dialout", "lp")


@dataclass
class Report:
    """What the run did, one line per file or action: created, updated, unchanged, skipped."""

    lines: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, status: str, what: str, note: str = "") -> None:
        self.lines.append((status, what, note))

    @property
    def changed(self) -> bool:
        return any(s in ("created", "updated", "ran") for s, _, _ in self.lines)

    def render(self) -> str:
        out = [f"  {s:<9} {w}" + (f"  ({n})" if n else "") for s, w, n in self.lines]
        verdict = "changed" if self.changed else "unchanged: nothing to do"
        return "\n".join([*out, f"provision: {verdict}"])


def write_out(target: Path, data: bytes) -> str:
    """Write ``target`` outside the root (technician files); return the status word."""
    old = target.read_bytes() if target.is_file() else None
    if old == data:
        return "unchanged"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return "created" if old is None else "updated"


class Target:
    """The system being provisioned: a root folder (``/`` on the Pi) and a report of changes."""

    def __init__(self, root: Path | str, dry_run: bool = False) -> None:
        self.root = Path(root).resolve()
        self.real = self.root == Path("/")
        self.report = Report()
        self.dry_run = dry_run  # record system commands instead of running them (tests)
        self.commands: list[list[str]] = []

    def execute(
        self, cmd: list[str], check: bool = True, quiet: bool = False
    ) -> subprocess.CompletedProcess[str]:
        """Run a command on the target system, printed first unless ``quiet``."""
        self.commands.append(cmd)
        if not quiet:
            print("  $ " + shlex.join(cmd), flush=True)
        if self.dry_run:
            return subprocess.CompletedProcess(cmd, 0, "", "")
        return subprocess.run(cmd, check=check, capture_output=quiet, text=True)

    def pip_freeze(self, python: Path) -> str:
        return self.execute([str(python), "-m", "pip", "freeze"], check=False, quiet=True).stdout

    def path(self, rel: Path) -> Path:
        return self.root / rel

    def write(self, rel: Path, data: bytes, mode: int = 0o644, label: str | None = None) -> None:
        target = self.path(rel)
        label = label or "/" + str(rel)
        old = target.read_bytes() if target.is_file() else None
        if old == data:
            status = "unchanged"
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(target.name + ".provision-tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            status = "created" if old is None else "updated"
        if target.stat().st_mode & 0o777 != mode:
            os.chmod(target, mode)
            status = "updated" if status == "unchanged" else status
        self.report.add(status, label)

    def copy(self, src: Path, rel: Path, mode: int = 0o644) -> None:
        self.write(rel, src.read_bytes(), mode)

    def copy_tree(self, src: Path, rel: Path, skip: tuple[str, ...] = ()) -> None:
        """Copy ``src`` into ``rel`` file by file (so unchanged files stay untouched)."""
        ignored = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", "var", *skip}
        count = changed = new = 0
        for path in sorted(src.rglob("*")):
            parts = path.relative_to(src).parts
            if any(p in ignored or p.startswith(".venv") for p in parts) or not path.is_file():
                continue
            target = self.path(rel / path.relative_to(src))
            data = path.read_bytes()
            count += 1
            if not target.is_file():
                new += 1
            elif target.read_bytes() == data:
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            changed += 1
        status = "unchanged" if not changed else "created" if new == count else "updated"
        self.report.add(status, f"/{rel}/", f"{count} files")


def check_models(folder: Path) -> None:
    """Every file of the manifest is there with its sha256 (the daemon checks again at start)."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for name, entry in manifest["models"].items():
        path = folder / entry["file"]
        if not path.is_file():
            raise SystemExit(f"provision: model {name}: {path} missing; run `make models`")
        if "sha256" in entry and hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            raise SystemExit(f"provision: model {name}: sha256 mismatch; run `make models`")


def parse_broker(text: str) -> tuple[str, int]:
    """``host[:port]``; MQTT over TLS (8883) unless a port is given."""
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    if not host or (port and not port.isdigit()):
        raise argparse.ArgumentTypeError(f"bad broker {text!r}: use host or host:port")
    return host, int(port) if port else 8883


def parse_pins(text: str) -> dict[str, int]:
    """``red=17,green=27,blue=22,buzzer=18`` -> signals config keys."""
    pins = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in ("red", "green", "blue", "buzzer") or not value.isdigit():
            raise argparse.ArgumentTypeError(f"bad pin {part!r}: use red|green|blue|buzzer=BCM")
        pins[f"{name}_pin"] = int(value)
    return pins


def first_boot_argv(a: argparse.Namespace) -> list[str]:
    """provision.py's arguments for first boot on the Pi: this run's choices, with paths of
    the files already on the card."""
    argv = ["--device-id", a.device_id, "--regency", a.regency]
    argv += ["--broker", f"{a.broker[0]}:{a.broker[1]}", "--model", a.model]
    if a.point_name:
        argv += ["--point-name", a.point_name]
    if a.printer_port:
        argv += ["--printer-port", a.printer_port]
    if a.printer_usb:
        vendor, product = a.printer_usb
        argv += ["--printer-usb", f"{vendor:04x}:{product:04x}"]
    if a.pins:
        argv += ["--pins", ",".join(f"{k.removesuffix('_pin')}={v}" for k, v in a.pins.items())]
    if a.camera != "picamera2":
        argv += ["--camera", a.camera]
    if a.central_pub:
        argv += ["--central-pub", f"/{CENTRAL_PUB}"]
    if a.ca:
        argv += ["--ca", f"/{CA_FILE}"]
    if a.no_tls:
        argv += ["--no-tls"]
    return argv
