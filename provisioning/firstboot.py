#!/usr/bin/python3
"""First boot of a terminal, run once by edge-firstboot.service with the system Python.

Works the same on Bookworm (no cloud-init) and Trixie, with no network: every file came on the
SD card (``provision --root``) or a USB stick labelled BANSOS. The steps, in order:

1. ``user``      the ``edge`` system user and its groups (systemd-sysusers)
2. ``venv``      /opt/edge/venv with the system site packages (apt's picamera2, lgpio); on a
                 card provisioned from a release, where that link points (releases/<v>/venv)
3. ``packages``  pip from the wheelhouse with no index, hash-checked against the lock (the
                 release's own wheelhouse first), then the terminal's wheel
4. ``terminal``  provision.py on the Pi: device keys, config, unit (kept if already there)
5. ``enable``    state owned by edge, edge.service enabled and started

Each finished step leaves a marker in /var/lib/edge-firstboot, so a power cut half way
resumes at the step it interrupted; a step that was cut off is redone from its start. A failure
goes to the journal at priority err and exits non-zero, and the unit's OnFailure= starts
edge-firstboot-led.service, which blinks the fault pattern (``--led``) until someone looks.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from wheelhouse import install_commands  # noqa: E402

MARKERS = Path("var/lib/edge-firstboot")
ARGS_FILE = Path("opt/edge/provisioning/firstboot.json")
VENV = Path("opt/edge/venv")
# A card provisioned from a release (provision --release): its own wheelhouse, and the venv
# made inside it (venv -> current/venv), where edge/ota makes each release's venv.
RELEASE_WHEELS = Path("opt/edge/current/wheels")
WHEELHOUSES = (Path("opt/edge/wheelhouse"), Path("boot/firmware/bansos-wheelhouse"))
USB_LABEL = Path("dev/disk/by-label/BANSOS")
USB_MOUNT = Path("run/edge-firstboot/usb")
STEPS = ("user", "venv", "packages", "terminal", "enable")

Runner = Callable[[Sequence[str]], None]


def journal(priority: int, message: str) -> None:
    """One line to the journal; the ``<N>`` prefix is its syslog priority (3 err, 6 info)."""
    print(f"<{priority}>edge-firstboot: {message}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str]) -> None:
    journal(6, "$ " + " ".join(cmd))
    subprocess.run(list(cmd), check=True)


class FirstBoot:
    """The steps over a root folder (``/`` on the Pi); ``runner`` runs commands (a fake in tests)."""

    def __init__(self, root: Path = Path("/"), runner: Runner = run) -> None:
        self.root = Path(root)
        self.run = runner
        self.markers = self.root / MARKERS
        self.args: dict = json.loads((self.root / ARGS_FILE).read_text())

    def done(self, step: str) -> bool:
        return (self.markers / f"{step}.done").is_file()

    def mark(self, step: str) -> None:
        self.markers.mkdir(parents=True, exist_ok=True)
        marker = self.markers / f"{step}.done"
        with open(marker, "w") as f:
            f.write(time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))
            f.flush()
            os.fsync(f.fileno())  # a power cut right after must not forget a finished step

    def step_user(self) -> None:
        self.run(["systemd-sysusers", "/etc/sysusers.d/edge.conf"])

    def venv(self) -> Path:
        """Where the venv is made: through the link of a release, else /opt/edge/venv."""
        venv = self.root / VENV
        return Path(os.path.realpath(venv)) if venv.is_symlink() else venv

    def step_venv(self) -> None:
        venv = self.venv()
        if venv.exists():  # half made before a power cut: start clean
            shutil.rmtree(venv)
        self.run(["python3", "-m", "venv", "--system-site-packages", str(venv)])

    def wheelhouse(self) -> Path:
        """The release's hash-pinned wheelhouse, the wheelhouse on the card, else on the USB
        stick labelled BANSOS (mounted here)."""
        for rel in (RELEASE_WHEELS, *WHEELHOUSES):
            if (self.root / rel / "requirements.txt").is_file():
                return self.root / rel
        if (self.root / USB_LABEL).exists():
            mount = self.root / USB_MOUNT
            mount.mkdir(parents=True, exist_ok=True)
            if not (mount / "bansos-wheelhouse").is_dir():
                self.run(["mount", "-o", "ro", str(self.root / USB_LABEL), str(mount)])
            if (mount / "bansos-wheelhouse" / "requirements.txt").is_file():
                return mount / "bansos-wheelhouse"
        raise FileNotFoundError(
            "no wheelhouse: none in /opt/edge/wheelhouse or /boot/firmware/bansos-wheelhouse, "
            "and no USB stick labelled BANSOS with a bansos-wheelhouse folder"
        )

    def step_packages(self) -> None:
        python = self.venv() / "bin" / "python"
        release = self.root / RELEASE_WHEELS
        # The release's own wheel on top, also when its dependencies come from a wheelhouse.
        ours = release if any(release.glob("bansos_edge-*.whl")) else None
        for cmd in install_commands(python, self.wheelhouse(), ours):
            self.run(cmd)

    def step_terminal(self) -> None:
        python = self.venv() / "bin" / "python"
        script = self.root / "opt/edge/provisioning/provision.py"
        # --no-system: this unit runs before edge.service; a synchronous restart would wait on us.
        argv = [
            *self.args["argv"],
            "--no-install",
            "--no-system",
            "--out",
            "/var/lib/edge/provisioned",
        ]
        self.run([str(python), str(script), "--root", str(self.root), *argv])

    def step_enable(self) -> None:
        self.run(["chown", "-R", "edge:edge", "/var/lib/edge"])
        self.run(["chgrp", "edge", "/etc/edge/config.toml"])
        self.run(["systemctl", "enable", "edge.service"])
        self.run(["systemctl", "start", "--no-block", "edge.service"])

    def run_all(self) -> list[str]:
        """Do the steps not done yet; return the ones done now. Raises on the first failure."""
        ran = []
        for step in STEPS:
            if self.done(step):
                continue
            journal(6, f"step {step}")
            getattr(self, f"step_{step}")()
            self.mark(step)
            ran.append(step)
        self.mark("all")
        return ran


def blink_fault(pins: dict[str, int]) -> None:  # pragma: no cover - needs GPIO
    """The LED's fault pattern (red, 0.5 s on, 0.5 s off) for ever, on the system gpiozero."""
    os.environ.setdefault("LG_WD", "/run")
    from gpiozero import LED

    red = LED(pins.get("red_pin", 17))
    red.blink(on_time=0.5, off_time=0.5, background=False)


def main(argv: list[str] | None = None, runner: Runner = run) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(os.environ.get("EDGE_FIRSTBOOT_ROOT", "/"))
    if argv[:1] == ["--led"]:
        args = json.loads((root / ARGS_FILE).read_text())
        blink_fault(args.get("pins", {}))
        return 0
    try:
        ran = FirstBoot(root, runner).run_all()
    except (OSError, subprocess.CalledProcessError, ValueError, KeyError) as exc:
        journal(3, f"failed: {exc}; fix it, then: systemctl start edge-firstboot.service")
        return 1
    journal(6, f"done ({', '.join(ran) or 'nothing left to do'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
