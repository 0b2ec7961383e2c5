"""An offline install: an x86_64 wheelhouse from the lock, installed into a fresh venv with
``--no-index`` exactly as first boot does it (provisioning/firstboot.py), then imported.

Slow (about 20 s: ~110 MB of wheels from PyPI, or pip's cache) and needs PyPI once, so it is
one session-scoped build; it is skipped off CI when PyPI cannot be reached.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
from test_lock import pypi  # noqa: F401  (fixture: PyPI reachable, or skip/fail)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "provisioning"))
import wheelhouse  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.network]
# The installed terminal, not this checkout (the test run's PYTHONPATH points at it).
CLEAN = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.fixture(scope="module")
def installed(tmp_path_factory, pypi):  # noqa: F811
    if platform.machine() != "x86_64":
        pytest.skip("the x86_64 wheelhouse installs only on x86_64")
    base = tmp_path_factory.mktemp("offline")
    wh = base / "wheelhouse"
    wheels = wheelhouse.build_wheelhouse(wh, "x86_64")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    env = {**wheelhouse.pip_env(), "PIP_NO_CACHE_DIR": "1"}
    for cmd in wheelhouse.install_commands(python, wh):
        # no index and no network path at all: only the wheelhouse can satisfy pip
        subprocess.run(cmd, check=True, env=env, cwd=base, capture_output=True)
    return wh, wheels, venv


def test_wheelhouse_holds_the_lock_and_the_terminal(installed):
    wh, wheels, _ = installed
    pins = wheelhouse.read_lock(wh / "requirements.txt")
    names = {wheelhouse.normalise(w.name.split("-")[0]) for w in wheels}
    assert names == set(pins) | {"bansos-edge"}
    assert (wh / "TARGET").read_text().strip() == "x86_64"


def test_terminal_runs_from_the_offline_install(installed, tmp_path):
    wh, _, venv = installed
    pins = wheelhouse.read_lock(wh / "requirements.txt")
    freeze = subprocess.run(
        # `pip list` names a wheel installed from a path name==version too (freeze: "@ file:")
        [str(venv / "bin/python"), "-m", "pip", "list", "--format=freeze"], capture_output=True,
        text=True,
        check=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    got = dict(
        (wheelhouse.normalise(n), v)
        for n, v in (ln.split("==") for ln in freeze.split() if "==" in ln)
    )
    assert got.pop("bansos-edge") == "0.1.0"
    got.pop("pip")  # the venv's own, not from the wheelhouse
    assert got == {n: v for n, (v, _) in pins.items()}
    probe = (
        "import cv2, numpy, edge.app, edge.vision.runtime as r;"
        "from ai_edge_litert.interpreter import Interpreter;"
        "print(numpy.__version__, edge.app.__file__)"
    )
    out = subprocess.run(
        [str(venv / "bin/python"), "-c", probe], capture_output=True, text=True, cwd=tmp_path,
        env=CLEAN,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == pins["numpy"][0]
    assert str(venv) in out.stdout  # the installed package, not this checkout
    edge = subprocess.run(
        [str(venv / "bin/edge"), "--version"], capture_output=True, text=True, env=CLEAN
    )
    assert edge.returncode == 0, edge.stderr
