"""What the installer drives: the daemon's unit, the selftest, and the venv of a release.

Each is a small seam so the installer runs on a fake root in tests: :class:`FakeService` keeps
a history like gpiozero's mock pins; the real ones call systemctl, the release's own
``edge selftest`` and pip (offline, from the release's wheelhouse).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from edge.errors import ReleaseError
from edge.fsutil import write_atomic


class Service(Protocol):
    """The daemon's unit, as the installer needs it."""

    def stop(self) -> None: ...

    def start(self, timeout_s: float) -> bool:
        """Start and wait for READY; False when it failed or did not get there in time."""
        ...

    def reload(self) -> None:
        """Read changed unit files again (``systemctl daemon-reload``)."""
        ...


class SystemdService:
    """``edge.service`` through systemctl (Type=notify: ``start`` returns after READY)."""

    def __init__(self, unit: str = "edge.service", *, block: bool = True) -> None:
        self.unit = unit
        # At boot the recovery unit is ordered before edge.service: waiting for its start
        # there would wait for ourselves.
        self.block = block

    def stop(self) -> None:
        subprocess.run(["systemctl", "stop", self.unit], check=False, timeout=60)

    def reload(self) -> None:
        subprocess.run(["systemctl", "daemon-reload"], check=False, timeout=60)

    def start(self, timeout_s: float) -> bool:
        subprocess.run(["systemctl", "reset-failed", self.unit], check=False, timeout=30)
        if not self.block:
            subprocess.run(["systemctl", "start", "--no-block", self.unit], check=False, timeout=30)
            return True
        try:
            run = subprocess.run(["systemctl", "start", self.unit], check=False, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return run.returncode == 0


class FakeService:
    """A service that keeps a history of what it was asked (tests, dry runs)."""

    def __init__(self, ready: Callable[[], bool] | bool = True) -> None:
        self.ready = ready
        self.history: list[str] = []
        self.running = True

    def stop(self) -> None:
        self.history.append("stop")
        self.running = False

    def reload(self) -> None:
        self.history.append("reload")

    def start(self, timeout_s: float) -> bool:
        ok = self.ready() if callable(self.ready) else self.ready
        self.history.append("start" if ok else "start-failed")
        self.running = ok
        return ok


def install_units(src: Path, unit_dir: Path) -> list[str]:
    """Copy a release's unit files (``edge*.service``, ``edge*.path``, ``edge*.timer``) that
    differ from the installed ones into ``unit_dir``, each atomically; return the names that
    changed."""
    changed = []
    units = [*src.glob("edge*.service"), *src.glob("edge*.path"), *src.glob("edge*.timer")]
    for unit in sorted(units):
        dest = unit_dir / unit.name
        data = unit.read_bytes()
        if dest.exists() and dest.read_bytes() == data:
            continue
        write_atomic(dest, data, mode=0o644)
        changed.append(unit.name)
    return changed


# The hand-over with the daemon, in its state dir: "switch" when the new release is unpacked,
# "paused" when the daemon has stopped taking claims between captures.
SWITCH = "switch"
PAUSED = "paused"


def file_handshake(
    ota_dir: Path,
    timeout_s: float = 120.0,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[], bool]:
    """The installer's side of the hand-over: say "switch", wait for the daemon's "paused".

    A capture lasts seconds, so a daemon that does not answer within ``timeout_s`` is not
    running its loop; the switch is then abandoned rather than forced on a terminal whose
    state is unknown.
    """

    def wait() -> bool:
        write_atomic(ota_dir / SWITCH, b"{}", mode=0o644)
        deadline = clock() + timeout_s
        while clock() < deadline:
            if (ota_dir / PAUSED).exists():
                return True
            sleep(0.2)
        return (ota_dir / PAUSED).exists()

    return wait


def probe_venv(python: Path) -> dict:
    """Version and ledger layout of the code in a venv, asked of that code."""
    probe = (
        "import json, edge, edge.ledger.schema as s;"
        "print(json.dumps({'version': edge.__version__, 'ledger': s.LEDGER_VERSION}))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        out = subprocess.run(
            [str(python), "-c", probe], capture_output=True, text=True, timeout=60, env=env
        )
        return json.loads(out.stdout) if out.returncode == 0 else {}
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


Selftest = Callable[[Path], tuple[bool, str]]
Deploy = Callable[[Path, dict], None]


def command_selftest(config: Path | None, timeout_s: float = 120.0) -> Selftest:
    """``edge selftest --no-print`` run from a release's own venv, before its daemon starts."""

    def run(release_dir: Path) -> tuple[bool, str]:
        cmd = [str(release_dir / "venv" / "bin" / "edge")]
        if config is not None:
            cmd += ["--config", str(config)]
        # Nobody watches the LEDs during an update: no dwell, no slip.
        cmd += ["selftest", "--no-print", "--dwell", "0"]
        # The release's own code only: an inherited PYTHONPATH could put another edge first.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return False, f"selftest did not run: {exc}"
        lines = (out.stdout or out.stderr).strip().splitlines()
        return out.returncode == 0, (lines[0] if lines else f"exit {out.returncode}")[:200]

    return run


def venv_deploy(
    python: str | None = None, *, with_pip: bool = True, extra_paths: tuple[str, ...] = ()
) -> Deploy:
    """Make ``<release>/venv`` and install the release's wheel from its wheelhouse, offline.

    ``--system-site-packages`` as at provisioning (apt's picamera2 and libcamera). With a
    wheelhouse built without dependencies, they must already be importable (``extra_paths``
    are added to the venv by a .pth file: tests point it at their own site-packages).
    """

    def deploy(release_dir: Path, manifest: dict) -> None:
        venv = release_dir / "venv"
        cmd = [python or sys.executable, "-m", "venv", "--system-site-packages"]
        made = subprocess.run(
            [*cmd, *([] if with_pip else ["--without-pip"]), str(venv)],
            capture_output=True,
            text=True,
        )
        if made.returncode != 0:
            raise ReleaseError(f"venv not made: {made.stderr.strip()[-300:]}")
        target = venv / "bin" / "python"
        pip = [str(target), "-m", "pip"] if with_pip else [sys.executable, "-m", "pip"]
        pip += ["--disable-pip-version-check", "-q"]
        if not with_pip:
            pip += ["--python", str(target)]
        # --ignore-installed: the system site-packages may hold another bansos-edge.
        args = ["install", "--no-index", "--ignore-installed", "--find-links"]
        args.append(str(release_dir / "wheels"))
        wheelhouse = manifest.get("wheelhouse", {})
        runs = []
        if wheelhouse.get("lock"):
            # A lock's wheelhouse (edge release build --target): the pinned dependencies,
            # hash-checked, as first boot installs them; then this project's wheel on top.
            lock = release_dir / "wheels" / Path(wheelhouse["lock"]).name
            runs.append([*args, "--require-hashes", "-r", str(lock)])
        no_deps = ["--no-deps"] if wheelhouse.get("lock") or not wheelhouse.get("deps") else []
        runs.append([*args, *no_deps, f"bansos-edge=={manifest['version']}"])
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        for cmd in runs:
            run = subprocess.run([*pip, *cmd], capture_output=True, text=True, env=env)
            if run.returncode != 0:
                why = run.stderr.strip()[-300:]
                raise ReleaseError(f"install from the wheelhouse failed: {why}")
        if extra_paths:
            site = next((venv / "lib").glob("python*/site-packages"))
            (site / "zz-extra.pth").write_text("".join(p + "\n" for p in extra_paths))

    return deploy
