"""provisioning/provision.py into a temporary root: layout, key modes, config, unit, idempotence."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from edge.config import load_config
from edge.keys import generate_central_key

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "provisioning" / "provision.py"
WHEEL = "bansos_edge-0.1.0-py3-none-any.whl"


@pytest.fixture
def kit(tmp_path):
    """What a technician brings: a wheel, the models, the central public key."""
    kit = tmp_path / "kit"
    (kit / "models").mkdir(parents=True)
    (kit / WHEEL).write_bytes(b"PK\x03\x04 not a real wheel: pip is not run in these tests")
    entries = {}
    for name, blob in (("detector", b"det-bytes"), ("embedder_int8", b"emb-bytes")):
        (kit / "models" / f"{name}.tflite").write_bytes(blob)
        entries[name] = {"file": f"{name}.tflite", "sha256": hashlib.sha256(blob).hexdigest()}
    (kit / "models" / "manifest.json").write_text(json.dumps({"version": 1, "models": entries}))
    generate_central_key(kit / "central.key")
    return kit


def provision(tmp_path: Path, kit: Path, *extra: str, device_id: str = "edge-3171-0007"):
    args = [
        sys.executable,
        str(SCRIPT),
        "--root", str(tmp_path / "root"),
        "--boot", str(tmp_path / "boot"),
        "--out", str(tmp_path / "out"),
        "--device-id", device_id,
        "--regency", "3171",
        "--broker", "mqtt.bansos.example:8883",
        "--printer-port", "/dev/ttyUSB0",
        "--pins", "red=5,green=6,blue=13,buzzer=19",
        "--central-pub", str(kit / "central.key.pub"),
        "--wheel", str(kit / WHEEL),
        "--models", str(kit / "models"),
        "--no-install",
        *extra,
    ]  # fmt: skip
    (tmp_path / "boot").mkdir(exist_ok=True)
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=tmp_path)


def snapshot(*folders: Path) -> dict[str, tuple]:
    """Every file and link with its bytes, mode and modification time."""
    snap = {}
    for folder in folders:
        for p in sorted(folder.rglob("*")):
            st = p.lstat()
            body = os.readlink(p) if p.is_symlink() else (p.read_bytes() if p.is_file() else None)
            snap[str(p)] = (body, st.st_mode, st.st_mtime_ns)
    return snap


def test_layout_of_a_provisioned_card(tmp_path, kit, make_identity):
    res = provision(tmp_path, kit)
    assert res.returncode == 0, res.stderr
    root = tmp_path / "root"
    assert res.stdout.rstrip().endswith("provision: changed")

    # Package and models staged; pip skipped as asked.
    assert (root / "opt/edge/dist" / WHEEL).read_bytes() == (kit / WHEEL).read_bytes()
    for f in ("manifest.json", "detector.tflite", "embedder_int8.tflite"):
        assert (root / "opt/edge/models" / f).read_bytes() == (kit / "models" / f).read_bytes()
    assert "skipped   pip install" in res.stdout

    # Device identity: private keys 0600 in a 0700 folder, loadable by edge.keys.
    keys = root / "var/lib/edge/keys"
    assert keys.stat().st_mode & 0o777 == 0o700
    assert (root / "var/lib/edge").stat().st_mode & 0o777 == 0o700
    for name in ("device_ed25519.pem", "bundle_x25519.pem", "tls_key.pem"):
        assert (keys / name).stat().st_mode & 0o777 == 0o600, name
    identity = make_identity(keys)
    card = json.loads((keys / "device.pub.json").read_text())
    assert card["device_id"] == "edge-3171-0007"
    assert card["sign_public_pem"] == identity.device_public_pem().decode()

    # The CSR is for the TLS key on the card, with the device id as common name.
    csr = x509.load_pem_x509_csr((keys / "tls.csr").read_bytes())
    tls_key = serialization.load_pem_private_key((keys / "tls_key.pem").read_bytes(), None)
    assert csr.is_signature_valid and csr.public_key() == tls_key.public_key()
    cn = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == "edge-3171-0007"
    # The technician's copies are public material only.
    out = tmp_path / "out"
    assert (out / "edge-3171-0007.tls.csr").read_bytes() == (keys / "tls.csr").read_bytes()
    assert (out / "edge-3171-0007.device.pub.json").is_file()

    # No private key anywhere except the device's keys folder.
    for p in [*root.rglob("*"), *out.rglob("*"), *(tmp_path / "boot").rglob("*")]:
        if p.is_file() and not p.is_symlink() and b"PRIVATE KEY" in p.read_bytes():
            assert p.parent == keys, p

    # The config is valid and says what the technician gave.
    config = root / "etc/edge/config.toml"
    assert config.stat().st_mode & 0o777 == 0o640
    cfg = load_config(config)
    assert (cfg.device.id, cfg.device.regency) == ("edge-3171-0007", "3171")
    assert cfg.device.state_dir == Path("/var/lib/edge")
    assert cfg.models.dir == Path("/opt/edge/models")
    assert (cfg.mqtt.enabled, cfg.mqtt.host, cfg.mqtt.port) == (True, "mqtt.bansos.example", 8883)
    assert cfg.mqtt.key_file == Path("/var/lib/edge/keys/tls_key.pem")
    assert (cfg.printer.kind, cfg.printer.port) == ("serial", "/dev/ttyUSB0")
    sig = cfg.signals
    assert (sig.kind, sig.red_pin, sig.green_pin, sig.blue_pin, sig.buzzer_pin) == (
        "gpiozero", 5, 6, 13, 19
    )  # fmt: skip
    assert cfg.bundle.central_public_key == Path("/etc/edge/central_public.pem")
    central = root / "etc/edge/central_public.pem"
    assert central.read_bytes() == (kit / "central.key.pub").read_bytes()

    # Unit installed and enabled the way `systemctl enable` does it.
    unit = root / "etc/systemd/system/edge.service"
    assert unit.read_bytes() == (ROOT / "systemd/edge.service").read_bytes()
    wants = root / "etc/systemd/system/multi-user.target.wants/edge.service"
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/edge.service"
    timer = root / "etc/systemd/system/timers.target.wants/edge-prune.timer"
    assert os.readlink(timer) == "/etc/systemd/system/edge-prune.timer"  # daily `edge prune`
    for name in ("edge-prune.service", "edge-prune.timer"):
        assert (root / "etc/systemd/system" / name).read_bytes() == (
            ROOT / "systemd" / name
        ).read_bytes()
    sysusers = (root / "etc/sysusers.d/edge.conf").read_text()
    assert "u edge" in sysusers and "m edge gpio" in sysusers
    # No system user on an SD card: that happens at first boot.
    assert "skipped   user edge" in res.stdout
    assert not (root / "etc/passwd").exists()

    # First boot has what it needs on the card, and its own unit runs it (no cloud-init).
    tools = root / "opt/edge/provisioning"
    assert {p.name for p in tools.iterdir()} >= {
        "provision.py", "target.py", "edge.service", "firstboot.py", "wheelhouse.py"
    }  # fmt: skip
    choices = json.loads((tools / "firstboot.json").read_text())
    argv = " ".join(choices["argv"])
    assert "--device-id edge-3171-0007" in argv and "--pins red=5,green=6" in argv
    # this boot partition is neither image's (empty, no cloud-init): no user-data invented
    assert not (tmp_path / "boot" / "user-data").exists()


def test_second_run_changes_nothing(tmp_path, kit):
    first = provision(tmp_path, kit)
    assert first.returncode == 0, first.stderr
    folders = (tmp_path / "root", tmp_path / "out", tmp_path / "boot")
    before = snapshot(*folders)
    second = provision(tmp_path, kit)
    assert second.returncode == 0, second.stderr
    assert snapshot(*folders) == before
    assert second.stdout.rstrip().endswith("provision: unchanged: nothing to do")
    statuses = {line.split()[0] for line in second.stdout.splitlines()[1:-1]}
    assert statuses <= {"unchanged", "skipped"}, second.stdout


def test_rerun_keeps_keys_and_hand_edits(tmp_path, kit):
    assert provision(tmp_path, kit).returncode == 0
    root = tmp_path / "root"
    keys = root / "var/lib/edge/keys"
    key_bytes = {p.name: p.read_bytes() for p in keys.glob("*.pem")}
    config = root / "etc/edge/config.toml"
    # A technician tunes a value by hand...
    config.write_text(config.read_text() + "\n[vision]\nmatch_threshold = 0.55\n")
    # ...and re-provisions with a new broker and device id.
    res = provision(tmp_path, kit, "--broker", "10.0.0.5:1883", device_id="edge-3171-0008")
    assert res.returncode == 0, res.stderr
    assert {p.name: p.read_bytes() for p in keys.glob("*.pem")} == key_bytes
    cfg = load_config(config)
    assert cfg.vision.match_threshold == 0.55
    assert (cfg.device.id, cfg.mqtt.host, cfg.mqtt.port) == ("edge-3171-0008", "10.0.0.5", 1883)
    # Same TLS key, new CSR naming the new device id.
    csr = x509.load_pem_x509_csr((keys / "tls.csr").read_bytes())
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-3171-0008"
    assert "updated   /etc/edge/config.toml" in res.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--regency", "31"), "device.regency"),
        (("--pins", "red=x"), "bad pin"),
        (("--broker", "host:port"), "bad broker"),
        (("--release-ca", "ca.pem"), "--release-ca needs --release-pub"),
        (("--release", "r.tar"), "not allowed with argument --wheel"),
    ],
)
def test_bad_arguments_write_nothing(tmp_path, kit, extra, message):
    res = provision(tmp_path, kit, *extra)
    assert res.returncode != 0
    assert message in res.stderr
    assert not (tmp_path / "root").exists()


def test_bad_inputs_write_nothing(tmp_path, kit):
    (kit / "models" / "detector.tflite").write_bytes(b"tampered")
    res = provision(tmp_path, kit)
    assert res.returncode != 0 and "sha256 mismatch" in res.stderr
    assert not (tmp_path / "root").exists()


def test_wrong_central_key_is_refused(tmp_path, kit, identity):
    # The first 40 bytes of some public key: no usable key at all.
    (kit / "central.key.pub").write_bytes(identity.device_public_pem()[:40])
    res = provision(tmp_path, kit)
    assert res.returncode == 1 and "public key" in res.stderr
    assert not (tmp_path / "root").exists()


def test_broken_existing_config_is_not_replaced(tmp_path, kit):
    config = tmp_path / "root" / "etc/edge/config.toml"
    config.parent.mkdir(parents=True)
    config.write_text("[device\nid = 1\n")
    res = provision(tmp_path, kit)
    assert res.returncode == 1 and "not valid TOML" in res.stderr
    assert config.read_text() == "[device\nid = 1\n"


def test_installed_config_passes_check_config(tmp_path, kit):
    assert provision(tmp_path, kit).returncode == 0
    res = subprocess.run(
        [sys.executable, "-m", "edge", "check-config", str(tmp_path / "root/etc/edge/config.toml")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    assert tomllib.loads(res.stdout)["device"]["id"] == "edge-3171-0007"


def load_provision_module():
    spec = importlib.util.spec_from_file_location("provision_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_commands_on_a_real_root(tmp_path, kit):
    """What provision.py runs on a live Pi, recorded instead of run (root is a temp dir)."""
    module = load_provision_module()
    argv = [
        "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out"),
        "--device-id", "edge-3171-0009", "--regency", "3171", "--broker", "10.1.2.3",
        "--wheel", str(kit / WHEEL), "--models", str(kit / "models"),
    ]  # fmt: skip
    prov = module.Provisioner(module.build_parser().parse_args(argv), dry_run=True)
    prov.real = True  # act as on "/" but only record the commands
    prov.user_exists = lambda: False
    prov.run()
    cmds = [" ".join(c) for c in prov.commands]
    venv = str(tmp_path / "root/opt/edge/venv")
    assert cmds[0] == f"{sys.executable} -m venv --system-site-packages {venv}"
    pip = next(c for c in cmds if " -m pip install " in c)
    assert pip.endswith(str(tmp_path / "root/opt/edge/dist" / WHEEL))
    assert "--find-links" in pip
    expected = [
        "systemd-sysusers /etc/sysusers.d/edge.conf",
        "chown -R edge:edge /var/lib/edge",
        "chgrp edge /etc/edge/config.toml",
        "systemctl daemon-reload",
        "systemctl restart edge.service",
    ]
    positions = [cmds.index(c) for c in expected]
    assert positions == sorted(positions), cmds
    assert "ran       systemctl restart edge" in prov.report.render()

    # Nothing changed, the venv and user exist, the service runs: no restart the second time.
    (tmp_path / "root/opt/edge/venv/bin").mkdir(parents=True)
    (tmp_path / "root/opt/edge/venv/bin/python").touch()
    again = module.Provisioner(module.build_parser().parse_args(argv), dry_run=True)
    again.real = True
    again.user_exists = lambda: True
    again.run()
    assert "systemctl restart edge.service" not in [" ".join(c) for c in again.commands]
    assert again.report.render().endswith("provision: unchanged: nothing to do")


def test_unit_and_provisioning_agree_on_paths():
    module = load_provision_module()
    unit = (ROOT / "systemd/edge.service").read_text()
    assert f"ExecStart=/{module.VENV}/bin/edge --config /{module.CONFIG} run" in unit
    assert f"ReadWritePaths=/{module.STATE}\n" in unit
    assert f"StateDirectory={module.STATE.name}\n" in unit
    assert f"ConfigurationDirectory={module.CONFIG.parent.name}\n" in unit
    assert f"Documentation=file:///{module.units.TOOLS}/operations.md" in unit
    # The daemon waits for a card's first boot: the file that says there is one.
    assert f"ConditionPathExists=|!/{module.units.TOOLS}/firstboot.json\n" in unit
    sysusers = (ROOT / "systemd/edge.sysusers.conf").read_text()
    assert set(module.GROUPS) == {
        line.split()[2] for line in sysusers.splitlines() if line[:2] == "m "
    }


def test_a_signed_device_registry_is_installed_and_a_forged_one_refused(tmp_path, kit):
    """`--registry` puts central's signed registry in the state dir, so claims sync works from
    the first boot; one not signed by central stops provisioning before anything is written."""
    from edge.keys import DeviceIdentity, load_central_private_key
    from edge.registry import DeviceEntry, open_registry, sign_registry

    central = load_central_private_key(kit / "central.key")
    entry = DeviceEntry("edge-3171-0001", "3171", DeviceIdentity.generate().device_public_pem())
    (kit / "registry.json").write_bytes(sign_registry(central, [entry], 3))
    res = provision(tmp_path, kit, "--registry", str(kit / "registry.json"))
    assert res.returncode == 0, res.stderr
    installed = (tmp_path / "root/var/lib/edge/registry.json").read_bytes()
    assert open_registry(installed, (kit / "central.key.pub").read_bytes()).version == 3

    forged = tmp_path / "forged.json"
    forged.write_bytes(installed.replace(b'"3171"', b'"3172"'))
    (tmp_path / "again").mkdir()
    res = provision(tmp_path / "again", kit, "--registry", str(forged))
    assert res.returncode != 0 and "not signed by central" in res.stderr
    assert not (tmp_path / "again/root/var/lib/edge").exists()
