"""The real `edge run` in a namespace shaped like edge.service, made with bubblewrap.

As systemd runs it: ``/`` read-only (ProtectSystem=strict), working directory ``/``, a private
/tmp, no home (ProtectHome=yes), only the state, cache and runtime directories writable, and
the unit's own Environment= lines (read from systemd/edge.service, so the test follows the
unit). GPIO goes through the real lgpio wheel (GPIOZERO_PIN_FACTORY=lgpio); the camera is a
folder of frames, the printer a file in the state directory. A payout must complete.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from escpos_decode import decode
from support import require_module, unavailable

from edge import demo
from edge.cli.config_text import dump_toml
from edge.events import verify_receipt_payload
from edge.payout.claim import encode_claim

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "edge.service"


def unit_environment() -> dict[str, str]:
    env: dict[str, str] = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            for pair in line.removeprefix("Environment=").split():
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def unit_value(key: str) -> str:
    lines = [ln for ln in UNIT.read_text().splitlines() if ln.startswith(key + "=")]
    return lines[-1].split("=", 1)[1]


def _empty_readonly(top: str, mount_points: list[str], keep_from_host: bool) -> list[str]:
    """``top`` as a read-only tmpfs holding only ``mount_points`` (and, when
    ``keep_from_host``, every entry of the host's ``top``, bound read-only)."""
    args = ["--tmpfs", top]
    if keep_from_host:
        for entry in sorted(Path(top).iterdir()):
            if entry.is_symlink():
                args += ["--symlink", os.readlink(entry), str(entry)]
            else:
                args += ["--ro-bind", str(entry), str(entry)]
    for point in mount_points:
        args += ["--dir", point]
    return [*args, "--remount-ro", top]


def unit_namespace(writable: dict[str, Path], readonly: dict[str, Path]) -> list[str]:
    """bwrap arguments for a namespace shaped like edge.service: ``/`` read-only, private /tmp,
    no home, cwd ``/``; ``writable`` and ``readonly`` map paths inside to host folders.

    Folders that do not exist on this machine (/var/lib/edge, /etc/edge, /opt/edge) need a
    mount point: their top folder becomes a read-only tmpfs that has it (/etc keeps every
    host entry). The Python of this test run lives under /root (pyenv): ProtectHome hides
    /root, so that one interpreter folder is bound back read-only, as /usr is on a Pi.
    """
    inside = [*writable, *readonly]
    args = ["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
    for top in ("/var", "/opt", "/srv", "/run", "/etc"):
        points = [p for p in inside if p.startswith(top + "/")]
        args += _empty_readonly(top, points, keep_from_host=top == "/etc")
    args += ["--tmpfs", "/home", "--tmpfs", "/root"]
    prefix = Path(sys.base_prefix)
    if prefix.is_relative_to("/root") or prefix.is_relative_to("/home"):
        args += ["--ro-bind", str(prefix), str(prefix)]
    args += ["--remount-ro", "/home", "--remount-ro", "/root"]
    for path, host in writable.items():
        args += ["--bind", str(host), path]
    for path, host in readonly.items():
        args += ["--ro-bind", str(host), path]
    return [
        *args,
        "--unshare-ipc",
        "--unshare-pid",
        "--die-with-parent",
        "--clearenv",
        "--chdir",
        "/",
    ]


@pytest.fixture(scope="module")
def sandbox_run(tmp_path_factory, engine, models_dir):
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        unavailable("bubblewrap", "apt-get install bubblewrap")
    require_module("lgpio", "pip install lgpio (the dev extra has it)")
    base = tmp_path_factory.mktemp("sandbox")
    state, photos = demo.build_pilot(base, engine, with_shared=False)
    frames = base / "frames"
    script = demo.FrameScript(frames)
    script.pause(1)
    script.shot(demo.qr_frame(encode_claim(demo.ASTRONAUT_HH, demo.ROUND)), 4)
    script.shot(photos[demo.ASTRONAUT_HH], 25)
    script.pause(3)
    # The config as provisioning writes it: device paths, not the test's.
    cfg = demo.demo_config(Path("/var/lib/edge"), Path("/srv/frames"), liveness=False)
    cfg.models.dir = Path("/opt/edge/models")
    cfg.signals.kind = "gpiozero"
    cfg.printer.kind, cfg.printer.path = "file", Path("/var/lib/edge/receipts.bin")
    (base / "config.toml").write_text(dump_toml(cfg.model_dump(mode="json")))
    runtime, cache = base / "run-edge", base / "cache"
    runtime.mkdir()
    cache.mkdir()
    (base / "etc-edge").mkdir()
    (base / "config.toml").rename(base / "etc-edge" / "config.toml")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), **unit_environment()}
    env |= {"RUNTIME_DIRECTORY": "/run/edge", "STATE_DIRECTORY": "/var/lib/edge"}
    env |= {"CACHE_DIRECTORY": "/var/cache/edge", "CONFIGURATION_DIRECTORY": "/etc/edge"}
    writable = {"/var/lib/edge": state, "/var/cache/edge": cache, "/run/edge": runtime}
    readonly = {
        "/etc/edge": base / "etc-edge",
        "/srv/frames": frames,
        "/opt/edge/models": Path(models_dir).resolve(),
    }
    argv = [bwrap, *unit_namespace(writable, readonly)]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    argv += [sys.executable, "-m", "edge", "--config", "/etc/edge/config.toml", "run"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    return proc, state, runtime


def test_unit_shape_is_what_the_sandbox_copies():
    env = unit_environment()
    assert env["LG_WD"] == "/run/edge" and env["GPIOZERO_PIN_FACTORY"] == "lgpio"
    assert unit_value("RuntimeDirectory") == "edge"
    assert unit_value("ProtectSystem") == "strict" and unit_value("ProtectHome") == "yes"
    assert unit_value("ReadWritePaths") == "/var/lib/edge"
    # USB receipt printers: usblp's /dev/usb/lp* and libusb nodes, owned by group lp
    text = UNIT.read_text()
    assert "DeviceAllow=char-usb rw" in text and "DeviceAllow=char-usb_device rw" in text
    assert "lp" in unit_value("SupplementaryGroups").split()
    sysusers = (ROOT / "systemd" / "edge.sysusers.conf").read_text().splitlines()
    assert "m edge lp" in sysusers


def test_payout_completes_in_the_unit_shaped_sandbox(sandbox_run, make_identity, make_ledger):
    proc, state, runtime = sandbox_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    # The real lgpio was imported: its notification FIFO is in the runtime directory.
    assert any(p.name.startswith(".lgd-nfy") for p in runtime.iterdir()), proc.stderr[-2000:]
    assert "lgd-nfy" not in proc.stderr  # no FileNotFoundError from a read-only /
    identity = make_identity(state / "keys")
    ledger = make_ledger(state / "ledger.sqlite", identity, "edge-demo-0001")
    events = list(ledger.events())
    accepted = [e for e in events if e["outcome"] == "accepted"]
    assert len(accepted) == 1
    assert accepted[0]["extra"]["clock"]["source"] in ("ntp", "rtc", "wall", "carried")
    printed = decode((state / "receipts.bin").read_bytes())
    record = verify_receipt_payload(printed.qr[0], identity.device_public_pem())
    assert record["event_id"] == accepted[0]["event_id"]


def test_nothing_written_outside_the_writable_directories(sandbox_run):
    proc, state, runtime = sandbox_run
    # Anything the daemon tried to write elsewhere would have failed with EROFS and shown here.
    assert "Read-only file system" not in proc.stderr
    assert "PermissionError" not in proc.stderr and "Traceback" not in proc.stderr
