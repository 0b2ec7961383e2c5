"""Provisioning sets up updates over the air: ``provision --root --release-pub --release`` lays
a card out as edge/ota's installer keeps a terminal (releases/<v>, current, previous, venv and
models links), with the release key, ``[ota]`` and the update units; first boot builds the venv
inside the release; the installer then updates it like any terminal. A tampered artefact is
refused before anything is written."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from ota_support import copy_checkout, tiny_models
from ota_support import fake_wheelhouse as release_wheels
from test_provisioning import SCRIPT, kit, snapshot  # noqa: F401  (kit is a fixture)
from test_provisioning_firstboot import Recorder
from test_provisioning_images import fake_wheelhouse, image

from edge.config import load_config
from edge.ota.deploy import FakeService
from edge.ota.install import Installer
from edge.ota.release import build_release, generate_release_key, verify_tree

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "provisioning"))
import firstboot  # noqa: E402

OTA_UNITS = ("edge-update.path", "edge-update.service", "edge-rollback.service")
OTA_UNITS += ("edge-recover.service",)


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """A release key and two signed releases (0.2.0, 0.3.0) with a stand-in wheelhouse."""
    tmp = tmp_path_factory.mktemp("rel")
    key = tmp / "release.pem"
    generate_release_key(key)
    models = tiny_models(tmp / "models")
    out = {"key": key, "pub": Path(f"{key}.pub"), "models": models}
    for version in ("0.2.0", "0.3.0"):
        checkout = copy_checkout(tmp / f"src-{version}", version=version)
        out[version] = build_release(
            checkout, key, tmp / "dist", models_dir=models, wheelhouse=release_wheels
        )

    def locked(checkout: Path, out_dir: Path, **kw) -> dict:
        # As `edge release build --target` makes it, with stand-in wheels (no PyPI here).
        release_wheels(checkout, out_dir)
        (out_dir / "requirements.txt").write_text("six==1.17.0 \\\n    --hash=sha256:" + "0" * 64)
        return {"platform": "x86_64", "deps": True, "target": "x86_64", "lock": "requirements.txt"}

    checkout = tmp / "src-0.2.0"
    out["locked"] = build_release(
        checkout, key, tmp / "dist-locked", models_dir=models, wheelhouse=locked
    )
    return out


def provision_release(tmp_path: Path, kit: Path, releases: dict, *extra: str, artefact=None):  # noqa: F811
    (tmp_path / "ca").mkdir(exist_ok=True)
    ca = tmp_path / "ca" / "release-ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nnot checked here\n-----END CERTIFICATE-----\n")
    args = [
        sys.executable, str(SCRIPT),
        "--root", str(tmp_path / "root"), "--boot", str(tmp_path / "boot"),
        "--out", str(tmp_path / "out"),
        "--device-id", "edge-3171-0009", "--regency", "3171",
        "--broker", "mqtt.bansos.example:8883", "--printer-port", "uart", "--model", "pi4",
        "--central-pub", str(kit / "central.key.pub"),
        "--release-pub", str(releases["pub"]), "--release-ca", str(ca),
        "--release", str(artefact or releases["0.2.0"]),
        "--no-install", *extra,
    ]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path)


@pytest.fixture
def card(tmp_path, kit, releases):  # noqa: F811
    _, rootfs = image(tmp_path, "bookworm")
    wh = fake_wheelhouse(tmp_path / "wh")
    res = provision_release(tmp_path, kit, releases, "--wheelhouse", str(wh))
    assert res.returncode == 0, res.stderr
    return rootfs


def test_a_card_from_a_release_has_the_layout_edge_ota_keeps(card, releases):
    opt = card / "opt/edge"
    rel = opt / "releases/0.2.0"
    # The release whole, as the installer unpacks one (no venv before first boot).
    manifest = json.loads((rel / "release.json").read_text())
    assert manifest["version"] == "0.2.0" and not (rel / ".incomplete").exists()
    verify_tree(rel, manifest)
    assert (rel / "wheels/bansos_edge-0.2.0-py3-none-any.whl").is_file()
    links = {name: os.readlink(opt / name) for name in ("current", "previous", "venv", "models")}
    assert links == {
        "current": "releases/0.2.0",
        "previous": "releases/0.2.0",
        "venv": "current/venv",
        "models": "current/models",
    }
    assert (opt / "models/manifest.json").read_bytes() == (
        releases["models"] / "manifest.json"
    ).read_bytes()

    # The release key and [ota]; the models through the link.
    etc = card / "etc/edge"
    assert (etc / "release_public.pem").read_bytes() == releases["pub"].read_bytes()
    assert (etc / "release_ca.pem").is_file()
    cfg = load_config(etc / "config.toml")
    assert cfg.ota.release_public_key == Path("/etc/edge/release_public.pem")
    assert cfg.ota.root == Path("/opt/edge")
    assert cfg.ota.ca_file == Path("/etc/edge/release_ca.pem")
    assert cfg.models.dir == Path("/opt/edge/models")

    # The update units, from the release, enabled beside edge.service and the prune timer.
    units = card / "etc/systemd/system"
    for name in OTA_UNITS:
        assert (units / name).read_bytes() == (rel / "systemd" / name).read_bytes()
        assert (opt / "provisioning" / name).is_file(), "shipped for first boot"
    wants = units / "multi-user.target.wants"
    for name in ("edge.service", "edge-update.path", "edge-recover.service"):
        assert os.readlink(wants / name) == f"/etc/systemd/system/{name}"
    assert (units / "timers.target.wants/edge-prune.timer").is_symlink()

    # First boot is told about the key, with its path on the card.
    argv = json.loads((opt / "provisioning/firstboot.json").read_text())["argv"]
    assert argv[argv.index("--release-pub") + 1] == "/etc/edge/release_public.pem"


def test_second_run_changes_nothing(tmp_path, kit, releases, card):  # noqa: F811
    before = snapshot(card)
    wh = tmp_path / "wh"
    again = provision_release(tmp_path, kit, releases, "--wheelhouse", str(wh))
    assert again.returncode == 0, again.stderr
    assert again.stdout.rstrip().endswith("provision: unchanged: nothing to do"), again.stdout
    assert snapshot(card) == before


def test_first_boot_builds_the_venv_inside_the_release(card):
    rec = Recorder()
    assert firstboot.FirstBoot(card, rec).run_all() == list(firstboot.STEPS)
    rel = card / "opt/edge/releases/0.2.0"
    venv_cmd = next(c for c in rec.commands if "-m venv" in c)
    assert venv_cmd.endswith(str(rel / "venv"))  # a venv names its own path: the real one
    pip = [c for c in rec.commands if " -m pip install " in c]
    assert all(c.startswith(str(rel / "venv/bin/python")) for c in pip)
    # Dependencies from the card's wheelhouse (the release has no lock), ours from the release.
    assert f"-r {card / 'opt/edge/wheelhouse/requirements.txt'}" in pip[0]
    assert pip[1].endswith("opt/edge/current/wheels/bansos_edge-0.2.0-py3-none-any.whl")
    terminal = next(c for c in rec.commands if "provision.py" in c)
    assert "--release-pub /etc/edge/release_public.pem" in terminal


def test_the_staged_provision_finishes_the_card_unchanged(tmp_path, card):
    """What first boot's ``terminal`` step runs: the shipped provision.py and its modules, on
    the card, with first boot's arguments (their /etc paths taken on the card)."""
    tools = card / "opt/edge/provisioning"
    argv = json.loads((tools / "firstboot.json").read_text())["argv"]
    argv = [f"{card}{a}" if a.startswith("/etc/") else a for a in argv]
    env = dict(os.environ, PYTHONPATH=str(ROOT))  # edge from this checkout: no venv here
    before = snapshot(card / "etc", card / "opt/edge/releases")
    res = subprocess.run(
        [sys.executable, str(tools / "provision.py"), "--root", str(card), *argv,
         "--no-install", "--no-system", "--out", str(tmp_path / "fb-out")],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert snapshot(card / "etc", card / "opt/edge/releases") == before, res.stdout


def test_the_installer_updates_a_provisioned_card_and_can_go_back(card, releases):
    """No adoption needed: the first update switches from the provisioned release."""
    opt = card / "opt/edge"
    (opt / "releases/0.2.0/venv").mkdir()  # what first boot made

    def deploy(release_dir: Path, manifest: dict) -> None:
        (release_dir / "venv").mkdir()

    installer = Installer(
        opt,
        card / "var/lib/edge",
        releases["pub"].read_bytes(),
        service=FakeService(),
        selftest=lambda _d: (True, "ok"),
        deploy=deploy,
    )
    assert installer.current_version() == "0.2.0"
    entry = installer.apply(releases["0.3.0"])
    assert entry["state"] == "confirmed" and entry["previous"] == "0.2.0"
    assert os.readlink(opt / "current") == "releases/0.3.0"
    assert not any(p.name.endswith("+provisioned") for p in (opt / "releases").iterdir())
    assert os.readlink(opt / "venv") == "current/venv"
    assert (opt / "releases/0.2.0/venv").is_dir()  # still there to switch back to
    assert installer.rollback("test")["state"] == "rolled_back"
    assert os.readlink(opt / "current") == "releases/0.2.0"


def _tampered(src: Path, dst: Path) -> Path:
    """The artefact with one byte of the wheel changed (sizes kept)."""
    with tarfile.open(src) as tin, tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as tout:
        for info in tin.getmembers():
            f = tin.extractfile(info)
            data = f.read() if f else b""
            if info.name.endswith(".whl"):
                data = data[:-1] + bytes([data[-1] ^ 1])
            tout.addfile(info, io.BytesIO(data))
    return dst


@pytest.mark.parametrize("how", ["tampered", "other key", "central key"])
def test_a_bad_release_is_refused_before_anything_is_written(tmp_path, kit, releases, how):  # noqa: F811
    extra: tuple[str, ...] = ()
    artefact = releases["0.2.0"]
    if how == "tampered":
        artefact = _tampered(artefact, tmp_path / artefact.name)
    elif how == "other key":
        generate_release_key(tmp_path / "other.pem")
        extra = ("--release-pub", str(tmp_path / "other.pem.pub"))
    else:
        extra = ("--release-pub", str(kit / "central.key.pub"))
    (tmp_path / "boot").mkdir()
    res = provision_release(tmp_path, kit, releases, *extra, artefact=artefact)
    assert res.returncode != 0
    why = {"tampered": "sha256", "other key": "signature", "central key": "central"}[how]
    assert why in res.stderr, res.stderr
    root = tmp_path / "root"
    assert not root.exists() or not any(root.rglob("*"))


def exec_binaries(unit_dir: Path) -> dict[str, str]:
    """The program each update unit runs."""
    out = {}
    for name in OTA_UNITS:
        for line in (unit_dir / name).read_text().splitlines():
            if line.startswith("ExecStart="):
                out[name] = line.removeprefix("ExecStart=").split()[0]
    return out


def test_the_update_units_run_an_edge_the_card_has(card):
    rel = card / "opt/edge/releases/0.2.0"
    (rel / "venv/bin").mkdir(parents=True)
    (rel / "venv/bin/edge").write_text("#!/bin/sh\n")  # what first boot installs
    binaries = exec_binaries(card / "etc/systemd/system")
    assert set(binaries) == {"edge-update.service", "edge-rollback.service", "edge-recover.service"}
    for unit, program in binaries.items():
        assert (card / program.lstrip("/")).resolve() == rel / "venv/bin/edge", unit


def test_a_terminal_provisioned_before_releases_can_still_be_updated(tmp_path, kit, releases):  # noqa: F811
    """Without --release (a real venv): the installer the path unit starts exists, and adopts
    the terminal at its first update (tests/test_ota.py); [ota] and the units are there."""
    from test_provisioning import provision

    res = provision(tmp_path, kit, "--release-pub", str(releases["pub"]))
    assert res.returncode == 0, res.stderr
    root = tmp_path / "root"
    cfg = load_config(root / "etc/edge/config.toml")
    assert cfg.ota.release_public_key == Path("/etc/edge/release_public.pem")
    assert cfg.ota.ca_file is None  # no --release-ca: releases only in chunks over MQTT
    assert (root / "opt/edge/models").is_dir() and not (root / "opt/edge/current").exists()
    (root / "opt/edge/venv/bin").mkdir(parents=True)
    (root / "opt/edge/venv/bin/edge").write_text("#!/bin/sh\n")
    update = exec_binaries(root / "etc/systemd/system")["edge-update.service"]
    assert (root / update.lstrip("/")).is_file()
    wants = root / "etc/systemd/system/multi-user.target.wants"
    assert (wants / "edge-update.path").is_symlink()


def test_on_a_running_pi_the_release_installs_from_its_lock(tmp_path, kit, releases):  # noqa: F811
    """What provision.py runs on a live Pi with --release, recorded instead of run."""
    from test_provisioning import load_provision_module

    module = load_provision_module()
    argv = [
        "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out"),
        "--device-id", "edge-3171-0009", "--regency", "3171", "--broker", "10.1.2.3",
        "--release-pub", str(releases["pub"]), "--release", str(releases["locked"]),
    ]  # fmt: skip
    prov = module.Provisioner(module.build_parser().parse_args(argv), dry_run=True)
    prov.real = True  # act as on "/" but only record the commands
    prov.user_exists = lambda: True
    prov.run()
    cmds = [" ".join(c) for c in prov.commands]
    rel = tmp_path / "root/opt/edge/releases/0.2.0"
    # The venv where the venv link points, as the OTA installer makes a release's.
    assert f"-m venv --system-site-packages {rel / 'venv'}" in cmds[0]
    pip = [c for c in cmds if " -m pip install " in c]
    wheels = rel / "wheels"
    assert (
        f"--no-index --find-links {wheels} --require-hashes -r {wheels}/requirements.txt" in pip[0]
    )
    assert pip[1].endswith(f"--no-deps {wheels}/bansos_edge-0.2.0-py3-none-any.whl")
    assert cmds[-1] == "systemctl restart edge.service"
    assert "systemctl start edge-update.path" in cmds  # watching now, not after a reboot
