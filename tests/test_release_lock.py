"""`edge release build --target` puts the lock's hash-pinned wheelhouse in the release, so the
OTA release and the technician's offline install are one artefact: the installer's venv and
first boot both install it with no index and ``--require-hashes``.

Fast: the checkout copy carries a one-wheel lock for x86_64 (six, its pin taken from the real
lock), so PyPI serves a few kB. The full ~110 MB wheelhouse is built by
tests/test_provisioning_wheelhouse.py (slow).
"""

from __future__ import annotations

import json
import shutil
import site
import sys
import tarfile
from pathlib import Path

import pytest
from ota_support import copy_checkout, tiny_models
from test_lock import pypi  # noqa: F401  (fixture: PyPI reachable, or skip/fail)
from test_provisioning import kit  # noqa: F401  (kit is a fixture)
from test_provisioning_firstboot import Recorder
from test_provisioning_release import provision_release

from edge.__main__ import main
from edge.errors import ReleaseError
from edge.ota.deploy import venv_deploy
from edge.ota.release import build_release, generate_release_key, sha256_file, verify_release
from edge.ota.wheelhouse import lock_wheelhouse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "provisioning"))
import firstboot  # noqa: E402
import wheelhouse  # noqa: E402

pytestmark = pytest.mark.network


def one_wheel_lock() -> str:
    """The x86_64 lock's pin of six, alone: a real, hash-pinned lock of one small wheel."""
    lines = (ROOT / "requirements/x86_64.txt").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("six=="))
    return "\n".join(["# a one-wheel lock for the test", *lines[start : start + 3]]) + "\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory, pypi):  # noqa: F811
    tmp = tmp_path_factory.mktemp("lockrel")
    checkout = copy_checkout(tmp / "src", version="0.2.0")
    shutil.copytree(ROOT / "provisioning", checkout / "provisioning")
    (checkout / "requirements").mkdir()
    (checkout / "requirements/x86_64.txt").write_text(one_wheel_lock())
    key = tmp / "release.pem"
    generate_release_key(key)
    args = ["release", "build", "--key", str(key), "--out", str(tmp / "dist"), "--target"]
    args += ["x86_64", "--checkout", str(checkout), "--models", str(tiny_models(tmp / "m"))]
    assert main(args) == 0
    art = tmp / "dist" / "bansos-edge-0.2.0.tar"
    return {"artefact": art, "pub": Path(f"{key}.pub"), "checkout": checkout, "tmp": tmp}


def test_the_release_carries_the_locks_wheelhouse(built):
    release = verify_release(built["artefact"], built["pub"].read_bytes())
    wh = release.manifest["wheelhouse"]
    assert wh["target"] == "x86_64" and wh["lock"] == "requirements.txt" and wh["deps"]
    assert wh["python"] == wheelhouse.TARGETS["x86_64"].python
    files = release.manifest["files"]
    assert {
        "wheels/requirements.txt",
        "wheels/TARGET",
        "wheels/six-1.17.0-py2.py3-none-any.whl",
        "wheels/bansos_edge-0.2.0-py3-none-any.whl",
    } <= set(files)
    with tarfile.open(built["artefact"]) as tar:
        lock = tar.extractfile("wheels/requirements.txt").read().decode()  # type: ignore[union-attr]
    assert lock == one_wheel_lock()  # the checkout's lock, byte for byte
    # Every dependency wheel is the one the lock pins, by its hash.
    pins = wheelhouse.read_lock(built["checkout"] / "requirements/x86_64.txt")
    deps = [rel for rel in files if rel.endswith(".whl") and "bansos_edge" not in rel]
    assert [Path(d).name.split("-")[0] for d in deps] == ["six"]
    assert files[deps[0]]["sha256"] in pins["six"][1]


def test_the_installer_installs_it_hash_checked(built, tmp_path):
    release_dir = tmp_path / "releases/0.2.0"
    release = verify_release(built["artefact"], built["pub"].read_bytes(), extract_to=release_dir)
    deploy = venv_deploy(with_pip=False, extra_paths=tuple(site.getsitepackages()))
    deploy(release_dir, release.manifest)
    site_dir = next((release_dir / "venv/lib").glob("python*/site-packages"))
    assert (site_dir / "six.py").is_file()  # from the release's wheelhouse, hash-checked
    assert list(site_dir.glob("bansos_edge-0.2.0.dist-info"))
    # A wheel that is not the pinned one fails the hash check: nothing unpinned gets in.
    six = release_dir / "wheels/six-1.17.0-py2.py3-none-any.whl"
    six.write_bytes(six.read_bytes() + b"\0")
    shutil.rmtree(release_dir / "venv")
    with pytest.raises(ReleaseError, match="Expected sha256"):
        deploy(release_dir, release.manifest)


def test_first_boot_installs_a_card_from_the_same_artefact(built, tmp_path, kit):  # noqa: F811
    """No separate wheelhouse on the card: the release's own, with its lock."""
    (tmp_path / "boot").mkdir()
    releases = {"pub": built["pub"], "0.2.0": built["artefact"]}
    res = provision_release(tmp_path, kit, releases)
    assert res.returncode == 0, res.stderr
    card = tmp_path / "root"
    assert not (card / "opt/edge/wheelhouse").exists()
    rec = Recorder()
    firstboot.FirstBoot(card, rec).run_all()
    pip = [c for c in rec.commands if " -m pip install " in c]
    wheels = card / "opt/edge/current/wheels"
    assert "--no-index" in pip[0] and f"--require-hashes -r {wheels}/requirements.txt" in pip[0]
    assert pip[1].endswith(f"{wheels}/bansos_edge-0.2.0-py3-none-any.whl")


def test_an_unknown_target_is_refused(built, tmp_path):
    key = tmp_path / "k.pem"
    generate_release_key(key)
    with pytest.raises(ReleaseError, match="unknown target"):
        build_release(
            built["checkout"], key, tmp_path, models_dir=built["tmp"] / "m",
            wheelhouse=lock_wheelhouse("riscv64"),
        )  # fmt: skip


def test_the_manifest_names_what_the_lock_pinned(built):
    with tarfile.open(built["artefact"]) as tar:
        manifest = json.loads(tar.extractfile("release.json").read())  # type: ignore[union-attr]
    assert manifest["wheelhouse"]["wheels"] == 2  # six and the terminal
    assert sha256_file(built["artefact"])  # readable whole
