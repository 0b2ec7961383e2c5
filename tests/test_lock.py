"""The hash-pinned locks of requirements/: complete, consistent with pyproject, resolvable.

The network test resolves each lock again with pip for its own platform (binary wheels only,
glibc tags listed, as pip needs them) against PyPI: a wheel that vanished, a hash that changed
or a dependency the lock lacks fails it. It runs on CI; elsewhere it is skipped only when PyPI
cannot be reached.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from support import under_ci

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "provisioning"))
import wheelhouse  # noqa: E402

TARGETS = list(wheelhouse.TARGETS)


def _pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


@pytest.fixture(scope="module")
def pypi():
    if not _pypi_reachable():
        if under_ci():
            pytest.fail("pypi.org:443 unreachable on CI: the lock cannot be checked")
        pytest.skip("pypi.org:443 unreachable (offline machine): lock resolution not checked")


def _names(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].split(";", 1)[0].strip()
        if line:
            name = line.split("[")[0]
            for op in (">=", "==", "<", ">"):
                name = name.split(op)[0]
            out[wheelhouse.normalise(name.strip())] = line.replace(" ", "")
    return out


def test_runtime_in_is_pyproject_dependencies():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert _names(wheelhouse.RUNTIME_IN.read_text().splitlines()) == _names(deps)


@pytest.mark.parametrize("target", TARGETS)
def test_lock_is_complete_hashed_and_keeps_numpy_abi(target):
    pins = wheelhouse.read_lock(wheelhouse.lock_path(target))
    wanted = _names(wheelhouse.RUNTIME_IN.read_text().splitlines())
    assert set(wanted) <= set(pins), f"{target}: not locked: {set(wanted) - set(pins)}"
    for name, (version, hashes) in pins.items():
        assert hashes, f"{target}: {name}=={version} has no --hash"
    numpy = pins.get("numpy", (None, []))[0]
    assert wheelhouse.numpy_rule_problem(target, numpy) is None


def test_numpy_rule_catches_the_bookworm_fault():
    """Today's float: numpy 2.x in a Bookworm venv breaks apt's simplejpeg and picamera2."""
    problem = wheelhouse.numpy_rule_problem("bookworm-aarch64", "2.4.6")
    assert problem and "dtype size changed" in problem
    assert wheelhouse.numpy_rule_problem("bookworm-aarch64", "1.26.4") is None
    assert wheelhouse.numpy_rule_problem("trixie-aarch64", "1.26.4")
    assert wheelhouse.numpy_rule_problem("x86_64", "2.4.6") is None


def test_platform_tags_list_every_glibc():
    tags = wheelhouse.TARGETS["bookworm-aarch64"].platforms
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux_2_17_aarch64" in tags
    assert "manylinux_2_28_aarch64" in tags and tags[-1] == "manylinux2014_aarch64"
    assert wheelhouse.TARGETS["trixie-aarch64"].platforms[0] == "manylinux_2_41_aarch64"


@pytest.mark.network
@pytest.mark.parametrize("target", TARGETS)
def test_lock_resolves_for_its_platform(pypi, target):
    lock = wheelhouse.lock_path(target)
    pins = wheelhouse.read_lock(lock)
    try:
        items = wheelhouse.resolve(target, lock)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"{target}: pip cannot resolve the lock with binary wheels:\n{exc.stderr}")
    got = {}
    for item in items:
        name = wheelhouse.normalise(item["metadata"]["name"])
        got[name] = (item["metadata"]["version"], item["download_info"]["archive_info"]["hashes"])
    # nothing outside the lock is pulled in, and every locked wheel is the one pip picks
    assert set(got) == set(pins), f"{target}: lock and resolve differ: {set(got) ^ set(pins)}"
    for name, (version, hashes) in got.items():
        assert version == pins[name][0], f"{target}: {name} resolves to {version}"
        assert hashes["sha256"] in pins[name][1], f"{target}: {name} wheel hash changed"
    assert wheelhouse.numpy_rule_problem(target, got["numpy"][0]) is None
