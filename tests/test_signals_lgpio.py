"""The real lgpio wheel under the unit's file system: read-only ``/`` as working directory.

lgpio creates its notification FIFO in ``$LG_WD`` or the working directory when imported; under
edge.service that is ``/`` (ProtectSystem=strict), so the import used to raise and the daemon
died in a restart loop. bubblewrap gives the same view of the file system without root tricks.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from support import require_module, unavailable

from edge.config.devices import SignalsConfig
from edge.devices.signals import FaultedSignals, lgpio_workdir, make_signals

REPO = Path(__file__).resolve().parents[1]


def bwrap_readonly(*cmd: str, env: dict[str, str], writable: tuple[str, ...] = ()) -> list[str]:
    """A command in a namespace with ``/`` read-only, cwd ``/``, a tmpfs /run and no /tmp."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        unavailable("bubblewrap", "apt-get install bubblewrap")
    argv = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
    argv += ["--tmpfs", "/run", "--tmpfs", "/tmp", "--unshare-ipc", "--die-with-parent"]
    for w in writable:
        argv += ["--bind", w, w]
    argv += ["--clearenv", "--chdir", "/"]
    for k, v in env.items():
        argv += ["--setenv", k, v]
    return [*argv, *cmd]


PROBE = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {repo!r})
    from edge.config.devices import SignalsConfig
    from edge.devices.signals import make_signals
    s = make_signals(SignalsConfig(kind="gpiozero"))
    print("lgpio" in sys.modules, type(s).__name__, getattr(s, "fault", ""))
    """
)


@pytest.fixture(scope="module")
def lgpio_wheel():
    require_module("lgpio", "pip install lgpio (the dev extra has it)")


def _probe(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = bwrap_readonly(sys.executable, "-c", PROBE.format(repo=str(REPO)), env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_lgpio_import_fails_in_a_read_only_cwd(lgpio_wheel):
    """The fault itself, so the tests below prove the fix and not a lucky environment."""
    cmd = bwrap_readonly(sys.executable, "-c", "import lgpio", env={"PATH": "/usr/bin"})
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "lgd-nfy" in out.stderr


def test_signals_import_real_lgpio_under_the_unit(lgpio_wheel):
    """As systemd starts it: RUNTIME_DIRECTORY set, no LG_WD, cwd / read-only: no crash."""
    env = {"PATH": "/usr/bin", "GPIOZERO_PIN_FACTORY": "lgpio", "RUNTIME_DIRECTORY": "/run"}
    out = _probe(env)
    assert out.returncode == 0, out.stderr
    imported, kind, fault = out.stdout.split(" ", 2)
    assert imported == "True"  # lgpio really loaded, with its FIFO in /run
    # no /dev/gpiochip here: the LED is a reported fault, and the process lives on
    assert kind in ("GpioSignals", "FaultedSignals")
    if kind == "FaultedSignals":
        assert fault.startswith("signals: cannot use GPIO pins")


def test_any_backend_error_is_a_reported_fault():
    """Not only GPIOZeroError: an OSError from the pin backend gives FaultedSignals."""

    class BrokenFactory:
        def __getattr__(self, name):
            raise OSError(5, "no gpiochip")

    s = make_signals(SignalsConfig(kind="gpiozero"), pin_factory=BrokenFactory())
    assert isinstance(s, FaultedSignals)
    assert "OSError" in s.fault or "no gpiochip" in s.fault


def test_lgpio_workdir_prefers_lg_wd_then_runtime_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("LG_WD", raising=False)
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/edge")
    assert lgpio_workdir(tmp_path) == "/run/edge"
    monkeypatch.setenv("LG_WD", "/elsewhere")
    assert lgpio_workdir(tmp_path) == "/elsewhere"
    monkeypatch.delenv("LG_WD")
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    assert lgpio_workdir(tmp_path) == str(tmp_path)
